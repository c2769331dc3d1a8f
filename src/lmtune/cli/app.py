"""The typer app every verb registers on, and the options several verbs share (one wording, one range)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Adapt a language model to your own text: prepare data, train, evaluate, generate, serve.",
)
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
Dtype = Annotated[
    str,
    typer.Option(
        help="inference weights: auto (bf16 on GPUs; on CPUs measured to compute bf16 "
        "fast, int8 weights for causal LMs and bf16 for encoders; else fp32), fp32, "
        "bf16, fp16 or int8 (CPU)"
    ),
]
Engine = Annotated[
    str,
    typer.Option(
        help="torch, or llama.cpp for .gguf files (needs llama-cpp-python); auto: "
        "llama.cpp for a .gguf path when it is installed"
    ),
]
Device = Annotated[Optional[str], typer.Option(help="cpu, cuda or cuda:N (default: cuda when present)")]
# Sampling options, the same on every verb that generates (their ranges are SamplingSettings')
NewTokens = Annotated[int, typer.Option(help="tokens to generate")]
TopK = Annotated[int, typer.Option(help="sample from the k most likely tokens (0 = off)")]
TopP = Annotated[float, typer.Option(help="nucleus sampling mass")]
Repetition = Annotated[float, typer.Option(help=">1 discourages repeats")]
Seed = Annotated[Optional[int], typer.Option(help="seed for reproducible sampling")]


def console():
    """Messages for people (not data): on stderr, so stdout stays clean for pipes."""
    from rich.console import Console

    return Console(stderr=True)


def model_or_name(name: str, device: str | None, dtype: str = "auto", engine: str = "auto"):
    """A model name, or (with --device, --dtype or --engine) the model loaded so."""
    if device is None and dtype == "auto" and engine == "auto":
        return name
    from lmtune.infer import load

    return load(name, device=device, dtype=dtype, engine=engine)
