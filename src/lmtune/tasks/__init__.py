"""One module per training objective, each an `Objective` (tasks/base.py): what differs between
objectives (data splits, collator, loss, metrics, the HF class, LoRA task type, how a saved model is
recognised, what inference offers) lives there. Register a new one here (or, from outside, `register`)."""

from __future__ import annotations

from pathlib import Path

from lmtune.config import RunConfig, keys_set
from lmtune.errors import LmtuneError
from lmtune.tasks import chat, classify, clm, mlm, sft
from lmtune.tasks.base import Objective

OBJECTIVES: dict[str, Objective] = {
    o.name: o for o in (clm.OBJECTIVE, mlm.OBJECTIVE, classify.OBJECTIVE, sft.OBJECTIVE, chat.OBJECTIVE)
}
# Inference: a model lmtune did not train is the first of these that recognises its config (the causal LM,
# last, is the fallback). A model lmtune trained names its objective in its config (`CONFIG_KEY`).
INFERENCE_ORDER: list[Objective] = [classify.OBJECTIVE, mlm.OBJECTIVE, clm.OBJECTIVE]
CONFIG_KEY = "lmtune_objective"  # in a trained model's config.json


def register(objective: Objective) -> Objective:
    """Add an objective (a module of its own, or a plugin): recipes may then name it, and inference
    recognises models it did not train before the causal-LM fallback."""
    OBJECTIVES[objective.name] = objective
    if objective not in INFERENCE_ORDER:
        INFERENCE_ORDER.insert(len(INFERENCE_ORDER) - 1, objective)
    return objective


def objective_for_columns(columns: set[str]) -> Objective:
    """The objective whose data a table with these columns is (most specific first); else causal LM."""
    claimed = [o for o in OBJECTIVES.values() if o.matches_columns(columns)]
    return max(claimed, key=lambda o: len(o.table_columns) or 1, default=clm.OBJECTIVE)


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise LmtuneError(f"unknown objective '{name}' (choose from {', '.join(OBJECTIVES)})") from None


def objective_of(hf_config) -> Objective:
    """The objective a saved model serves, from its config.json: the one it was trained for (as served:
    SFT models generate like causal LMs), else the first that recognises its architecture."""
    trained_for = getattr(hf_config, CONFIG_KEY, None)
    if trained_for in OBJECTIVES:
        return serving_objective(trained_for)
    return next(o for o in INFERENCE_ORDER if o.recognizes(hf_config))


def objective_for(capability: str) -> Objective:
    """The objective whose models offer `capability` (e.g. what a GGUF file run by llama.cpp serves as)."""
    return next(o for o in INFERENCE_ORDER if capability in o.capabilities)


def task_prompt(model_dir, tokenizer, task: str, prompt: str) -> str:
    """A multi-task model's prompt for `task`, formatted as in training: asked of the objective whose
    metadata file the model folder holds."""
    owner = next(
        (o for o in OBJECTIVES.values() if o.metadata_file and (Path(model_dir) / o.metadata_file).exists()), None
    )
    if owner is None:
        raise LmtuneError(f"{model_dir} was not trained on tasks (no task metadata in the model folder)")
    return owner.task_prompt(model_dir, tokenizer, task, prompt)


def serving_objective(name: str) -> Objective:
    """The objective whose inference a model trained for `name` uses (SFT models generate like CLM)."""
    objective = get_objective(name)
    return get_objective(objective.used_as) if objective.used_as else objective


def selection_metric(config: RunConfig) -> str:
    """The validation metric that picks a run's best model: train.select_by, else the objective's own."""
    chosen = config.train.select_by
    return get_objective(config.objective).selection_metric if chosen == "auto" else chosen


def owner_of_key(key: str) -> Objective | None:
    """The objective that alone reads recipe key `key` (or its section), if one does."""
    return next((o for o in OBJECTIVES.values() for own in o.own_keys if key == own or key.startswith(own + ".")), None)


def ignored_keys(config: RunConfig) -> list[str]:
    """Keys the recipe sets, to other than their defaults, that belong to another objective: they would
    silently do nothing. (A run's saved config.yaml lists every key at its value: defaults are not news.)"""
    objective = get_objective(config.objective)
    return [
        f"{key} is for objective {owner.name}; objective {objective.name} ignores it"
        for key in sorted(keys_set(config))
        if (owner := owner_of_key(key)) not in (None, objective)
        and not any(key.startswith(own + ".") for own in owner.own_keys)  # name a section once
        and not _is_default(config, key)
    ]


def _is_default(config: RunConfig, key: str) -> bool:
    *sections, name = key.split(".")
    parent = config
    for section in sections:
        parent = getattr(parent, section)
    return getattr(parent, name) == type(parent).model_fields[name].get_default(call_default_factory=True)


__all__ = [
    "CONFIG_KEY",
    "OBJECTIVES",
    "Objective",
    "get_objective",
    "ignored_keys",
    "objective_for",
    "objective_of",
    "owner_of_key",
    "register",
    "selection_metric",
    "serving_objective",
    "task_prompt",
]
