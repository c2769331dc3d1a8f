"""`lmtune serve`: one FastAPI app with the REST API, OpenAI-compatible routes, and the Gradio UI at `/`.

Each route is request -> predict -> response (as in litgpt's serve): a pydantic body whose schema carries
the server's caps, a function from `infer/` run on a worker thread, a JSON body or server-sent events.
Generation requests for a causal LM are batched continuously (infer/batching.py): up to `batch_size`
sequences share each decode step, a newcomer joins at the next step, the rest wait first come first
served. Fill-mask and classify requests are micro-batched: those that arrive while their model is busy
are answered together by its next call (`MicroBatcher`). Models that cannot be batched run one request
at a time, in a first-come-first-served line, off the event loop. No request holds a model after its
client is gone: a waiting request leaves the line when its client disconnects, and a running one
(streamed or not) stops generating within a token. A server shutdown cancels requests the same way.
Every error is a JSON body (4xx for anything the client sent), and a stream that fails sends an SSE
error event and then `[DONE]`."""
import asyncio
import contextlib
import hmac
import itertools
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import anyio
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException

from lmtune.errors import LmtuneError
from lmtune.hardware import release_cpu_workers
from lmtune.infer import LoadedModel, load
from lmtune.infer.batching import Batcher, Job
from lmtune.infer.classify import classify
from lmtune.infer.fill_mask import check_masks, fill_mask
from lmtune.infer.generate import (GenerationSettings, NewTokens, SamplingSettings, Seed, Sequences,
                                   Stream, Temperature, TopP, describe, generate, room_for_prompt)
from lmtune.serve.ui import build_ui


@dataclass
class Limits:
    max_input_chars: int = 8000
    max_new_tokens: int = 512
    max_batch: int = 64  # texts per request
    batch_size: int = 8  # sequences generated together per model (continuous batching); 1: one at a time


class ClientGone(Exception):
    """The client disconnected before its request was served."""


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        self.status, self.message, self.kind = status, message, kind


@dataclass
class Served:
    name: str
    loaded: LoadedModel
    lock: threading.Lock = field(default_factory=threading.Lock)  # held by the thread using the model (API or UI)
    line: deque = field(default_factory=deque)  # API requests waiting for the model, in arrival order
    batcher: Batcher | None = None  # continuous batching of generation, for causal LMs that allow it
    micro: "MicroBatcher | None" = None  # micro-batching of fill-mask or classify requests

    @property
    def load(self) -> dict:
        batched = self.batcher is not None
        running = self.batcher.running if batched else int(self.lock.locked())
        waiting = len(self.line) + (self.batcher.waiting if batched else 0) + (len(self.micro.pending) if self.micro else 0)
        return {"busy": running > 0 or self.lock.locked(), "running": running, "waiting": waiting}

    @contextlib.contextmanager
    def pieces(self, prompt: str, settings: GenerationSettings):
        """Generated text pieces for a thread (the UI): through the batcher when there is one."""
        if self.batcher is not None:
            job = self.batcher.submit(prompt, settings)
            try:
                yield iter(job)
            finally:
                job.cancel()
        else:
            with self.lock, Stream(self.loaded, prompt, settings) as pieces:
                yield pieces

    @property
    def capabilities(self) -> list[str]:
        return list(self.loaded.capabilities)

    @contextlib.asynccontextmanager
    async def turn(self, request: Request | None = None):
        """Hold the model. Wait in line without blocking the event loop (polling: a threading.Lock, as the
        UI's threads share it); leave the line when cancelled (a stream whose client left, a shutdown) or,
        given `request`, when its client disconnects."""
        ticket = object()
        self.line.append(ticket)
        try:
            for polls in itertools.count(1):
                if self.line[0] is ticket and self.lock.acquire(blocking=False):
                    break
                if request is not None and polls % 5 == 0 and await request.is_disconnected():
                    raise ClientGone()
                await asyncio.sleep(0.01)
        finally:
            self.line.remove(ticket)
        try:
            yield
        finally:
            self.lock.release()


@dataclass(eq=False)
class _Asked:
    texts: list[str]
    options: Any
    answer: asyncio.Future


class MicroBatcher:
    """Requests that arrive while the model is busy are answered by one call: `run(texts, options)` on the
    texts of every waiting request with the same options (up to `max_texts`), in arrival order. A request
    whose client leaves before its turn is dropped; one failing call fails only the requests it held."""

    def __init__(self, model: Served, run: Callable[[list[str], Any], list], max_texts: int):
        self.model, self.run, self.max_texts = model, run, max_texts
        self.pending: list[_Asked] = []
        self._drainer: asyncio.Task | None = None

    async def __call__(self, texts: list[str], options: Any, request: Request) -> list:
        asked = _Asked(texts, options, asyncio.get_running_loop().create_future())
        self.pending.append(asked)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        try:
            while not (await asyncio.wait({asked.answer}, timeout=0.05))[0]:
                if await request.is_disconnected():
                    raise ClientGone()
            return asked.answer.result()
        finally:
            if asked in self.pending:
                self.pending.remove(asked)

    async def _drain(self) -> None:
        while self.pending:
            async with self.model.turn():
                group, size = [], 0
                for asked in list(self.pending):
                    if asked.options == self.pending[0].options and (not group or size + len(asked.texts) <= self.max_texts):
                        group.append(asked)
                        size += len(asked.texts)
                for asked in group:
                    self.pending.remove(asked)
                try:
                    results = await anyio.to_thread.run_sync(on_worker, self.run, [t for a in group for t in a.texts],
                                                             group[0].options)
                except Exception as err:
                    for asked in group:
                        if not asked.answer.done():
                            asked.answer.set_exception(err)
                    continue
                start = 0
                for asked in group:
                    if not asked.answer.done():
                        asked.answer.set_result(results[start:start + len(asked.texts)])
                    start += len(asked.texts)


def on_worker(fn: Callable, *args) -> Any:
    """`fn(*args)` on a pooled worker thread, which then lets its OpenMP workers go: threads of the pool
    outlive the call, and idle OpenMP pools of several threads slow every PyTorch op (`release_cpu_workers`)."""
    try:
        return fn(*args)
    finally:
        release_cpu_workers()


async def run_stoppable(work: Callable[[threading.Event], Any], request: Request) -> Any:
    """`work(stop)` on a worker thread. When the client disconnects or this task is cancelled (a shutdown),
    set `stop` (generation ends within a token) and still wait for the thread: whoever holds the model
    keeps it until its thread is done with it."""
    stop = threading.Event()
    done = asyncio.get_running_loop().run_in_executor(None, on_worker, work, stop)
    try:
        while not (await asyncio.wait({done}, timeout=0.05))[0]:
            if await request.is_disconnected():
                raise ClientGone()
        return done.result()
    finally:
        if not done.done():
            stop.set()
            with anyio.CancelScope(shield=True):
                await asyncio.wait({done})


class EventStream(StreamingResponse):
    """Server-sent events whose generator is always closed, also when the client left while an event was
    being sent (then the generator is not where the cancellation lands): its `finally` frees the model."""

    media_type = "text/event-stream"

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


# ---- request bodies -------------------------------------------------------------------------------------
ModelName = Annotated[str | None, Field(description="a served model's name (GET /v1/models); default: the first "
                                                   "that can")]


class _OpenAIBody(BaseModel):
    """The OpenAI fields lmtune honours, with SamplingSettings' ranges; other OpenAI fields are ignored."""

    model_config = ConfigDict(extra="allow")
    model: ModelName = None
    max_tokens: NewTokens = 16
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    n: Sequences = 1
    stream: bool = False
    seed: Seed | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


def request_bodies(limits: Limits) -> SimpleNamespace:
    """The request bodies, with this server's caps in their schema: `/docs` and clients see them, and
    anything beyond them is a 422 before any work."""
    Prompt = Annotated[str, Field(max_length=limits.max_input_chars)]  # may be empty: generate from nothing
    Prompts = Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=limits.max_batch)]
    Text = Annotated[str, Field(min_length=1, max_length=limits.max_input_chars)]
    Texts = Text | Annotated[list[Text], Field(min_length=1, max_length=limits.max_batch)]
    cap = limits.max_new_tokens
    Tokens = Annotated[NewTokens, Field(le=cap, description=f"tokens to generate (this server: at most {cap})")]

    class _Body(BaseModel):
        model_config = ConfigDict(extra="forbid")
        model: ModelName = None

    class FillMaskRequest(_Body):
        text: Texts
        top_k: int = Field(5, ge=1, le=100)

    class ClassifyRequest(_Body):
        text: Texts

    class GenerateRequest(_Body, SamplingSettings):
        """The sampling fields and their ranges are `SamplingSettings`': the same as the CLI's."""

        prompt: Prompt
        max_new_tokens: Tokens = min(64, cap)
        stream: bool = False

    class CompletionRequest(_OpenAIBody):
        prompt: Prompts
        max_tokens: Tokens = min(16, cap)

    class ChatRequest(_OpenAIBody):
        messages: list[ChatMessage] = Field(min_length=1, max_length=limits.max_batch)
        max_tokens: Tokens = min(128, cap)

    return SimpleNamespace(FillMaskRequest=FillMaskRequest, ClassifyRequest=ClassifyRequest, GenerateRequest=GenerateRequest,
                           CompletionRequest=CompletionRequest, ChatRequest=ChatRequest)


def generation_settings(body: BaseModel) -> GenerationSettings:
    """The one place a request body becomes generation settings (validated again there, as the CLI's are)."""
    if isinstance(body, _OpenAIBody):
        return GenerationSettings(max_new_tokens=body.max_tokens, temperature=body.temperature, top_k=None,
                                  top_p=body.top_p, num_return_sequences=body.n, seed=body.seed)
    return GenerationSettings(**body.model_dump(include=set(SamplingSettings.model_fields)))


# ---- response bodies ------------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ModelLoad(BaseModel):
    busy: bool
    running: int = Field(description="requests (sequences) being generated or served now")
    waiting: int = Field(description="requests waiting for their turn")


class Health(BaseModel):
    status: str
    models: list[str]
    load: dict[str, ModelLoad]


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "lmtune"
    created: int = 0
    objective: str
    capabilities: list[str]
    labels: list[str] | None


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class MaskPrediction(BaseModel):
    token: str
    score: float
    continues_word: bool
    token_id: int
    sequence: str


class FillMaskResult(BaseModel):
    text: str
    masks: list[list[MaskPrediction]]


class FillMaskResponse(BaseModel):
    model: str
    results: list[FillMaskResult]


class ClassifyResult(BaseModel):
    text: str
    label: str
    score: float
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult]


class GenerateResponse(BaseModel):
    model: str
    prompt: str
    completions: list[str]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: Literal["stop", "length"]


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]


# What a stream's events carry (`data: {...}`), per route.
class GenerateChunk(BaseModel):
    text: str


class CompletionChunkChoice(BaseModel):
    text: str
    index: int
    finish_reason: Literal["stop"] | None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop"] | None


class ChatChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 422, 500)}
EVENT_BODIES = (GenerateChunk, CompletionChunk, ChatChunk, ErrorBody)


def streamed(chunk: type[BaseModel]) -> dict:
    """The 200 of a route that streams when asked: server-sent events, each `data:` a `chunk` (or, when the
    stream fails, an error), the last `[DONE]`. OpenAPI 3.1: the schema describes one event."""
    payload = {"anyOf": [{"$ref": f"#/components/schemas/{chunk.__name__}"}, {"$ref": "#/components/schemas/ErrorBody"}]}
    data = {"anyOf": [{"const": "[DONE]"}, {"type": "string", "contentMediaType": "application/json",
                                             "contentSchema": payload}]}
    event = {"type": "object", "required": ["data"], "properties": {"data": data}}
    return {**ERRORS, 200: {"description": "JSON, or server-sent events when `stream` is true",
                            "content": {"text/event-stream": {"schema": event}}}}


def error_payload(exc: Exception) -> dict:
    """What a client is told about an exception: ours (bad input) in full, anything else by its type."""
    if isinstance(exc, LmtuneError):
        return {"error": {"message": str(exc), "type": "invalid_request_error"}}
    return {"error": {"message": f"internal error: {type(exc).__name__}", "type": "server_error"}}


# ---- the app ----------------------------------------------------------------------------------------
def create_app(models: list[str] | dict[str, LoadedModel], api_key: str | None = None, limits: Limits | None = None,
               ui: bool = True, device: str | None = None, dtype: str = "auto", engine: str = "auto") -> FastAPI:
    limits = limits or Limits()
    if not isinstance(models, dict):
        models = {name: load(name, device=device, dtype=dtype, engine=engine) for name in models}
    served = {name: Served(name, loaded) for name, loaded in models.items()}
    release_cpu_workers()  # the models were loaded here; from now on they compute on engine and worker threads
    if not served:
        raise LmtuneError("serve needs at least one model")
    for model in served.values():
        if Batcher.supports(model.loaded):
            model.batcher = Batcher(model.loaded, limits.batch_size, model_lock=model.lock)
        elif "fill-mask" in model.capabilities:
            model.micro = MicroBatcher(model, lambda texts, top_k, m=model: fill_mask(m.loaded, texts, top_k),
                                       limits.max_batch)
        elif "classify" in model.capabilities:
            model.micro = MicroBatcher(model, lambda texts, _, m=model: classify(m.loaded, texts), limits.max_batch)
    bodies = request_bodies(limits)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        for model in served.values():  # a shutdown: end running generations, stop the batch loops
            if model.batcher is not None:
                await anyio.to_thread.run_sync(model.batcher.close)

    app = FastAPI(title="lmtune", version="0.1.0", lifespan=lifespan,
                  description="Fill-mask, generation and classification with tuned models; OpenAI-compatible routes.")
    app.state.served = served
    app.state.limits = limits

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')",
                           "authentication_error")

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error(exc.status, exc.message, exc.kind)

    @app.exception_handler(LmtuneError)
    async def lmtune_error(request: Request, exc: LmtuneError):
        return error(400, str(exc))

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone):  # nobody reads it; logged as 499
        return error(499, "the client closed the request before it was served", "client_closed_request")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = exc.errors() or [{"loc": (), "msg": "invalid request"}]
        if problems[0].get("type") == "json_invalid":
            return error(422, "request body is not valid JSON")
        # For `str | list[str]` pydantic reports each branch; the type mismatch of the branch not taken is noise.
        return error(422, describe(next((p for p in problems if not p.get("type", "").endswith("_type")), problems[0])))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # unknown path, wrong method: the same JSON shape
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # a bug of ours: still JSON, never a bare 500 page
        return JSONResponse(error_payload(exc), status_code=500)

    def pick(name: str | None, capability: str) -> Served:
        if name is not None:
            if name not in served:
                raise ApiError(404, f"model '{name}' is not served (GET /v1/models lists them)", "not_found_error")
            chosen = served[name]
            if capability not in chosen.capabilities:
                raise ApiError(400, f"model '{name}' cannot {capability} (it can: {', '.join(chosen.capabilities)})")
            return chosen
        for candidate in served.values():
            if capability in candidate.capabilities:
                return candidate
        raise ApiError(400, f"no served model can {capability}")

    async def predict(model: Served, request: Request, work: Callable[[threading.Event], Any]) -> Any:
        """`work(stop)` once the model is free, unless the client has left by then."""
        async with model.turn(request):
            return await run_stoppable(work, request)

    def stream_events(model: Served, prompt: str, settings: GenerationSettings, event: Callable[[str], dict],
                      first: dict | None = None, last: dict | None = None) -> EventStream:
        room_for_prompt(model.loaded, settings.max_new_tokens)  # a request that cannot fit: a 400, not a stream

        async def batched() -> AsyncIterator[str]:
            job = model.batcher.submit(prompt, settings, loop=asyncio.get_running_loop())
            try:
                if first is not None:
                    yield _sse(first)
                async for piece in job:
                    yield _sse(event(piece))
            finally:  # the end, a client that left, or a shutdown: the batch drops the row at its next step
                job.cancel()

        async def events() -> AsyncIterator[str]:
            try:
                if model.batcher is not None:
                    async for item in batched():
                        yield item
                    if last is not None:
                        yield _sse(last)
                    yield "data: [DONE]\n\n"
                    return
                async with model.turn():
                    pieces = Stream(model.loaded, prompt, settings)
                    try:
                        if first is not None:
                            yield _sse(first)
                        # A cancelled wait (client gone) abandons `next` at once; close() below ends the thread.
                        while (piece := await asyncio.get_running_loop().run_in_executor(
                                None, next, pieces, None)) is not None:
                            yield _sse(event(piece))
                    finally:  # the end, a client that left, or a shutdown: stop generating, then free the model
                        with anyio.CancelScope(shield=True):
                            await anyio.to_thread.run_sync(pieces.close)
                if last is not None:
                    yield _sse(last)
            except Exception as exc:  # the stream has begun: report in-band, then end it properly
                yield _sse(error_payload(exc))
            yield "data: [DONE]\n\n"

        return EventStream(events())

    async def completions_of(model: Served, prompts: list[str], settings: GenerationSettings,
                             request: Request) -> list[list[Job]]:
        """Each prompt's finished jobs (n per prompt), generated through the batcher when the model has
        one (all at once), else one prompt at a time in the model's line."""
        n = settings.num_return_sequences
        if model.batcher is None:
            done = []
            for prompt in prompts:
                texts = await predict(model, request, lambda stop: generate(model.loaded, prompt, settings, stop=stop))
                done.append([_Finished(model.loaded, prompt, text, settings.max_new_tokens) for text in texts])
            return done
        one = settings.model_copy(update={"num_return_sequences": 1})
        sampled = settings.sampled
        loop = asyncio.get_running_loop()
        jobs: list[list[Job]] = []
        flat: list[Job] = []
        texts = None
        try:
            for prompt in prompts:  # a prompt that cannot fit raises here: the finally cancels those before it
                jobs.append([model.batcher.submit(prompt, one, None if one.seed is None else one.seed + i, loop=loop)
                             for i in range(n if sampled else 1)])  # greedy: n copies of one
                flat += jobs[-1]
            texts = asyncio.gather(*(_text_of(job) for job in flat))
            while not (await asyncio.wait({texts}, timeout=0.05))[0]:
                if await request.is_disconnected():
                    raise ClientGone()
            texts.result()
        finally:
            for job in flat:
                job.cancel()
            if texts is not None:
                texts.cancel()
        return [group * (1 if sampled else n) for group in jobs]

    # ---- routes ------------------------------------------------------------------------------------
    @app.get("/health", response_model=Health)
    async def health():
        return {"status": "ok", "models": list(served), "load": {m.name: m.load for m in served.values()}}

    @app.get("/v1/models", dependencies=[Depends(check_key)], response_model=ModelList, responses=ERRORS)
    async def list_models():
        return {"data": [{"id": m.name, "objective": m.loaded.objective.name, "capabilities": m.capabilities,
                          "labels": m.loaded.labels or None} for m in served.values()]}

    @app.post("/v1/fill-mask", dependencies=[Depends(check_key)], response_model=FillMaskResponse, responses=ERRORS)
    async def fill_mask_route(body: bodies.FillMaskRequest, request: Request):
        model = pick(body.model, "fill-mask")
        texts = [body.text] if isinstance(body.text, str) else body.text
        check_masks(model.loaded.tokenizer, texts)  # a bad text fails its own request, not the batch it would join
        results = await model.micro(texts, body.top_k, request)
        return {"model": model.name, "results": [{"text": t, "masks": r} for t, r in zip(texts, results)]}

    @app.post("/v1/classify", dependencies=[Depends(check_key)], response_model=ClassifyResponse, responses=ERRORS)
    async def classify_route(body: bodies.ClassifyRequest, request: Request):
        model = pick(body.model, "classify")
        texts = [body.text] if isinstance(body.text, str) else body.text
        results = await model.micro(texts, None, request)
        return {"model": model.name, "results": [{"text": t, **r} for t, r in zip(texts, results)]}

    @app.post("/v1/generate", dependencies=[Depends(check_key)], response_model=GenerateResponse,
              responses=streamed(GenerateChunk))
    async def generate_route(body: bodies.GenerateRequest, request: Request):
        model = pick(body.model, "generate")
        settings = generation_settings(body)
        if body.stream:
            return stream_events(model, body.prompt, settings, lambda piece: {"text": piece})
        [jobs] = await completions_of(model, [body.prompt], settings, request)
        return {"model": model.name, "prompt": body.prompt, "completions": [job.full_text for job in jobs]}

    @app.post("/v1/completions", dependencies=[Depends(check_key)], response_model=CompletionResponse,
              responses=streamed(CompletionChunk))
    async def completions(body: bodies.CompletionRequest, request: Request):
        model = pick(body.model, "completions")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        settings = generation_settings(body)
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": model.name}
        if body.stream:
            if len(prompts) != 1 or body.n != 1:
                raise ApiError(422, "streaming supports one prompt and n=1")
            return stream_events(
                model, prompts[0], settings,
                lambda piece: {**head, "choices": [{"text": piece, "index": 0, "finish_reason": None}]},
                last={**head, "choices": [{"text": "", "index": 0, "finish_reason": "stop"}]})
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for jobs in await completions_of(model, prompts, settings, request):
            prompt_tokens += jobs[0].prompt_ids.shape[1]
            for job in jobs:
                completion_tokens += len(job.ids)
                choices.append({"text": job.full_text, "index": len(choices), "finish_reason": job.finish_reason})
        return {**head, "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens":
                                                      completion_tokens, "total_tokens": prompt_tokens + completion_tokens}}

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)], response_model=ChatResponse,
              responses=streamed(ChatChunk))
    async def chat_completions(body: bodies.ChatRequest, request: Request):
        model = pick(body.model, "chat")
        chars = sum(len(m.content) for m in body.messages)
        if chars > limits.max_input_chars:
            raise ApiError(413, f"messages too long: {chars} characters > {limits.max_input_chars}")
        prompt = chat_prompt(model.loaded.tokenizer, [m.model_dump() for m in body.messages])
        settings = generation_settings(body)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model.name}
        if body.stream:
            if body.n != 1:
                raise ApiError(422, "streaming supports n=1")
            return stream_events(
                model, prompt, settings,
                lambda piece: {**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]},
                first={**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
                last={**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        [jobs] = await completions_of(model, [prompt], settings, request)
        return {**head, "object": "chat.completion",
                "choices": [{"index": i, "message": {"role": "assistant", "content": job.full_text.strip()},
                             "finish_reason": job.finish_reason} for i, job in enumerate(jobs)]}

    openapi = app.openapi

    def openapi_with_event_bodies() -> dict:  # no route names them as a model, so FastAPI would leave them out
        schema = openapi()
        _, defs = models_json_schema([(m, "serialization") for m in EVENT_BODIES],
                                     ref_template="#/components/schemas/{model}")
        schema["components"]["schemas"].update(defs["$defs"])
        return schema

    app.openapi = openapi_with_event_bodies
    if ui:
        import gradio as gr  # heavy: imported only when the UI is wanted

        # The web UI and Gradio's own API routes sit behind the same key: its login form (any user name, the
        # key as password) sets the session cookie every Gradio route then asks for.
        auth = None if api_key is None else (lambda _user, password: hmac.compare_digest(password.encode(),
                                                                                        api_key.encode()))
        app = gr.mount_gradio_app(app, build_ui(served, limits), path="/", auth=auth,
                                  auth_message="This server needs its API key: any user name, the key as password.")
    return app


@dataclass
class _Finished:
    """A generation done without the batcher, shaped like a finished `Job` for the response builders."""

    prompt_ids: torch.Tensor
    ids: list[int]
    full_text: str
    finish_reason: str

    def __init__(self, loaded: LoadedModel, prompt: str, text: str, max_new_tokens: int):
        self.prompt_ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
        self.ids = loaded.tokenizer(text, add_special_tokens=False).input_ids
        self.full_text = text
        self.finish_reason = "length" if len(self.ids) >= max_new_tokens else "stop"


async def _text_of(job: Job) -> None:
    async for _ in job:  # until it ends; its text is then `job.full_text`
        pass


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The model's chat template when it has one (SmolLM2-Instruct does), else 'role: content' lines."""
    if not getattr(tokenizer, "chat_template", None):
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as err:  # templates refuse some conversations (e.g. roles that do not alternate)
        raise ApiError(400, f"the model's chat template refused these messages: {err}") from None


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
