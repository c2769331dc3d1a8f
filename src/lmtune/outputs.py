"""Where lmtune writes, and the rules that keep the user's own files safe.

lmtune deletes or replaces only what it made. Every folder it creates holds a marker file
(`.lmtune`); a folder without one is the user's, and lmtune refuses to write into it unless it is
empty. An output is never an input, never inside an input folder, never the current folder, the home
folder or one of their parents. Files are written to a temporary name and renamed, so a crash leaves
either the old file or the new one, never half of one. All checks run before the long work starts."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from lmtune.errors import LmtuneError

MARKER = ".lmtune"


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def is_lmtune_dir(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def marker_kind(path: str | Path) -> str | None:
    try:
        return json.loads((Path(path) / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def _protected(folder: Path) -> str | None:
    """Why `folder` may never be an output folder, or None."""
    for name, place in (("the current folder", Path.cwd().resolve()), ("your home folder", Path.home().resolve())):
        if _is_within(place, folder):
            return f"it is {name}" if place == folder else f"it contains {name}"
    if folder == Path(folder.anchor):
        return "it is the root of the file system"
    return None


def check_output_dir(path: str | Path, inputs: Iterable[str | Path] = (), kind: str = "run") -> Path:
    """Raise LmtuneError unless lmtune may write its `kind` of output into `path`. Creates nothing."""
    folder = _resolved(path)
    why = _protected(folder)
    if why:
        raise LmtuneError(f"refusing to write into {path}: {why}; choose a new folder, e.g. runs/my-run")
    for given in inputs:
        source = _resolved(given)
        if not source.exists():
            continue
        if _is_within(source, folder):
            raise LmtuneError(f"refusing to write into {path}: it holds the input {given}; choose another folder")
        source_dir = source if source.is_dir() else source.parent
        if folder == source_dir or _is_within(folder, source_dir) and source.is_dir():
            raise LmtuneError(
                f"refusing to write into {path}: it is inside the input folder {source_dir}; choose a folder outside it"
            )
    if folder.exists() and not folder.is_dir():
        raise LmtuneError(f"{path} is a file, not a folder; choose a folder for the output")
    if folder.is_dir() and any(folder.iterdir()) and not is_lmtune_dir(folder):
        raise LmtuneError(
            f"refusing to write into {path}: the folder is not empty and lmtune did not make it; "
            "choose a new or empty folder"
        )
    found = marker_kind(folder)
    if found is not None and found != kind:
        raise LmtuneError(f"{path} holds lmtune {found} output, not a {kind}; choose another folder")
    return folder


def claim_dir(path: str | Path, kind: str) -> Path:
    """Create `path` (or take an empty/own one) and mark it as lmtune's."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if not is_lmtune_dir(folder):
        (folder / MARKER).write_text(
            json.dumps(
                {"kind": kind, "note": "made by lmtune; lmtune may replace what it wrote here, and nothing else"}
            )
            + "\n"
        )
    return folder


def remove_own(folder: str | Path, names: Iterable[str]) -> None:
    """Delete the named entries of an lmtune folder; anything else in it stays."""
    folder = Path(folder)
    if not is_lmtune_dir(folder):
        raise LmtuneError(f"{folder} was not made by lmtune; not deleting anything in it")
    for name in names:
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def remove_if_created(folder: Path, existed: bool) -> None:
    """Undo a folder this invocation created (on failure before it held anything of value)."""
    if not existed and is_lmtune_dir(folder):
        shutil.rmtree(folder, ignore_errors=True)


def replace_dir(target: Path, write: Callable[[Path], None]) -> Path:
    """Write a folder next to `target` and swap it in, so a crash never leaves a half-written one.
    `target` must be lmtune's (its parent is an lmtune folder); stray `.tmp`/`.old` siblings are ours.
    A write that fails (a full disk, say) leaves `target` as it was and no `.tmp` behind."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with disk_errors(target):
            write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    share_like_umask(tmp)
    return swap_in(tmp, target)


def swap_in(source: Path, target: Path) -> Path:
    """Make the complete folder `source` the new `target` (a sibling in an lmtune folder): the old one is
    renamed aside (`.old`) first and removed last, so a crash leaves one whole folder or the other."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    source.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def publish_dir(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a folder in a fresh hidden sibling and swap it in only when complete: for folders the user
    names (an export), so no sibling of theirs is ever touched. `target`, if it exists, must be lmtune's."""
    target = Path(target)
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        target.rmdir()  # an empty folder the user made for it: nothing to lose
    if target.exists() and not is_lmtune_dir(target):
        raise LmtuneError(f"refusing to replace {target}: lmtune did not make it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        with disk_errors(target):
            write(tmp)
        share_like_umask(tmp)  # mkdtemp makes it private; the export is the user's to share
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            target.rename(old / target.name)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def check_output_file(path: str | Path, inputs: Iterable[str | Path] = (), overwrite: bool = False) -> Path:
    """Raise LmtuneError unless a result may be written to the file `path`. Creates nothing."""
    target = _resolved(path)
    for given in inputs:
        source = _resolved(given)
        if source == target or (source.exists() and target.exists() and os.path.samefile(source, target)):
            raise LmtuneError(f"refusing to write {path}: it is the input file; choose another output name")
    if target.is_dir():
        raise LmtuneError(f"{path} is a folder; give a file name for the output")
    if not target.parent.is_dir():
        raise LmtuneError(f"cannot write {path}: the folder {Path(path).parent} does not exist")
    if not os.access(target.parent, os.W_OK):
        raise LmtuneError(f"cannot write {path}: no permission to write in {Path(path).parent}")
    if target.exists() and not overwrite:
        raise LmtuneError(f"{path} already exists; pass --overwrite to replace it or choose another name")
    return target


def write_file_atomic(path: str | Path, write: Callable[[object], None], mode: str = "w") -> Path:
    """Write through `write(file_object)` into a temporary file beside `path`, then rename over it."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(fd, 0o666 & ~_umask())  # mkstemp makes it private: the result is the user's, like any file
        with (
            disk_errors(target),
            os.fdopen(fd, mode, **({"newline": "", "encoding": "utf-8"} if "b" not in mode else {})) as fh,
        ):
            write(fh)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# ---- file modes and full disks ------------------------------------------------------------------
def _umask() -> int:
    """This process's umask (read without changing it where /proc tells)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("Umask:"))
        return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_like_umask(folder: Path) -> None:
    """Give every file and folder under `folder` the modes the user's umask asks for. Some writers (mkdtemp,
    safetensors' own file writer) create private 0600/0700 entries: a model copied to a colleague could
    then not be read by them, unlike every other file the user makes."""
    files, dirs = 0o666 & ~_umask(), 0o777 & ~_umask()
    for root, _names, files_here in os.walk(folder):
        os.chmod(root, dirs)
        for name in files_here:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, files)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _free_bytes(path: Path) -> int:
    for place in (path, *path.parents):
        if place.exists():
            return shutil.disk_usage(place).free
    return 0


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n / 2**10:,.0f} KB"


def is_disk_full(err: BaseException, path: Path) -> bool:
    """Whether `err` (or what caused it) is the disk filling up. Libraries word it their own way: OSError
    ENOSPC, safetensors' "os error 28", torch's zip writer's "unexpected pos" (a short write)."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno in _DISK_FULL:
            return True
        text = str(err)
        if "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text:
            return True
        if "unexpected pos" in text and _free_bytes(path) < 64 * 2**20:
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def no_space_error(path: Path, needed: int | None = None) -> LmtuneError:
    need = f"needs about {_mb(needed)}, " if needed else ""
    return LmtuneError(
        f"no space left on device writing {path} ({need}{_mb(_free_bytes(Path(path)))} free); free "
        "some space or write elsewhere; nothing earlier was lost"
    )


def check_free_space(path: str | Path, needed: int) -> None:
    """Refuse a write of about `needed` bytes, before it starts, where the disk cannot hold it."""
    if needed > 0 and _free_bytes(Path(path)) < needed * 1.05 + 16 * 2**20:
        raise no_space_error(Path(path), needed)


@contextlib.contextmanager
def disk_errors(path: str | Path, needed: int | None = None) -> Iterator[None]:
    """A full disk inside the block becomes one line naming `path` (callers clean up what they began)."""
    try:
        yield
    except LmtuneError:
        raise
    except Exception as err:
        if is_disk_full(err, Path(path)):
            raise no_space_error(Path(path), needed) from None
        raise


# ---- the run folder -------------------------------------------------------------------------------
# What `lmtune train` writes into its run folder: `--overwrite` removes these and nothing else.
RUN_ENTRIES = (
    "checkpoints",
    "final",
    "best",
    "last",
    "adapter",
    "baseline",
    "data",
    "metrics.jsonl",
    "summary.json",
    "config.yaml",
    "lr_probe.json",
    "loss.png",
    "confusion_matrix.png",
    "tensorboard",
    "mlruns",
    "wandb",
)  # the last three: train.report_to
TRAINER_STATE = "trainer_state.pt"  # written last into a checkpoint: its presence means complete


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints `checkpoints/step-N`, oldest first. Leftovers of an interrupted write
    (`step-N.tmp`, `step-N.old`) are not checkpoints."""
    found = []
    for path in (Path(run_dir) / "checkpoints").glob("step-*"):
        number = path.name.removeprefix("step-")
        if number.isdigit() and (path / TRAINER_STATE).is_file():
            found.append((int(number), path))
    return [path for _, path in sorted(found)]


def run_has_model(run_dir: str | Path) -> bool:
    run_dir = Path(run_dir)
    return bool(checkpoint_dirs(run_dir)) or (run_dir / "final" / "config.json").exists()
