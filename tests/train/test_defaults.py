"""`lmtune train --data FILE`: no recipe needed; the chosen recipe is printed, saved and reproducible."""
import json

import pytest

from lmtune.config import load_config
from lmtune.train.defaults import estimate_tokens, guess_objective, recipe_for_data
from tests.conftest import make_story


def test_objective_follows_the_data(tmp_path):
    (tmp_path / "book.txt").write_text("text")
    (tmp_path / "reviews.csv").write_text("text,label\ngood,1\n")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    assert guess_objective([str(tmp_path / "book.txt")]) == "clm"
    assert guess_objective([str(tmp_path / "reviews.csv")]) == "classify"
    assert guess_objective([str(tmp_path / "pairs.jsonl")]) == "sft"


def test_settings_follow_the_corpus_size(tmp_path):
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    small.write_text("word " * 2_000)  # ~2.5k tokens
    large.write_text("word " * 400_000)  # ~500k tokens
    assert estimate_tokens([str(small)]) == pytest.approx(2_500, rel=0.01)
    few = recipe_for_data([str(small)], model="gpt-tiny")
    many = recipe_for_data([str(large)], model="gpt-tiny")
    assert few["data"]["block_size"] == 128 and many["data"]["block_size"] == 256
    assert few["train"]["epochs"] == 3 and many["train"]["epochs"] == 1
    assert few["objective"] == "clm" and "lora" not in few["model"]
    assert recipe_for_data([str(small)], objective="classify")["model"]["name"] == "minilm-l6"


def test_train_with_data_only(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "book.txt").write_text(make_story(5, 200))
    result = cli("train", "--data", "book.txt", "--model", "gpt-tiny", "--tokenizer.name", "gpt2-bpe",
                 "--train.max_steps", "3")
    assert result.returncode == 0, result.stderr
    assert "recipe" in result.stderr and "block_size: 128" in result.stderr
    run = tmp_path / "runs" / "book-gpt-tiny"
    assert (run / "final" / "config.json").exists()
    saved = load_config(run / "config.yaml")  # reproduces the run
    assert saved.data.train == "book.txt" and saved.train.max_steps == 3 and saved.model.name == "gpt-tiny"
    missing = cli("train", "--data", "nope.txt")
    assert missing.returncode == 1 and "file not found" in missing.error_lines[0]
    neither = cli("train")
    assert neither.returncode == 1 and "lmtune train --data" in neither.error_lines[0]
