import pytest

from lmtune.config import load_config, parse_overrides
from lmtune.errors import LmtuneError


def test_recipe_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("objective: clm\ntrain:\n  lr: 0.001\n  batch_size: 4\n")
    config = load_config(recipe, parse_overrides(["--train.lr", "1e-4", "--data.block_size=128"]))
    assert config.train.lr == 1e-4 and config.train.batch_size == 4 and config.data.block_size == 128


def test_unknown_key_suggests(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(LmtuneError, match="unknown config key 'train.learning_rate'"):
        load_config(recipe)
    with pytest.raises(LmtuneError, match="did you mean 'train.batch_size'"):
        load_config(None, parse_overrides(["--train.batch_sise", "3"]))


def test_bad_value_and_bad_yaml(tmp_path):
    with pytest.raises(LmtuneError, match="train.batch_size"):
        load_config(None, {"train": {"batch_size": "many"}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(LmtuneError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(LmtuneError, match="recipe not found"):
        load_config(tmp_path / "missing.yaml")


def test_every_shipped_recipe_is_valid():
    from pathlib import Path

    recipes = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        load_config(recipe)


def test_every_recipe_key_is_documented():
    from lmtune.config import recipe_keys

    keys = {key: description for key, _, description in recipe_keys()}
    assert "train.lr" in keys and "model.lora.r" in keys and "data.clean.dedup" in keys
    undocumented = [key for key, description in keys.items() if not description]
    assert not undocumented, undocumented
