"""Readers: text, Markdown, PDF, EPUB/HTML, CSV/TSV/JSONL/JSON/Parquet (optionally compressed), folders of
them, and saved Hugging Face datasets. Everything becomes a list of `Document`s.

Only regular files are read (a FIFO, device or socket would block or never end), each at most
`max_input_bytes()`, also once decompressed; a folder is walked with each real file and folder read once
(symlink loops are named and skipped), and lmtune's own output folders inside it (they carry its marker)
are skipped, so a run or prepared dataset next to the data is never read back as the user's text."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import logging
import lzma
import os
import stat
import sys
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pypdf import PdfReader

from lmtune.data.hub import hub_rows, is_hub_ref, is_saved_dataset, saved_dataset_rows
from lmtune.errors import LmtuneError
from lmtune.outputs import MARKER
from lmtune.paths import resolve_data_path

# A review or a book chapter in one CSV cell is legitimate: raise the csv module's 128 KiB field limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".text", ".rst"}
TABLE_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".ndjson", ".parquet"}
OTHER_SUFFIXES = {".pdf", ".epub", ".html", ".htm", ".xhtml"}
# Formats people hold text in that lmtune does not read: refused by name, never read as plain text (their
# markup or binary would become training text).
FOREIGN_SUFFIXES = {
    ".rtf": "RTF",
    ".doc": "Word",
    ".docx": "Word",
    ".odt": "OpenDocument",
    ".pages": "Pages",
    ".xls": "Excel",
    ".xlsx": "Excel",
    ".ods": "OpenDocument spreadsheet",
    ".ppt": "PowerPoint",
    ".pptx": "PowerPoint",
    ".zip": "zip archive",
    ".tar": "tar archive",
    ".7z": "7-Zip archive",
    ".rar": "RAR archive",
    ".mobi": "Kindle",
    ".azw3": "Kindle",
    ".djvu": "DjVu",
}
READABLE = ".txt .md .pdf .epub .html .csv .tsv .jsonl .json .parquet (also .gz/.bz2/.xz), folders of them"
MAX_INPUT_MB = 4096  # one file, as read (decompressed); LMTUNE_MAX_INPUT_MB changes it
log = logging.getLogger(__name__)

COMPRESSED = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}


@dataclass
class Document:
    text: str
    source: str
    pages: list[str] | None = None  # PDF page texts, kept for header/footer detection
    fields: dict[str, Any] = field(default_factory=dict)  # the whole row, for tabular sources


def _suffixes(path: Path) -> tuple[str, str | None]:
    """('.csv', '.bz2') for reviews.csv.bz2; ('.txt', None) for book.txt."""
    suffix = path.suffix.lower()
    if suffix in COMPRESSED:
        return Path(path.stem).suffix.lower(), suffix
    return suffix, None


def max_input_bytes() -> int:
    value = os.environ.get("LMTUNE_MAX_INPUT_MB", "")
    return int(float(value) * 2**20) if value.replace(".", "", 1).isdigit() else MAX_INPUT_MB * 2**20


_NOT_REGULAR = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_kind(mode: int) -> str | None:
    """What a non-regular, non-folder file is ('a FIFO (named pipe)', ...), or None."""
    return next((name for test, name in _NOT_REGULAR if test(mode)), None)


def check_readable_file(path: Path) -> os.stat_result:
    """A regular file within the size cap, else one line saying what it is."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise LmtuneError(f"file not found: {path}") from None
    except PermissionError:
        raise LmtuneError(f"{path}: permission denied (cannot read the file)") from None
    except OSError as err:  # a symlink loop (ELOOP), a name too long, ...
        raise LmtuneError(f"{path}: cannot read the file ({err.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise LmtuneError(f"{path} is a folder, not a file")
    kind = special_kind(info.st_mode)
    if kind is not None:
        raise LmtuneError(f"{path} is {kind}, not a regular file: lmtune reads files ({READABLE})")
    if info.st_size > max_input_bytes():
        raise _too_large(path, f"is {info.st_size / 2**20:,.0f} MB")
    return info


def _too_large(path: Path, what: str) -> LmtuneError:
    return LmtuneError(
        f"{path} {what}, more than lmtune reads from one file ({max_input_bytes() / 2**20:,.0f} MB); "
        "split it into several files, or raise the cap with LMTUNE_MAX_INPUT_MB"
    )


def _read_capped(fh, path: Path) -> bytes:
    """All of a decompressing stream, stopping at the cap (a small archive can expand without end)."""
    limit, chunks, size = max_input_bytes(), [], 0
    while chunk := fh.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise _too_large(path, "decompresses to more than that")
        chunks.append(chunk)
    return b"".join(chunks)


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed; every way reading can fail becomes one line naming the file."""
    _, compression = _suffixes(path)
    info = check_readable_file(path)
    try:
        if not compression:
            return path.read_bytes()
        if info.st_size == 0:  # empty, not corrupt: reported as "no text" like any empty file
            return b""
        with COMPRESSED[compression](path, "rb") as fh:
            return _read_capped(fh, path)
    except PermissionError:
        raise LmtuneError(f"{path}: permission denied (cannot read the file)") from None
    except IsADirectoryError:
        raise LmtuneError(f"{path} is a folder, not a file") from None
    except FileNotFoundError:
        raise LmtuneError(f"file not found: {path}") from None
    except (EOFError, OSError, lzma.LZMAError, zlib.error) as err:  # gzip/bz2/xz each fail their own way
        if not compression:
            raise LmtuneError(f"{path}: cannot read the file ({getattr(err, 'strerror', None) or err})") from None
        raise LmtuneError(f"{path}: corrupt or truncated {compression[1:]} file ({err})") from None


def _utf16_without_bom(raw: bytes) -> str | None:
    """UTF-16 text saved without a byte-order mark: ASCII-range characters leave a NUL in every other
    byte (the odd ones for little-endian, the even ones for big-endian). None unless it decodes to
    printable text (arrays of small 16-bit numbers have the same NUL pattern)."""
    head = raw[: min(len(raw), 8192) // 2 * 2]
    for encoding, zeros in (("utf-16-le", head[1::2]), ("utf-16-be", head[0::2])):
        if zeros and zeros.count(0) / len(zeros) > 0.9:
            try:
                text = raw[: len(raw) // 2 * 2].decode(encoding)
            except UnicodeDecodeError:
                return None
            sample = text[:4096]
            printable = sum(c.isprintable() or c in "\n\r\t\f" for c in sample)
            return text if printable >= 0.95 * len(sample) else None
    return None


def decode_text(raw: bytes, source: str) -> str:
    if b"\x00" in raw[:8192] and not raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = _utf16_without_bom(raw)
        if text is None:
            raise LmtuneError(f"{source} looks like a binary file, not text")
        return text
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = list(from_bytes(raw))
    if not matches:
        raise LmtuneError(f"{source}: cannot tell the text encoding (is it a binary file?)")
    best = min(matches, key=lambda m: m.chaos)
    # Short Western-European texts fit several code pages equally well; Windows-1252 is by far the
    # likeliest of them, so prefer it when it reads (almost) as cleanly as the best guess.
    western = [m for m in matches if m.encoding == "cp1252" and m.chaos <= best.chaos + 0.2]
    return str(western[0] if western else best)


@contextmanager
def _quiet_pypdf():
    """pypdf logs its repairs ("incorrect startxref pointer") and warns: that would print ahead of our one
    error line, and a PDF it can read after all needs no remark. Its logger is restored afterwards."""
    logger = logging.getLogger("pypdf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def read_pdf(path: Path) -> Document:
    from pypdf.errors import FileNotDecryptedError

    raw = _read_bytes(path)  # also book.pdf.gz; and a missing/unreadable file is named like any other
    try:
        with _quiet_pypdf():
            reader = PdfReader(io.BytesIO(raw))
            pages = [page.extract_text() or "" for page in reader.pages]
    except FileNotDecryptedError:
        raise LmtuneError(
            f"{path}: the PDF is password-protected; save a decrypted copy "
            "(e.g. qpdf --decrypt --password=... in.pdf out.pdf)"
        ) from None
    except Exception as err:  # pypdf raises many types for broken files (PdfReadError, KeyError, ...)
        raise LmtuneError(
            f"{path}: cannot read PDF, the file is damaged or not a PDF "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    if not any(p.strip() for p in pages):
        raise LmtuneError(f"{path}: the PDF has no text layer (scanned images?); run OCR on it first")
    return Document(text="\n".join(pages), source=str(path), pages=pages)


def _html_to_text(markup: bytes | str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "html.parser")
    for tag in soup(["script", "style", "head"]):
        tag.decompose()
    return soup.get_text("\n")


def read_epub(path: Path) -> list[Document]:
    import ebooklib
    from ebooklib import epub

    check_readable_file(path)
    try:
        book = epub.read_epub(str(path), options={"ignore_ncx": True})
    except Exception as err:  # ebooklib raises bare exceptions for broken archives
        raise LmtuneError(f"{path}: cannot read EPUB ({err})") from None
    chapters = [_html_to_text(item.get_content()) for item in book.get_items_of_type(ebooklib.ITEM_DOCUMENT)]
    return [Document(text=t, source=f"{path}#{i}") for i, t in enumerate(chapters) if t.strip()]


def table_rows(path: Path) -> list[dict]:
    """The records of a CSV/TSV/JSONL/JSON/Parquet file, each a dict of its columns."""
    kind, _ = _suffixes(path)
    if kind == ".parquet":
        return _parquet_rows(path)
    content = decode_text(_read_bytes(path), str(path))
    if kind == ".json":
        return _json_rows(path, content)
    if kind in {".jsonl", ".ndjson"}:
        return _jsonl_rows(path, content)
    reader = csv.DictReader(io.StringIO(content), delimiter="\t" if kind == ".tsv" else ",")
    try:
        return list(reader)
    except csv.Error as err:
        raise LmtuneError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None


def read_table(path: Path, text_column: str | None) -> list[Document]:
    """Table rows as documents; `text_column` must exist when given."""
    rows = table_rows(path)
    if rows and text_column is not None and text_column not in rows[0]:
        raise LmtuneError(
            f"{path}: no column '{text_column}' (columns: {', '.join(map(str, rows[0].keys()))}); set data.text_column"
        )
    docs = []
    for n, row in enumerate(rows, 1):
        value = None if text_column is None else row.get(text_column)
        if isinstance(value, (list, dict)):  # str() would train on Python's repr of it
            kind = "list" if isinstance(value, list) else "object"
            raise LmtuneError(
                f"{path}: record {n}: '{text_column}' is a JSON {kind}, not text; set data.text_column to a text field"
            )
        docs.append(Document(text="" if value is None else str(value), source=str(path), fields=dict(row)))
    return docs


def _parquet_rows(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = _read_bytes(path)
    try:
        return pq.read_table(pa.BufferReader(raw)).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as err:
        raise LmtuneError(
            f"{path}: cannot read Parquet, the file is damaged or not Parquet "
            f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from None


def _jsonl_rows(path: Path, content: str) -> list[dict]:
    rows = []
    for n, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise LmtuneError(f"{path}:{n}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise LmtuneError(f'{path}:{n}: not a JSON object (each line must be one record: {{"text": ...}})')
        rows.append(row)
    return rows


def _json_rows(path: Path, content: str) -> list[dict]:
    """Records from a .json file, in any layout pandas or HF datasets write: a list of records
    (orient="records"); columns of equal length ({"text": [...], "label": [...]}); {column: {row: value}}
    (orient="columns") or {row: {column: value}} (orient="index"); {"columns", "data"} (orient="split");
    one key holding the records ({"data": [...]}); a single record; or, failing all, JSON Lines."""
    try:
        data = json.loads(content)
    except json.JSONDecodeError:
        return _jsonl_rows(path, content)
    if isinstance(data, dict) and data:
        values = list(data.values())
        if (
            isinstance(data.get("columns"), list)
            and isinstance(data.get("data"), list)
            and all(isinstance(row, list) for row in data["data"])
        ):  # orient="split"
            return [dict(zip(data["columns"], row)) for row in data["data"]]
        if (
            len(data) == 1 and isinstance(values[0], list) and values[0] and all(isinstance(v, dict) for v in values[0])
        ):  # {"data": [records]}
            data = values[0]
        elif all(isinstance(v, list) for v in values):  # columns
            lengths = {k: len(v) for k, v in data.items()}
            if len(set(lengths.values())) > 1:
                raise LmtuneError(
                    f"{path}: the columns have different lengths ({', '.join(f'{k}: {n}' for k, n in lengths.items())})"
                )
            return [dict(zip(data, row)) for row in zip(*values)]
        elif all(isinstance(v, dict) for v in values):
            inner = {tuple(v) for v in values}
            # Row labels are pandas' index ("0", "1", ...): on the inside for orient="columns".
            if len(inner) == 1 and all(k.isdigit() for k in next(iter(inner))) and not all(k.isdigit() for k in data):
                return [dict(zip(data, row)) for row in zip(*(v.values() for v in values))]
            return values
        else:
            return [data]  # one record
    if isinstance(data, list):
        bad = next((i for i, row in enumerate(data) if not isinstance(row, dict)), None)
        if bad is not None:
            raise LmtuneError(
                f'{path}: item {bad} of the JSON list is not an object (expected records like {{"text": ...}})'
            )
        return data
    raise LmtuneError(f"{path}: expected JSON records (a list of objects, or columns of equal length)")


def is_plain_text(path: str | Path) -> bool:
    """.txt/.md/... (also compressed): an `--input` file of this kind holds one input per line."""
    return _suffixes(Path(path))[0] in TEXT_SUFFIXES


def read_lines(path: str | Path) -> list[str]:
    """A text file's lines, with the same encoding detection as everything else (`--input` files)."""
    path = resolve_data_path(path)
    if not path.exists():
        raise LmtuneError(f"file not found: {path}")
    if path.is_dir():
        raise LmtuneError(f"{path} is a folder; give a text file with one input per line")
    return decode_text(_read_bytes(path), str(path)).splitlines()


def read_file(path: Path, text_column: str | None = "text") -> list[Document]:
    kind, _ = _suffixes(path)
    if kind in FOREIGN_SUFFIXES:
        raise LmtuneError(
            f"{path}: lmtune does not read {FOREIGN_SUFFIXES[kind]} files; save it as plain text, "
            f"PDF or EPUB (lmtune reads {READABLE})"
        )
    if kind == ".pdf":
        return [read_pdf(path)]
    if kind == ".epub":
        return read_epub(path)
    if kind in TABLE_SUFFIXES:
        return read_table(path, text_column)
    raw = _read_bytes(path)
    if kind in {".html", ".htm", ".xhtml"}:
        return [Document(text=_html_to_text(decode_text(raw, str(path))), source=str(path))]
    if raw.startswith(b"%PDF"):
        return [read_pdf(path)]
    if raw.startswith(b"{\\rtf"):
        raise LmtuneError(f"{path}: this is an RTF document; save it as plain text or PDF (lmtune reads {READABLE})")
    return [Document(text=decode_text(raw, str(path)), source=str(path))]


def _supported(path: Path) -> bool:
    kind, _ = _suffixes(path)
    return kind in TEXT_SUFFIXES | TABLE_SUFFIXES | OTHER_SUFFIXES


@dataclass
class FolderListing:
    """A folder's readable files, and what the walk left out (each named once in a warning)."""

    files: list[Path] = field(default_factory=list)
    loops: list[str] = field(default_factory=list)  # "link -> target" of symlinks back into the walk
    repeats: int = 0  # more paths to a file or folder already read (symlinks)
    special: list[str] = field(default_factory=list)  # FIFOs, devices, sockets
    outputs: list[Path] = field(default_factory=list)  # lmtune's own output folders

    def warn(self) -> None:
        notes = []
        if self.outputs:
            notes.append(f"{len(self.outputs)} lmtune output folder(s) ({_some(self.outputs)})")
        if self.loops:
            notes.append(f"{len(self.loops)} symlink loop(s) ({_some(self.loops)})")
        if self.repeats:
            notes.append(f"{self.repeats} more path(s) to files or folders already read (symlinks)")
        if self.special:
            notes.append(f"{len(self.special)} file(s) that are not regular files ({_some(self.special)})")
        if notes:
            log.warning("warning: skipped %s", "; ".join(notes))


def _some(items: list, shown: int = 3) -> str:
    return ", ".join(map(str, items[:shown])) + (", ..." if len(items) > shown else "")


def list_folder(folder: Path) -> FolderListing:
    """The supported files under `folder`, sorted. Symlinks are followed, but each real folder and file is
    read once, and a link back to a folder that contains it (a loop) is named and skipped. A subfolder we
    may not open is named (os.walk would skip it without a word); lmtune's own output folders, FIFOs,
    devices and sockets are skipped and counted."""

    def fail(err: OSError) -> None:
        if isinstance(err, PermissionError):
            raise LmtuneError(f"{err.filename}: permission denied (cannot list the folder)")

    listing = FolderListing()
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    for root, dirs, names in os.walk(folder, onerror=fail, followlinks=True):
        dirs.sort()  # a fixed walk: which of two paths to one file is read does not depend on the disk
        here = Path(root)
        info = here.stat()
        if (info.st_dev, info.st_ino) in seen_dirs:
            dirs[:] = []
            listing.repeats += 1
            continue
        seen_dirs.add((info.st_dev, info.st_ino))
        if here != folder and MARKER in names:
            dirs[:] = []
            listing.outputs.append(here)
            continue
        real = here.resolve()
        for name in list(dirs):
            link = here / name
            if link.is_symlink():
                target = link.resolve()
                if target == real or target in real.parents:
                    dirs.remove(name)
                    listing.loops.append(f"{link} -> {target}")
        for name in sorted(names):
            path = here / name
            if not _supported(path):
                continue
            try:
                file_info = path.stat()
            except OSError:  # a dangling link, a loop of links
                listing.special.append(str(path))
                continue
            if special_kind(file_info.st_mode) is not None:
                listing.special.append(str(path))
            elif (file_info.st_dev, file_info.st_ino) in seen_files:
                listing.repeats += 1
            elif stat.S_ISREG(file_info.st_mode):
                seen_files.add((file_info.st_dev, file_info.st_ino))
                listing.files.append(path)
    listing.files.sort()
    return listing


def _check_not_output(path: Path) -> None:
    """A folder lmtune wrote (a run, a prepared dataset, an export) given as data: say what it is."""
    if not (path / MARKER).is_file():
        return
    from lmtune.outputs import marker_kind

    kind = marker_kind(path) or "output"
    if kind == "prepared" and not (path / "prepare.json").exists():
        raise LmtuneError(
            f"{path} is an unfinished lmtune prepare output (it was interrupted, or failed); run lmtune prepare again"
        )
    if kind != "prepared":
        hint = " (its prepared data is its data/ folder)" if kind == "run" else ""
        raise LmtuneError(f"{path} is an lmtune {kind} folder, not data{hint}; give the files to read")


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
            _check_not_output(p)
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
