"""Reading the user's sources: files, folders of them, saved Hugging Face datasets and `hf:NAME`, in order,
as a stream of `Document`s (formats.py reads each kind of file; files.py keeps the reading safe).

Only regular files are read (a FIFO, device or socket would block or never end), each at most
`max_input_bytes()`, also once decompressed; a folder is walked with each real file and folder read once
(symlink loops are named and skipped), and lmtune's own output folders inside it (they carry its marker)
are skipped, so a run or prepared dataset next to the data is never read back as the user's text."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from lmtune.data.files import READABLE, TEXT_SUFFIXES, check_not_output, decode_text, list_folder, read_bytes, suffixes
from lmtune.data.formats import Document, read_file
from lmtune.data.hub import hub_rows, is_hub_ref, is_saved_dataset, saved_dataset_rows
from lmtune.errors import LmtuneError
from lmtune.paths import resolve_data_path

__all__ = ["Document", "input_bytes", "is_plain_text", "iter_documents", "read_documents", "read_lines"]
log = logging.getLogger(__name__)


def is_plain_text(path: str | Path) -> bool:
    """.txt/.md/... (also compressed): an `--input` file of this kind holds one input per line."""
    return suffixes(Path(path))[0] in TEXT_SUFFIXES


def read_lines(path: str | Path) -> list[str]:
    """A text file's lines, with the same encoding detection as everything else (`--input` files)."""
    path = resolve_data_path(path)
    if not path.exists():
        raise LmtuneError(f"file not found: {path}")
    if path.is_dir():
        raise LmtuneError(f"{path} is a folder; give a text file with one input per line")
    return decode_text(read_bytes(path), str(path)).splitlines()


def _rows_as_documents(rows, text_column: str | None, source: str, progress) -> Iterator[Document]:
    for row in rows:
        text = "" if text_column is None else str(row[text_column] or "")
        if progress is not None:
            progress(len(text))
        yield Document(text=text, source=source, fields=row)


def input_bytes(paths: str | Path | list) -> int | None:
    """The size of the files `paths` name (folders walked as when they are read), for a progress bar;
    None when a source has no size known beforehand (a dataset)."""
    total = 0
    for ref in [paths] if isinstance(paths, (str, Path)) else paths:
        if is_hub_ref(ref):
            return None
        p = resolve_data_path(ref)
        if is_saved_dataset(p):
            return None
        files = list_folder(p).files if p.is_dir() else [p]
        total += sum(f.stat().st_size for f in files if f.is_file())
    return total


def iter_documents(
    paths: str | Path | list,
    text_column: str | None = "text",
    streaming: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Document]:
    """Every source's documents in order, one file at a time: a folder contributes its supported files in
    sorted order, a saved dataset folder or `hf:NAME` (data/hub.py; `streaming` for the Hub) its rows.
    `progress(n)` hears the bytes of each file read (of each row's text, for datasets). Memory holds one
    file's documents, never the corpus."""
    paths = [paths] if isinstance(paths, (str, Path)) else paths
    empty: list[Path] = []  # files in folders with no text: noted, not fatal (unless nothing has text)
    has_text = False
    for doc in _documents(paths, text_column, streaming, progress, empty):
        has_text = has_text or bool(doc.text.strip())
        yield doc
    if text_column is None:
        return
    if not has_text:
        raise LmtuneError(
            f"no text found in {', '.join(map(str, paths))}"
            + (f" ({len(empty)} files, all empty)" if len(empty) > 1 else "")
        )
    if empty:
        log.warning(
            "warning: %d file(s) without text skipped: %s%s",
            len(empty),
            ", ".join(map(str, empty[:3])),
            ", ..." if len(empty) > 3 else "",
        )


def _documents(
    paths: list, text_column: str | None, streaming: bool, progress, empty: list[Path]
) -> Iterator[Document]:
    for ref in paths:
        if is_hub_ref(ref):
            yield from _rows_as_documents(hub_rows(ref, text_column, streaming), text_column, ref, progress)
            continue
        p = resolve_data_path(ref)
        if not p.exists():
            raise LmtuneError(f"file not found: {p}")
        if p.is_dir():
            check_not_output(p)
        if is_saved_dataset(p):
            yield from _rows_as_documents(saved_dataset_rows(p, text_column), text_column, str(p), progress)
            continue
        files = [p]
        if p.is_dir():
            listing = list_folder(p)
            listing.warn()
            if not listing.files:
                raise LmtuneError(f"{p}: no readable files ({READABLE})")
            files = listing.files
        for f in files:
            found = read_file(f, text_column)
            if p.is_dir() and not any(d.text.strip() for d in found):
                empty.append(f)
            if progress is not None:
                progress(f.stat().st_size)
            yield from found


def read_documents(
    paths: str | Path | list, text_column: str | None = "text", streaming: bool = False
) -> list[Document]:
    """Every source's documents, as a list (iter_documents reads them one file at a time)."""
    return list(iter_documents(paths, text_column, streaming))
