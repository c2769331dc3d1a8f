"""Objective-only recipe keys: each objective names the keys it alone reads; a recipe that sets one for
another objective is told it does nothing."""

import pytest

from lmtune.config import build_config, keys_set, recipe_keys
from lmtune.tasks import OBJECTIVES, ignored_keys, owner_of_key


@pytest.mark.parametrize("objective", list(OBJECTIVES.values()), ids=list(OBJECTIVES))
def test_owned_keys_are_recipe_keys(objective):
    known = {key for key, _, _ in recipe_keys()}
    sections = {key.rsplit(".", 1)[0] for key in known if "." in key}
    for key in objective.own_keys:
        assert key in known or key in sections, f"{objective.name} owns '{key}', which no recipe has"


def test_no_key_has_two_owners():
    owned = [key for objective in OBJECTIVES.values() for key in objective.own_keys]
    assert len(owned) == len(set(owned))


def test_setting_another_objectives_key_is_named():
    config = build_config(
        {
            "objective": "clm",
            "train": {"mlm_probability": 0.3, "lr": 1e-3},
            "data": {"label_column": "stars"},
            "sft": {"chat": True},
        }
    )
    warnings = ignored_keys(config)
    assert warnings == [
        "data.label_column is for objective classify; objective clm ignores it",
        "sft is for objective sft; objective clm ignores it",
        "train.mlm_probability is for objective mlm; objective clm ignores it",
    ]


def test_own_keys_and_shared_keys_are_not_named():
    assert (
        ignored_keys(
            build_config(
                {"objective": "mlm", "train": {"mlm_probability": 0.3, "lr": 1e-3}, "data": {"block_size": 64}}
            )
        )
        == []
    )
    assert owner_of_key("train.lr") is None
    assert owner_of_key("sft.template").name == "sft"


def test_keys_set_are_those_written():
    config = build_config({"train": {"lr": 1e-3}})
    assert keys_set(config) == {"train", "train.lr"}


def test_the_recipe_vocabulary_is_the_registry():
    """Recipes name any registered objective (plugins too); the key's help lists the built-in ones, and an
    unknown name is refused in one line that lists what is known."""
    from lmtune.config import RunConfig
    from lmtune.errors import LmtuneError
    from lmtune.tasks import get_objective

    described = RunConfig.model_fields["objective"].description
    assert all(name in described for name in OBJECTIVES)
    with pytest.raises(LmtuneError, match="unknown objective 'clmm' \\(choose from clm, mlm, classify, sft"):
        get_objective(build_config({"objective": "clmm"}).objective)


def test_a_saved_recipe_reloads_without_warnings(tmp_path):
    """A run's config.yaml lists every key at its value (defaults too): rerunning it warns about nothing."""
    from lmtune.config import load_config, save_config

    save_config(build_config({"objective": "clm", "train": {"lr": 1e-3}}), tmp_path / "config.yaml")
    assert ignored_keys(load_config(tmp_path / "config.yaml")) == []
    save_config(build_config({"objective": "clm", "train": {"mlm_probability": 0.3}}), tmp_path / "changed.yaml")
    assert ignored_keys(load_config(tmp_path / "changed.yaml")) == [
        "train.mlm_probability is for objective mlm; objective clm ignores it"
    ]
