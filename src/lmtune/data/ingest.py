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
import sys
import warnings
import zlib
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
    _, compression = _suffixes(path)
    if not compression:
        return path.read_bytes()
    try:
        with COMPRESSED[compression](path, "rb") as fh:
            return fh.read()
    except (EOFError, OSError, lzma.LZMAError, zlib.error) as err:  # gzip/bz2/xz each fail their own way
        if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise LmtuneError(f"{path}: corrupt or truncated {compression[1:]} file ({err})") from None


def _utf16_without_bom(raw: bytes) -> str | None:
    """UTF-16 text saved without a byte-order mark: ASCII-range characters leave a NUL in every other
    byte (the odd ones for little-endian, the even ones for big-endian)."""
    head = raw[:8192]
    if len(head) < 4 or len(head) % 2:
        head = head[:-1]
    for encoding, zeros in (("utf-16-le", head[1::2]), ("utf-16-be", head[0::2])):
        if zeros and zeros.count(0) / len(zeros) > 0.9:
            try:
                return raw[: len(raw) - len(raw) % 2].decode(encoding)
            except UnicodeDecodeError:
                return None
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


def read_pdf(path: Path) -> Document:
    # pypdf logs its repairs ("incorrect startxref pointer") as warnings: they would print ahead of our
    # one error line, and a PDF it can read after all needs no remark.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = PdfReader(str(path))
            pages = [page.extract_text() or "" for page in reader.pages]
    except (OSError, PermissionError) as err:
        if isinstance(err, (FileNotFoundError, PermissionError)):
            raise
        raise LmtuneError(f"{path}: cannot read PDF ({err})") from None
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
    for row in rows:
        text = "" if text_column is None else str(row.get(text_column) or "")
        docs.append(Document(text=text, source=str(path), fields=dict(row)))
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
    """A list of records; a column layout ({"text": [...], "label": [...]}, as pandas and HF datasets
    write it); or, failing both, JSON Lines under a .json name."""
    try:
        data = json.loads(content)
    except json.JSONDecodeError:
        return _jsonl_rows(path, content)
    if isinstance(data, dict):
        columns = {k: v for k, v in data.items() if isinstance(v, list)}
        lengths = {len(v) for v in columns.values()}
        if columns and len(columns) == len(data) and len(lengths) == 1:
            return [dict(zip(columns, values)) for values in zip(*columns.values())]
        if all(isinstance(v, dict) for v in data.values()) and data:  # pandas orient="index"/"columns" of dicts
            first = next(iter(data.values()))
            if all(isinstance(v, dict) for v in first.values()):
                return [dict(zip(data, values)) for values in zip(*[list(v.values()) for v in data.values()])]
            return [dict(v) for v in data.values()]
        return [data]  # one record
    if isinstance(data, list):
        bad = next((i for i, row in enumerate(data) if not isinstance(row, dict)), None)
        if bad is not None:
            raise LmtuneError(f"{path}: item {bad} of the JSON list is not an object (expected records like "
                              f"{{\"text\": ...}})")
        return data
    raise LmtuneError(f"{path}: expected JSON records (a list of objects, or columns of equal length)")


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

    ds = load_from_disk(str(path))
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
        return [Document(text=_html_to_text(raw), source=str(path))]
    if raw.startswith(b"%PDF"):
        return [read_pdf(path)]
    return [Document(text=decode_text(raw, str(path)), source=str(path))]


def _supported(path: Path) -> bool:
    kind, _ = _suffixes(path)
    return kind in TEXT_SUFFIXES | TABLE_SUFFIXES | OTHER_SUFFIXES


def read_documents(paths: str | Path | list, text_column: str | None = "text") -> list[Document]:
    """Read every source; a folder contributes its supported files in sorted order."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    docs: list[Document] = []
    for p in map(resolve_data_path, paths):
        if not p.exists():
            raise LmtuneError(f"file not found: {p}")
        if is_hf_dataset(p):
            docs += read_hf_dataset(p, text_column)
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and _supported(f))
            if not files:
                raise LmtuneError(f"{p}: no readable files (.txt .md .pdf .epub .html .csv .jsonl)")
            for f in files:
                docs += read_file(f, text_column)
        else:
            docs += read_file(p, text_column)
    if not any(d.text.strip() for d in docs) and text_column is not None:
        raise LmtuneError(f"no text found in {', '.join(map(str, paths))}")
    return docs
