"""Verbs of use: evaluate, generate, chat, fill masks, classify."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lmtune.cli.app import (
    Device,
    Dtype,
    Engine,
    NewTokens,
    Repetition,
    Seed,
    TopK,
    TopP,
    app,
    console,
    model_or_name,
)
from lmtune.errors import LmtuneError

log = logging.getLogger("lmtune")


@app.command("eval")
def evaluate(
    model: Annotated[str, typer.Argument(help="run folder, model folder, alias or .gguf")],
    data: Annotated[str, typer.Argument(help="text/PDF/CSV file, folder, or prepared dataset")],
    block_size: Annotated[int, typer.Option(min=2, help="tokens per block")] = 512,
    text_column: Annotated[str, typer.Option(help="text column of CSV/JSONL")] = "text",
    label_column: Annotated[str, typer.Option(help="label column (classifiers)")] = "label",
    max_batches: Annotated[Optional[int], typer.Option(min=1, help="evaluate at most this many batches")] = None,
    device: Device = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
):
    """Validation metrics of any model on any text: loss and perplexity (causal), MLM loss/accuracy
    (encoders), accuracy/F1 (classifiers). Run it on the base and the tuned model to compare."""
    from lmtune.train.evaluate import evaluate_model

    metrics = evaluate_model(
        model_or_name(model, device),
        data,
        block_size=block_size,
        text_column=text_column,
        label_column=label_column,
        max_batches=max_batches,
    )
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        for key, value in metrics.items():
            if not isinstance(value, (list, dict)):
                print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")


@app.command()
def generate(
    model: Annotated[str, typer.Argument(help="run folder, model folder, alias or .gguf")],
    prompt: Annotated[Optional[str], typer.Argument(help="text to continue")] = None,
    prompt_opt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="text to continue")] = None,
    max_new_tokens: NewTokens = 64,
    temperature: Annotated[Optional[float], typer.Option(help="0 = greedy (default 0.8; 0 with --task)")] = None,
    top_k: TopK = 50,
    top_p: TopP = 0.95,
    repetition_penalty: Repetition = 1.0,
    num_return_sequences: Annotated[int, typer.Option("--num-return-sequences", "-n", help="samples")] = 1,
    seed: Seed = None,
    stream: Annotated[bool, typer.Option(help="print tokens as they come")] = True,
    task: Annotated[
        Optional[str],
        typer.Option(
            help="a task of a multi-task model (e.g. SPELL): its template, greedy, stops at EOS, prints the completion"
        ),
    ] = None,
    device: Device = None,
    dtype: Dtype = "auto",
    engine: Engine = "auto",
):
    """Continue a prompt, streaming tokens to the terminal."""
    from lmtune.infer import task_prompt
    from lmtune.infer.generate import GenerationSettings
    from lmtune.infer.generate import generate as run_generate
    from lmtune.infer.generate import stream as run_stream

    text = prompt_opt if prompt_opt is not None else prompt
    if text is None:
        raise LmtuneError('give a prompt: lmtune generate MODEL "Once upon a time"')
    model = model_or_name(model, device, dtype, engine)
    shown = text
    if task is not None:
        text, shown = task_prompt(model, task, text), ""
    if temperature is None:
        temperature = 0.0 if task is not None else 0.8
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k or None,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        num_return_sequences=num_return_sequences,
        seed=seed,
    )
    if stream and num_return_sequences == 1:
        sys.stdout.write(shown)
        try:
            for piece in run_stream(model, text, settings):
                sys.stdout.write(piece)
                sys.stdout.flush()
        finally:  # an error line must start on a line of its own
            sys.stdout.write("\n")
            sys.stdout.flush()
        return
    for i, continuation in enumerate(run_generate(model, text, settings)):
        if num_return_sequences > 1:
            print(f"--- {i + 1}")
        print(shown + continuation)


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="run folder, model folder, alias or .gguf of a causal LM")],
    system: Annotated[Optional[str], typer.Option(help="a system prompt (kept when the conversation is reset)")] = None,
    max_new_tokens: NewTokens = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.7,
    top_k: TopK = 50,
    top_p: TopP = 0.95,
    repetition_penalty: Repetition = 1.0,
    seed: Seed = None,
    device: Device = None,
    dtype: Dtype = "auto",
    engine: Engine = "auto",
):
    """Talk to a model in the terminal, turn after turn, the replies streamed. /reset starts over (the system
    prompt stays), /quit or Ctrl-D ends. The model's chat template renders the conversation, as in training."""
    from lmtune.infer.chat import ChatSession
    from lmtune.infer.generate import GenerationSettings

    settings = GenerationSettings(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k or None,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    session = ChatSession(model_or_name(model, device, dtype, engine), system, settings)
    interactive = sys.stdin.isatty()
    if interactive:
        console().print("[dim]/reset starts over, /quit (or Ctrl-D) ends[/dim]")
    while True:
        try:
            text = input("you> " if interactive else "").strip()
        except EOFError:
            break
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            session.reset()
            print("(conversation reset)", flush=True)
            continue
        if not text:
            continue
        sys.stdout.write("assistant> ")
        try:
            for piece in session.reply(text):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:  # Ctrl-C stops the reply, not the conversation
            sys.stdout.write(" [stopped]")
        sys.stdout.write("\n")
        sys.stdout.flush()


@app.command("fill-mask")
def fill_mask(
    model: Annotated[str, typer.Argument(help="run folder, model folder or alias of a masked LM")],
    texts: Annotated[
        Optional[list[str]], typer.Argument(help="text(s) with [MASK] (any model's mask token works)")
    ] = None,
    input_file: Annotated[Optional[Path], typer.Option("--input", "-i", help="a file with one text per line")] = None,
    top_k: Annotated[int, typer.Option(min=1, max=1000, help="predictions per mask")] = 5,
    compare: Annotated[Optional[str], typer.Option(help="a base model to show side by side")] = None,
    device: Device = None,
    dtype: Dtype = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
):
    """Predict the masked words: top-k tokens with probabilities for every [MASK]."""
    from lmtune.data.ingest import read_lines
    from lmtune.infer.fill_mask import compare_table, format_predictions
    from lmtune.infer.fill_mask import fill_mask as run_fill_mask

    inputs = list(texts or [])
    if input_file is not None:
        inputs += [line for line in read_lines(input_file) if line.strip()]
    if not inputs:
        raise LmtuneError('give a text with [MASK], e.g. lmtune fill-mask MODEL "To be or not to [MASK]."')
    if compare:
        from rich.console import Console

        Console().print(compare_table(inputs, compare, model, top_k))
        return
    results = run_fill_mask(model_or_name(model, device, dtype), inputs, top_k)
    if as_json:
        print(json.dumps([{"text": t, "masks": r} for t, r in zip(inputs, results)], indent=2))
        return
    for text, masks in zip(inputs, results):
        print(text)
        for i, preds in enumerate(masks):
            if len(masks) > 1:
                print(f"  mask {i + 1}:")
            print("\n".join("    " + line for line in format_predictions(preds).splitlines()))


@app.command()
def classify(
    model: Annotated[str, typer.Argument(help="run folder or model folder of a classifier")],
    texts: Annotated[Optional[list[str]], typer.Argument(help="text(s) to classify")] = None,
    input_file: Annotated[
        Optional[Path], typer.Option("--input", "-i", help="CSV/TSV/JSONL/JSON/TXT to classify")
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            help="predictions file; its suffix picks the format (.csv .tsv .jsonl .json), else the input's format",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --output file (never an input)")] = False,
    text_column: Annotated[str, typer.Option(help="text column of the input file")] = "text",
    batch_size: Annotated[int, typer.Option(min=1, help="texts per forward pass")] = 32,
    device: Device = None,
    dtype: Dtype = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
):
    """Label and class probabilities for texts, or for a whole file (--input reviews.csv --output preds.csv)."""
    from lmtune.data.ingest import read_documents
    from lmtune.infer.classify import classify as run_classify
    from lmtune.infer.classify import write_predictions
    from lmtune.outputs import check_output_file

    if output is not None:  # before the long work: a bad output path fails in a second, not after an hour
        check_output_file(output, [input_file] if input_file else [], overwrite=overwrite)
    rows = [{text_column: t} for t in texts or []]
    if input_file is not None:
        rows += [d.fields or {text_column: d.text} for d in read_documents(input_file, text_column)]
    if not rows:
        raise LmtuneError('give text(s) or --input FILE, e.g. lmtune classify MODEL "A wonderful film."')
    results = run_classify(
        model_or_name(model, device, dtype),
        [str(r.get(text_column) or "") for r in rows],
        batch_size=batch_size,
        progress=input_file is not None,
    )
    if output is not None:
        write_predictions(output, rows, results, input_file)
        print(f"wrote {len(results)} predictions to {output}")
    elif as_json:
        print(json.dumps([{"text": r[text_column], **res} for r, res in zip(rows, results)], indent=2))
    else:
        for row, result in zip(rows, results):
            probs = "  ".join(f"{k}={v:.3f}" for k, v in result["scores"].items())
            print(f"{result['label']}\t{result['score']:.3f}\t{probs}\t{str(row[text_column])[:80]}")
