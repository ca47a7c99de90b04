"""Atomic training checkpoints: ``<output>/checkpoints/checkpoint-<step>``.

A checkpoint is written into ``checkpoint-<step>.tmp`` and renamed when complete (``state.json`` last), so a
crash mid-save leaves only a ``.tmp`` directory, which `last_checkpoint` ignores and the next save removes.
Without DeepSpeed only the trainable parameters are saved (a LoRA adapter is a few MB, not the 1 GB base);
with DeepSpeed, accelerate's ``save_state`` writes the engine's sharded state.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoints_dir(output_dir: str | os.PathLike[str]) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def last_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(path) / STATE_FILE).read_text())


def begin(output_dir: str | os.PathLike[str], step: int) -> Path:
    """A fresh temporary directory for the checkpoint of ``step``."""
    tmp = checkpoints_dir(output_dir) / f"checkpoint-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, state: dict[str, Any], keep: int) -> Path:
    """Write ``state.json`` (last), rename ``tmp`` into place, prune all but the newest ``keep``."""
    state_tmp = tmp / (STATE_FILE + ".tmp")
    state_tmp.write_text(json.dumps(state, indent=2))
    os.replace(state_tmp, tmp / STATE_FILE)
    final = tmp.with_name(tmp.name[: -len(".tmp")])
    if final.exists():  # a stale checkpoint of the same step from an abandoned run
        shutil.rmtree(final)
    os.rename(tmp, final)
    if keep > 0:
        for _, old in complete_checkpoints(tmp.parent.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def clear(output_dir: str | os.PathLike[str]) -> None:
    shutil.rmtree(checkpoints_dir(output_dir), ignore_errors=True)


# -- trainable-parameter checkpoints (no DeepSpeed) ---------------------------------------------------------------
def save_trainable(model, optimizer, scheduler, path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    params = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    save_file(params, str(path / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    torch.save(scheduler.state_dict(), path / "scheduler.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, path / "rng.pt")


def load_trainable(model, optimizer, scheduler, path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in saved]
    if missing:
        raise RuntimeError(f"{path}: checkpoint lacks trainable parameters {missing[:3]}… (different model/method?)")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
