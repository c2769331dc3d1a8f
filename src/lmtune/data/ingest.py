"""Readers: text, Markdown, PDF, EPUB/HTML, CSV/TSV/JSONL (optionally compressed), folders of them,
and saved Hugging Face datasets. Everything becomes a list of `Document`s."""
from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import logging
import lzma
import os
import sys
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pypdf import PdfReader

from lmtune.errors import LmtuneError
from lmtune.paths import resolve_data_path

# A review or a book chapter in one CSV cell is legitimate: raise the csv module's 128 KiB field limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".text", ".rst"}
TABLE_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".ndjson"}
OTHER_SUFFIXES = {".pdf", ".epub", ".html", ".htm", ".xhtml"}
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


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed; every way reading can fail becomes one line naming the file."""
    _, compression = _suffixes(path)
    try:
        if not compression:
            return path.read_bytes()
        if path.stat().st_size == 0:  # empty, not corrupt: reported as "no text" like any empty file
            return b""
        with COMPRESSED[compression](path, "rb") as fh:
            return fh.read()
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
        raise LmtuneError(f"{path}: the PDF is password-protected; save a decrypted copy "
                          "(e.g. qpdf --decrypt --password=... in.pdf out.pdf)") from None
    except Exception as err:  # pypdf raises many types for broken files (PdfReadError, KeyError, ...)
        raise LmtuneError(f"{path}: cannot read PDF, the file is damaged or not a PDF "
                          f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
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

    try:
        book = epub.read_epub(str(path), options={"ignore_ncx": True})
    except Exception as err:  # ebooklib raises bare exceptions for broken archives
        raise LmtuneError(f"{path}: cannot read EPUB ({err})") from None
    chapters = [_html_to_text(item.get_content()) for item in book.get_items_of_type(ebooklib.ITEM_DOCUMENT)]
    return [Document(text=t, source=f"{path}#{i}") for i, t in enumerate(chapters) if t.strip()]


def read_table(path: Path, text_column: str | None) -> list[Document]:
    """CSV/TSV/JSONL rows; `text_column` must exist when given."""
    kind, _ = _suffixes(path)
    content = decode_text(_read_bytes(path), str(path))
    if kind == ".json":
        rows = _json_rows(path, content)
    elif kind in {".jsonl", ".ndjson"}:
        rows = _jsonl_rows(path, content)
    else:
        reader = csv.DictReader(io.StringIO(content), delimiter="\t" if kind == ".tsv" else ",")
        try:
            rows = list(reader)
        except csv.Error as err:
            raise LmtuneError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None
    if rows and text_column is not None and text_column not in rows[0]:
        raise LmtuneError(
            f"{path}: no column '{text_column}' (columns: {', '.join(map(str, rows[0].keys()))}); "
            "set data.text_column"
        )
    docs = []
    for n, row in enumerate(rows, 1):
        value = None if text_column is None else row.get(text_column)
        if isinstance(value, (list, dict)):  # str() would train on Python's repr of it
            kind = "list" if isinstance(value, list) else "object"
            raise LmtuneError(f"{path}: record {n}: '{text_column}' is a JSON {kind}, not text; "
                              "set data.text_column to a text field")
        docs.append(Document(text="" if value is None else str(value), source=str(path), fields=dict(row)))
    return docs


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
            raise LmtuneError(f"{path}:{n}: not a JSON object (each line must be one record: {{\"text\": ...}})")
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
        if isinstance(data.get("columns"), list) and isinstance(data.get("data"), list) \
                and all(isinstance(row, list) for row in data["data"]):  # orient="split"
            return [dict(zip(data["columns"], row)) for row in data["data"]]
        if len(data) == 1 and isinstance(values[0], list) and values[0] \
                and all(isinstance(v, dict) for v in values[0]):  # {"data": [records]}
            data = values[0]
        elif all(isinstance(v, list) for v in values):  # columns
            lengths = {k: len(v) for k, v in data.items()}
            if len(set(lengths.values())) > 1:
                raise LmtuneError(f"{path}: the columns have different lengths "
                                  f"({', '.join(f'{k}: {n}' for k, n in lengths.items())})")
            return [dict(zip(data, row)) for row in zip(*values)]
        elif all(isinstance(v, dict) for v in values):
            inner = {tuple(v) for v in values}
            # Row labels are pandas' index ("0", "1", ...): on the inside for orient="columns".
            if len(inner) == 1 and all(k.isdigit() for k in next(iter(inner))) \
                    and not all(k.isdigit() for k in data):
                return [dict(zip(data, row)) for row in zip(*(v.values() for v in values))]
            return values
        else:
            return [data]  # one record
    if isinstance(data, list):
        bad = next((i for i, row in enumerate(data) if not isinstance(row, dict)), None)
        if bad is not None:
            raise LmtuneError(f"{path}: item {bad} of the JSON list is not an object (expected records like "
                              f"{{\"text\": ...}})")
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


def read_hf_dataset(path: Path, text_column: str | None, split: str = "train") -> list[Document]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as err:  # half-written or foreign folders: FileNotFoundError, ArrowInvalid, JSON errors
        first = str(err).splitlines()[0] if str(err) else ""
        raise LmtuneError(f"{path}: cannot read the saved dataset ({type(err).__name__}: {first})") from None
    if isinstance(ds, DatasetDict):
        if split not in ds:
            split = next(iter(ds))
        ds = ds[split]
    if text_column is not None and text_column not in ds.column_names:
        raise LmtuneError(f"{path}: no column '{text_column}' (columns: {', '.join(ds.column_names)})")
    return [
        Document(text="" if text_column is None else str(row[text_column] or ""), source=str(path), fields=row)
        for row in ds
    ]


def is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists())


def read_file(path: Path, text_column: str | None = "text") -> list[Document]:
    kind, _ = _suffixes(path)
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
    return [Document(text=decode_text(raw, str(path)), source=str(path))]


def _supported(path: Path) -> bool:
    kind, _ = _suffixes(path)
    return kind in TEXT_SUFFIXES | TABLE_SUFFIXES | OTHER_SUFFIXES


def _folder_files(folder: Path) -> list[Path]:
    """The supported files under `folder`, sorted. A subfolder we may not open is named (Path.rglob
    would skip it without a word)."""

    def fail(err: OSError) -> None:
        if isinstance(err, PermissionError):
            raise LmtuneError(f"{err.filename}: permission denied (cannot list the folder)")

    found = []
    for root, _, names in os.walk(folder, onerror=fail, followlinks=True):
        found += [Path(root) / name for name in names if _supported(Path(name))]
    return sorted(f for f in found if f.is_file())


def read_documents(paths: str | Path | list, text_column: str | None = "text") -> list[Document]:
    """Read every source; a folder contributes its supported files in sorted order."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    docs: list[Document] = []
    empty: list[Path] = []  # files in folders with no text: noted, not fatal (unless nothing has text)
    for p in map(resolve_data_path, paths):
        if not p.exists():
            raise LmtuneError(f"file not found: {p}")
        if is_hf_dataset(p):
            docs += read_hf_dataset(p, text_column)
        elif p.is_dir():
            files = _folder_files(p)
            if not files:
                raise LmtuneError(f"{p}: no readable files (.txt .md .pdf .epub .html .csv .jsonl)")
            for f in files:
                found = read_file(f, text_column)
                if not any(d.text.strip() for d in found):
                    empty.append(f)
                docs += found
        else:
            docs += read_file(p, text_column)
    if text_column is None:
        return docs
    if not any(d.text.strip() for d in docs):
        raise LmtuneError(f"no text found in {', '.join(map(str, paths))}"
                          + (f" ({len(empty)} files, all empty)" if len(empty) > 1 else ""))
    if empty:
        log.warning("warning: %d file(s) without text skipped: %s%s", len(empty),
                    ", ".join(map(str, empty[:3])), ", ..." if len(empty) > 3 else "")
    return docs
