"""Cleaning steps. Each is a small function; `clean_documents` runs the enabled ones in a fixed order
and counts what each removed, so the user can see what happened to their text."""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import replace

from lmtune.config import CleanConfig
from lmtune.data.ingest import Document
from lmtune.errors import LmtuneError

PAGE_NUMBER = re.compile(r"^\s*(?:page\s*)?(?:\d{1,4}|[ivxlcdm]{1,7})(?:\s*(?:of|/)\s*\d{1,4})?\s*$", re.I)
HYPHEN_BREAK = re.compile(r"(\w)-[ \t]*\n[ \t]*(\w)")
SPACES = re.compile(r"[^\S\n]+")
BLANK_LINES = re.compile(r"\n\s*\n(?:\s*\n)+")


RUNNING_NUMBER = re.compile(r"^\s*\d+\b|\b\d+\s*$")  # "17 | My Book", "Chapter 2 - 17"


def _edge_keys(line: str) -> set[str]:
    """A line's identity for header/footer matching: itself, and (when it starts or ends with a number,
    as running headers with page numbers do) its digit-free form."""
    exact = line.strip().lower()
    keys = {exact}
    if RUNNING_NUMBER.search(exact):
        keys.add(re.sub(r"\d+", "#", exact))
    return keys


def strip_pdf_page_furniture(pages: list[str], edge_lines: int = 2) -> tuple[list[str], int]:
    """Drop page-number lines and running headers/footers: lines near a page's top or bottom that recur
    on at least half of the pages (3 pages at least). Returns the pages and how many lines went."""
    split = [p.splitlines() for p in pages]
    counts: Counter[str] = Counter()
    for lines in split:
        edges = set()
        for line in lines[:edge_lines] + lines[-edge_lines:]:
            if line.strip():
                edges |= _edge_keys(line)
        counts.update(edges)
    threshold = max(3, (len(pages) + 1) // 2)
    repeated = {key for key, n in counts.items() if n >= threshold}
    removed = 0
    cleaned = []
    for lines in split:
        n = len(lines)
        keep = []
        for i, line in enumerate(lines):
            near_edge = i < edge_lines or i >= n - edge_lines
            if near_edge and line.strip() and (PAGE_NUMBER.match(line) or _edge_keys(line) & repeated):
                removed += 1
            else:
                keep.append(line)
        cleaned.append("\n".join(keep))
    return cleaned, removed


def remove_patterns(text: str, patterns: list[re.Pattern], counts: Counter) -> str:
    for pattern in patterns:
        text, n = pattern.subn("", text)
        counts[f"regex {pattern.pattern!r}"] += n
    return text


def dehyphenate(text: str) -> tuple[str, int]:
    return HYPHEN_BREAK.subn(r"\1\2", text)


def normalize_whitespace(text: str) -> str:
    text = SPACES.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return BLANK_LINES.sub("\n\n", text).strip()


def apply_delimiters(text: str, delimiters: dict[str, str], specials: dict[str, str]) -> list[str]:
    """Replace markers; markers mapped to "doc" split the text into several documents."""
    splitters = [marker for marker, target in delimiters.items() if target == "doc"]
    for marker, target in delimiters.items():
        if target != "doc":
            text = text.replace(marker, specials.get(target, target))
    parts = [text]
    for marker in splitters:
        parts = [piece for part in parts for piece in part.split(marker)]
    return parts


def clean_documents(
    docs: list[Document], config: CleanConfig, specials: dict[str, str] | None = None
) -> tuple[list[Document], dict[str, int]]:
    """Run the enabled cleaning steps. `specials` maps "eos"/"bos" to the tokenizer's own tokens."""
    specials = specials or {}
    try:
        patterns = [re.compile(p, re.DOTALL) for p in config.regex_remove]
    except re.error as err:
        raise LmtuneError(f"clean.regex_remove: invalid pattern ({err})") from None
    counts: Counter[str] = Counter()
    chars_in = sum(len(d.text) for d in docs)
    out: list[Document] = []
    for doc in docs:
        text = doc.text
        if config.pdf_headers and doc.pages and len(doc.pages) > 1:
            pages, removed = strip_pdf_page_furniture(doc.pages)
            counts["pdf header/footer/page-number lines"] += removed
            text = "\n".join(pages)
        text = remove_patterns(text, patterns, counts)
        if config.dehyphenate:
            text, n = dehyphenate(text)
            counts["de-hyphenated words"] += n
        if config.normalize_unicode:
            normalized = unicodedata.normalize("NFKC", text)
            counts["unicode-normalized documents"] += normalized != text
            text = normalized
        if config.normalize_whitespace:
            before = len(text)
            text = normalize_whitespace(text)
            counts["whitespace characters removed"] += before - len(text)
        pieces = apply_delimiters(text, config.delimiters, specials) if config.delimiters else [text]
        for piece in pieces:
            if config.normalize_whitespace and len(pieces) > 1:
                piece = piece.strip()
            if len(piece) < config.min_chars:
                counts["empty/short documents dropped"] += 1
                continue
            out.append(replace(doc, text=piece, pages=None))
    if config.dedup:
        seen: set[str] = set()
        unique = []
        for doc in out:
            if doc.text in seen:
                counts["duplicate documents dropped"] += 1
            else:
                seen.add(doc.text)
                unique.append(doc)
        out = unique
    report = {"documents in": len(docs), "documents out": len(out), "characters in": chars_in,
              "characters out": sum(len(d.text) for d in out)}
    report.update({k: v for k, v in counts.items()})
    return out, report
