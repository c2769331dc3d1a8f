"""One writer per output folder: real processes racing for a run, a prepared dataset and an export; a
holder killed with SIGKILL leaves no stuck lock."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lmtune.errors import LmtuneError
from lmtune.locks import LOCK_FILE, FolderBusy, folder_lock, holder, is_locked

HOLD = """
import sys, time
from lmtune.locks import folder_lock
with folder_lock(sys.argv[1], "test"):
    print("held", flush=True)
    time.sleep(600)
"""


def hold_lock(folder):
    """A separate process holding `folder`'s lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_stuck_lock(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    proc = hold_lock(folder)
    try:
        assert is_locked(folder / LOCK_FILE)
        with pytest.raises(FolderBusy, match=rf"{folder} is in use: process {proc.pid} on "):
            with folder_lock(folder, "train"):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The dead holder's record is still there; the lock went with its process.
    assert holder(folder / LOCK_FILE)["pid"] == proc.pid and not is_locked(folder / LOCK_FILE)
    with folder_lock(folder, "train") as lock_file:
        assert holder(lock_file)["pid"] == os.getpid()
    assert not (folder / LOCK_FILE).exists()  # released: removed


def recipe(tmp_path, corpus_dir, lr=3e-3, steps=400):
    path = tmp_path / f"recipe-{lr}.yaml"
    path.write_text(
        json.dumps(
            {
                "objective": "clm",
                "model": {"name": "gpt-tiny", "dropout": 0.0},
                "tokenizer": {"train": {"kind": "bpe", "vocab_size": 300, "min_frequency": 1}},
                "data": {"train": str(corpus_dir), "block_size": 32},
                "train": {
                    "batch_size": 8,
                    "lr": lr,
                    "max_steps": steps,
                    "eval_every": 0,
                    "log_every": 1,
                    "precision": "fp32",
                    "threads": 1,
                    "save_every": 5,
                },
                "report": {"compare_base": False},
            }
        )
    )
    return path


def lmtune(*args, log=None) -> subprocess.Popen:
    """A real `lmtune` process; `log`: a file for its output (a long run would fill a pipe nobody reads)."""
    out = subprocess.PIPE if log is None else open(log, "w")  # noqa: SIM115 - the process owns it
    return subprocess.Popen(
        [sys.executable, "-m", "lmtune.cli", *map(str, args)],
        stdout=out,
        stderr=out,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def wait_for(path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited with {proc.returncode}"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_two_trainings_into_one_folder_the_second_is_refused_and_the_first_is_untouched(tmp_path, corpus_dir):
    run = tmp_path / "runs" / "x"
    log = tmp_path / "first.log"
    first = lmtune("train", recipe(tmp_path, corpus_dir, steps=100_000), "--output-dir", run, log=log)
    try:
        wait_for(run / "metrics.jsonl", first)
        from lmtune.train.runs import find_runs

        assert [r.state for r in find_runs(tmp_path / "runs")] == ["running"]
        for args in (["--output-dir", run], ["--output-dir", run, "--overwrite"], ["--output-dir", run, "--resume"]):
            second = lmtune("train", recipe(tmp_path, corpus_dir, lr=1e-3), *args)
            out, err = second.communicate(timeout=120)
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert second.returncode == 1 and len(errors) == 1, err
            assert f"is in use: process {first.pid} on" in errors[0] and "(lmtune train" in errors[0]
        first.send_signal(signal.SIGINT)  # the first saves and stops as usual
        assert first.wait(timeout=120) == 130, log.read_text()[-2000:]
        assert [r.state for r in find_runs(tmp_path / "runs")] == ["interrupted"]
    finally:
        if first.poll() is None:
            first.kill()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["event"] == "train"]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 1  # one run's steps, once each
    assert all(r["lr"] > 2e-3 for r in records if r["event"] == "train")  # none of the 1e-3 runs' steps
    assert not list((run / "checkpoints").glob("*.old")) and not list((run / "checkpoints").glob("*.tmp"))
    assert not (run / LOCK_FILE).exists()


def test_a_second_prepare_into_the_same_folder_is_refused(tmp_path, corpus_dir):
    out = tmp_path / "prepared"
    out.mkdir()
    (out / ".lmtune").write_text(json.dumps({"kind": "prepared"}))
    proc = hold_lock(out)  # a prepare in progress
    try:
        from tests.conftest import run_cli_in_process

        result = run_cli_in_process("prepare", corpus_dir, "--model", "gpt-tiny", "--out", out)
        assert result.returncode == 1 and len(result.error_lines) == 1, result.stderr
        assert f"is in use: process {proc.pid}" in result.error_lines[0]
        assert sorted(p.name for p in out.iterdir()) == [".lmtune", LOCK_FILE]  # nothing of the holder's touched
    finally:
        proc.kill()
        proc.wait()


def test_an_export_into_a_folder_another_export_writes_is_refused(tiny_clm_run, tmp_path):
    from pathlib import Path

    from lmtune.export import export_model

    out = tmp_path / "exported"
    lock_file = tmp_path / ".exported.lmtune-lock"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLD.replace('folder_lock(sys.argv[1], "test")', 'folder_lock(sys.argv[1], "test", sys.argv[2])'),
            str(out),
            str(lock_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LmtuneError, match=f"in use: process {proc.pid}"):
            export_model(str(Path(tiny_clm_run).parent), out)
        assert not out.exists()
    finally:
        proc.kill()
        proc.wait()
    export_model(str(Path(tiny_clm_run).parent), out)
    assert (out / "config.json").exists() and not lock_file.exists()
