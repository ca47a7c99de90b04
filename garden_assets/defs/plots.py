"""Matplotlib figures as inline PNG markdown, for ``MetadataValue.md`` in the UI."""

import base64
import io


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory
    import matplotlib.pyplot as plt

    return plt


def png_markdown(fig, alt: str) -> str:
    """``![alt](data:image/png;base64,…)`` of ``fig`` (closed afterwards)."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"
