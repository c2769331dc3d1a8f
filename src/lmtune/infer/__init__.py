"""Using a model: load once, then generate, fill masks, or classify."""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch

from lmtune.errors import LmtuneError

log = logging.getLogger("lmtune")


@dataclass
class LoadedModel:
    name: str
    model: Any
    tokenizer: Any
    kind: str  # "causal" | "masked" | "classifier"

    @property
    def labels(self) -> list[str]:
        id2label = getattr(self.model.config, "id2label", None) or {}
        return [id2label[i] for i in sorted(id2label)]


def _kind_of(config) -> str:
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "SequenceClassification" in archs:
        return "classifier"
    if "MaskedLM" in archs or (config.model_type in {"bert", "distilbert", "roberta", "xlm-roberta", "electra",
                                                      "deberta-v2", "albert", "camembert"} and "LM" not in archs):
        return "masked"
    return "causal"


@functools.lru_cache(maxsize=4)
def load(name: str, kind: str | None = None, device: str | None = None) -> LoadedModel:
    """Load a model for inference from a run folder, model folder, alias or .gguf; cached per process."""
    import transformers

    from lmtune.models.load import AUTO_CLASSES, check_weight_files, load_tokenizer, resolve, unknown_model_error
    from lmtune.tasks.mlm import init_missing_mlm_head

    source = resolve(name)
    if source.kind == "preset":
        raise LmtuneError(f"'{name}' is an untrained preset; train it first (lmtune train)")
    try:
        config = transformers.AutoConfig.from_pretrained(source.path)
    except (OSError, ValueError) as err:
        if source.kind == "hub":
            raise unknown_model_error(name, err) from None
        raise LmtuneError(f"cannot load model '{name}': {str(err).splitlines()[0]}") from None
    if source.kind == "folder":
        check_weight_files(source.path)
    kind = kind or _kind_of(config)
    objective = {"causal": "clm", "masked": "mlm", "classifier": "classify"}[kind]
    auto = getattr(transformers, AUTO_CLASSES[objective])
    try:
        model, info = auto.from_pretrained(source.path, output_loading_info=True)
    except (OSError, ValueError) as err:
        raise LmtuneError(f"cannot load '{name}' as a {kind} model: {str(err).splitlines()[0]}") from None
    if kind == "masked":
        init_missing_mlm_head(model, info.get("missing_keys", []), "identity")
    tokenizer = load_tokenizer(None, source.path)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(target).eval()
    return LoadedModel(name, model, tokenizer, kind)


def as_loaded(model: str | LoadedModel, kind: str | None = None) -> LoadedModel:
    loaded = model if isinstance(model, LoadedModel) else load(str(model))
    if kind is not None and loaded.kind != kind:
        raise LmtuneError(f"{loaded.name} is a {loaded.kind} model, not a {kind} one")
    return loaded
