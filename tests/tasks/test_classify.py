import csv
import json

import pytest

from lmtune.config import build_config
from lmtune.errors import LmtuneError
from lmtune.tasks.classify import scores_from_confusion, stratified_split
from lmtune.train.loop import train

POSITIVE = [
    "a wonderful moving triumph",
    "brilliant and joyful",
    "a delight from start to finish",
    "superb acting and a great story",
    "warm funny and wonderful",
]
NEGATIVE = [
    "a dull tedious mess",
    "boring and awful",
    "a painful waste of time",
    "terrible acting and a dreadful plot",
    "cold flat and boring",
]


def write_reviews(path, n=60, labels=("good", "bad")):
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "sentiment"])
        for i in range(n):
            pool, label = (POSITIVE, labels[0]) if i % 2 == 0 else (NEGATIVE, labels[1])
            writer.writerow([f"{pool[i % 5]} number {i}", label])
    return path


def config_for(tmp_path, data, **data_extra):
    return build_config(
        {
            "objective": "classify",
            "output_dir": str(tmp_path / "run"),
            "model": {"name": "bert-tiny", "dropout": 0.0},
            "data": {
                "train": str(data),
                "text_column": "review",
                "label_column": "sentiment",
                "block_size": 16,
                "val_fraction": 0.2,
                **data_extra,
            },
            "train": {"batch_size": 8, "lr": 1e-3, "epochs": 20, "eval_every": 1000, "precision": "fp32"},
            "report": {"compare_base": False},
        }
    )


def test_stratified_split_is_seeded():
    labels = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    split = stratified_split(labels, {"validation": 0.1}, seed=3)
    assert split == stratified_split(labels, {"validation": 0.1}, seed=3)
    assert split != stratified_split(labels, {"validation": 0.1}, seed=4)
    val = [labels[i] for i in split["validation"]]
    assert val.count("a") == 5 and val.count("b") == 3 and val.count("c") == 2
    assert not set(split["train"]) & set(split["validation"])


def test_scores_from_confusion():
    scores = scores_from_confusion([[8, 2], [1, 9]], ["x", "y"])
    assert scores["val_accuracy"] == pytest.approx(17 / 20)
    px, rx = 8 / 9, 8 / 10
    assert scores["val_per_class"]["x"]["f1"] == pytest.approx(2 * px * rx / (px + rx))


def test_learns_separable_data_and_labels_round_trip(tmp_path):
    summary = train(config_for(tmp_path, write_reviews(tmp_path / "r.csv")), progress=False)
    assert summary["final"]["val_loss"] < summary["base"]["val_loss"]
    assert summary["final"]["val_accuracy"] >= 0.9
    run = tmp_path / "run"
    assert (run / "confusion_matrix.png").stat().st_size > 1000
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert evals[-1]["val_confusion_matrix"] and evals[-1]["val_labels"] == ["bad", "good"]

    # Plain transformers shows the label names saved in config.json.
    from transformers import pipeline

    pipe = pipeline("text-classification", model=summary["final_model"], device="cpu")
    assert pipe("a wonderful moving triumph")[0]["label"] == "good"

    from lmtune.infer.classify import classify
    from lmtune.train.evaluate import evaluate_model

    scored = evaluate_model(
        summary["final_model"],
        str(write_reviews(tmp_path / "more.csv", n=20)),
        text_column="review",
        label_column="sentiment",
    )
    assert scored["val_accuracy"] >= 0.9 and scored["val_samples"] == 20

    results = classify(summary["final_model"], ["brilliant and joyful", "boring and awful"])
    assert [r["label"] for r in results] == ["good", "bad"]
    assert all(sum(r["scores"].values()) == pytest.approx(1.0) for r in results)


def test_batch_csv_in_and_out(tmp_path):
    summary = train(config_for(tmp_path, write_reviews(tmp_path / "r.csv")), progress=False)
    import subprocess
    import sys

    src = write_reviews(tmp_path / "in.csv", n=6)
    out = tmp_path / "preds.csv"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmtune.cli",
            "classify",
            summary["final_model"],
            "--input",
            src,
            "--text-column",
            "review",
            "--output",
            out,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and {"review", "sentiment", "predicted_label", "p_good", "p_bad"} <= set(rows[0])
    assert sum(r["predicted_label"] == r["sentiment"] for r in rows) >= 5


def test_one_class_and_unknown_label_column(tmp_path):
    one = write_reviews(tmp_path / "one.csv", labels=("same", "same"))
    with pytest.raises(LmtuneError, match="only one class"):
        train(config_for(tmp_path, one), progress=False)
    cfg = config_for(tmp_path, write_reviews(tmp_path / "r.csv"))
    cfg.data.label_column = "stars"
    cfg.output_dir = str(tmp_path / "run2")
    with pytest.raises(LmtuneError, match="no label column 'stars'"):
        train(cfg, progress=False)


def test_integer_labels_and_truncation_count(tmp_path):
    path = tmp_path / "r.jsonl"
    with path.open("w") as fh:
        for i in range(40):
            fh.write(
                json.dumps(
                    {"review": ("long " * 40 if i % 4 == 0 else "") + f"{POSITIVE[i % 5]} {i}", "sentiment": i % 3}
                )
                + "\n"
            )
    cfg = config_for(tmp_path, path)
    cfg.train.epochs = 1
    summary = train(cfg, progress=False)
    stats = json.loads((tmp_path / "run" / "data" / "stats.json").read_text())
    assert stats["labels"] == ["0", "1", "2"] and stats["truncated samples"] == 10
    assert summary["final"]["val_labels"] == ["0", "1", "2"]
