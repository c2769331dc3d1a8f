"""A full disk, for real: a small tmpfs filled with data (where the test runner may mount one). Training
names the disk in one line and keeps its last checkpoint; prepare leaves nothing that passes for data."""

import contextlib
import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from lmtune.errors import LmtuneError
from lmtune.outputs import TRAINER_STATE, checkpoint_dirs, disk_errors
from tests.conftest import write_tiny_clm_recipe


@contextlib.contextmanager
def small_disk(tmp_path, megabytes: int):
    """A tmpfs of `megabytes` mounted below tmp_path, unmounted afterwards."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here ({made.stderr.strip()[:80]})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave_bytes: int) -> None:
    """Fill the filesystem of `folder` until about `leave_bytes` are free."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(folder / "filler.bin", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))


def test_a_real_full_disk_write_becomes_one_line(tmp_path):
    with small_disk(tmp_path, 1) as disk:
        with pytest.raises(LmtuneError, match=rf"no space left on device writing {disk}/big.bin \(.* free\)"):
            with disk_errors(disk / "big.bin"), open(disk / "big.bin", "wb") as fh:
                fh.write(b"x" * (4 << 20))
                fh.flush()
        with pytest.raises(OSError) as raw:  # what it was: ENOSPC from the real write
            with open(disk / "more.bin", "wb") as fh:
                fh.write(b"x" * (4 << 20))
                fh.flush()
        assert raw.value.errno == errno.ENOSPC


def recipe(tmp_path, corpus_dir, steps):
    return write_tiny_clm_recipe(tmp_path, corpus_dir, batch_size=8, lr=3e-3, max_steps=steps, save_every=3)


@pytest.mark.parametrize("checked_first", [True, False])
def test_training_on_a_full_disk_keeps_the_last_checkpoint(cli, tmp_path, corpus_dir, monkeypatch, checked_first):
    """checked_first: the free space is checked before the checkpoint (one line at once); else the real
    write hits the full disk (the check is switched off) and fails the same way, leaving no .tmp."""
    with small_disk(tmp_path, 24) as disk:
        run = disk / "run"
        assert cli("train", recipe(tmp_path, corpus_dir, 3), "--output-dir", run).returncode == 0
        kept = checkpoint_dirs(run)[-1]
        before = {p.name: p.read_bytes() for p in kept.iterdir()}
        fill(disk, 300_000)
        if not checked_first:
            monkeypatch.setattr("lmtune.train.checkpoint.check_free_space", lambda *a: None)
        result = cli("train", recipe(tmp_path, corpus_dir, 6), "--output-dir", run, "--resume")
        assert result.returncode == 1 and len(result.error_lines) == 1, result.stderr[-3000:]
        assert f"no space left on device writing {run}/checkpoints/step-6" in result.error_lines[0]
        assert " free)" in result.error_lines[0] and ("needs about" in result.error_lines[0]) == checked_first
        assert checkpoint_dirs(run)[-1] == kept and {p.name: p.read_bytes() for p in kept.iterdir()} == before
        assert (kept / TRAINER_STATE).exists()
        assert not list((run / "checkpoints").glob("*.tmp")) and not (run / "final.tmp").exists()


def test_prepare_on_a_full_disk_leaves_nothing_that_passes_for_data(cli, tmp_path, corpus_dir):
    with small_disk(tmp_path, 4) as disk:
        fill(disk, 40_000)
        out = disk / "prepared"
        result = cli("prepare", corpus_dir, "--model", "gpt-tiny", "--out", out)
        assert result.returncode == 1 and len(result.error_lines) == 1, result.stderr[-2000:]
        assert f"no space left on device writing {out}" in result.error_lines[0]
        assert not out.exists()  # made by this prepare, so removed again
        (disk / "filler.bin").unlink()
        fill(disk, 60_000)
        out.mkdir()  # an earlier (empty) output folder of the user's stays, and stays empty
        result = cli("prepare", corpus_dir, "--model", "gpt-tiny", "--out", out)
        assert result.returncode == 1 and "no space left on device" in result.error_lines[0]
        assert out.is_dir() and {p.name for p in out.iterdir()} <= {".lmtune"}
