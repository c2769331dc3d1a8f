"""No training progress is lost: real signals sent to a real `lmtune train` process, then --resume,
compared step by step with an uninterrupted run of the same recipe."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmtune.errors import LmtuneError
from lmtune.train.loop import train

STEPS = 48


def write_recipe(tmp_path, corpus_dir) -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        json.dumps(
            {
                "objective": "clm",
                "model": {"name": "gpt-tiny", "dropout": 0.1},  # dropout: the RNG must resume too
                "tokenizer": {"train": {"kind": "bpe", "vocab_size": 300, "min_frequency": 1}},
                "data": {"train": str(corpus_dir), "block_size": 32},
                "train": {
                    "batch_size": 8,
                    "lr": 3e-3,
                    "max_steps": STEPS,
                    "eval_every": 10,
                    "log_every": 1,
                    "save_every": 3,
                    "precision": "fp32",
                    "threads": 1,
                },
                "report": {"compare_base": False},
            }
        )
    )
    return recipe


def start(recipe: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lmtune.cli", "train", str(recipe), "--output-dir", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in records if r["event"] == "train"}


def wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"training ended before step {step}: {proc.communicate()[1][-2000:]}"
        try:
            if max(losses(run), default=0) >= step:
                return
        except (OSError, ValueError):  # the file is being written
            pass
        time.sleep(0.01)
    raise AssertionError(f"step {step} not reached in {timeout} s")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's per-step losses."""
    root = tmp_path_factory.mktemp("reference")
    from tests.conftest import make_story

    corpus = root / "stories"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"story{i:02d}.txt").write_text(make_story(i))
    recipe = write_recipe(root, corpus)
    proc = start(recipe, root / "straight")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    result = losses(root / "straight")
    assert sorted(result) == list(range(1, STEPS + 1))
    return recipe, result


def resume_and_compare(recipe, out: Path, expected: dict[int, float]) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "lmtune.cli", "train", str(recipe), "--output-dir", str(out), "--resume"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stderr  # says which checkpoint it uses
    got = losses(out)
    assert sorted(got) == sorted(expected)
    assert got == expected  # bit-identical on CPU: same data order, RNG, optimizer and schedule state
    assert (out / "final" / "config.json").exists()
    return done


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_resume_is_exact(reference, tmp_path, signum):
    recipe, expected = reference
    out = tmp_path / "run"
    proc = start(recipe, out)
    wait_for_step(out, 10, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--resume" in errors[0] and signal.Signals(signum).name in errors[0], err
    assert "Traceback" not in err
    assert not (out / "final").exists()
    resume_and_compare(recipe, out, expected)


def test_two_quick_ctrl_c_still_save_a_usable_checkpoint(reference, tmp_path):
    recipe, expected = reference
    out = tmp_path / "run"
    proc = start(recipe, out)
    wait_for_step(out, 8, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "saved" in err and "Traceback" not in err
    assert not list((out / "checkpoints").glob("*.tmp"))
    resume_and_compare(recipe, out, expected)


def test_sigkill_loses_at_most_the_steps_since_the_last_checkpoint(reference, tmp_path):
    recipe, expected = reference
    out = tmp_path / "run"
    proc = start(recipe, out)
    wait_for_step(out, 20, proc)
    proc.kill()
    proc.wait(timeout=60)
    # What a kill in the middle of writing leaves: a torn metrics line, a half-written checkpoint
    # folder and the old copy from between the two renames of an atomic replace.
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 999, "event": "tra')
    (out / "checkpoints" / "step-999.tmp").mkdir()
    (out / "checkpoints" / "step-998.old").mkdir()
    (out / "checkpoints" / "step-998.old" / "config.json").write_text("{}")
    done = resume_and_compare(recipe, out, expected)
    assert "step-99" not in done.stderr.split("resuming from", 1)[1].splitlines()[0]
    assert not list((out / "checkpoints").glob("step-99*"))


def test_divergence_stops_with_one_line_and_writes_no_final_model(tiny_clm_config):
    config = tiny_clm_config(lr=1e30, max_steps=20, save_every=1, max_grad_norm=None)
    with pytest.raises(LmtuneError, match=r"training diverged at step \d+: the loss is (nan|inf).*learning rate"):
        train(config, progress=False)
    run = Path(config.output_dir)
    assert not (run / "final").exists()
    assert (run / "metrics.jsonl").exists()  # what happened stays visible


def test_periodic_checkpoints_by_default_keep_the_newest(tiny_clm_config):
    config = tiny_clm_config(max_steps=12, save_every=2, keep_checkpoints=2)
    assert config.train.save_every_minutes == 10  # on by default, by wall time
    train(config, progress=False)
    names = sorted(p.name for p in (Path(config.output_dir) / "checkpoints").iterdir())
    assert names == ["step-10", "step-12"]
