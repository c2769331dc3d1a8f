"""The end-of-run report: base vs tuned metrics on held-out text, and the same prompts through both."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from lmtune.config import RunConfig
from lmtune.infer.fill_mask import compare_table
from lmtune.infer.generate import GenerationSettings, generate
from lmtune.models.resolve import PRESETS
from lmtune.tasks import serving_objective


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_report(config: RunConfig, summary: dict) -> None:
    console = Console()
    base, final = summary.get("base", {}), summary.get("final", {})
    best, last, best_step = summary.get("best") or {}, summary.get("last") or {}, summary.get("best_step")
    table = Table(title=f"{config.objective} run {summary['run']} ({summary['steps']} steps, {summary['precision']})")
    table.add_column("held-out metric")
    table.add_column("base model", justify="right")
    show_both = bool(best) and best_step != summary["steps"]
    if show_both:
        table.add_column(f"best (step {best_step})" + (" = final/" if summary.get("keep") == "best" else ""),
                         justify="right")
        table.add_column(f"last (step {summary['steps']})" + (" = final/" if summary.get("keep") == "last" else ""),
                         justify="right")
    else:
        table.add_column("tuned", justify="right")
        if best:
            table.caption = f"tuned = best = last evaluated model (step {summary['steps']})"
    baselines = summary.get("baselines") or {}
    for name in baselines:  # what fine-tuning must beat, on the same held-out rows
        table.add_column(f"{name} (baseline)", justify="right", style="dim")
    for key in final:
        if isinstance(final[key], (int, float)):
            cells = [_fmt(best.get(key, "-")), _fmt(last.get(key, "-"))] if show_both else [_fmt(final[key])]
            table.add_row(key, _fmt(base.get(key, "-")), *cells,
                          *[_fmt(metrics.get(key, "-")) for metrics in baselines.values()])
    if final:
        console.print(table)
    else:
        console.print("[yellow]no held-out metrics: the corpus was too small for a validation split "
                      "(add text, or give data.validation files)[/yellow]")
    if summary.get("beats_base") is False:
        console.print(f"[bold red]warning: no tuned model beat the base model on {summary['selection_metric']}"
                      "[/bold red]: the base model is better on held-out text. Likely fixes: fewer epochs "
                      "(--train.epochs 1), a lower learning rate (--train.lr), LoRA (--model.lora.r 8), or more text.")
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
        console.print(f"trainable parameters: {parameters['trainable']:,} of {parameters['total']:,} "
                      f"({parameters['trainable'] / parameters['total']:.2%})")
    console.print(f"model: [bold]{summary['final_model']}[/bold]")
    for plot in summary.get("plots", []):
        console.print(f"plot:  {plot}")
    report = config.report
    if not report.compare_base:
        return
    capabilities = serving_objective(config.objective).capabilities
    if report.prompts and "generate" in capabilities:
        _compare_generations(console, config, summary)
    if report.fill_mask and "fill-mask" in capabilities:
        _compare_fill_mask(console, config, summary)


def _compare_generations(console, config: RunConfig, summary: dict) -> None:
    settings = GenerationSettings(max_new_tokens=config.report.max_new_tokens, temperature=0.7, top_p=0.9,
                                  top_k=50, repetition_penalty=1.15, seed=0)
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


def _compare_fill_mask(console, config: RunConfig, summary: dict) -> None:
    console.print(compare_table(config.report.fill_mask, config.model.init_from or config.model.name,
                                summary["final_model"], top_k=5))
