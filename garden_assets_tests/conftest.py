import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DROPS = ROOT / "data" / "drops"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def xml_row(**attrs) -> str:
    def esc(v):
        return str(v).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;").replace("\n", "&#xA;")

    return "  <row " + " ".join(f'{k}="{esc(v)}"' for k, v in attrs.items()) + " />"


def write_dump(path: Path, rows: list[str], bom: bool = True, close: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = ('\ufeff' if bom else "") + '<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "\n".join(rows) + "\n"
    if close:
        text += "</posts>\n"
    path.write_text(text, encoding="utf-8")
    return path


def q(id, title="How deep do I plant garlic?", score=6, tags="|garlic|bulbs|", accepted=None, last="2023-01-02T00:00:00.000", body="<p>Question body</p>", **kw):
    attrs = dict(Id=id, PostTypeId=1, CreationDate="2023-01-01T00:00:00.000", Score=score, Body=body,
                 OwnerUserId=kw.pop("owner", 5), LastActivityDate=last, Title=title, Tags=tags, **kw)
    if accepted:
        attrs["AcceptedAnswerId"] = accepted
    return xml_row(**attrs)


def a(id, parent, score=7, body="<p>Plant cloves 5 cm deep, pointy end up.</p>", last="2023-01-03T00:00:00.000", **kw):
    return xml_row(Id=id, PostTypeId=2, ParentId=parent, CreationDate="2023-01-01T00:00:00.000", Score=score,
                   Body=body, OwnerUserId=kw.pop("owner", 6), LastActivityDate=last, **kw)


@pytest.fixture
def shared_data() -> Path:
    path = os.environ.get("GARDEN_SHARED_DATA")
    if not path or not Path(path).is_dir():
        pytest.skip("GARDEN_SHARED_DATA (the shared Stack Exchange dumps) is not set")
    return Path(path)
