"""GGUF export of causal models through llama.cpp's own converter, `convert_hf_to_gguf.py`.

The converter is not on PyPI as a module: it ships in llama.cpp's source, and so inside
llama-cpp-python's source distribution (`vendor/llama.cpp/`, next to its own `gguf-py`). lmtune looks
for it in `--converter` (the script, a llama.cpp folder, or llama-cpp-python's .tar.gz, unpacked once
into lmtune's cache), then `$LLAMA_CPP_DIR`, then the copy `make setup` fetches into the venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from lmtune.errors import LmtuneError
from lmtune.paths import cache_dir

SCRIPT = "convert_hf_to_gguf.py"
TYPES = ("f32", "f16", "bf16", "q8_0")
# Where `make setup` puts llama-cpp-python's source distribution (see the Makefile).
BUNDLED = Path(sys.prefix) / "share" / "llama-cpp-python"
HOW = (
    "GGUF export runs llama.cpp's own converter ({script}), which ships in llama-cpp-python's source: "
    "`pip download --no-binary :all: --no-deps llama-cpp-python -d DIR`, then pass --converter "
    "DIR/llama_cpp_python-*.tar.gz (or set LLAMA_CPP_DIR to a llama.cpp checkout)"
)


def _unpack(archive: Path) -> Path:
    """The llama.cpp folder inside llama-cpp-python's sdist, unpacked (converter files only) once."""
    target = cache_dir() / "llama.cpp" / archive.name.removesuffix(".tar.gz")
    if (target / SCRIPT).exists():
        return target
    try:
        with tarfile.open(archive) as tar:
            members = [
                m
                for m in tar.getmembers()
                if "/vendor/llama.cpp/" in m.name
                and m.isfile()
                and (m.name.endswith("/" + SCRIPT) or "/gguf-py/" in m.name or "/conversion/" in m.name)
            ]
            if not any(m.name.endswith("/" + SCRIPT) for m in members):
                raise LmtuneError(f"{archive} has no vendor/llama.cpp/{SCRIPT}; is it llama-cpp-python's source?")
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            for member in members:
                member.name = member.name.split("/vendor/llama.cpp/", 1)[1]
                tar.extract(member, tmp, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise LmtuneError(f"cannot read {archive}: {err}") from None
    tmp.rename(target)
    return target


def find_converter(given: str | None = None) -> Path:
    """The path of convert_hf_to_gguf.py, or a one-line error saying how to get it."""
    candidates = [Path(given).expanduser()] if given else []
    if os.environ.get("LLAMA_CPP_DIR"):
        candidates.append(Path(os.environ["LLAMA_CPP_DIR"]))
    candidates += sorted(BUNDLED.glob("*.tar.gz"), reverse=True)
    for candidate in candidates:
        if candidate.name.endswith(".tar.gz") and candidate.is_file():
            candidate = _unpack(candidate)
        for place in (candidate, candidate / SCRIPT, candidate / "vendor" / "llama.cpp" / SCRIPT):
            if place.name == SCRIPT and place.is_file():
                return place
        if given and candidate == Path(given).expanduser():
            raise LmtuneError(f"--converter {given}: no {SCRIPT} there. " + HOW.format(script=SCRIPT))
    raise LmtuneError(HOW.format(script=SCRIPT))


def _add_n_ctx(model_dir: Path) -> None:
    """The converter reads GPT-2's context length from `n_ctx`, which transformers 5 no longer writes.
    `model_dir` is export's own working copy."""
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    if config.get("model_type") == "gpt2" and "n_ctx" not in config:
        path.write_text(json.dumps({**config, "n_ctx": config["n_positions"]}, indent=2))


def export_gguf(model_dir: Path, folder: Path, converter: Path, out_type: str, name: str) -> dict:
    if out_type not in TYPES:
        raise LmtuneError(f"unknown GGUF type '{out_type}' (choose from {', '.join(TYPES)})")
    target = folder / f"{name}-{out_type}.gguf"
    _add_n_ctx(model_dir)
    gguf_py = converter.parent / "gguf-py"  # the converter's own gguf package, which it is written against
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(gguf_py), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
    }
    result = subprocess.run(
        [sys.executable, str(converter), str(model_dir), "--outfile", str(target), "--outtype", out_type],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not target.exists():
        last = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()][-1:] or ["no output"]
        if "sentencepiece" in last[0]:
            raise LmtuneError("llama.cpp's converter needs sentencepiece: pip install 'lmtune[gguf]'")
        raise LmtuneError(f"llama.cpp's converter failed: {last[0]}")
    return {"gguf_file": target.name, "gguf_type": out_type}
