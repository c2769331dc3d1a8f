"""The end-of-run report: base vs tuned metrics on held-out text, and the same prompts through both."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from lmtune.config import RunConfig
from lmtune.infer.fill_mask import compare_table
from lmtune.infer.generate import GenerationSettings, generate
from lmtune.models.resolve import PRESETS
from lmtune.tasks import get_objective, serving_objective


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_report(config: RunConfig, summary: dict, console: Console | None = None, examples: bool = True) -> None:
    """The report in the terminal (or into `console`: the workbench records it); `examples`: the generations
    and fill-masks of both models (they load the models)."""
    console = console or Console()
    base, final = summary.get("base", {}), summary.get("final", {})
    best, last, best_step = summary.get("best") or {}, summary.get("last") or {}, summary.get("best_step")
    table = Table(title=f"{config.objective} run {summary['run']} ({summary['steps']} steps, {summary['precision']})")
    table.add_column("held-out metric")
    table.add_column("base model", justify="right")
    show_both = bool(best) and best_step != summary["steps"]
    if show_both:
        table.add_column(
            f"best (step {best_step})" + (" = final/" if summary.get("keep") == "best" else ""), justify="right"
        )
        table.add_column(
            f"last (step {summary['steps']})" + (" = final/" if summary.get("keep") == "last" else ""), justify="right"
        )
    else:
        table.add_column("tuned", justify="right")
        if best:
            table.caption = f"tuned = best = last evaluated model (step {summary['steps']})"
    for key in final:
        if isinstance(final[key], (int, float)):
            cells = [_fmt(best.get(key, "-")), _fmt(last.get(key, "-"))] if show_both else [_fmt(final[key])]
            table.add_row(key, _fmt(base.get(key, "-")), *cells)
    reference = summary.get("reference") or {}
    for key, value in (reference.get("final") or {}).items():  # general text: what was traded for the domain
        if "loss" in key or "perplexity" in key or "accuracy" in key:
            tuned = _fmt(value) + (" (final/)" if show_both else "")
            table.add_row(
                f"{key} [dim](general text)[/dim]",
                _fmt(reference["base"].get(key, "-")),
                tuned,
                *(["-"] if show_both else []),
            )
    if final:
        console.print(table)
    else:
        console.print(
            "[yellow]no held-out metrics: the corpus was too small for a validation split "
            "(add text, or give data.validation files)[/yellow]"
        )
    baselines = summary.get("baselines") or {}
    if baselines:  # what fine-tuning must beat, on the same held-out rows
        compared = Table(title="baselines on the same validation rows", box=None)
        keys = [k for k in final if k in next(iter(baselines.values()))]
        compared.add_column("model")
        for key in keys:
            compared.add_column(key, justify="right")
        compared.add_row("[bold]fine-tuned (final/)[/bold]", *[_fmt(final[k]) for k in keys])
        for name, metrics in baselines.items():
            compared.add_row(f"{name} (baseline)", *[_fmt(metrics.get(k, "-")) for k in keys])
        console.print(compared)
    for line in next_steps(config, summary):
        console.print(line, soft_wrap=True)  # one line each: the commands in them copy whole
    if "val_confusion_matrix" in final:
        confusion = Table(title="confusion matrix (rows: true, columns: predicted)")
        confusion.add_column("")
        for label in final["val_labels"]:
            confusion.add_column(label, justify="right")
        for label, row in zip(final["val_labels"], final["val_confusion_matrix"]):
            confusion.add_row(label, *map(str, row))
        console.print(confusion)
    parameters = summary.get("parameters")
    if parameters and parameters["trainable"] < parameters["total"]:
        console.print(
            f"trainable parameters: {parameters['trainable']:,} of {parameters['total']:,} "
            f"({parameters['trainable'] / parameters['total']:.2%})"
        )
    if summary.get("padding_share", 0) >= 0.01:  # batches of rows of different lengths (classify, sft, chat)
        console.print(f"padding: {summary['padding_share']:.1%} of the positions computed in training")
    console.print(f"model: [bold]{summary['final_model']}[/bold]", soft_wrap=True)
    for plot in summary.get("plots", []):
        console.print(f"plot:  {plot}", soft_wrap=True)
    report = config.report
    if not report.compare_base or not examples:
        return
    capabilities = serving_objective(config.objective).capabilities
    if "chat" in capabilities:
        _compare_chats(console, config, summary)
    if report.prompts and "generate" in capabilities:
        _compare_generations(console, config, summary)
    if report.fill_mask and "fill-mask" in capabilities:
        _compare_fill_mask(console, config, summary)


def next_steps(config: RunConfig, summary: dict) -> list[str]:
    """What to do when the result is weak, in a line or two each: no better than the base, worse than a
    baseline, still improving when it ended, too little text, much general language lost."""
    lines, metric = [], summary.get("selection_metric", "val_loss")
    if summary.get("beats_base") is False:
        lines.append(
            f"[bold red]no tuned model beat the base model on {metric}[/bold red]: the base model is better "
            "on held-out text. Likely fixes: a lower learning rate (--train.lr), LoRA (--model.lora.r 8), or "
            "more text."
        )
    kept = summary.get("baseline_model")
    if kept:
        lines.append(
            f"[bold yellow]the {kept['name']} baseline beats the fine-tuned model on {metric} "
            f"({_fmt(kept.get(metric))} vs {_fmt((summary.get('final') or {}).get(metric))})[/bold yellow]: "
            f'it is saved as a model in {kept["path"]}: lmtune classify {kept["path"]} "some text" (or '
            f"serve, export it). Long texts truncated to data.block_size often cause this: try "
            f"--data.block_size {min(512, 2 * config.data.block_size)}."
        )
    stopped_by_time = summary.get("steps", 0) and not summary.get("stopped_early")
    if summary.get("best_step") and summary.get("best_step") == summary.get("steps") and stopped_by_time:
        more = (
            f"--minutes {2 * config.train.max_minutes:g}"
            if config.train.max_minutes
            else "more epochs (--train.epochs)"
        )
        lines.append(
            f"[yellow]still improving when the run ended[/yellow] (its best model was its last): give it "
            f"more time, {more}."
        )
    tokens = (summary.get("data") or {}).get("train tokens")
    if isinstance(tokens, int) and 0 < tokens < 20_000:
        lines.append(
            f"[yellow]only {tokens:,} tokens of training text[/yellow]: more text of the same kind helps more "
            "than more training."
        )
    reference = summary.get("reference") or {}
    before, after = (
        (reference.get("base") or {}).get("ref_perplexity"),
        (reference.get("final") or {}).get("ref_perplexity"),
    )
    if before and after and after > 1.2 * before:
        lines.append(
            f"[yellow]general-text perplexity rose {after / before - 1:.0%}[/yellow] ({before:.1f} -> "
            f"{after:.1f}): the price of the domain. To keep more of it, mix general text in "
            "(--data.replay 0.1) or train LoRA adapters (--model.lora.r 16)."
        )
    return lines


def _compare_generations(console, config: RunConfig, summary: dict) -> None:
    settings = GenerationSettings(
        max_new_tokens=config.report.max_new_tokens,
        temperature=0.7,
        top_p=0.9,
        top_k=50,
        repetition_penalty=1.15,
        seed=0,
    )
    base_name = config.model.init_from or config.model.name
    table = Table(title="the same prompt, base vs tuned", show_lines=True)
    table.add_column("prompt", max_width=24)
    table.add_column(f"base: {base_name}", ratio=1)
    table.add_column("tuned", ratio=1)
    for prompt in config.report.prompts:
        base = "(random init)" if base_name in PRESETS else generate(base_name, prompt, settings)[0]
        tuned = generate(summary["final_model"], prompt, settings)[0]
        table.add_row(prompt, base.strip(), tuned.strip())
    console.print(table)


def _compare_chats(console, config: RunConfig, summary: dict) -> None:
    """A few held-out conversations answered by the base model and the tuned one (greedy), beside the reply the
    data holds."""
    from pathlib import Path

    from lmtune.data.prepare import is_prepared, load_prepared
    from lmtune.infer import load
    from lmtune.infer.chat import chat_prompt

    data = Path(summary["run"]) / "data"
    split = load_prepared(data).dataset.get("validation") if is_prepared(data) else None
    examples = get_objective(config.objective).report_examples(split, 3) if split is not None else []
    if not examples:
        return
    settings = GenerationSettings(max_new_tokens=config.report.max_new_tokens, temperature=0.0)
    base_name = config.model.init_from or config.model.name
    table = Table(title="held-out conversations: the last reply, base vs tuned", show_lines=True)
    for column in ("asked", "in the data", f"base: {base_name}", "tuned"):
        table.add_column(column, ratio=1)
    tuned = load(summary["final_model"])
    base = None if base_name in PRESETS else load(base_name)
    for example in examples:
        messages = example["messages"]
        answers = [
            generate(model, chat_prompt(model.tokenizer, messages), settings)[0].strip() if model else "(random init)"
            for model in (base, tuned)
        ]
        table.add_row(messages[-1]["content"], example["reference"], *answers)
    console.print(table)


def _compare_fill_mask(console, config: RunConfig, summary: dict) -> None:
    console.print(
        compare_table(
            config.report.fill_mask, config.model.init_from or config.model.name, summary["final_model"], top_k=5
        )
    )
