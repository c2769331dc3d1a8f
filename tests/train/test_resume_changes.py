"""A resume with settings that change how the data is cut into steps is refused in one line naming what
changed (it used to spin forever), and the run's own config.yaml stays; steps may still be added."""

import json
import os
import subprocess
import sys

import torch
import yaml

from lmtune.outputs import TRAINER_STATE, checkpoint_dirs
from tests.conftest import write_tiny_clm_recipe


def recipe(tmp_path, corpus_dir):
    return write_tiny_clm_recipe(
        tmp_path, corpus_dir, batch_size=4, lr=3e-3, max_steps=12, epochs=100, log_every=1, save_every=3
    )


def lmtune_train(*args, timeout=180):
    """A real `lmtune train` process under a timeout: a hang fails the test instead of stalling it."""
    return subprocess.run(
        [sys.executable, "-m", "lmtune.cli", "train", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_resume_with_another_batch_size_or_block_size_is_refused_naming_it(tmp_path, corpus_dir):
    run = tmp_path / "run"
    first = lmtune_train(recipe(tmp_path, corpus_dir), "--output-dir", run)
    assert first.returncode == 0, first.stderr[-2000:]
    saved = (run / "config.yaml").read_text()

    bigger = lmtune_train(
        recipe(tmp_path, corpus_dir),
        "--output-dir",
        run,
        "--resume",
        "--train.batch_size",
        "8",
        "--train.max_steps",
        "24",
    )
    assert bigger.returncode == 1 and len(errors(bigger)) == 1, bigger.stderr[-2000:]
    assert "global batch (train.batch_size x processes) 4 -> 8" in errors(bigger)[0]
    assert "Traceback" not in bigger.stderr

    longer_blocks = lmtune_train(
        recipe(tmp_path, corpus_dir),
        "--output-dir",
        run,
        "--resume",
        "--data.block_size",
        "64",
        "--train.max_steps",
        "24",
    )
    assert longer_blocks.returncode == 1 and "data.block_size 32 -> 64" in errors(longer_blocks)[0]
    assert (run / "config.yaml").read_text() == saved  # a refused resume leaves the run's own recipe

    more_steps = lmtune_train(recipe(tmp_path, corpus_dir), "--output-dir", run, "--resume", "--train.max_steps", "15")
    assert more_steps.returncode == 0, more_steps.stderr[-2000:]
    steps = [
        json.loads(line)["step"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["event"] == "train"
    ]
    assert steps == list(range(1, 16))


def test_a_checkpoint_whose_position_is_past_the_epoch_never_hangs(tmp_path, corpus_dir):
    """An older checkpoint (no record of how its batches were cut) whose saved position is beyond the epoch's
    end: the loop moves on to the next epoch instead of spinning."""
    run = tmp_path / "run"
    assert lmtune_train(recipe(tmp_path, corpus_dir), "--output-dir", run).returncode == 0
    last = checkpoint_dirs(run)[-1]
    state = torch.load(last / TRAINER_STATE, weights_only=False)
    state["state"].pop("plan")
    state["state"]["batches_done_in_epoch"] = 10_000
    torch.save(state, last / TRAINER_STATE)
    config = yaml.safe_load((run / "config.yaml").read_text())
    resumed = lmtune_train(run / "config.yaml", "--resume", "--train.max_steps", "15", timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert config["output_dir"] == str(run)
    assert json.loads((run / "summary.json").read_text())["steps"] == 15
