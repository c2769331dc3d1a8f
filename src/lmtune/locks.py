"""One writer per output folder: a lock file that names its holder (pid, host, command, start time).

The lock is the operating system's advisory lock (flock) on that file, so it goes with its process: a
training killed with SIGKILL, or a machine that rebooted, never leaves a folder locked, and the next
writer finds the file with the dead holder's name in it and takes over (a stale lock). A second writer
while the first lives gets one line naming the folder and the process that holds it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from lmtune.errors import LmtuneError

LOCK_FILE = ".lmtune.lock"  # inside a run or prepared folder
log = logging.getLogger("lmtune")


class FolderBusy(LmtuneError):
    """Another live process writes this folder."""


def holder(lock_file: Path) -> dict | None:
    """Who holds (or last held) `lock_file`, as written there; None when there is no readable record."""
    try:
        record = json.loads(Path(lock_file).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_locked(lock_file: Path) -> bool:
    """Whether a live process holds `lock_file` now (without taking it)."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _describe(record: dict | None) -> str:
    if not record:
        return "another lmtune process"
    since = time.strftime("%H:%M:%S", time.localtime(record.get("started", 0)))
    return f"process {record.get('pid')} on {record.get('host')} ({record.get('command', 'lmtune')}, since {since})"


def _take(lock_file: Path, folder: Path, what: str) -> int:
    """Open and lock `lock_file`; the open file descriptor holds the lock."""
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderBusy(
                f"{folder} is in use: {_describe(holder(lock_file))} is writing it; wait for it to "
                f"finish (or stop it), or {what} into another folder"
            ) from None
        # The previous holder may have removed the file between our open and our lock: then the lock is on
        # a file nobody else will open, and a new writer could lock a fresh one. Lock the file that is there.
        try:
            if os.fstat(fd).st_ino == os.stat(lock_file).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "write", lock_file: str | Path | None = None) -> Iterator[Path]:
    """Hold the lock of `folder` (its `.lmtune.lock`, or `lock_file`) while the block runs. `what`: the verb
    the refusal suggests doing elsewhere ("train", "prepare", "export"). The folder must exist."""
    folder = Path(folder)
    lock_file = Path(lock_file) if lock_file is not None else folder / LOCK_FILE
    stale = holder(lock_file) if lock_file.exists() else None
    fd = _take(lock_file, folder, what)
    if stale and stale.get("pid") != os.getpid():
        log.info("%s: the previous writer (%s) is gone; taking over", folder, _describe(stale))
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.time(),
        "command": " ".join(["lmtune", *sys.argv[1:3]]) if sys.argv else "lmtune",
    }
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(record) + "\n").encode())
    try:
        yield lock_file
    finally:
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(lock_file).st_ino:
                lock_file.unlink()  # before unlocking: a waiting writer then re-opens a fresh file
        os.close(fd)


@contextlib.contextmanager
def own_folder(folder: str | Path, kind: str, what: str, keep=lambda: False) -> Iterator[Path]:
    """Claim `folder` for lmtune's `kind` of output (made and marked if need be) and hold its lock while the
    block runs. If the block fails and this call made the folder, the folder goes again, unless `keep()`
    says it now holds something of value (a run with checkpoints). Another live writer: FolderBusy, and
    nothing of its folder is touched."""
    from lmtune.outputs import claim_dir, remove_if_created

    folder = Path(folder)
    existed = folder.exists()
    claim_dir(folder, kind)
    with folder_lock(folder, what):
        try:
            yield folder
        except BaseException:
            if not keep():
                remove_if_created(folder, existed)
            raise
