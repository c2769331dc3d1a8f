import json
import os
import signal
from pathlib import Path

import pytest
import torch

from lmtune.errors import LmtuneError
from lmtune.train.loop import train


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_gpt_learns_and_reloads(tiny_clm_config):
    config = tiny_clm_config()
    summary = train(config, progress=False)
    run = summary["run"]
    assert summary["final"]["val_loss"] < summary["base"]["val_loss"] - 1.0
    run = Path(run)
    train_losses = [r["train_loss"] for r in read_metrics(run) if r["event"] == "train"]
    assert train_losses[-1] < train_losses[0]
    assert (run / "loss.png").stat().st_size > 1000

    # The final folder is a plain Hugging Face model: same logits after reload.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(summary["final_model"]).eval()
    tok = AutoTokenizer.from_pretrained(summary["final_model"])
    ids = tok("the king walks the castle", return_tensors="pt").input_ids
    from lmtune.infer import load

    again = load(summary["final_model"], dtype="fp32").model  # exact: fp32, as saved
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    # The run's own evaluation agrees with `lmtune eval` on the prepared validation split.
    from lmtune.train.evaluate import evaluate_model

    metrics = evaluate_model(summary["final_model"], str(run / "data"))
    assert metrics["val_loss"] == pytest.approx(summary["final"]["val_loss"], rel=1e-4)


def test_exact_resume_from_checkpoint(tiny_clm_config, tmp_path):
    """12 steps straight vs. the same recipe interrupted after its step-6 checkpoint and resumed:
    same losses, same final weights."""
    import lmtune.train.loop as loop
    from lmtune.train import checkpoint

    straight = tiny_clm_config(max_steps=12, save_every=6, eval_every=4, log_every=1)
    straight.output_dir = str(tmp_path / "straight")
    train(straight, progress=False)

    interrupted = tiny_clm_config(max_steps=12, save_every=6, eval_every=4, log_every=1)
    interrupted.output_dir = str(tmp_path / "interrupted")
    original = loop.checkpoint.save

    calls = []

    def save_then_interrupt(*args, **kwargs):
        path = original(*args, **kwargs)
        calls.append(path)
        if len(calls) == 1:  # a real Ctrl-C (SIGINT to this process) right after the step-6 checkpoint
            os.kill(os.getpid(), signal.SIGINT)
        return path

    loop.checkpoint.save = save_then_interrupt
    try:
        with pytest.raises(LmtuneError, match="stopped by SIGINT at step 7"):  # after the step under way
            train(interrupted, progress=False)
    finally:
        loop.checkpoint.save = original
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a stopped run leaves signals ignored
    assert checkpoint.latest(tmp_path / "interrupted").name == "step-7"
    resumed = train(interrupted, resume=True, progress=False)
    assert resumed["steps"] == 12

    from safetensors.torch import load_file

    wa = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "interrupted" / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-6), key
    events_a = [r for r in read_metrics(tmp_path / "straight") if r["event"] == "train"]
    events_b = [r for r in read_metrics(tmp_path / "interrupted") if r["event"] == "train"]
    assert [r["step"] for r in events_a] == [r["step"] for r in events_b] == list(range(1, 13))
    assert [r["train_loss"] for r in events_a] == pytest.approx([r["train_loss"] for r in events_b], rel=1e-5)


def test_refuses_to_overwrite_a_run(tiny_clm_config):
    config = tiny_clm_config(max_steps=2)
    train(config, progress=False)
    with pytest.raises(LmtuneError, match="already holds a run"):
        train(config, progress=False)


def test_early_stopping(tiny_clm_config):
    config = tiny_clm_config(max_steps=200, eval_every=2, lr=0.0, early_stopping_patience=2)
    summary = train(config, progress=False)
    assert summary["stopped_early"] and summary["steps"] < 20


def test_dataloader_workers_give_the_same_run(tiny_clm_config, tmp_path):
    """train.num_workers 2 collates in DataLoader worker processes: the same batches in the same order, so
    the same losses and weights as collating on the training thread, across epochs and a resume."""
    runs = {}
    for workers in (0, 2):
        config = tiny_clm_config(max_steps=30, save_every=13, eval_every=100, log_every=1, num_workers=workers)
        config.output_dir = str(tmp_path / f"workers-{workers}")
        summary = train(config, progress=False)
        assert summary["steps"] == 30
        runs[workers] = [r["train_loss"] for r in read_metrics(Path(config.output_dir)) if r["event"] == "train"]
    assert len(runs[0]) == 30 and runs[2] == pytest.approx(runs[0], rel=1e-6)
    # Resumed from the step-26 checkpoint with workers (the step-30 one removed): the rest, in order.
    import shutil

    run = tmp_path / "workers-2"
    shutil.rmtree(run / "checkpoints" / "step-30")
    config = tiny_clm_config(max_steps=30, save_every=13, eval_every=100, log_every=1, num_workers=2)
    config.output_dir = str(run)
    assert train(config, resume=True, progress=False)["steps"] == 30
    resumed = [r["train_loss"] for r in read_metrics(run) if r["event"] == "train"]
    assert len(resumed) == 30 and resumed == pytest.approx(runs[0], rel=1e-5)


def test_resume_mid_epoch_from_a_streamed_dataset_of_several_shards(tiny_clm_config, tmp_path, monkeypatch):
    """Training on a streamed prepared dataset (the training split in several Arrow shards, memory-mapped
    when read): a run stopped mid-epoch and resumed gives the per-step losses of the run straight through,
    and those are the losses of the same blocks held in memory in one table (how prepare left them before)."""
    import shutil

    from datasets import Dataset, DatasetDict

    from lmtune.data import arrow
    from lmtune.train.data import prepare_data

    monkeypatch.setattr(arrow, "SHARD_BYTES", 1_000)
    monkeypatch.setattr(arrow, "BATCH_ROWS", 10)
    prepared = prepare_data(tiny_clm_config(), tmp_path / "streamed", quiet=True)
    train_split = prepared.dataset["train"]
    assert len(train_split.cache_files) > 2  # shards, memory-mapped
    steps_per_epoch = len(train_split) // 8
    assert steps_per_epoch >= 6
    in_memory = tmp_path / "in-memory-data"  # the same folder, its splits rewritten as one in-memory table each
    DatasetDict({name: Dataset.from_dict(split.to_dict()) for name, split in prepared.dataset.items()}).save_to_disk(
        str(in_memory)
    )
    shutil.copytree(tmp_path / "streamed" / "tokenizer", in_memory / "tokenizer")
    for name in ("stats.json", "prepare.json", ".lmtune"):
        shutil.copy(tmp_path / "streamed" / name, in_memory / name)

    def run(name, data, max_steps, resume=False):
        config = tiny_clm_config(max_steps=max_steps, schedule="constant", eval_every=100, log_every=1)
        config.data.train, config.output_dir = str(data), str(tmp_path / name)
        train(config, resume=resume, progress=False)
        return [r["train_loss"] for r in read_metrics(tmp_path / name) if r["event"] == "train"]

    total = steps_per_epoch + 2  # into the second epoch
    straight = run("straight", tmp_path / "streamed", total)
    assert len(run("stopped", tmp_path / "streamed", steps_per_epoch // 2)) == steps_per_epoch // 2
    resumed = run("stopped", tmp_path / "streamed", total, resume=True)
    assert len(resumed) == total and resumed == pytest.approx(straight, rel=1e-6)
    assert run("in-memory", in_memory, total) == pytest.approx(straight, rel=1e-6)
