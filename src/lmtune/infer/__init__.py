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
from lmtune.hardware import cpu_has_bf16, default_device
from lmtune.infer import llama_cpp
from lmtune.models.int8 import quantize_int8
from lmtune.models.load import load_pretrained, load_tokenizer
from lmtune.models.resolve import GPT2_BPE, gguf_file, resolve, unknown_model_error
from lmtune.tasks import Objective, classical, get_objective, objective_for, objective_of
from lmtune.tasks import task_prompt as format_task_prompt

log = logging.getLogger("lmtune")


@dataclass
class LoadedModel:
    name: str
    model: Any
    tokenizer: Any
    objective: Objective  # what the model does at inference (a tuned SFT model is a causal LM)
    path: str | None = None  # the folder it was loaded from
    weights: str = "fp32"  # the weights' number format (`weights_format`)

    @property
    def capabilities(self) -> tuple[str, ...]:
        return self.objective.capabilities

    @property
    def labels(self) -> list[str]:
        id2label = getattr(self.model.config, "id2label", None) or {}
        return [id2label[i] for i in sorted(id2label)]


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WEIGHTS = (*DTYPES, "int8")


def weights_format(dtype: str, device: torch.device, objective: Objective | None = None) -> str:
    """The weights' number format for inference (fp32, bf16, fp16 or int8). auto: on GPUs bf16 where they
    have it, else fp16; on CPUs where bf16 matmuls measure clearly faster than fp32 (`cpu_has_bf16`), the
    objective's `cpu_weights`: int8 weights with bf16 activations for causal LMs (decoding is memory-bound;
    the default without an objective) and bf16 for encoders; fp32 on other CPUs (int8's kernel is slow with
    fp32 activations). Measured on SmolLM2-135M (2 vCPUs, AMD EPYC
    with avx512_bf16), batch-1 decoding against fp32: bf16 1.4x, int8 3x; held-out perplexity +0.004% and
    +0.4% (docs/performance.md; `lmtune bench` re-measures both and their greedy agreement)."""
    if dtype != "auto":
        if dtype not in WEIGHTS:
            raise LmtuneError(f"unknown dtype '{dtype}' (choose from auto, {', '.join(WEIGHTS)})")
        if dtype == "int8" and device.type != "cpu":
            raise LmtuneError(f"int8 weights run on CPUs only; use bf16 or fp16 on {device.type}")
        return dtype
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_bf16():
        return objective.cpu_weights if objective is not None else "int8"
    return "fp32"


ENGINES = ("auto", "torch", "llama.cpp")


@functools.lru_cache(maxsize=4)
def load(
    name: str, objective: str | None = None, device: str | None = None, dtype: str = "auto", engine: str = "auto"
) -> LoadedModel:
    """Load a model for inference from a run folder, model folder, alias or .gguf; cached per process.
    `objective`: load it as that (e.g. "mlm" for an encoder); default: what its config.json says.
    `dtype`: auto, fp32, bf16, fp16 or int8 (see `weights_format`); measurements (`lmtune eval`) use fp32.
    `engine`: torch, or llama.cpp for GGUF files (infer/llama_cpp.py); auto: llama.cpp for a .gguf path
    when llama-cpp-python is installed, else torch."""
    if engine not in ENGINES:
        raise LmtuneError(f"unknown engine '{engine}' (choose from {', '.join(ENGINES)})")
    gguf = gguf_file(name)
    if engine == "llama.cpp" or (
        engine == "auto" and gguf is not None and name.endswith(".gguf") and llama_cpp.available()
    ):
        return _load_llama_cpp(name, gguf, objective)
    source = resolve(name)
    if source.kind == "preset":
        raise LmtuneError(f"'{name}' is an untrained preset; train it first (lmtune train)")
    if source.kind == "folder" and classical.is_classical(source.path):  # a TF-IDF model a run kept (baseline/)
        # (its tokenizer only counts tokens when a labelled file is prepared for `lmtune eval`)
        return LoadedModel(
            name,
            classical.ClassicalClassifier(source.path),
            load_tokenizer(GPT2_BPE, GPT2_BPE),
            objective_for("classify"),
            source.path,
            "sklearn",
        )
    try:
        config = transformers.AutoConfig.from_pretrained(source.path)
    except (OSError, ValueError) as err:
        if source.kind == "hub":
            raise unknown_model_error(name, err) from None
        raise LmtuneError(f"cannot load model '{name}': {str(err).splitlines()[0]}") from None
    chosen = get_objective(objective) if objective else objective_of(config)
    model = load_pretrained(source, chosen, name)
    tokenizer = load_tokenizer(None, source.path)
    target = default_device(device)
    weights = weights_format(dtype, target, chosen)
    if weights == "int8":  # fewer bytes per token: decoding reads every weight once
        quantize_int8(model)
    else:
        model.to(DTYPES[weights])
    model.to(target).eval()
    return LoadedModel(name, model, tokenizer, chosen, source.path, weights)


def _load_llama_cpp(name: str, gguf: Path | None, objective: str | None) -> LoadedModel:
    if gguf is None:
        raise LmtuneError(
            f"the llama.cpp engine runs GGUF files; '{name}' is not one (export it: lmtune export "
            f"{name} --out DIR --format gguf)"
        )
    generating = objective_for("generate")
    if objective is not None and "generate" not in get_objective(objective).capabilities:
        raise LmtuneError("the llama.cpp engine generates text only")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return LoadedModel(name, llama_cpp.LlamaCppModel(gguf), tokenizer, generating, str(gguf), "gguf")


def task_prompt(model: str | LoadedModel, task: str, prompt: str) -> str:
    """A multi-task model's prompt for `task`, formatted as in training (`lmtune generate --task`)."""
    loaded = as_loaded(model, "generate")
    return format_task_prompt(loaded.path or loaded.name, loaded.tokenizer, task, prompt)


def as_loaded(model: str | LoadedModel, capability: str | None = None) -> LoadedModel:
    """A loaded model (loading it by name if need be) that can do `capability` ("generate", ...)."""
    loaded = model if isinstance(model, LoadedModel) else load(str(model))
    if capability is not None and capability not in loaded.capabilities:
        raise LmtuneError(
            f"{loaded.name} is a {loaded.objective.name} model: it cannot {capability} "
            f"(it can: {', '.join(loaded.capabilities)})"
        )
    return loaded
