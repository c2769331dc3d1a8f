"""The workbench's Train tab (`lmtune serve --workbench`): upload or pick data, see what lmtune detects and the
recipe it would use, change the few settings people change, train, watch the progress and the curves, stop,
resume, and load a finished run into the serving tabs. The work is serve/workbench.py's; this is its page."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from lmtune.errors import LmtuneError
from lmtune.models.resolve import ALIASES, PRESETS
from lmtune.serve.workbench import Workbench, sanitized
from lmtune.tasks import OBJECTIVES

QUEUE_COLUMNS = ["#", "run", "state", "step", "of", "tokens/s", "time left", "error"]


def train_tab(workbench: Workbench, add_model: Callable[[str], str]):
    """The tab's builder, for `build_ui(train_tab=...)`: `add_model(path)` serves a model (returns its name)."""

    def build(gr, refresh_pickers) -> Callable[[], None]:
        with gr.Tab("Train"):
            gr.Markdown(
                "Train on your own text: upload files (or pick them below the server's data folder "
                f"`{workbench.data_dir}`), check what lmtune makes of them, press Train. Runs are ordinary "
                f"`lmtune train` folders in `{workbench.runs_dir}`; one trains at a time, the others wait."
            )
            with gr.Row():
                uploads = gr.File(label="Upload files", file_count="multiple", elem_id="train-upload", scale=2)
                picked = gr.Dropdown(
                    workbench.data_choices(),
                    multiselect=True,
                    label="or pick (data folder)",
                    elem_id="train-pick",
                    scale=2,
                )
            with gr.Row():
                model = gr.Dropdown(
                    [*ALIASES, *PRESETS],
                    value="smollm2-135m",
                    allow_custom_value=True,
                    label="model (an alias, a preset, or a folder below the data or runs folder)",
                    elem_id="train-model",
                )
                objective = gr.Dropdown(["auto", *OBJECTIVES], value="auto", label="objective")
                minutes = gr.Number(10, label="minutes", minimum=0.1, elem_id="train-minutes")
                lora = gr.Radio(["auto", "on", "off"], value="auto", label="LoRA")
                lr = gr.Textbox("auto", label="learning rate (auto: probed)")
            with gr.Row():
                check = gr.Button("Check", elem_id="train-check")
                start = gr.Button("Train", variant="primary", elem_id="train-start")
            detected = gr.Code(label="what lmtune would do", language="yaml", elem_id="train-detected")
            queue = gr.Dataframe(
                headers=QUEUE_COLUMNS, label="trainings (this server)", interactive=False, elem_id="train-queue"
            )
            with gr.Row():
                run = gr.Dropdown([], label="run", elem_id="train-run", scale=3)
                stop = gr.Button("Stop", elem_id="train-stop", scale=1)
                resume = gr.Button("Resume", elem_id="train-resume", scale=1)
                load = gr.Button("Load into the tabs", elem_id="train-load", scale=1)
            status = gr.Markdown(elem_id="train-status")
            curve = gr.Plot(label="validation and training loss", elem_id="train-curve")
            report = gr.Code(label="report", language=None, elem_id="train-report")

            def data_of(files, chosen) -> list[Path]:
                paths = [workbench.save_upload(f, Path(f).name) for f in files or []]
                paths += [workbench.confined(c.rstrip("/")) for c in chosen or []]
                if not paths:
                    raise LmtuneError("upload a file or pick one from the data folder")
                return paths

            def options(model_name, objective_name, budget, lora_choice, rate) -> list[str]:
                found = ["--minutes", f"{float(budget):g}"]
                if model_name not in ALIASES and model_name not in PRESETS:
                    model_name = str(_model_folder(workbench, model_name))
                found += ["--model", model_name]
                if objective_name != "auto":
                    found += ["--objective", objective_name]
                if lora_choice != "auto":
                    found += ["--model.lora", "{r: 16, alpha: 32}" if lora_choice == "on" else "null"]
                if (rate or "auto").strip() != "auto":
                    found += ["--train.lr", f"{float(rate):g}"]
                return found

            def on_check(files, chosen, *settings):
                try:
                    return describe(data_of(files, chosen), options(*settings))
                except (LmtuneError, ValueError) as err:
                    raise gr.Error(str(err)) from None

            def on_start(files, chosen, *settings):
                try:
                    data = data_of(files, chosen)
                    job = workbench.submit_training(data, options(*settings), f"{sanitized(data[0].stem)}")
                except (LmtuneError, ValueError) as err:
                    raise gr.Error(str(err)) from None
                # The upload box empties: the next run starts from the files given for it, not these too.
                queued = f"training #{job.id} queued: {job.run_dir.name}"
                return queued, gr.update(choices=_runs(workbench), value=job.run_dir.name), None

            def on_stop(name):
                job = _latest_job(workbench, name)
                if job is None:
                    raise gr.Error("choose a run that is training or waiting")
                workbench.stop(job.id)
                return f"stopping {name}: it saves a checkpoint first"

            def on_resume(name):
                try:
                    job = workbench.submit_resume(workbench.confined(name or "", under="runs"))
                except LmtuneError as err:
                    raise gr.Error(str(err)) from None
                return f"training #{job.id} queued: resuming {name}"

            def on_load(name):
                try:
                    served_as = add_model(str(workbench.confined(f"{name or ''}/final", under="runs")))
                except LmtuneError as err:
                    raise gr.Error(str(err)) from None
                updates, _ = refresh_pickers()
                return [f"loaded {served_as} into the tabs beside the other models", *updates]

            def on_tick(name):
                rows = workbench.queue_rows()
                figure, text = None, ""
                if name:
                    try:
                        figure, text = watch(workbench.confined(name, under="runs"))
                    except LmtuneError:
                        pass
                return rows, figure, text

            settings = [model, objective, minutes, lora, lr]
            check.click(on_check, [uploads, picked, *settings], detected, api_name="train_check")
            start.click(on_start, [uploads, picked, *settings], [status, run, uploads], api_name="train_start")
            stop.click(on_stop, run, status, api_name="train_stop")
            resume.click(on_resume, run, status, api_name="train_resume")
            gr.Timer(2.0).tick(on_tick, run, [queue, curve, report])
            run.focus(lambda: gr.update(choices=_runs(workbench)), None, run)

        def connect() -> None:  # once the other tabs exist: loading a run updates their model pickers
            load.click(on_load, run, [status, *refresh_pickers()[1]], api_name="train_load")

        return connect

    return build


def _model_folder(workbench: Workbench, name: str) -> Path:
    try:
        return workbench.confined(name, under="data")
    except LmtuneError:
        return workbench.confined(name, under="runs")


def _runs(workbench: Workbench) -> list[str]:
    names = {job.run_dir.name for job in workbench.jobs}
    if workbench.runs_dir.is_dir():
        names |= {p.name for p in workbench.runs_dir.iterdir() if (p / "config.yaml").is_file()}
    return sorted(names)


def _latest_job(workbench: Workbench, name: str | None):
    return next(
        (job for job in reversed(workbench.jobs) if job.run_dir.name == name and job.state in ("waiting", "running")),
        None,
    )


def describe(data: list[Path], options: list[str]) -> str:
    """What `lmtune train --data ... OPTIONS` would do: the objective, the data's columns, the recipe and why."""
    from lmtune.config import make_config, parse_overrides
    from lmtune.train.defaults import describe as recipe_yaml
    from lmtune.train.defaults import estimate_tokens, recipe_for_data

    named = dict(zip(options[::2], options[1::2]))
    extra = [x for key, value in named.items() if key.count(".") for x in (key, value)]
    recipe, why = recipe_for_data(
        [str(p) for p in data],
        model=named.get("--model"),
        objective=named.get("--objective"),
        minutes=float(named["--minutes"]),
    )
    config = make_config(recipe, parse_overrides(extra))
    lines = [
        f"# objective: {config.objective}",
        f"# text: about {estimate_tokens([str(p) for p in data]):,} tokens",
        f"# time budget: {config.train.max_minutes:g} minutes",
        recipe_yaml(config).strip(),
        "# why:",
    ]
    return "\n".join(lines + [f"#  - {line}" for line in why])


def watch(run_dir: Path):
    """A run's curves (a figure) and, once it finished, its report (text)."""
    import json

    from rich.console import Console

    from lmtune.config import load_config
    from lmtune.train.report import print_report
    from lmtune.train.runs import compare_figure

    figure = None
    if (run_dir / "metrics.jsonl").exists():
        try:
            figure = compare_figure([run_dir])
        except LmtuneError:
            figure = None
    text = ""
    if (run_dir / "summary.json").exists():
        buffer = io.StringIO()
        print_report(
            load_config(run_dir / "config.yaml"),
            json.loads((run_dir / "summary.json").read_text()),
            Console(file=buffer, width=110, color_system=None),
            examples=False,
        )
        text = buffer.getvalue()
    return figure, text
