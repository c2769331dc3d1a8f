"""Verbs that take a model elsewhere: export it, serve it (with the workbench), and bench lmtune itself."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from lmtune.cli.app import (
    Device,
    Dtype,
    Engine,
    app,
    console,
)
from lmtune.errors import LmtuneError

log = logging.getLogger("lmtune")


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
    models: Annotated[
        Optional[list[str]], typer.Argument(help="run folders, model folders or aliases to serve")
    ] = None,
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
    workbench: Annotated[
        bool, typer.Option(help="training from the browser: the UI's Train tab (off unless asked for)")
    ] = False,
    data_dir: Annotated[
        Path, typer.Option(help="--workbench: the folder whose files the browser may train on (uploads go below it)")
    ] = Path("."),
    runs_dir: Annotated[Path, typer.Option(help="--workbench: the folder its runs go into")] = Path("runs"),
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="--workbench: the largest file it takes")] = 512,
    device: Device = None,
    dtype: Dtype = "auto",
    engine: Engine = "auto",
):
    """Serve models: web UI at /, REST at /v1/..., OpenAI-compatible /v1/completions and /v1/chat/completions.
    With --workbench, train from the browser too (bound to another address than loopback, it needs --api-key)."""
    import uvicorn

    from lmtune.serve.app import check_port_free, create_app
    from lmtune.serve.schemas import Limits

    models = models or []
    if not models and not workbench:
        raise LmtuneError(
            "give the models to serve (lmtune serve runs/my-run), or --workbench to train from the browser"
        )
    bench = None
    if workbench:
        bench = _workbench(host, api_key, ui, data_dir, runs_dir, max_upload_mb)
    check_port_free(host, port)  # before loading models: a busy port fails in a second
    app_ = create_app(
        models,
        workbench=bench,
        api_key=api_key,
        ui=ui,
        device=device,
        dtype=dtype,
        engine=engine,
        limits=Limits(
            max_input_chars=max_input_chars, max_new_tokens=max_new_tokens, max_batch=max_batch, batch_size=batch_size
        ),
    )
    console().print(f"serving {', '.join(models)} on http://{host}:{port}  (API docs: /docs)")
    # On SIGTERM/Ctrl-C, open streams get 3 s to finish; then they are cancelled (which stops generation).
    uvicorn.run(app_, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)


def _workbench(host: str, api_key: str | None, ui: bool, data_dir: Path, runs_dir: Path, max_upload_mb: float):
    """The browser trains on this machine: on another address than loopback, never without a key."""
    import ipaddress
    import socket

    from lmtune.serve.workbench import Workbench

    if not ui:
        raise LmtuneError("--workbench lives in the web UI: leave out --no-ui")
    try:
        loopback = all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (socket.gaierror, ValueError):
        loopback = False
    if not loopback and not api_key:
        raise LmtuneError(
            f"--workbench on {host} (not loopback) lets anyone who reaches it train on this machine: "
            "give --api-key KEY (or LMTUNE_API_KEY), or bind 127.0.0.1"
        )
    if not data_dir.is_dir():
        raise LmtuneError(f"--data-dir {data_dir}: no such folder")
    return Workbench(data_dir, runs_dir, max_upload_mb)


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick/--full", help="small configs (~3 min) or the full comparison")] = True,
    out: Annotated[Optional[Path], typer.Option(help="folder for bench.json and bench.md")] = None,
    only: Annotated[
        Optional[list[str]],
        typer.Option(help="sections: peak clm mlm classify chat generate fill-mask serve data device"),
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
