"""Safe access to the user's files: which suffixes lmtune reads, each file's bytes (decompressed, within
a size cap, only from regular files), its text encoding, and a folder walk that survives symlink loops,
FIFOs and devices and skips lmtune's own output folders. The readers of each format are in formats.py."""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from lmtune.errors import LmtuneError
from lmtune.outputs import MARKER

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


def suffixes(path: Path) -> tuple[str, str | None]:
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


def read_capped(fh, path: Path) -> bytes:
    """All of a decompressing stream, stopping at the cap (a small archive can expand without end)."""
    limit, chunks, size = max_input_bytes(), [], 0
    while chunk := fh.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise _too_large(path, "decompresses to more than that")
        chunks.append(chunk)
    return b"".join(chunks)


def read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed; every way reading can fail becomes one line naming the file."""
    _, compression = suffixes(path)
    info = check_readable_file(path)
    try:
        if not compression:
            return path.read_bytes()
        if info.st_size == 0:  # empty, not corrupt: reported as "no text" like any empty file
            return b""
        with COMPRESSED[compression](path, "rb") as fh:
            return read_capped(fh, path)
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


def _supported(path: Path) -> bool:
    kind, _ = suffixes(path)
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


def check_not_output(path: Path) -> None:
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
