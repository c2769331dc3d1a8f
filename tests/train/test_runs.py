"""`lmtune runs`: run folders found and summarised (finished, stopped early, interrupted mid-write), listed
as a table or JSON, compared in one plot; bad input gives one error line."""

import json
import os
from pathlib import Path

import pytest

from lmtune.errors import LmtuneError
from lmtune.train.runs import compare_runs, find_runs


def test_find_runs_summarises_every_kind_of_run(runs_dir):
    runs = find_runs(runs_dir)
    assert [Path(r.path).relative_to(runs_dir).as_posix() for r in runs] == ["done", "group/early", "broken"]
    done, early, broken = runs
    assert (done.objective, done.model, done.data, done.steps) == ("clm", "gpt-tiny", "hamlet.txt +1", 20)
    assert (done.metric, done.base, done.best, done.best_step, done.state) == ("val_loss", 4.0, 3.2, 20, "done")
    assert done.train_seconds == 75.2 and done.beats_base
    assert (early.objective, early.data, early.metric, early.mode) == ("classify", "reviews.csv", "val_accuracy", "max")
    assert (early.base, early.best, early.best_step, early.state) == (0.5, 0.8, 5, "stopped early")
    # no summary.json: from metrics.jsonl so far, the torn last line skipped
    assert (broken.base, broken.best, broken.best_step, broken.steps) == (4.1, 3.7, 20, 33)
    assert broken.state == "interrupted" and broken.train_seconds is None
    # a run folder itself, and a finished run whose model is gone
    assert [r.path for r in find_runs(runs_dir / "done")] == [str(runs_dir / "done")]
    import shutil

    shutil.rmtree(runs_dir / "done" / "final")
    assert find_runs(runs_dir / "done")[0].state == "no model"


def test_a_finished_run_resumed_is_read_from_its_metrics(runs_dir):
    """`lmtune train --resume --train.max_steps 40` on a finished run: summary.json is the old run's."""
    done = runs_dir / "done"
    with (done / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 30, "event": "eval", "model": "tuned", "val_loss": 3.0}) + "\n")
    os.utime(done / "metrics.jsonl", (1_000_100, 1_000_100))
    (info,) = find_runs(done)
    assert (info.state, info.steps, info.best, info.best_step) == ("interrupted", 30, 3.0, 30)


def test_files_half_written_or_missing_are_no_traceback(tmp_path):
    run = tmp_path / "odd"
    run.mkdir()
    (run / "config.yaml").write_text("objective: [clm\n")  # not YAML
    (run / "summary.json").write_text('{"steps": 4')  # cut off
    (run / "metrics.jsonl").write_bytes(b'\xff\xfe[1, 2]\n"text"\n{"step": 2, "event": "train", "train_loss": 1}\n{')
    (info,) = find_runs(tmp_path)
    assert (info.objective, info.model, info.metric, info.steps, info.base, info.best) == (
        None,
        None,
        "val_loss",
        2,
        None,
        None,
    )
    assert info.state == "interrupted"


def test_cli_table_newest_last(cli, runs_dir, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    result = cli("runs", runs_dir)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.index("done") < out.index("early") < out.index("broken")
    assert "4.0000 → 3.2000" in out and "0.5000 → 0.8000" in out and "4.1000 → 3.7000" in out
    assert "stopped early" in out and "interrupted" in out and "1h02m" in out and "1m15s" in out


def test_cli_default_folder_is_runs(cli, runs_dir, monkeypatch):
    monkeypatch.chdir(runs_dir.parent)
    result = cli("runs", "--json")
    assert result.returncode == 0, result.stderr
    assert [Path(r["path"]).name for r in json.loads(result.stdout)] == ["done", "early", "broken"]


def test_cli_json(cli, runs_dir):
    result = cli("runs", runs_dir, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["state"], r["base"], r["best"]) for r in rows] == [
        ("done", 4.0, 3.2),
        ("stopped early", 0.5, 0.8),
        ("interrupted", 4.1, 3.7),
    ]
    assert rows[0]["steps"] == 20 and rows[0]["objective"] == "clm" and rows[0]["modified"].startswith("1970-01-1")


def test_compare_writes_a_png_and_keeps_an_existing_file(cli, runs_dir, tmp_path):
    from PIL import Image

    out = tmp_path / "compare.png"
    runs = [runs_dir / "done", runs_dir / "broken"]
    result = cli("runs", "--compare", *runs, "--out", out)
    assert result.returncode == 0, result.stderr
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    before = out.read_bytes()
    result = cli("runs", "--compare", *runs, "--out", out)
    assert result.returncode == 1 and result.error_lines == [
        f"error: {out} already exists; pass --overwrite to replace it or choose another name"
    ]
    assert out.read_bytes() == before
    result = cli(
        "runs", "--compare", runs_dir / "group" / "early", *runs, "--out", out, "--overwrite", "--metric", "val_other"
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_compare_never_writes_onto_a_run(runs_dir):
    (runs_dir / "done" / "loss.png").write_bytes(b"the run's own plot")
    with pytest.raises(LmtuneError, match="it is the input file"):
        compare_runs([runs_dir / "done"], runs_dir / "done" / "loss.png", overwrite=True)
    assert (runs_dir / "done" / "loss.png").read_bytes() == b"the run's own plot"


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "error: no such folder: {tmp}/missing"),
        (
            "empty",
            "error: no runs in {tmp}/empty (a run folder, made by lmtune train, holds config.yaml and metrics.jsonl)",
        ),
        ("compare-not-a-run", "error: {tmp}/empty is not a run folder"),
        ("compare-no-metrics", "error: {tmp}/bare has no metrics to plot (metrics.jsonl is missing or empty)"),
        (
            "compare-unknown-metric",
            "error: {tmp}/runs/done has no val_f1 evaluations in metrics.jsonl (it has val_loss, "
            "val_other; choose one with --metric)",
        ),
        ("compare-no-out", "error: --compare needs a plot file: add --out compare.png"),
        (
            "compare-bad-suffix",
            "error: cannot write {tmp}/plot.txt: give a .png (or .svg, .pdf) file name for the plot",
        ),
    ],
)
def test_bad_input_is_one_error_line(cli, runs_dir, tmp_path, case, expected):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.yaml").write_text("objective: clm\n")
    (tmp_path / "bare" / "summary.json").write_text("{}")
    args = {
        "missing": ["runs", tmp_path / "missing"],
        "empty": ["runs", tmp_path / "empty"],
        "compare-not-a-run": ["runs", "--compare", runs_dir / "done", tmp_path / "empty", "--out", tmp_path / "p.png"],
        "compare-no-metrics": ["runs", "--compare", tmp_path / "bare", "--out", tmp_path / "p.png"],
        "compare-unknown-metric": [
            "runs",
            "--compare",
            runs_dir / "done",
            "--metric",
            "val_f1",
            "--out",
            tmp_path / "p.png",
        ],
        "compare-no-out": ["runs", "--compare", runs_dir / "done"],
        "compare-bad-suffix": ["runs", "--compare", runs_dir / "done", "--out", tmp_path / "plot.txt"],
    }[case]
    result = cli(*args)
    assert result.returncode == 1
    assert len(result.error_lines) == 1 and result.error_lines[0].startswith(expected.format(tmp=tmp_path))
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "p.png").exists()


def test_a_real_run_is_listed_with_its_best_metric(cli, tiny_clm_config, tmp_path, monkeypatch):
    from lmtune.train.loop import train

    summary = train(tiny_clm_config(max_steps=10, eval_every=5), progress=False)
    monkeypatch.setenv("COLUMNS", "200")
    result = cli("runs", tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["path"] == str(tmp_path / "run") and row["state"] in ("done", "stopped early")
    assert row["steps"] == summary["steps"] == 10 and row["best_step"] == summary["best_step"]
    assert row["best"] == summary["best"]["val_loss"] and row["base"] == summary["base"]["val_loss"]
    assert row["objective"] == "clm" and row["model"] == "gpt-tiny" and row["data"] == "stories"
    assert cli("runs", "--compare", tmp_path / "run", "--out", tmp_path / "run.png").returncode == 0
