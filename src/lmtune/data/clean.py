"""Cleaning steps. Each is a small function; `clean_documents` runs the enabled ones in a fixed order
and counts what each removed, so the user can see what happened to their text."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import replace

from tqdm.auto import tqdm

from lmtune.config import CleanConfig
from lmtune.data.ingest import Document
from lmtune.errors import LmtuneError

PAGE_NUMBER = re.compile(
    r"^\s*[-–—(\[]?\s*(?:page\s*)?(?:\d{1,4}|[ivxlcdm]{1,7})(?:\s*(?:of|/)\s*\d{1,4})?"
    r"\s*[-–—)\]]?\s*$",
    re.I,
)  # "12", "- 12 -", "Page 3 of 40", "xiv"
HYPHEN_BREAK = re.compile(r"(\w)-[ \t]*\n[ \t]*(\w)")  # what dehyphenate removes: "exam-\nple" -> "example"
# The same breaks, found from their hyphen (a literal first character lets `re` skip ahead instead of trying
# \w at every position): the hyphen and the line break around it, without the letters on either side.
HYPHEN_AT = re.compile(r"-(?<=\w-)[ \t]*\n[ \t]*(?=\w)")
SPACES = re.compile(r"[^\S\n]+")
# What `\s` (and str.split(), str.strip()) count as whitespace, besides " " and "\n"; the ASCII ones apart.
ASCII_SPACES = "\t\x0b\x0c\r\x1c\x1d\x1e\x1f"
OTHER_SPACES = (
    ASCII_SPACES + "\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
BLANK_LINES = re.compile(r"\n\s*\n(?:\s*\n)+")
PROGRESS_CHARS = 20_000_000  # a progress bar for corpora this large
NON_SPACE_PAIR = re.compile(r"\S(?=\S)")  # a safe place to cut a long text


# "17 | My Book", "Chapter 2 - 17", "- 17 -" (not "... in 1999.": a sentence ends with a full stop)
RUNNING_NUMBER = re.compile(r"^[\s\-–—|(\[]*\d+\b|\b\d+[\s\-–—|)\]]*$")
EDGE_NUMBER = re.compile(r"\d+")
TOC_LINE = re.compile(r"^.{2,}?(?:\s*\.){4,}\s*\d+\s*$|^.{2,}?\s\.{3,}\s*[ivxlcdm\d]+\s*$", re.I)  # "Intro ..... 3"


def _masked(line: str) -> str:
    return EDGE_NUMBER.sub("#", line.strip().lower())


def _furniture_keys(line: str, page: int) -> set[tuple]:
    """What makes an edge line a running header/footer: its text (digits masked when it starts or ends
    with a number) on many pages, or many pages of one parity; and, for a line that starts or ends with a
    number, that number minus the
    page's index (a printed page number: "Chapter 4: Function reference 9", "10", "11", ... on
    consecutive pages), which recurs even when the text changes from chapter to chapter."""
    match = RUNNING_NUMBER.search(line.strip())
    text = _masked(line) if match else line.strip().lower()  # numbers inside a body line are kept apart
    keys = {("text", page % 2, text), ("text", "all", text)}
    if match:
        keys.add(("page number", _masked(line), int(re.sub(r"\D", "", match.group())) - page))
    return keys


def strip_pdf_page_furniture(pages: list[str], edge_lines: int = 2) -> tuple[list[str], int]:
    """Drop page-number lines and running headers/footers among the top and bottom `edge_lines` lines of
    each page. Odd and even pages are counted apart (books alternate their headers); a masked line must
    recur on half the pages of its parity (3 at least), or carry the page number on 3 pages or more.
    Returns the pages and how many lines went."""
    split = [p.splitlines() for p in pages]
    counts: Counter[tuple] = Counter()
    for page, lines in enumerate(split):
        keys = set()
        for i in _edge_indices(lines, edge_lines):
            keys |= _furniture_keys(lines[i], page)
        counts.update(keys)
    needed = {
        0: max(3, (len(pages[0::2]) + 1) // 2),
        1: max(3, (len(pages[1::2]) + 1) // 2),
        "all": max(3, (len(pages) + 1) // 2),
    }
    repeated = {key for key, n in counts.items() if n >= (3 if key[0] == "page number" else needed[key[1]])}
    removed = 0
    cleaned = []
    for page, lines in enumerate(split):
        drop = {
            i
            for i in _edge_indices(lines, edge_lines)
            if PAGE_NUMBER.match(lines[i]) or _furniture_keys(lines[i], page) & repeated
        }
        removed += len(drop)
        cleaned.append("\n".join(line for i, line in enumerate(lines) if i not in drop))
    return cleaned, removed


def _edge_indices(lines: list[str], edge_lines: int) -> list[int]:
    """Indices of the first and last `edge_lines` non-empty lines."""
    filled = [i for i, line in enumerate(lines) if line.strip()]
    return sorted(set(filled[:edge_lines] + filled[-edge_lines:]))


def drop_toc_lines(text: str) -> tuple[str, int]:
    """Table-of-contents and index lines with dot leaders ("Introduction ........ 3")."""
    kept, dropped = [], 0
    for line in text.split("\n"):
        if line.count(".") >= 3 and TOC_LINE.match(line):  # both forms need 3 dots: skip the regex on prose
            dropped += 1
        else:
            kept.append(line)
    return "\n".join(kept), dropped


def remove_patterns(text: str, patterns: list[re.Pattern], counts: Counter) -> str:
    for pattern in patterns:
        text, n = pattern.subn("", text)
        counts[f"regex {pattern.pattern!r}"] += n
    return text


def dehyphenate(text: str) -> tuple[str, int]:
    """ "exam-\nple" -> "example": exactly `HYPHEN_BREAK.subn(r"\1\2", text)`, 10-20x faster. As there, a
    letter joined to the word before cannot start the next join ("a-\nb-\nc" -> "ab-\nc"): a break whose
    hyphen directly follows the previous join's last letter is kept."""
    out, start, joined_at = [], 0, -2
    for m in HYPHEN_AT.finditer(text):
        if m.start() == joined_at + 1:
            continue
        out.append(text[start : m.start()])
        start = joined_at = m.end()
    if not out:
        return text, 0
    out.append(text[start:])
    return "".join(out), len(out) - 1


def _tidy_lines(text: str) -> str:
    """Runs of whitespace other than line breaks -> one space, then every line stripped: what
    `"\\n".join(line.strip() for line in SPACES.sub(" ", text).split("\\n"))` gives, with str.replace, which
    scans at memory speed, where SPACES matches (and replaces) every single space of the text."""
    others = [c for c in (ASCII_SPACES if text.isascii() else OTHER_SPACES) if c in text]
    for c in others:  # tabs, \r, no-break spaces, ...: what SPACES turns into " " along with runs of " "
        text = text.replace(c, " ")
    while "  " in text:
        text = text.replace("  ", " ")
    # Runs are single spaces now: a line's edges hold one at most. Its first and last lines have one edge.
    text = text.replace(" \n", "\n").replace("\n ", "\n")
    return text[text.startswith(" ") : len(text) - text.endswith(" ")]


def normalize_whitespace(text: str, slice_chars: int = 1_000_000) -> str:
    """Runs of spaces -> one, lines stripped, blank-line runs -> one blank line. Long texts go in slices
    cut between two non-space characters, where no run of whitespace or line end can straddle the cut:
    re.sub holds every piece of its result at once (~1 GB for a 50 MB line with 10 million spaces)."""
    out, start = [], 0
    while start < len(text):
        cut = NON_SPACE_PAIR.search(text, start + slice_chars) if len(text) - start > slice_chars else None
        end = cut.end() if cut else len(text)
        out.append(BLANK_LINES.sub("\n\n", _tidy_lines(text[start:end])))
        start = end
    return "".join(out).strip()


def specials_of(tokenizer) -> dict[str, str]:
    """The tokenizer's special tokens that `delimiters` may map markers to ("eos", "bos", "sep")."""
    if tokenizer is None:  # a tokenizer trained on the cleaned text comes later: no special tokens
        return {}
    return {
        k: v
        for k, v in {"eos": tokenizer.eos_token, "bos": tokenizer.bos_token, "sep": tokenizer.sep_token}.items()
        if v
    }


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


class Cleaner:
    """The enabled cleaning steps, one document at a time, counting what each removed; exact duplicates
    are recognised by a 16-byte hash of their text (memory grows by ~100 bytes a document, not by its
    text), so a corpus of any size streams through."""

    def __init__(self, config: CleanConfig, specials: dict[str, str] | None = None):
        self.config, self.specials = config, specials or {}
        try:
            self.patterns = [re.compile(p, re.DOTALL) for p in config.regex_remove]
        except re.error as err:
            raise LmtuneError(f"clean.regex_remove: invalid pattern ({err})") from None
        self.counts: Counter[str] = Counter()
        self.seen: set[bytes] = set()
        self.duplicates = 0
        self.docs_in = self.docs_out = self.chars_in = self.chars_out = 0

    def __call__(self, doc: Document) -> list[Document]:
        """The documents `doc` becomes (none, one, or several when a delimiter splits it)."""
        config, counts = self.config, self.counts
        self.docs_in += 1
        self.chars_in += len(doc.text)
        text = doc.text
        if config.pdf_headers and doc.pages and len(doc.pages) > 1:
            pages, removed = strip_pdf_page_furniture(doc.pages)
            counts["pdf header/footer/page-number lines"] += removed
            text = "\n".join(pages)
        if config.drop_toc:
            text, n = drop_toc_lines(text)
            counts["table-of-contents lines dropped"] += n
        text = remove_patterns(text, self.patterns, counts)
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
        pieces = apply_delimiters(text, config.delimiters, self.specials) if config.delimiters else [text]
        out = []
        for piece in pieces:
            if config.normalize_whitespace and len(pieces) > 1:
                piece = piece.strip()
            if len(piece) < config.min_chars:
                counts["empty/short documents dropped"] += 1
            elif not self._duplicate(piece):
                out.append(replace(doc, text=piece, pages=None))
                self.docs_out += 1
                self.chars_out += len(piece)
        return out

    def _duplicate(self, text: str) -> bool:
        if not self.config.dedup:
            return False
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in self.seen:
            self.duplicates += 1
            return True
        self.seen.add(digest)
        return False

    def report(self) -> dict[str, int]:
        """What went in, what came out, and each step's count (duplicates last: they were counted last
        when cleaning held the whole corpus)."""
        report = {
            "documents in": self.docs_in,
            "documents out": self.docs_out,
            "characters in": self.chars_in,
            "characters out": self.chars_out,
            **self.counts,
        }
        if self.duplicates:
            report["duplicate documents dropped"] = self.duplicates
        return report


def clean_documents(
    docs: list[Document], config: CleanConfig, specials: dict[str, str] | None = None
) -> tuple[list[Document], dict[str, int]]:
    """Run the enabled cleaning steps over a list of documents. `specials` maps "eos"/"bos" to the
    tokenizer's own tokens."""
    cleaner = Cleaner(config, specials)
    chars_in = sum(len(d.text) for d in docs)
    out: list[Document] = []
    with tqdm(
        total=chars_in, unit="B", unit_scale=True, desc="clean", disable=chars_in < PROGRESS_CHARS, leave=False
    ) as bar:
        for doc in docs:
            out += cleaner(doc)
            bar.update(len(doc.text))
    return out, cleaner.report()
