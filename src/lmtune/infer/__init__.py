"""Using a model: load once, then generate, fill masks, or classify."""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from lmtune.errors import LmtuneError
from lmtune.hardware import cpu_has_bf16
from lmtune.infer import llama_cpp
from lmtune.models.load import gguf_file, load_pretrained, load_tokenizer, resolve, unknown_model_error
from lmtune.tasks import Objective, get_objective, objective_of
from lmtune.tasks.clm import OBJECTIVE as CAUSAL
from lmtune.tasks.sft import task_prompt as format_task_prompt

log = logging.getLogger("lmtune")


@dataclass
class LoadedModel:
    name: str
    model: Any
    tokenizer: Any
    objective: Objective  # what the model does at inference (a tuned SFT model is a causal LM)
    path: str | None = None  # the folder it was loaded from

    @property
    def capabilities(self) -> tuple[str, ...]:
        return self.objective.capabilities

    @property
    def labels(self) -> list[str]:
        id2label = getattr(self.model.config, "id2label", None) or {}
        return [id2label[i] for i in sorted(id2label)]


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def weights_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The weights' number format for inference. auto: bf16 on GPUs that have it (else fp16), and on CPUs
    where bf16 matmuls measure clearly faster than fp32 (`cpu_has_bf16`); fp32 elsewhere. Measured on
    SmolLM2-135M (2 vCPUs, AMD EPYC with avx512_bf16): bf16 weights decode 1.40x faster at batch 1 with
    held-out perplexity within 0.1% of fp32 (docs/performance.md; `lmtune bench` re-measures both)."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise LmtuneError(f"unknown dtype '{dtype}' (choose from auto, {', '.join(DTYPES)})")
        return DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else torch.float32


ENGINES = ("auto", "torch", "llama.cpp")


@functools.lru_cache(maxsize=4)
def load(name: str, objective: str | None = None, device: str | None = None, dtype: str = "auto",
         engine: str = "auto") -> LoadedModel:
    """Load a model for inference from a run folder, model folder, alias or .gguf; cached per process.
    `objective`: load it as that (e.g. "mlm" for an encoder); default: what its config.json says.
    `dtype`: auto, fp32, bf16 or fp16 (see `weights_dtype`); measurements (`lmtune eval`) use fp32.
    `engine`: torch, or llama.cpp for GGUF files (infer/llama_cpp.py); auto: llama.cpp for a .gguf path
    when llama-cpp-python is installed, else torch."""
    if engine not in ENGINES:
        raise LmtuneError(f"unknown engine '{engine}' (choose from {', '.join(ENGINES)})")
    gguf = gguf_file(name)
    if engine == "llama.cpp" or (engine == "auto" and gguf is not None and name.endswith(".gguf") and llama_cpp.available()):
        return _load_llama_cpp(name, gguf, objective)
    source = resolve(name)
    if source.kind == "preset":
        raise LmtuneError(f"'{name}' is an untrained preset; train it first (lmtune train)")
    try:
        config = transformers.AutoConfig.from_pretrained(source.path)
    except (OSError, ValueError) as err:
        if source.kind == "hub":
            raise unknown_model_error(name, err) from None
        raise LmtuneError(f"cannot load model '{name}': {str(err).splitlines()[0]}") from None
    chosen = get_objective(objective) if objective else objective_of(config)
    model = load_pretrained(source, chosen, name)
    tokenizer = load_tokenizer(None, source.path)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(weights_dtype(dtype, target))  # 16 bits: half the memory traffic, where the hardware computes it fast
    model.to(target).eval()
    return LoadedModel(name, model, tokenizer, chosen, source.path)


def _load_llama_cpp(name: str, gguf: Path | None, objective: str | None) -> LoadedModel:
    if gguf is None:
        raise LmtuneError(f"the llama.cpp engine runs GGUF files; '{name}' is not one (export it: lmtune export "
                          f"{name} --out DIR --format gguf)")
    if objective is not None and get_objective(objective) is not CAUSAL:
        raise LmtuneError("the llama.cpp engine generates text only")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return LoadedModel(name, llama_cpp.LlamaCppModel(gguf), tokenizer, CAUSAL, str(gguf))


def task_prompt(model: str | LoadedModel, task: str, prompt: str) -> str:
    """A multi-task model's prompt for `task`, formatted as in training (`lmtune generate --task`)."""
    loaded = as_loaded(model, "generate")
    return format_task_prompt(loaded.path or loaded.name, loaded.tokenizer, task, prompt)


def as_loaded(model: str | LoadedModel, capability: str | None = None) -> LoadedModel:
    """A loaded model (loading it by name if need be) that can do `capability` ("generate", ...)."""
    loaded = model if isinstance(model, LoadedModel) else load(str(model))
    if capability is not None and capability not in loaded.capabilities:
        raise LmtuneError(f"{loaded.name} is a {loaded.objective.name} model: it cannot {capability} "
                          f"(it can: {', '.join(loaded.capabilities)})")
    return loaded
