"""The web UI's Runs tab: the runs table and the comparison plot, for folders below the server's folder only."""

import pytest


def test_runs_tab_lists_and_compares(runs_dir, monkeypatch):  # noqa: F811
    gr = pytest.importorskip("gradio")
    from lmtune.serve.ui import build_ui

    monkeypatch.chdir(runs_dir.parent)
    ui = build_ui({})
    fns = {f.fn.__name__: f.fn for f in ui.fns.values()}
    table, chosen = fns["list_runs"]("runs")
    assert [row[0] for row in table.value["data"]] == ["runs/done", "runs/group/early", "runs/broken"]
    assert table.value["data"][0][4] == "val_loss 4.0000 → 3.2000"  # the runs differ in metric
    assert chosen.value == ["runs/group/early", "runs/broken"]
    figure = fns["compare"](["runs/done", "runs/broken"], "")
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == [
        "done",
        "broken",
        "train loss (dashed, smoothed)",
    ]
    assert figure.axes[0].get_ylabel() == "val_loss"
    with pytest.raises(gr.Error, match="runs/broken has no val_accuracy evaluations"):  # a classifier's metric first
        fns["compare"](chosen.value, "")
    assert fns["compare"](chosen.value, "val_other").axes[0].get_ylabel() == "val_other"
    for bad in ("/", "..", "missing"):
        with pytest.raises(gr.Error):
            fns["list_runs"](bad)
    with pytest.raises(gr.Error, match="current folder only"):
        fns["compare"]([str(runs_dir.parent.parent)], "")
