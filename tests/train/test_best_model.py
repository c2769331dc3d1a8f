"""Never hand back a worse model: final/ is the best evaluated model, the report names its step, and a
plan that will overfit is warned about before training."""

from pathlib import Path

import pytest
import torch

from lmtune.config import build_config
from lmtune.train.evaluate import evaluate_model
from lmtune.train.loop import train
from lmtune.train.report import print_report
from lmtune.train.selection import eval_interval
from tests.conftest import make_story


def overfitting_config(tmp_path, **train_settings):
    """One short text (~600 tokens), a high constant learning rate and 60 epochs: it overfits."""
    (tmp_path / "tiny.txt").write_text(make_story(3, 40))
    return build_config(
        {
            "objective": "clm",
            "output_dir": str(tmp_path / "run"),
            "model": {"name": "gpt-tiny", "dropout": 0.0},
            "tokenizer": {"train": {"kind": "bpe", "vocab_size": 300, "min_frequency": 1}},
            "data": {"train": str(tmp_path / "tiny.txt"), "block_size": 32, "val_fraction": 0.2},
            "train": {
                "batch_size": 4,
                "lr": 3e-2,
                "epochs": 60,
                "schedule": "constant",
                "precision": "fp32",
                "threads": 1,
                **train_settings,
            },
            "report": {"compare_base": False},
        }
    )


def test_final_is_the_best_model_and_early_stopping_ends_an_overfitting_run(tmp_path, capsys):
    config = overfitting_config(tmp_path)
    assert config.train.eval_every == "auto" and config.train.early_stopping_patience == "auto"
    summary = train(config, progress=False)
    run = Path(summary["run"])
    # It overfitted: the best evaluation came before the end, and early stopping (on by default) ended it
    # exactly 4 evaluations (twice an epoch, bounded by 15-40 a run) after the best one.
    steps_per_epoch = -(-summary["data"]["train blocks"] // 4)
    every = eval_interval("auto", 60 * steps_per_epoch, steps_per_epoch)
    assert every == -(-steps_per_epoch // 2) or every == -(-60 * steps_per_epoch // 40)
    assert summary["stopped_early"] and summary["steps"] == summary["best_step"] + 4 * every
    assert summary["best"]["val_loss"] < summary["last"]["val_loss"]
    # final/ holds the best model, last/ the last one: scoring each reproduces its recorded metric.
    final = evaluate_model(str(run / "final"), str(run / "data"), batch_size=4, precision="fp32")["val_loss"]
    last = evaluate_model(str(run / "last"), str(run / "data"), batch_size=4, precision="fp32")["val_loss"]
    assert final == pytest.approx(summary["best"]["val_loss"], rel=1e-5)
    assert last == pytest.approx(summary["last"]["val_loss"], rel=1e-5)
    assert summary["final"] == summary["best"] and summary["beats_base"] is True
    capsys.readouterr()
    print_report(config, summary)
    shown = capsys.readouterr().out
    assert f"best (step {summary['best_step']})" in shown and f"last (step {summary['steps']})" in shown


def test_keep_last_keeps_the_last_model_in_final(tmp_path):
    config = overfitting_config(tmp_path, keep="last", early_stopping_patience=None, max_steps=80)
    summary = train(config, progress=False)
    run = Path(summary["run"])
    assert summary["steps"] == 80 and summary["final"] == summary["last"]
    assert (run / "best").exists() == (summary["best_step"] != 80)


def test_a_run_that_never_beats_the_base_says_so(tmp_path, capsys):
    config = overfitting_config(tmp_path, lr=0.0, max_steps=6)
    summary = train(config, progress=False)
    assert summary["beats_base"] is False
    print_report(config, summary)
    assert "no tuned model beat the base model" in capsys.readouterr().out


def test_the_overfitting_warning_is_for_plans_without_a_best_model_kept(tmp_path):
    """Many epochs over little text are harmless where validation picks the best model (the default), and
    warned about where it cannot: no validation split, or train.keep last."""
    from lmtune.train.advice import plan_warnings

    model = torch.nn.Linear(4, 4)
    config = overfitting_config(tmp_path)
    assert not any("overfit" in w for w in plan_warnings(config, model, 600, 20, 300, validated=True))
    assert any("will likely overfit" in w for w in plan_warnings(config, model, 600, 20, 300, validated=False))
    kept_last = overfitting_config(tmp_path, keep="last")
    assert any("will likely overfit" in w for w in plan_warnings(kept_last, model, 600, 20, 300, validated=True))
