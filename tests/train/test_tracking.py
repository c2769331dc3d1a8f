"""train.report_to: metrics.jsonl's records, the recipe and the plots also go to TensorBoard or MLflow (W&B
and trackio through the same interface); a missing library stops the run before any work."""

import logging
import re
import sys
from pathlib import Path

import pytest

from lmtune.config import build_config
from lmtune.errors import LmtuneError
from lmtune.train import loop
from lmtune.train.loop import train
from lmtune.train.plots import read_metrics
from lmtune.train.tracking import Tracker, log_record, record_metrics


def tiny_run(tiny_clm_config, report_to):
    config = tiny_clm_config(max_steps=6, eval_every=3, log_every=2, report_to=report_to)
    summary = train(config, progress=False)
    return Path(summary["run"]), read_metrics(Path(summary["run"]))


def logged(records, key, event="train"):
    return [(r["step"], r[key]) for r in records if r["event"] == event and r.get("model") != "base" and key in r]


def assert_same(found, expected, rel):
    """The same steps, and the same values within `rel` (TensorBoard keeps float32)."""
    assert [step for step, _ in found] == [step for step, _ in expected]
    assert [value for _, value in found] == pytest.approx([value for _, value in expected], rel=rel)


def test_tensorboard_gets_the_records_of_metrics_jsonl(tiny_clm_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, records = tiny_run(tiny_clm_config, ["tensorboard"])
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]

    def history(tag):
        return [(event.step, event.value) for event in events.Scalars(tag)]

    assert [step for step, _ in logged(records, "train_loss")] == [2, 4, 6]
    assert_same(history("train_loss"), logged(records, "train_loss"), rel=1e-6)
    assert_same(history("val_loss"), logged(records, "val_loss", "eval"), rel=1e-6)
    base = next(r for r in records if r.get("model") == "base")
    assert_same(history("base/val_loss"), [(0, base["val_loss"])], rel=1e-6)  # not mixed with the tuned model's
    assert {"lr", "tokens_per_s"} <= set(scalars)
    assert "loss" in events.Tags()["images"]  # loss.png


def test_mlflow_gets_the_recipe_metrics_and_plots(tiny_clm_config, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # lmtune's folder store works without it
    run, records = tiny_run(tiny_clm_config, ["mlflow"])
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name(run.name)
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == run.name
    params = found.data.params
    assert params["train.lr"] == "0.003" and params["model.name"] == "gpt-tiny"
    assert params["train.report_to"] == '["mlflow"]'
    history = sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, "train_loss"))
    assert_same(history, logged(records, "train_loss"), rel=1e-9)
    assert "base/val_loss" in found.data.metrics and "val_loss" in found.data.metrics
    assert "loss.png" in [artifact.path for artifact in client.list_artifacts(found.info.run_id)]


def test_a_missing_library_stops_the_run_before_any_work(tiny_clm_config, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails, as when it is not installed
    monkeypatch.setattr(loop, "_train", lambda *args: pytest.fail("training started"))
    config = tiny_clm_config(report_to=["tensorboard", "wandb"])
    with pytest.raises(LmtuneError, match=re.escape("pip install 'lmtune[wandb]'")) as err:
        train(config, progress=False)
    assert str(err.value).startswith("train.report_to: wandb is not installed") and "\n" not in str(err.value)
    assert not Path(config.output_dir).exists()


class FakeTracker(Tracker):
    name = "fake"

    def __init__(self, fail=False):
        self.fail, self.metrics, self.status = fail, [], None

    def log_metrics(self, metrics, step):
        if self.fail:
            raise ConnectionError("the server went away")
        self.metrics.append((step, metrics))

    def close(self, status="finished"):
        self.status = status


def test_trackers_are_closed_when_training_fails(tiny_clm_config, monkeypatch):
    tracker = FakeTracker()
    monkeypatch.setattr(loop, "open_trackers", lambda *args: [tracker])

    def crash(*args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(loop, "_train", crash)
    with pytest.raises(RuntimeError):
        train(tiny_clm_config(report_to=["tensorboard"]), progress=False)
    assert tracker.status == "failed"


def test_metric_names_and_a_failing_tracker(caplog):
    step, metrics = record_metrics(
        {
            "step": 0,
            "event": "baseline",
            "model": "TF-IDF + logistic regression",
            "val_accuracy": 0.5,
            "val_labels": ["a", "b"],
            "note": None,
        }
    )
    assert (step, metrics) == (0, {"baseline/TF-IDF_logistic_regression/val_accuracy": 0.5})
    _, metrics = record_metrics(
        {
            "step": 0,
            "event": "eval",
            "model": "base",
            "val_loss": 2.0,
            "val_per_class": {"pos": {"f1": 0.75}},
            "val_confusion_matrix": [[1, 0], [0, 1]],
        }
    )
    assert metrics == {"base/val_loss": 2.0, "base/val_per_class/pos/f1": 0.75}
    assert record_metrics({"step": 4, "event": "train", "train_loss": 1.5, "lr": 1e-3})[1] == {
        "train_loss": 1.5,
        "lr": 1e-3,
    }
    # A tracker that fails mid-run is dropped with a warning; the others (and training) go on.
    good, bad = FakeTracker(), FakeTracker(fail=True)
    trackers = [bad, good]
    with caplog.at_level(logging.WARNING, logger="lmtune"):
        log_record(trackers, {"step": 2, "event": "train", "train_loss": 1.0})
        log_record(trackers, {"step": 4, "event": "train", "train_loss": 0.5})
    assert trackers == [good] and bad.status == "failed" and len(good.metrics) == 2
    assert any("fake failed (ConnectionError: the server went away)" in r.getMessage() for r in caplog.records)


def test_report_to_key(cli):
    result = cli("keys", "report_to")
    assert result.returncode == 0 and "train.report_to" in result.stdout and "tensorboard" in result.stdout
    assert build_config({"train": {"report_to": "tensorboard, mlflow"}}).train.report_to == ["tensorboard", "mlflow"]
    with pytest.raises(LmtuneError, match="train.report_to"):
        build_config({"train": {"report_to": ["comet"]}})
