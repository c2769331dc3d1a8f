"""The `lmtune` command: subcommands follow the workflow (prepare -> train -> eval -> use -> serve)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lmtune.errors import LmtuneError
from lmtune.libraries import quiet_libraries

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import ClickException

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
log = logging.getLogger("lmtune")


def _console():
    from rich.console import Console

    return Console(stderr=True)


@app.command(context_settings=EXTRA)
def prepare(
    ctx: typer.Context,
    inputs: Annotated[list[str], typer.Argument(help="files/folders to read, or one recipe .yaml")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the prepared dataset")] = Path("prepared"),
    model: Annotated[Optional[str], typer.Option(help="model whose tokenizer to use")] = None,
    objective: Annotated[Optional[str], typer.Option(help="clm | mlm | classify | sft")] = None,
    block_size: Annotated[Optional[int], typer.Option(min=2, help="tokens per block")] = None,
):
    """Read, clean, tokenize and pack text into a dataset folder (Arrow) with stats.json.

    The output folder must be new, empty, or an earlier `lmtune prepare` output (which is replaced).

    Extra `--section.key value` options override recipe keys, e.g. --data.clean.dedup false."""
    from lmtune.config import make_config
    from lmtune.train.data import prepare_data

    # Unknown options land among the variadic inputs: everything from the first `--key` on is an override.
    first = next((i for i, arg in enumerate(inputs) if arg.startswith("--")), len(inputs))
    inputs, extra = inputs[:first], inputs[first:] + ctx.args
    if not inputs:
        raise LmtuneError("give the files or folders to prepare, or one recipe .yaml")
    recipe = Path(inputs[0]) if len(inputs) == 1 and inputs[0].endswith((".yaml", ".yml")) else None
    config = make_config(
        recipe,
        extra,
        model__name=model,
        objective=objective,
        data__block_size=block_size,
        data__train=None if recipe else inputs,
    )
    if config.tokenizer.train is None:  # a trained tokenizer needs no model yet
        from lmtune.models.resolve import check_block_size

        check_block_size(config.model.init_from or config.model.name, config.data.block_size)
    prepare_data(config, out)


def _recipe_and_overrides(tokens: list[str]) -> tuple[str | None, list[str]]:
    """Split `RECIPE --a.b v --c=d` (in any order) into the recipe and the override tokens: typer would
    take an override's value for the optional recipe argument."""
    recipe, overrides, i = None, [], 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--"):
            takes_value = "=" not in token and i + 1 < len(tokens)
            overrides += tokens[i : i + 1 + takes_value]
            i += 1 + takes_value
            continue
        if recipe is not None:
            raise LmtuneError(f"unexpected argument '{token}' (one recipe; overrides look like --train.lr 1e-4)")
        recipe, i = token, i + 1
    return recipe, overrides


@app.command(context_settings=EXTRA)
def train(
    ctx: typer.Context,
    recipe: Annotated[Optional[str], typer.Argument(help="recipe YAML (see configs/); not needed with --data")] = None,
    data: Annotated[
        Optional[list[str]],
        typer.Option(
            help="train on these files/folders with defaults chosen for the corpus (no recipe needed); repeatable"
        ),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option(help="with --data: the model (default: smollm2-135m, or minilm-l6 for mlm/classify)"),
    ] = None,
    objective: Annotated[
        Optional[str], typer.Option(help="with --data: clm | mlm | classify | sft (default: from the data)")
    ] = None,
    minutes: Annotated[
        Optional[float],
        typer.Option(
            min=0.1,
            help="with --data: the time budget in minutes "
            "(default 10); training stops earlier when validation stops "
            "improving",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue from the run's last checkpoint")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="replace an earlier run in output_dir (only lmtune's own files)")
    ] = False,
    output_dir: Annotated[Optional[str], typer.Option(help="run folder (default: the recipe's)")] = None,
    nproc: Annotated[
        int,
        typer.Option(
            min=1,
            help="processes on this machine (one per GPU): runs torchrun for you; train.distributed picks ddp or fsdp",
        ),
    ] = 1,
    oversubscribe: Annotated[
        bool, typer.Option(help="allow --nproc beyond this machine's GPUs (or CPU cores)")
    ] = False,
):
    """Train from a recipe, or straight from data: lmtune train --data book.pdf.

    Override any recipe key (`lmtune keys` lists them): --train.lr 1e-4 --train.max_steps 50. final/ holds the
    best evaluated model. Checkpoints are saved every 10 minutes (train.save_every_minutes) and on Ctrl-C
    or SIGTERM; --resume continues from the newest one exactly where it stopped."""
    from lmtune.config import make_config
    from lmtune.train.loop import train as run_train
    from lmtune.train.report import print_report
    from lmtune.train.run_dir import check_recipe_targets_its_run

    if resume and overwrite:
        raise LmtuneError("--resume continues a run and --overwrite replaces it: choose one")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from lmtune.train.launch import launch_torchrun

        launch_torchrun(nproc, sys.argv[1:], oversubscribe)
    recipe, extra = _recipe_and_overrides(([recipe] if recipe else []) + ctx.args)
    if minutes is not None and recipe is not None:
        extra += ["--train.max_minutes", str(minutes)]
    if recipe is None and not data:
        raise LmtuneError(
            "give a recipe (lmtune train configs/hamlet-smollm2.yaml) or data (lmtune train --data book.pdf)"
        )
    if recipe is None:
        from lmtune.hardware import default_device
        from lmtune.train.defaults import describe, recipe_for_data

        base, why = recipe_for_data(
            data, model=model, objective=objective, output_dir=output_dir, device=default_device().type, minutes=minutes
        )
        config = make_config(base, extra)
        _console().print(
            f"[bold]recipe[/bold] (saved as {config.output_dir}/config.yaml; "
            "change any key with --section.key value):\n"
            + describe(config)
            + "[dim]why:[/dim]\n"
            + "\n".join(f"  - {line}" for line in why),
            soft_wrap=True,
            markup=True,
        )
    else:
        config = make_config(
            recipe,
            extra,
            output_dir=output_dir,
            objective=objective,
            model__name=model,
            data__train=data[0] if data and len(data) == 1 else data,
        )
        if output_dir is None and (resume or overwrite):
            check_recipe_targets_its_run(Path(recipe), config.output_dir)
    summary = run_train(config, resume=resume, overwrite=overwrite)
    if os.environ.get("RANK", "0") != "0":
        return  # one report, from the main process
    try:
        print_report(config, summary)
    except Exception as err:  # the model is trained and saved: a failing report must not hide that
        log.warning(
            "warning: the end-of-run report failed (%s: %s); the trained model is in %s",
            type(err).__name__,
            str(err).splitlines()[0] if str(err) else "",
            summary["final_model"],
        )


@app.command()
def runs(
    folders: Annotated[
        Optional[list[Path]],
        typer.Argument(
            help="folder(s) holding run folders (searched below), or with --compare the run folders to plot"
        ),
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="plot the given runs' validation curves in one image (--out)")
    ] = False,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="with --compare: the plot file (.png, .svg or .pdf)")
    ] = None,
    metric: Annotated[
        Optional[str],
        typer.Option(
            help="with --compare: the metric to plot (default: the first run's selection metric, e.g. val_loss)"
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="with --compare: replace an existing --out file")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
):
    """The runs in a folder (default: runs/), newest last: objective, model, steps, the selection metric of
    the base model -> the best tuned one, and whether it finished. Or compare runs in one plot:
    lmtune runs --compare runs/a runs/b --out compare.png"""
    from lmtune.train.runs import compare_runs, find_runs, print_runs

    folders = folders or ([] if compare else [Path("runs")])
    if compare:
        if as_json:
            raise LmtuneError("--json lists runs; it does not go with --compare")
        if out is None:
            raise LmtuneError("--compare needs a plot file: add --out compare.png")
        print(f"wrote {compare_runs(folders, out, metric=metric, overwrite=overwrite)}")
        return
    if out is not None or metric is not None or overwrite:
        raise LmtuneError(
            "--out, --metric and --overwrite go with --compare (lmtune runs --compare A B --out plot.png)"
        )
    found = {run.path: run for folder in folders for run in find_runs(folder)}
    if not found:
        raise LmtuneError(
            f"no runs in {', '.join(map(str, folders))} (a run folder, made by lmtune train, "
            "holds config.yaml and metrics.jsonl)"
        )
    listed = sorted(found.values(), key=lambda run: (run.modified, run.path))
    if as_json:
        print(json.dumps([run.to_json() for run in listed], indent=2))
    else:
        print_runs(listed)


@app.command()
def keys(
    match: Annotated[Optional[str], typer.Argument(help="only keys containing this text, e.g. train or lora")] = None,
):
    """Every recipe key with its default and what it does (set them in a YAML recipe or as --section.key)."""
    from rich.console import Console
    from rich.table import Table

    from lmtune.config import recipe_keys
    from lmtune.tasks import owner_of_key

    table = Table("key", "default", "for", "what it does", box=None)
    for key, default, description in recipe_keys():
        if match is None or match in key:
            owner = owner_of_key(key)
            table.add_row(key, default, owner.name if owner else "all", description)
    Console().print(table)


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
        _model(model, device),
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
    model = _model(model, device, dtype, engine)
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
    session = ChatSession(_model(model, device, dtype, engine), system, settings)
    interactive = sys.stdin.isatty()
    if interactive:
        _console().print("[dim]/reset starts over, /quit (or Ctrl-D) ends[/dim]")
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
    results = run_fill_mask(_model(model, device, dtype), inputs, top_k)
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
        _model(model, device, dtype),
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


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="run folder (its final model), model folder, checkpoint or alias")],
    out: Annotated[Path, typer.Option("--out", "-o", help="a new (or empty) folder for the export")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="hf (transformers folder), onnx (encoders), gguf (causal models, via llama.cpp's converter)",
        ),
    ] = "hf",
    merge: Annotated[
        bool, typer.Option(help="fold LoRA adapters into the weights; --no-merge exports a LoRA run's adapter alone")
    ] = True,
    gguf_type: Annotated[str, typer.Option(help="gguf: f32, f16, bf16 or q8_0")] = "f16",
    converter: Annotated[
        Optional[str],
        typer.Option(
            help="gguf: llama.cpp's convert_hf_to_gguf.py, a llama.cpp folder, or llama-cpp-python's source .tar.gz"
        ),
    ] = None,
    push_to_hub: Annotated[Optional[str], typer.Option(help="also upload to this Hub repo (needs a login)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier export in --out")] = False,
):
    """A trained model as a folder other tools load, with a model card (README.md): transformers'
    pipeline, ONNX Runtime, or llama.cpp / Ollama (GGUF)."""
    from lmtune.export import export_model

    folder = export_model(
        model,
        out,
        format=format,
        merge=merge,
        overwrite=overwrite,
        gguf_type=gguf_type,
        converter=converter,
        push_to_hub=push_to_hub,
    )
    print(f"exported {model} to {folder}")


@app.command()
def serve(
    models: Annotated[list[str], typer.Argument(help="run folders, model folders or aliases to serve")],
    host: Annotated[str, typer.Option(help="address to bind; 0.0.0.0 exposes it to the network")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port")] = 7860,
    api_key: Annotated[
        Optional[str], typer.Option(envvar="LMTUNE_API_KEY", help="require this key on REST routes")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="cap on generated tokens per request")] = 512,
    max_input_chars: Annotated[int, typer.Option(min=1, help="cap on characters per input text")] = 8000,
    max_batch: Annotated[int, typer.Option(min=1, help="cap on texts per request")] = 64,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1,
            help="sequences a causal LM generates together for concurrent "
            "requests (continuous batching); 1: one request at a time",
        ),
    ] = 8,
    ui: Annotated[bool, typer.Option(help="mount the Gradio web UI at /")] = True,
    device: Device = None,
    dtype: Dtype = "auto",
    engine: Engine = "auto",
):
    """Serve models: web UI at /, REST at /v1/..., OpenAI-compatible /v1/completions and /v1/chat/completions."""
    import uvicorn

    from lmtune.serve.app import check_port_free, create_app
    from lmtune.serve.schemas import Limits

    check_port_free(host, port)  # before loading models: a busy port fails in a second
    app_ = create_app(
        models,
        api_key=api_key,
        ui=ui,
        device=device,
        dtype=dtype,
        engine=engine,
        limits=Limits(
            max_input_chars=max_input_chars, max_new_tokens=max_new_tokens, max_batch=max_batch, batch_size=batch_size
        ),
    )
    _console().print(f"serving {', '.join(models)} on http://{host}:{port}  (API docs: /docs)")
    # On SIGTERM/Ctrl-C, open streams get 3 s to finish; then they are cancelled (which stops generation).
    uvicorn.run(app_, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)


def _model(name: str, device: str | None, dtype: str = "auto", engine: str = "auto"):
    """A model name, or (with --device, --dtype or --engine) the model loaded so."""
    if device is None and dtype == "auto" and engine == "auto":
        return name
    from lmtune.infer import load

    return load(name, device=device, dtype=dtype, engine=engine)


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick/--full", help="small configs (~3 min) or the full comparison")] = True,
    out: Annotated[Optional[Path], typer.Option(help="folder for bench.json and bench.md")] = None,
    only: Annotated[
        Optional[list[str]], typer.Option(help="sections: peak clm mlm classify generate fill-mask serve data device")
    ] = None,
    device: Annotated[
        Optional[str],
        typer.Option(
            help="also measure training tokens/s and MFU on this device "
            "(cuda: the demo recipe and GPT-2 124M at seq 1024)"
        ),
    ] = None,
    scale: Annotated[
        bool,
        typer.Option(
            "--scale",
            help="data section: also prepare 10, 100 and 1,000 MB of "
            "generated text, each in a fresh process: seconds, MB/s, peak RSS "
            "(~10 minutes on 2 cores, 2 GB of temporary disk)",
        ),
    ] = False,
):
    """Measure lmtune against the seed recipes side by side (ratios) and print a Markdown table."""
    from lmtune.bench.suite import SECTIONS, run

    unknown = [name for name in only or [] if name not in SECTIONS]
    if unknown:
        raise LmtuneError(f"unknown bench section(s) {', '.join(unknown)}; choose from {' '.join(SECTIONS)}")
    if out is not None:
        from lmtune.outputs import check_output_dir

        check_output_dir(out, kind="bench")
    run(quick=quick, out_dir=out, sections=only, device=device, scale=scale)


def main() -> None:
    logging.basicConfig(level=os.environ.get("LMTUNE_LOG", "INFO"), format="%(message)s")
    quiet_libraries()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    try:
        code = app(standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into exit status 130 and says nothing
            _fail("interrupted", 130)
        sys.exit(code or 0)
    except ClickException as err:  # a bad option or argument: one line, like every other error
        where = f" (see {err.ctx.command_path} --help)" if getattr(err, "ctx", None) else ""
        _fail(f"{err.format_message()}{where}", 2)
    except LmtuneError as err:
        _fail(str(err), err.exit_code)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        _fail(f"{err.strerror}: {err.filename}" if err.filename else str(err), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except typer.Abort as err:  # typer's wrapping of an EOFError (e.g. from a truncated compressed file)
        cause = err.__cause__
        _fail(f"{type(cause).__name__}: {cause}" if cause else "aborted", 1)
    except Exception as err:  # the last resort: one line, full trace only on request
        if os.environ.get("LMTUNE_DEBUG"):
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        _fail(f"{type(err).__name__}: {first} (set LMTUNE_DEBUG=1 for the traceback)", 1)


def _fail(message: str, code: int) -> None:
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
