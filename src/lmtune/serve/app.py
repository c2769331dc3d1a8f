"""`lmtune serve`: one FastAPI app with the REST API, OpenAI-compatible routes, and the Gradio UI at `/`.

Each route is request -> predict -> response (as in litgpt's serve): a pydantic body whose schema carries
the server's caps (schemas.py), a function from `infer/` run on a worker thread in the model's turn
(scheduling.py; generation batched continuously by infer/batching.py, fill-mask and classify requests
micro-batched), a JSON body or server-sent events (streams.py). No request holds a model after its client
is gone, and a shutdown cancels requests the same way. Every error is a JSON body (errors.py). The routes
live in routes.py (lmtune's own) and openai.py; this module loads the models and puts the app together."""

import contextlib
import functools
import hmac
import socket
from pathlib import Path

import anyio
from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from lmtune.errors import LmtuneError
from lmtune.hardware import release_cpu_workers
from lmtune.infer import LoadedModel, load
from lmtune.infer.batching import Batcher
from lmtune.infer.classify import classify
from lmtune.infer.fill_mask import fill_mask
from lmtune.serve.errors import install_error_handlers
from lmtune.serve.openai import openai_router
from lmtune.serve.routes import rest_router
from lmtune.serve.scheduling import ClientGone, MicroBatcher, Served
from lmtune.serve.schemas import EVENT_BODIES, Limits, request_bodies
from lmtune.serve.ui import build_ui
from lmtune.serve.ui_train import train_tab
from lmtune.serve.workbench import Workbench

# Requests of these capabilities that arrive while their model is busy are answered by one call.
MICRO_BATCHED = {
    "fill-mask": lambda loaded, texts, top_k: fill_mask(loaded, texts, top_k),
    "classify": lambda loaded, texts, _: classify(loaded, texts),
}


def create_app(
    models: list[str] | dict[str, LoadedModel],
    api_key: str | None = None,
    limits: Limits | None = None,
    ui: bool = True,
    device: str | None = None,
    dtype: str = "auto",
    engine: str = "auto",
    workbench: Workbench | None = None,
) -> FastAPI:
    """The app serving `models` (names, or models loaded already); `workbench`: training from the browser too
    (the UI's Train tab), whose finished runs join the served models without a restart."""
    limits = limits or Limits()
    if not isinstance(models, dict):
        models = {name: load(name, device=device, dtype=dtype, engine=engine) for name in models}
    if not models and workbench is None:
        raise LmtuneError("serve needs at least one model (or --workbench, to train one from the browser)")
    served = {name: serve_model(name, loaded, limits) for name, loaded in models.items()}
    release_cpu_workers()  # the models were loaded here; from now on they compute on engine and worker threads

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if workbench is not None:  # the training under way saves a checkpoint and stops
            await anyio.to_thread.run_sync(workbench.close)
        for model in list(served.values()):  # a shutdown: end running generations, stop the batch loops
            if model.batcher is not None:
                await anyio.to_thread.run_sync(model.batcher.close)

    app = FastAPI(
        title="lmtune",
        version="0.1.0",
        lifespan=lifespan,
        description="Fill-mask, generation and classification with tuned models; OpenAI-compatible routes.",
    )
    app.state.served, app.state.limits, app.state.api_key = served, limits, api_key
    install_error_handlers(app, ClientGone)
    bodies = request_bodies(limits)
    app.include_router(rest_router(bodies))
    app.include_router(openai_router(bodies))
    _document_event_bodies(app)
    if ui:
        import gradio as gr  # heavy: imported only when the UI is wanted

        def add_model(path: str) -> str:
            """A finished run's model served beside the others (the REST routes and /v1/models follow)."""
            name = str(Path(path).parent.name) if Path(path).name == "final" else path
            earlier = served.get(name)
            served[name] = serve_model(name, load(path, device=device, dtype=dtype), limits)
            if earlier is not None and earlier.batcher is not None:  # the run loaded again: its new model serves
                earlier.batcher.close()
            release_cpu_workers()
            return name

        tab = train_tab(workbench, add_model) if workbench is not None else None
        # The web UI and Gradio's own API routes sit behind the same key: its login form (any user name, the
        # key as password) sets the session cookie every Gradio route then asks for.
        auth = (
            None
            if api_key is None
            else (lambda _user, password: hmac.compare_digest(password.encode(), api_key.encode()))
        )
        app = gr.mount_gradio_app(
            app,
            build_ui(served, limits, train_tab=tab),
            path="/",
            auth=auth,
            auth_message="This server needs its API key: any user name, the key as password.",
        )
    return app


def serve_model(name: str, loaded: LoadedModel, limits: Limits) -> Served:
    """A model ready for requests: generation batched continuously, fill-mask and classify micro-batched."""
    model = Served(name, loaded)
    if Batcher.supports(loaded):
        model.batcher = Batcher(loaded, limits.batch_size, model_lock=model.lock)
        return model
    batched = next((MICRO_BATCHED[c] for c in model.capabilities if c in MICRO_BATCHED), None)
    if batched is not None:
        model.micro = MicroBatcher(model, functools.partial(batched, loaded), limits.max_batch)
    return model


def _document_event_bodies(app: FastAPI) -> None:
    """The events streams send are named by no route, so FastAPI would leave them out of /openapi.json."""
    openapi = app.openapi

    def with_event_bodies() -> dict:
        schema = openapi()
        _, defs = models_json_schema(
            [(m, "serialization") for m in EVENT_BODIES], ref_template="#/components/schemas/{model}"
        )
        schema["components"]["schemas"].update(defs["$defs"])
        return schema

    app.openapi = with_event_bodies


def check_port_free(host: str, port: int) -> None:
    """Bind the address as uvicorn will, before loading models: a busy port fails in a second."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise LmtuneError(f"cannot serve on host '{host}': no such address") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except PermissionError:
            raise LmtuneError(
                f"no permission to serve on port {port} (ports below 1024 need root); choose another with --port"
            ) from None
        except OSError as err:
            raise LmtuneError(
                f"cannot serve on {host}:{port}: {err.strerror} (is another server running? choose another with --port)"
            ) from None
