"""``python -m garden_assets.training``: the trainer CLI (see ``--help``)."""

from __future__ import annotations

import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from garden_assets.training.config import parse_args
    from garden_assets.training.trainer import train

    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
