"""`lmtune serve`: one FastAPI app with the REST API, OpenAI-compatible routes, and the Gradio UI at `/`.

Each route is request -> predict -> response (as in litgpt's serve): a pydantic body, a function from
`infer/`, a JSON body or server-sent events. Each model is loaded once and runs one request at a time
(a lock; the others queue, off the event loop). No request holds a model after its client is gone: a
queued request gives up its place when its client disconnects, and a stream that loses its client stops
generating within a token. Every error is a JSON body (4xx for anything the client sent), and a stream
that fails sends an SSE error event and then `[DONE]`."""
from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from lmtune.errors import LmtuneError
from lmtune.infer import LoadedModel, load
from lmtune.infer.classify import classify
from lmtune.infer.fill_mask import fill_mask
from lmtune.infer.generate import (GenerationSettings, NewTokens, SamplingSettings, Seed, Sequences, Stream, Temperature,
                                   TopP, generate)
from lmtune.serve.ui import build_ui


@dataclass
class Limits:
    max_input_chars: int = 8000
    max_new_tokens: int = 512
    max_batch: int = 64


@dataclass
class Served:
    name: str
    loaded: LoadedModel
    lock: threading.Lock = field(default_factory=threading.Lock)  # shared with the Gradio UI's threads

    @property
    def capabilities(self) -> list[str]:
        return list(self.loaded.capabilities)

    @contextlib.asynccontextmanager
    async def turn(self, request: Request | None = None):
        """Wait for the model without blocking the event loop; give the place up if the client leaves
        (a cancelled stream ends the wait by cancellation, a plain request by polling)."""
        polls = 0
        while not self.lock.acquire(blocking=False):
            polls += 1
            if request is not None and polls % 10 == 0 and await request.is_disconnected():
                raise ClientGone()
            await asyncio.sleep(0.005)
        try:
            yield
        finally:
            self.lock.release()


class ClientGone(Exception):
    """The client disconnected while its request waited for the model."""


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        self.status, self.message, self.kind = status, message, kind


# ---- request and response bodies ------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str


class ErrorBody(BaseModel):
    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 422, 499)}
STREAMED = {200: {"content": {"application/json": {}, "text/event-stream": {}},
                  "description": "JSON, or server-sent events when `stream` is true"}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, description="a served model's name (GET /v1/models); default: the first that can")


class FillMaskRequest(_Body):
    text: str | list[str]
    top_k: int = Field(5, ge=1, le=100)


class ClassifyRequest(_Body):
    text: str | list[str]


class GenerateRequest(SamplingSettings):
    """The sampling fields and their ranges are `SamplingSettings`': the same as the CLI's."""

    model: str | None = None
    prompt: str
    stream: bool = False


class _OpenAIBody(BaseModel):
    """The OpenAI fields lmtune honours, with the ranges of SamplingSettings; other fields are ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    max_tokens: NewTokens = 16
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    n: Sequences = 1
    stream: bool = False
    seed: Seed | None = None


class CompletionRequest(_OpenAIBody):
    prompt: str | list[str]


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(_OpenAIBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: NewTokens = 128


def openai_settings(body: _OpenAIBody) -> GenerationSettings:
    """The one place OpenAI fields become lmtune's generation settings."""
    return GenerationSettings(max_new_tokens=body.max_tokens, temperature=body.temperature, top_k=None,
                              top_p=body.top_p, num_return_sequences=body.n, seed=body.seed)


# ---- the app ----------------------------------------------------------------------------------------
def create_app(models: list[str] | dict[str, LoadedModel], api_key: str | None = None, limits: Limits | None = None,
               ui: bool = True, device: str | None = None) -> FastAPI:
    limits = limits or Limits()
    if isinstance(models, dict):
        served = {name: Served(name, loaded) for name, loaded in models.items()}
    else:
        served = {name: Served(name, load(name, device=device)) for name in models}
    if not served:
        raise LmtuneError("serve needs at least one model")

    app = FastAPI(title="lmtune", version="0.1.0",
                  description="Fill-mask, generation and classification with tuned models; OpenAI-compatible routes.")
    app.state.served = served
    app.state.limits = limits

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if given != api_key:
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
    async def client_gone(request: Request, exc: ClientGone):
        return error(499, "the client closed the request before it was served", "client_closed_request")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = exc.errors() or [{"loc": (), "msg": "invalid request"}]
        first = problems[0]
        if first.get("type") == "json_invalid":
            return error(422, "request body is not valid JSON")
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(422, f"{where or 'body'}: {first.get('msg')}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # a bug of ours: still JSON, never a bare 500 page
        return error(500, f"internal error: {type(exc).__name__}", "server_error")

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

    def check_texts(texts: list[str]) -> None:
        if not texts:
            raise ApiError(422, "no text given")
        if len(texts) > limits.max_batch:
            raise ApiError(413, f"too many texts: {len(texts)} > {limits.max_batch}")
        for text in texts:
            if len(text) > limits.max_input_chars:
                raise ApiError(413, f"input too long: {len(text)} characters > {limits.max_input_chars}")
            if not text.strip():
                raise ApiError(422, "empty text")

    def check_tokens(n: int) -> None:
        if n > limits.max_new_tokens:
            raise ApiError(422, f"max new tokens {n} > the server's limit {limits.max_new_tokens}")

    async def predict(model: Served, request: Request, fn: Callable, *args):
        """Run `fn(model, *args)` on a worker thread when the model is free (and the client still there)."""
        async with model.turn(request):
            if await request.is_disconnected():
                raise ClientGone()
            return await run_in_threadpool(fn, model.loaded, *args)

    def stream_response(model: Served, prompt: str, settings: GenerationSettings,
                        to_event: Callable[[str], dict], first: dict | None = None,
                        last: dict | None = None) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            try:
                async with model.turn():
                    generation = await run_in_threadpool(Stream, model.loaded, prompt, settings)
                    try:
                        if first is not None:
                            yield _sse(first)
                        while (piece := await run_in_threadpool(next, generation, None)) is not None:
                            yield _sse(to_event(piece))
                    finally:  # also when the client left (cancellation): stop generating, then free the model
                        with anyio.CancelScope(shield=True):
                            await run_in_threadpool(generation.close)
                if last is not None:
                    yield _sse(last)
            except Exception as exc:  # the stream has begun: report in-band, then end it properly
                kind = "invalid_request_error" if isinstance(exc, LmtuneError) else "server_error"
                message = str(exc) if isinstance(exc, LmtuneError) else f"internal error: {type(exc).__name__}"
                yield _sse({"error": {"message": message, "type": kind}})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    # ---- routes ------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(served)}

    @app.get("/v1/models", dependencies=[Depends(check_key)], responses=ERRORS)
    async def list_models():
        return {"object": "list", "data": [
            {"id": m.name, "object": "model", "owned_by": "lmtune", "created": 0, "objective": m.loaded.objective.name,
             "capabilities": m.capabilities, "labels": m.loaded.labels or None} for m in served.values()]}

    @app.post("/v1/fill-mask", dependencies=[Depends(check_key)], responses=ERRORS)
    async def fill_mask_route(body: FillMaskRequest, request: Request):
        model = pick(body.model, "fill-mask")
        texts = [body.text] if isinstance(body.text, str) else body.text
        check_texts(texts)
        results = await predict(model, request, fill_mask, texts, body.top_k)
        return {"model": model.name, "results": [{"text": t, "masks": r} for t, r in zip(texts, results)]}

    @app.post("/v1/classify", dependencies=[Depends(check_key)], responses=ERRORS)
    async def classify_route(body: ClassifyRequest, request: Request):
        model = pick(body.model, "classify")
        texts = [body.text] if isinstance(body.text, str) else body.text
        check_texts(texts)
        results = await predict(model, request, classify, texts)
        return {"model": model.name, "results": [{"text": t, **r} for t, r in zip(texts, results)]}

    @app.post("/v1/generate", dependencies=[Depends(check_key)], responses={**ERRORS, **STREAMED})
    async def generate_route(body: GenerateRequest, request: Request):
        model = pick(body.model, "generate")
        check_texts([body.prompt])
        check_tokens(body.max_new_tokens)
        settings = GenerationSettings(**body.model_dump(include=set(SamplingSettings.model_fields)))
        if body.stream:
            return stream_response(model, body.prompt, settings, lambda piece: {"text": piece})
        texts = await predict(model, request, generate, body.prompt, settings)
        return {"model": model.name, "prompt": body.prompt, "completions": texts}

    @app.post("/v1/completions", dependencies=[Depends(check_key)], responses={**ERRORS, **STREAMED})
    async def completions(body: CompletionRequest, request: Request):
        model = pick(body.model, "completions")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        check_texts(prompts)
        check_tokens(body.max_tokens)
        settings = openai_settings(body)
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": model.name}
        if body.stream:
            if len(prompts) != 1 or body.n != 1:
                raise ApiError(422, "streaming supports one prompt and n=1")
            return stream_response(
                model, prompts[0], settings,
                lambda piece: {**head, "choices": [{"text": piece, "index": 0, "finish_reason": None}]},
                last={**head, "choices": [{"text": "", "index": 0, "finish_reason": "stop"}]})
        choices, prompt_tokens, completion_tokens = [], 0, 0
        tokenizer = model.loaded.tokenizer
        for prompt in prompts:
            texts = await predict(model, request, generate, prompt, settings)
            prompt_tokens += len(tokenizer(prompt).input_ids)
            for text in texts:
                n_tokens = len(tokenizer(text, add_special_tokens=False).input_ids)
                completion_tokens += n_tokens
                choices.append({"text": text, "index": len(choices), "logprobs": None,
                                "finish_reason": "length" if n_tokens >= body.max_tokens else "stop"})
        return {**head, "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens":
                                                      completion_tokens, "total_tokens": prompt_tokens + completion_tokens}}

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)], responses={**ERRORS, **STREAMED})
    async def chat_completions(body: ChatRequest, request: Request):
        model = pick(body.model, "chat")
        check_texts([m.content for m in body.messages if m.content] or ["x"])
        check_tokens(body.max_tokens)
        prompt = chat_prompt(model.loaded.tokenizer, [m.model_dump() for m in body.messages])
        check_texts([prompt[-limits.max_input_chars:]])
        settings = openai_settings(body)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model.name}
        if body.stream:
            if body.n != 1:
                raise ApiError(422, "streaming supports n=1")
            return stream_response(
                model, prompt, settings,
                lambda piece: {**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]},
                first={**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
                last={**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        texts = await predict(model, request, generate, prompt, settings)
        return {**head, "object": "chat.completion",
                "choices": [{"index": i, "message": {"role": "assistant", "content": t.strip()}, "finish_reason": "stop"}
                            for i, t in enumerate(texts)]}

    if ui:
        import gradio as gr  # heavy: imported only when the UI is wanted

        app = gr.mount_gradio_app(app, build_ui(served), path="/")
    return app


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The model's chat template when it has one (SmolLM2-Instruct does), else 'role: content' lines."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
