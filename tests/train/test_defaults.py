"""`lmtune train --data FILE`: no recipe needed; the chosen recipe is printed, saved and reproducible."""

import json

import pytest
import yaml

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
    few, why = recipe_for_data([str(small)], model="gpt-tiny")
    many, _ = recipe_for_data([str(large)], model="gpt-tiny", minutes=30)
    assert few["data"]["block_size"] == 128 and many["data"]["block_size"] == 256
    # a time budget, not a fixed number of epochs; the learning rate measured
    assert few["train"]["epochs"] == "auto" and few["train"]["max_minutes"] == 10 and many["train"]["max_minutes"] == 30
    assert few["train"]["lr"] == "auto" and any("probe" in line for line in why)
    assert few["objective"] == "clm" and "lora" not in few["model"]
    assert recipe_for_data([str(small)], objective="classify")[0]["model"]["name"] == "minilm-l6"


def test_lora_where_a_full_fine_tune_would_overfit(tmp_path, monkeypatch):
    """135M parameters against ~2.5k tokens: the recipe picks LoRA (and says why), the very plan the check
    before training would otherwise warn about."""
    small = tmp_path / "small.txt"
    small.write_text("word " * 2_000)
    monkeypatch.setattr("lmtune.train.defaults.model_parameters", lambda name: 135_000_000)
    recipe, why = recipe_for_data([str(small)], model="some-folder")
    assert recipe["model"]["lora"] == {"r": 16, "alpha": 32}
    assert any("full fine-tune would overfit" in line for line in why)
    monkeypatch.setattr("lmtune.train.defaults.model_parameters", lambda name: 1_000_000)
    assert "lora" not in recipe_for_data([str(small)], model="some-folder")[0]["model"]


def test_train_with_data_only(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "book.txt").write_text(make_story(5, 200))
    result = cli(
        "train",
        "--data",
        "book.txt",
        "--model",
        "gpt-tiny",
        "--tokenizer.name",
        "gpt2-bpe",
        "--train.max_steps",
        "3",
        "--train.lr",
        "1e-3",
        "--eval.reference",
        "null",
    )
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


def test_the_recipe_free_path_never_warns_against_its_own_choices(cli, tmp_path, monkeypatch):
    """A model large for its text: left alone, a full fine-tune and many epochs would draw lmtune's own
    warnings; the recipe picks what they would advise (LoRA, a measured rate, the best model kept) and says
    why, and training prints no warning."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmtune.models.load import load_tokenizer

    tokenizer = load_tokenizer("gpt2-bpe", "gpt-tiny")
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_embd=320, n_layer=1, n_head=2, n_positions=256)
    ).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("\n\n".join(make_story(i, 40) for i in range(6)))  # ~3k tokens
    result = cli(
        "train",
        "--data",
        "notes.txt",
        "--model",
        tmp_path / "model",
        "--minutes",
        "0.6",
        "--train.precision",
        "fp32",
        "--eval.reference_tokens",
        "256",
    )
    assert result.returncode == 0, result.stderr
    assert "model.lora (r 16)" in result.stderr and "full fine-tune would overfit" in result.stderr
    assert [line for line in result.stderr.splitlines() if "warning" in line.lower()] == []
    # The rate it trained with is written down, measured or (a budget too short to probe, as
    # test_the_probe_fits_the_time_budget_or_is_skipped shows) the objective's usual one: never "auto".
    saved = yaml.safe_load((tmp_path / "runs" / "notes-model" / "config.yaml").read_text())
    assert isinstance(saved["train"]["lr"], float) and saved["train"]["lr"] > 0
