"""Settings that cannot work are refused before any work; legal ones that are almost surely a mistake are
warned about once; suggestions stay sensible."""

import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from lmtune.config import build_config
from lmtune.hardware import cpu_cores
from lmtune.train.advice import divergence_message, setting_warnings
from lmtune.train.setup import thread_count
from tests.conftest import write_tiny_clm_recipe


def test_non_finite_numbers_are_refused(cli, corpus_dir):
    for value in ("inf", "nan", "-inf"):
        result = cli("train", "--data", corpus_dir, "--train.lr", value)
        assert result.returncode == 1 and len(result.error_lines) == 1, result.stderr
        assert "config key 'train.lr'" in result.error_lines[0] and "finite" in result.error_lines[0]


def test_more_processes_than_cores_are_refused_unless_insisted(cli, tmp_path, corpus_dir):
    cores = cpu_cores()
    result = cli("train", "--data", corpus_dir, "--nproc", str(cores + 62))
    assert result.returncode == 1 and len(result.error_lines) == 1
    assert f"more training processes than this machine has CPU cores ({cores})" in result.error_lines[0]
    assert "--oversubscribe" in result.error_lines[0]


def test_threads_beyond_the_cores_are_clamped_with_a_warning(caplog, monkeypatch):
    with caplog.at_level(logging.WARNING, logger="lmtune"):
        assert thread_count(1000, 1) == cpu_cores()
    assert "train.threads 1000 is more than" in caplog.text
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert thread_count(None, 1) == cpu_cores() and thread_count(1, 1) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a scheduler's (or the test runner's) word for this process
    assert thread_count(None, 1) == 1


def test_settings_that_are_almost_surely_mistakes_are_named():
    config = build_config({"train": {"warmup_steps": 1000, "batch_size": 10**9, "lr": 1e9}})
    warnings = " | ".join(setting_warnings(config, samples=45, total_steps=3))
    assert "train.warmup_steps 1000 is not below the run's 3 steps" in warnings
    assert "train.batch_size 1000000000 is more than the 45 training samples" in warnings
    assert "train.lr 1e+09 is far above" in warnings
    assert setting_warnings(build_config({}), samples=1000, total_steps=100) == []


@pytest.mark.parametrize("lr,suggested", [(1e9, "0.0001"), (1e-2, "0.001"), (1e-3, "0.0001"), (3e-4, "3e-05")])
def test_the_divergence_message_suggests_a_sensible_learning_rate(lr, suggested):
    assert f"try --train.lr {suggested})" in divergence_message(5, float("nan"), lr, None)


def test_sigterm_to_a_multiprocess_training_ends_in_one_line(tmp_path, corpus_dir):
    """torchrun used to answer SIGTERM with a 40-line traceback; the processes save and stop, and one line
    says how to go on."""
    recipe = write_tiny_clm_recipe(tmp_path, corpus_dir, batch_size=4, max_steps=100_000, log_every=1)
    run, log = tmp_path / "run", tmp_path / "log.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmtune.cli", "train", str(recipe), "--output-dir", str(run), "--nproc", "2"],
            stdout=out,
            stderr=out,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    try:
        deadline = time.time() + 180
        while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 3:
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert code == 128 + signal.SIGTERM, text[-3000:]
    assert "Traceback" not in text and "SignalException" not in text, text[-3000:]
    assert [line for line in text.splitlines() if line.startswith("error:")][-1:] == [
        "error: stopped by SIGTERM; the training processes were stopped (each saves a checkpoint when it can): "
        "continue with --resume"
    ]
