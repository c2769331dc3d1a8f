"""Experiment trackers (`train.report_to`): the records of metrics.jsonl, the recipe and the plots, also
sent to TensorBoard, MLflow, Weights & Biases or trackio.

Each tracker goes through its own library, an optional dependency (`pip install 'lmtune[NAME]'`); every
chosen one is checked before training starts. Only the main process reports. Metric names are the keys of
metrics.jsonl's records: `train_loss`, `lr`, `val_loss`, ... for the tuned model; `base/val_loss` for the
base model (step 0); `baseline/NAME/val_accuracy` for the baselines of classification."""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any

from lmtune.errors import LmtuneError

log = logging.getLogger("lmtune")

# The module each tracker imports; its extra in pyproject.toml has the tracker's name.
MODULES = {"tensorboard": "torch.utils.tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}


class Tracker:
    """One experiment tracker. The recipe goes in when it opens; then metrics, plots, and close()."""

    name = ""

    def log_params(self, params: dict[str, Any]) -> None:
        """The resolved recipe (nested, as in config.yaml)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Numbers only, named as in metrics.jsonl (see `record_metrics`)."""

    def log_artifact(self, path: Path) -> None:
        """A file of the run, e.g. loss.png."""

    def close(self, status: str = "finished") -> None:
        """`status`: finished, failed, or killed (Ctrl-C/SIGTERM)."""


class TensorBoardTracker(Tracker):
    """Event files in run/tensorboard: `tensorboard --logdir runs/NAME/tensorboard`."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, run_name: str, recipe: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.log_params(recipe)

    def log_params(self, params: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        # The HParams tab (flat keys, with the selection metric as its column) and the recipe as text.
        flat = {
            key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
            for key, value in flatten(params).items()
        }
        metric = flat.get("train.select_by", "auto")
        if metric == "auto":
            from lmtune.tasks import OBJECTIVES

            objective = OBJECTIVES.get(params.get("objective"))
            metric = objective.selection_metric if objective else "val_loss"
        for summary in hparams(flat, {metric: 0.0}):
            self.writer._get_file_writer().add_summary(summary)
        self.writer.add_text("recipe", "\n".join("    " + line for line in json.dumps(params, indent=2).splitlines()))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_artifact(self, path: Path) -> None:
        if path.suffix.lower() == ".png":
            import numpy as np
            from PIL import Image

            with Image.open(path) as image:
                self.writer.add_image(path.stem, np.asarray(image.convert("RGB")), dataformats="HWC")

    def close(self, status: str = "finished") -> None:
        self.writer.close()


class MlflowTracker(Tracker):
    """A run in the experiment named after the run folder, in run/mlruns unless MLFLOW_TRACKING_URI is set:
    `mlflow ui --backend-store-uri runs/NAME/mlruns`."""

    name = "mlflow"
    MAX_VALUE = 6000  # MLflow's longest parameter value

    def __init__(self, run_dir: Path, run_name: str, recipe: dict[str, Any]):
        from mlflow.tracking import MlflowClient

        uri = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            uri = (run_dir / "mlruns").resolve().as_uri()
            # MLflow 3.x keeps a folder store only when asked; a server or database is the user's choice above.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(run_name)
        if experiment is None:
            experiment_id = self.client.create_experiment(run_name)
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment_id)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        self.log_params(recipe)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [
            Param(key, (value if isinstance(value, str) else json.dumps(value))[: self.MAX_VALUE])
            for key, value in flatten(params).items()
        ]
        for start in range(0, len(flat), 100):  # a tracking server takes at most 100 per request
            self.client.log_batch(self.run_id, params=flat[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in metrics.items()])

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str = "finished") -> None:
        self.client.set_terminated(self.run_id, status.upper())  # FINISHED, FAILED, KILLED


class WandbTracker(Tracker):
    """A run in the W&B project "lmtune", its files in run/wandb. WANDB_MODE=offline works offline
    (`wandb sync` uploads later); WANDB_MODE and the other WANDB_* variables are respected."""

    name = "wandb"

    def __init__(self, run_dir: Path, run_name: str, recipe: dict[str, Any]):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project="lmtune", name=run_name, dir=str(run_dir), config=recipe)

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_artifact(self, path: Path) -> None:
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            self.run.log({f"plots/{path.stem}": self.wandb.Image(str(path))})
        else:
            self.run.save(str(path), base_path=str(path.parent), policy="now")

    def close(self, status: str = "finished") -> None:
        self.run.finish(exit_code=0 if status == "finished" else 1)


class TrackioTracker(Tracker):
    """A run in the trackio project "lmtune" (stored locally by trackio: `trackio show`)."""

    name = "trackio"

    def __init__(self, run_dir: Path, run_name: str, recipe: dict[str, Any]):
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project="lmtune", name=run_name, config=recipe)

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_artifact(self, path: Path) -> None:
        image = getattr(self.trackio, "Image", None)  # trackio 0.3 and later
        if image is not None and path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            self.run.log({f"plots/{path.stem}": image(str(path))})

    def close(self, status: str = "finished") -> None:
        self.run.finish()


TRACKERS: dict[str, type[Tracker]] = {
    cls.name: cls for cls in (TensorBoardTracker, MlflowTracker, WandbTracker, TrackioTracker)
}


def check_trackers(names: list[str]) -> None:
    """Raise LmtuneError unless every chosen tracker's library imports: before any work."""
    missing, broken = [], []
    for name in names:
        try:
            importlib.import_module(MODULES[name])
        except ImportError:
            missing.append(name)
        except Exception as err:  # installed, but its import fails (e.g. a clashing dependency)
            broken.append(f"{name} fails to import ({_described(err)})")
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise LmtuneError(
            f"train.report_to: {', '.join(missing)} {verb} not installed; pip install 'lmtune[{','.join(missing)}]'"
        )
    if broken:
        raise LmtuneError(f"train.report_to: {'; '.join(broken)}")


def open_trackers(names: list[str], run_dir: Path, recipe: dict[str, Any]) -> list[Tracker]:
    """Check every chosen library, then open one tracker each (named after the run folder), the recipe
    logged as its parameters. A tracker that fails to open is an error, before training."""
    check_trackers(names)
    run_dir = Path(run_dir)
    run_name = run_dir.resolve().name
    opened: list[Tracker] = []
    for name in names:
        try:
            opened.append(TRACKERS[name](run_dir, run_name, recipe))
        except Exception as err:
            close_trackers(opened, "failed")
            raise LmtuneError(f"train.report_to: could not start {name} ({_described(err)})") from err
    return opened


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 0.001}} -> {'train.lr': 0.001}; lists and other values stay as they are."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def record_metrics(record: dict[str, Any]) -> tuple[int, dict[str, float]]:
    """A metrics.jsonl record -> (step, its numbers by metric name). Evaluations of the base model are
    `base/...`, baselines `baseline/NAME/...`, the tuned model's and training's plain; nested numbers
    (per-class scores) are `val_per_class/LABEL/precision`; strings, lists, None and non-finite numbers are
    left out."""
    event, model = record.get("event"), record.get("model")
    if event == "baseline":
        prefix = f"baseline/{_metric_name(model)}/"
    elif event == "eval" and model == "base":
        prefix = "base/"
    else:
        prefix = ""
    metrics: dict[str, float] = {}

    def add(name: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                add(f"{name}/{_metric_name(key)}", inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            metrics[name] = float(value)

    for key, value in record.items():
        if key not in ("step", "event", "model"):
            add(prefix + _metric_name(key), value)
    return int(record.get("step", 0)), metrics


def _metric_name(name: Any) -> str:
    """Names every tracker accepts: 'TF-IDF + logistic regression' -> 'TF-IDF_logistic_regression'."""
    return re.sub(r"[^\w.-]+", "_", str(name)).strip("_") or "_"


def log_record(trackers: list[Tracker], record: dict[str, Any]) -> None:
    """Send one metrics.jsonl record to every tracker."""
    step, metrics = record_metrics(record)
    if metrics:
        _each(trackers, "log_metrics", metrics, step)


def log_artifacts(trackers: list[Tracker], paths: list[str | Path]) -> None:
    for path in paths:
        _each(trackers, "log_artifact", Path(path))


def close_trackers(trackers: list[Tracker], status: str = "finished") -> None:
    """Close every tracker (a failure to close is a warning: the run itself is done) and empty the list."""
    for tracker in trackers:
        try:
            tracker.close(status)
        except Exception as err:
            log.warning("warning: train.report_to: closing %s failed (%s)", tracker.name, _described(err))
    trackers.clear()


def _each(trackers: list[Tracker], method: str, *args) -> None:
    """Call `method` on every tracker. One that fails is warned about and dropped from the list: a
    tracking server going away must not end a long training run (metrics.jsonl has every record)."""
    for tracker in list(trackers):
        try:
            getattr(tracker, method)(*args)
        except Exception as err:
            log.warning(
                "warning: train.report_to: %s failed (%s); no longer reporting to it (metrics.jsonl has every record)",
                tracker.name,
                _described(err),
            )
            trackers.remove(tracker)
            close_trackers([tracker], "failed")


def _described(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
