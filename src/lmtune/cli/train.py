"""Verbs of the making: prepare data, train, list and compare runs, the recipe keys."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lmtune.cli.app import (
    EXTRA,
    app,
    console,
)
from lmtune.errors import LmtuneError

log = logging.getLogger("lmtune")


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
        console().print(
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
