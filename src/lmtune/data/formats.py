"""One reader per format: PDF, EPUB, HTML, CSV/TSV/JSONL/JSON/Parquet tables and plain text, each
turning one file into `Document`s. Bytes come through files.py (size cap, decompression, encoding)."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pypdf import PdfReader

from lmtune.data.files import (
    FOREIGN_SUFFIXES,
    READABLE,
    TABLE_SUFFIXES,
    check_readable_file,
    decode_text,
    read_bytes,
    suffixes,
)
from lmtune.errors import LmtuneError

# A review or a book chapter in one CSV cell is legitimate: raise the csv module's 128 KiB field limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class Document:
    text: str
    source: str
    pages: list[str] | None = None  # PDF page texts, kept for header/footer detection
    fields: dict[str, Any] = field(default_factory=dict)  # the whole row, for tabular sources


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

    raw = read_bytes(path)  # also book.pdf.gz; and a missing/unreadable file is named like any other
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
    kind, _ = suffixes(path)
    if kind == ".parquet":
        return _parquet_rows(path)
    content = decode_text(read_bytes(path), str(path))
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

    raw = read_bytes(path)
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


def read_file(path: Path, text_column: str | None = "text") -> list[Document]:
    kind, _ = suffixes(path)
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
    raw = read_bytes(path)
    if kind in {".html", ".htm", ".xhtml"}:
        return [Document(text=_html_to_text(decode_text(raw, str(path))), source=str(path))]
    if raw.startswith(b"%PDF"):
        return [read_pdf(path)]
    if raw.startswith(b"{\\rtf"):
        raise LmtuneError(f"{path}: this is an RTF document; save it as plain text or PDF (lmtune reads {READABLE})")
    return [Document(text=decode_text(raw, str(path)), source=str(path))]
