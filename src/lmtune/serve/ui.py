"""The browser UI (Gradio), a tab per capability of the served models, and one for the training runs."""

from __future__ import annotations

from pathlib import Path

from lmtune.errors import LmtuneError
from lmtune.hardware import release_cpu_workers
from lmtune.infer.chat import chat_prompt
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


def build_ui(served: dict, limits=None, train_tab=None):
    """The UI: a tab per capability of the served models (each with a model picker, so models loaded while the
    server runs, by the workbench, show up), the Runs tab, and `train_tab(gr, refresh)` when training from the
    browser is on. `limits`: the server's caps (serve.app.Limits), checked on every UI call as on REST."""
    import gradio as gr  # heavy: imported only when the UI is wanted

    most_tokens = limits.max_new_tokens if limits is not None else 512
    every_tab = train_tab is not None  # models may come later: every tab is there to receive them
    pickers: list[tuple] = []  # (dropdown, capability, which of the capable models it starts on)

    def picker(capability: str, label: str = "model", index: int = 0, optional: bool = False):
        names = _names(served, capability)
        start = names[index] if index < len(names) else (None if optional or not names else names[0])
        dropdown = gr.Dropdown(names, value=start, label=label, allow_custom_value=False)
        pickers.append((dropdown, capability, index, optional))
        return dropdown

    def refresh():
        """Every picker's choices from the models served now (a model loaded since keeps its selection)."""
        updates = []
        for _, capability, index, optional in pickers:
            names = _names(served, capability)
            start = names[index] if index < len(names) else (None if optional or not names else names[0])
            updates.append(gr.update(choices=names, value=start))
        return updates

    def run_locked(name, fn, *args):
        if name not in served:
            raise gr.Error("choose a model")
        try:
            with served[name].lock:
                return fn(served[name].loaded, *args)
        finally:
            release_cpu_workers()  # Gradio's worker threads stay: their OpenMP workers need not

    with gr.Blocks(title="lmtune") as ui:
        gr.Markdown("# lmtune\nTry the served models. The REST API is at `/v1/...` (schema: `/openapi.json`).")
        connect_train_tab = None
        if train_tab is not None:  # first in the page; its Load button is wired once every picker exists
            connect_train_tab = train_tab(gr, lambda: (refresh(), [p[0] for p in pickers]))
        if every_tab or _names(served, "fill-mask"):
            _fill_mask_tab(gr, picker, run_locked, limits)
        if every_tab or _names(served, "generate"):
            _generate_tab(gr, served, picker, limits, most_tokens)
        if every_tab or _names(served, "chat"):
            _chat_tab(gr, served, picker, limits, most_tokens)
        if every_tab or _names(served, "classify"):
            _classify_tab(gr, picker, run_locked, limits)
        _runs_tab(gr)
        if connect_train_tab is not None:
            connect_train_tab()
        ui.load(refresh, None, [p[0] for p in pickers])
    return ui


def _fill_mask_tab(gr, picker, run_locked, limits) -> None:
    with gr.Tab("Fill-mask"):
        text = gr.Textbox(
            label="Text with [MASK]", value="To be, or not to be, that is the [MASK].", elem_id="fill-mask-input"
        )
        top_k = gr.Slider(1, 20, value=5, step=1, label="top-k")
        button = gr.Button("Predict", variant="primary", elem_id="fill-mask-submit")
        # Two models side by side (the base and the tuned one, say); the second is optional.
        columns = []
        with gr.Row():
            for index in (0, 1):
                with gr.Column():
                    chosen = picker("fill-mask", f"model {'AB'[index]}", index, optional=index == 1)
                    table = gr.Dataframe(
                        headers=["mask", "rank", "token", "probability"],
                        label="predictions",
                        elem_classes=["fill-mask-table"],
                    )
                    columns.append((chosen, table, gr.Label(label="first mask", num_top_classes=20)))

        def predict(sentence, k, *names):
            outputs = []
            try:
                _within_limits(limits, sentence, top_k=int(k))
                for name in names:
                    if not name:
                        outputs += [[], {}]
                        continue
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

        inputs = [text, top_k, *[c[0] for c in columns]]
        outputs = [part for _, table, chart in columns for part in (table, chart)]
        button.click(predict, inputs, outputs)
        text.submit(predict, inputs, outputs)


def _generate_tab(gr, served: dict, picker, limits, most_tokens: int) -> None:
    with gr.Tab("Generate"):
        model = picker("generate")
        prompt = gr.Textbox(label="Prompt", value="Once upon a time", lines=3, elem_id="generate-input")
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0.8, step=0.05, label="temperature", elem_id="generate-temperature")
            top_k_gen = gr.Slider(0, 200, value=50, step=1, label="top-k (0 = off)")
            top_p = gr.Slider(0.05, 1, value=0.95, step=0.01, label="top-p")
            max_tokens = gr.Slider(1, most_tokens, value=min(80, most_tokens), step=1, label="max new tokens")
        go = gr.Button("Generate", variant="primary", elem_id="generate-submit")
        output = gr.Textbox(label="Output", lines=10, elem_id="generate-output")

        def run(name, text, temp, k, p, n):
            if name not in served:
                raise gr.Error("choose a model")
            result = text
            try:
                _within_limits(limits, text, new_tokens=int(n))
                settings = GenerationSettings(max_new_tokens=int(n), temperature=temp, top_k=int(k) or None, top_p=p)
                with served[name].pieces(text, settings) as pieces:
                    for piece in pieces:
                        result += piece
                        yield result
            except LmtuneError as err:  # e.g. more new tokens than the model's context holds
                raise gr.Error(str(err)) from None

        go.click(run, [model, prompt, temperature, top_k_gen, top_p, max_tokens], output)


def _classify_tab(gr, picker, run_locked, limits) -> None:
    with gr.Tab("Classify"):
        model_c = picker("classify")
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


def _chat_tab(gr, served: dict, picker, limits, most_tokens: int) -> None:
    """A conversation with a model, turn after turn, the reply streamed; Stop ends a reply, Clear the talk.
    The model's chat template renders it (infer/chat.py), as in training and on /v1/chat/completions."""
    with gr.Tab("Chat"):
        with gr.Row():
            model = picker("chat")
            system = gr.Textbox(label="System prompt (optional)", scale=3, elem_id="chat-system")
        talk = gr.Chatbot(label="conversation", elem_id="chat-history", height=360)
        with gr.Row():
            message = gr.Textbox(label="Your message", scale=5, elem_id="chat-input")
            send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="temperature", elem_id="chat-temperature")
            max_tokens = gr.Slider(
                1, most_tokens, value=min(200, most_tokens), step=1, label="max new tokens", elem_id="chat-max-tokens"
            )
            stop = gr.Button("Stop", elem_id="chat-stop")
            clear = gr.Button("Clear", elem_id="chat-clear")

        def reply(name, system_prompt, history, text, temp, n):
            if name not in served:
                raise gr.Error("choose a model")
            history = list(history or [])
            text = (text or "").strip()
            if not text:
                raise gr.Error("type a message")
            messages = (
                ([{"role": "system", "content": system_prompt}] if system_prompt.strip() else [])
                + [{"role": turn["role"], "content": _text_of(turn["content"])} for turn in history]
                + [{"role": "user", "content": text}]
            )
            try:
                _within_limits(limits, "".join(m["content"] for m in messages), new_tokens=int(n))
                prompt = chat_prompt(served[name].loaded.tokenizer, messages)
                settings = GenerationSettings(max_new_tokens=int(n), temperature=temp)
                history += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
                with served[name].pieces(prompt, settings) as pieces:
                    for piece in pieces:
                        history[-1] = {"role": "assistant", "content": history[-1]["content"] + piece}
                        yield history, ""
            except LmtuneError as err:
                raise gr.Error(str(err)) from None
            history[-1] = {"role": "assistant", "content": history[-1]["content"].strip()}
            yield history, ""

        inputs = [model, system, talk, message, temperature, max_tokens]
        sent = send.click(reply, inputs, [talk, message])
        submitted = message.submit(reply, inputs, [talk, message])
        stop.click(None, None, None, cancels=[sent, submitted])
        clear.click(lambda: ([], ""), None, [talk, message])


def _text_of(content) -> str:
    """A Chatbot turn's content as text (Gradio may hand back a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content)


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
