"""The browser UI (Gradio), a tab per capability of the served models, and one for the training runs."""

from __future__ import annotations

from pathlib import Path

from lmtune.errors import LmtuneError
from lmtune.hardware import release_cpu_workers
from lmtune.infer.classify import classify
from lmtune.infer.fill_mask import fill_mask
from lmtune.infer.generate import GenerationSettings
from lmtune.train.runs import compare_figure, find_runs, run_table


def _names(served: dict, capability: str) -> list[str]:
    return [name for name, m in served.items() if capability in m.capabilities]


def _within_limits(limits, text: str, new_tokens: int | None = None, top_k: int | None = None) -> None:
    """The server's caps hold on the UI's routes as on REST (Gradio's API takes any value its callers send,
    whatever the sliders show)."""
    if limits is None:
        return
    if len(text) > limits.max_input_chars:
        raise LmtuneError(
            f"the text has {len(text):,} characters; this server takes at most {limits.max_input_chars:,}"
        )
    if new_tokens is not None and not 1 <= new_tokens <= limits.max_new_tokens:
        raise LmtuneError(f"max new tokens must be between 1 and {limits.max_new_tokens} on this server")
    if top_k is not None and not 1 <= top_k <= 100:
        raise LmtuneError("top-k must be between 1 and 100")


def build_ui(served: dict, limits=None):
    """`limits`: the server's caps (serve.app.Limits), checked on every UI call as on the REST routes."""
    import gradio as gr  # heavy: imported only when the UI is wanted

    masked, causal, classifiers = _names(served, "fill-mask"), _names(served, "generate"), _names(served, "classify")
    most_tokens = limits.max_new_tokens if limits is not None else 512

    def run_locked(name, fn, *args):
        try:
            with served[name].lock:
                return fn(served[name].loaded, *args)
        finally:
            release_cpu_workers()  # Gradio's worker threads stay: their OpenMP workers need not

    with gr.Blocks(title="lmtune") as ui:
        gr.Markdown("# lmtune\nTry the served models. The REST API is at `/v1/...` (schema: `/openapi.json`).")
        if masked:
            with gr.Tab("Fill-mask"):
                text = gr.Textbox(
                    label="Text with [MASK]",
                    value="To be, or not to be, that is the [MASK].",
                    elem_id="fill-mask-input",
                )
                top_k = gr.Slider(1, 20, value=5, step=1, label="top-k")
                button = gr.Button("Predict", variant="primary", elem_id="fill-mask-submit")
                # One column per masked model: base vs tuned side by side when two are served.
                tables, charts = [], []
                with gr.Row():
                    for name in masked:
                        with gr.Column():
                            gr.Markdown(f"**{name}**")
                            tables.append(
                                gr.Dataframe(
                                    headers=["mask", "rank", "token", "probability"],
                                    label="predictions",
                                    elem_classes=["fill-mask-table"],
                                )
                            )
                            charts.append(gr.Label(label="first mask", num_top_classes=20))

                def predict(sentence, k):
                    outputs = []
                    try:
                        _within_limits(limits, sentence, top_k=int(k))
                        for name in masked:
                            masks = run_locked(name, fill_mask, sentence, int(k))
                            rows = [
                                [m + 1, r + 1, p["token"], round(p["score"], 4)]
                                for m, preds in enumerate(masks)
                                for r, p in enumerate(preds)
                            ]
                            outputs += [rows, {p["token"]: p["score"] for p in masks[0]}]
                    except LmtuneError as err:
                        raise gr.Error(str(err)) from None
                    return outputs

                outputs = [c for pair in zip(tables, charts) for c in pair]
                button.click(predict, [text, top_k], outputs)
                text.submit(predict, [text, top_k], outputs)
        if causal:
            with gr.Tab("Generate"):
                model = gr.Dropdown(causal, value=causal[0], label="model")
                prompt = gr.Textbox(label="Prompt", value="Once upon a time", lines=3)
                with gr.Row():
                    temperature = gr.Slider(0, 2, value=0.8, step=0.05, label="temperature")
                    top_k_gen = gr.Slider(0, 200, value=50, step=1, label="top-k (0 = off)")
                    top_p = gr.Slider(0.05, 1, value=0.95, step=0.01, label="top-p")
                    max_tokens = gr.Slider(1, most_tokens, value=min(80, most_tokens), step=1, label="max new tokens")
                go = gr.Button("Generate", variant="primary")
                output = gr.Textbox(label="Output", lines=10)

                def run(name, text, temp, k, p, n):
                    result = text
                    try:
                        _within_limits(limits, text, new_tokens=int(n))
                        settings = GenerationSettings(
                            max_new_tokens=int(n), temperature=temp, top_k=int(k) or None, top_p=p
                        )
                        with served[name].pieces(text, settings) as pieces:
                            for piece in pieces:
                                result += piece
                                yield result
                    except LmtuneError as err:  # e.g. more new tokens than the model's context holds
                        raise gr.Error(str(err)) from None

                go.click(run, [model, prompt, temperature, top_k_gen, top_p, max_tokens], output)
        if classifiers:
            with gr.Tab("Classify"):
                model_c = gr.Dropdown(classifiers, value=classifiers[0], label="model")
                text_c = gr.Textbox(label="Text", value="A moving, beautifully acted film.")
                button_c = gr.Button("Classify", variant="primary")
                label = gr.Label(label="class probabilities")

                def predict_class(name, sentence):
                    if not sentence.strip():
                        raise gr.Error("type some text")
                    try:
                        _within_limits(limits, sentence)
                    except LmtuneError as err:
                        raise gr.Error(str(err)) from None
                    return run_locked(name, classify, [sentence])[0]["scores"]

                button_c.click(predict_class, [model_c, text_c], label)
        _runs_tab(gr)
    return ui


def _within_cwd(folder: str) -> Path:
    """The UI has no login: it shows runs in the server's current folder and below it, nowhere else."""
    path, here = Path(folder.strip() or "runs"), Path.cwd().resolve()
    resolved = path.expanduser().resolve()
    if resolved != here and here not in resolved.parents:
        raise LmtuneError(f"{folder}: the web UI shows runs inside the server's current folder only")
    return path


def _runs_tab(gr) -> None:
    with gr.Tab("Runs"):
        with gr.Row():
            folder = gr.Textbox(label="Runs folder (below the server's current folder)", value="runs", scale=4)
            list_button = gr.Button("List runs", scale=1, elem_id="runs-list")
        table = gr.Dataframe(label="runs (newest last)", interactive=False, elem_id="runs-table")
        chosen = gr.CheckboxGroup([], label="runs to compare")
        with gr.Row():
            metric = gr.Textbox(label="metric (blank: the first run's selection metric, e.g. val_loss)", scale=4)
            compare_button = gr.Button("Compare", variant="primary", scale=1, elem_id="runs-compare")
        plot = gr.Plot(label="validation curves")

        def list_runs(path):
            try:
                runs = find_runs(_within_cwd(path))
            except LmtuneError as err:
                raise gr.Error(str(err)) from None
            if not runs:
                raise gr.Error(f"no runs in {path}")
            columns, rows = run_table(runs)
            names = [run.path for run in runs]
            return (
                gr.Dataframe(value=rows, headers=[c.replace("\n", " ") for c in columns]),
                gr.CheckboxGroup(choices=names, value=names[-2:]),
            )

        def compare(paths, metric_name):
            if not paths:
                raise gr.Error("tick the runs to compare")
            try:
                return compare_figure([_within_cwd(p) for p in paths], (metric_name or "").strip() or None)
            except LmtuneError as err:
                raise gr.Error(str(err)) from None

        list_button.click(list_runs, folder, [table, chosen])
        folder.submit(list_runs, folder, [table, chosen])
        compare_button.click(compare, [chosen, metric], plot)
