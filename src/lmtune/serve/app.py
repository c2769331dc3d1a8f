"""`lmtune serve`: one FastAPI app with the REST API, OpenAI-compatible routes, and the Gradio UI at `/`.

Each model is loaded once. Inference runs in worker threads (never on the event loop), one request at a
time per model (a lock queues the rest), so concurrent clients wait instead of crashing the process."""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from lmtune.errors import LmtuneError
from lmtune.infer import LoadedModel, load



@dataclass
class Limits:
    max_input_chars: int = 8000
    max_new_tokens: int = 512
    max_batch: int = 64


@dataclass
class Served:
    name: str
    loaded: LoadedModel
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def capabilities(self) -> list[str]:
        return list(self.loaded.capabilities)


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        self.status, self.message, self.kind = status, message, kind


# ---- request bodies -------------------------------------------------------------------------------
class FillMaskRequest(BaseModel):
    model: str | None = None
    text: str | list[str]
    top_k: int = Field(5, ge=1, le=100)


class GenerateRequest(BaseModel):
    model: str | None = None
    prompt: str
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.8, ge=0.0, le=5.0)
    top_k: int | None = Field(50, ge=0)
    top_p: float | None = Field(0.95, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    num_return_sequences: int = Field(1, ge=1, le=16)
    seed: int | None = None
    stream: bool = False


class ClassifyRequest(BaseModel):
    model: str | None = None
    text: str | list[str]


class CompletionRequest(BaseModel):  # the OpenAI fields lmtune honours; others are accepted and ignored
    model: str | None = None
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    seed: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    model_config = {"extra": "allow"}


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int = Field(128, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    seed: int | None = None
    model_config = {"extra": "allow"}


# ---- the app ----------------------------------------------------------------------------------------
def create_app(models: list[str] | dict[str, LoadedModel], api_key: str | None = None, limits: Limits | None = None,
               ui: bool = True) -> FastAPI:
    limits = limits or Limits()
    if isinstance(models, dict):
        served = {name: Served(name, loaded) for name, loaded in models.items()}
    else:
        served = {name: Served(name, load(name)) for name in models}
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

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": {"message": exc.message, "type": exc.kind}}, status_code=exc.status)

    @app.exception_handler(LmtuneError)
    async def lmtune_error(request: Request, exc: LmtuneError):
        return JSONResponse({"error": {"message": str(exc), "type": "invalid_request_error"}}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = "request body is not valid JSON" if first.get("type") == "json_invalid" else \
            f"{where or 'body'}: {first.get('msg')}"
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status_code=422)

    def pick(name: str | None, capability: str) -> Served:
        if name is not None:
            if name not in served:
                raise ApiError(404, f"model '{name}' is not served (GET /v1/models lists them)", "not_found_error")
            chosen = served[name]
            if capability not in chosen.capabilities:
                raise ApiError(400, f"model '{name}' cannot do {capability} (it can: {', '.join(chosen.capabilities)})")
            return chosen
        for candidate in served.values():
            if capability in candidate.capabilities:
                return candidate
        raise ApiError(400, f"no served model can do {capability}")

    def check_texts(texts: list[str]) -> None:
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

    async def locked(model: Served, fn, *args, **kwargs):
        def work():
            with model.lock:
                return fn(*args, **kwargs)

        return await run_in_threadpool(work)

    def locked_stream(model: Served, pieces: Iterator[str]) -> Iterator[str]:
        with model.lock:
            yield from pieces

    # ---- routes ------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(served)}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def list_models():
        return {"object": "list", "data": [
            {"id": m.name, "object": "model", "owned_by": "lmtune", "created": 0, "objective": m.loaded.objective.name,
             "capabilities": m.capabilities, "labels": m.loaded.labels or None} for m in served.values()]}

    @app.post("/v1/fill-mask", dependencies=[Depends(check_key)])
    async def fill_mask_route(body: FillMaskRequest):
        from lmtune.infer.fill_mask import fill_mask

        model = pick(body.model, "fill-mask")
        texts = [body.text] if isinstance(body.text, str) else body.text
        check_texts(texts)
        results = await locked(model, fill_mask, model.loaded, texts, body.top_k)
        return {"model": model.name, "results": [{"text": t, "masks": r} for t, r in zip(texts, results)]}

    @app.post("/v1/classify", dependencies=[Depends(check_key)])
    async def classify_route(body: ClassifyRequest):
        from lmtune.infer.classify import classify

        model = pick(body.model, "classify")
        texts = [body.text] if isinstance(body.text, str) else body.text
        check_texts(texts)
        results = await locked(model, classify, model.loaded, texts)
        return {"model": model.name, "results": [{"text": t, **r} for t, r in zip(texts, results)]}

    @app.post("/v1/generate", dependencies=[Depends(check_key)])
    async def generate_route(body: GenerateRequest):
        from lmtune.infer.generate import GenerationSettings, generate, stream

        model = pick(body.model, "generate")
        check_texts([body.prompt])
        check_tokens(body.max_new_tokens)
        settings = GenerationSettings(max_new_tokens=body.max_new_tokens, temperature=body.temperature,
                                      top_k=body.top_k or None, top_p=body.top_p,
                                      repetition_penalty=body.repetition_penalty,
                                      num_return_sequences=body.num_return_sequences, seed=body.seed)
        if body.stream:
            events = (f"data: {json.dumps({'text': piece})}\n\n" for piece in
                      locked_stream(model, stream(model.loaded, body.prompt, settings)))
            return StreamingResponse(_with_done(events), media_type="text/event-stream")
        texts = await locked(model, generate, model.loaded, body.prompt, settings)
        return {"model": model.name, "prompt": body.prompt, "completions": texts}

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(body: CompletionRequest):
        from lmtune.infer.generate import GenerationSettings, generate, stream

        model = pick(body.model, "completions")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        check_texts(prompts)
        check_tokens(body.max_tokens)
        settings = GenerationSettings(max_new_tokens=body.max_tokens, temperature=body.temperature, top_k=None,
                                      top_p=body.top_p, num_return_sequences=body.n, seed=body.seed)
        ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            if len(prompts) != 1 or body.n != 1:
                raise ApiError(422, "streaming supports one prompt and n=1")

            def chunks():
                for piece in locked_stream(model, stream(model.loaded, prompts[0], settings)):
                    yield _sse({"id": ident, "object": "text_completion", "created": created, "model": model.name,
                                "choices": [{"text": piece, "index": 0, "finish_reason": None}]})
                yield _sse({"id": ident, "object": "text_completion", "created": created, "model": model.name,
                            "choices": [{"text": "", "index": 0, "finish_reason": "stop"}]})

            return StreamingResponse(_with_done(chunks()), media_type="text/event-stream")
        choices, prompt_tokens, completion_tokens = [], 0, 0
        tokenizer = model.loaded.tokenizer
        for prompt in prompts:
            texts = await locked(model, generate, model.loaded, prompt, settings)
            prompt_tokens += len(tokenizer(prompt).input_ids)
            for text in texts:
                n_tokens = len(tokenizer(text, add_special_tokens=False).input_ids)
                completion_tokens += n_tokens
                choices.append({"text": text, "index": len(choices), "logprobs": None,
                                "finish_reason": "length" if n_tokens >= body.max_tokens else "stop"})
        return {"id": ident, "object": "text_completion", "created": created, "model": model.name, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(body: ChatRequest):
        from lmtune.infer.generate import GenerationSettings, generate, stream

        model = pick(body.model, "chat")
        check_texts([m.content for m in body.messages if m.content] or ["x"])
        check_tokens(body.max_tokens)
        prompt = chat_prompt(model.loaded.tokenizer, [m.model_dump() for m in body.messages])
        check_texts([prompt[-limits.max_input_chars:]])
        settings = GenerationSettings(max_new_tokens=body.max_tokens, temperature=body.temperature, top_k=None,
                                      top_p=body.top_p, num_return_sequences=body.n, seed=body.seed)
        ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            if body.n != 1:
                raise ApiError(422, "streaming supports n=1")

            def chunks():
                head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model.name}
                yield _sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
                for piece in locked_stream(model, stream(model.loaded, prompt, settings)):
                    yield _sse({**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                yield _sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})

            return StreamingResponse(_with_done(chunks()), media_type="text/event-stream")
        texts = await locked(model, generate, model.loaded, prompt, settings)
        return {"id": ident, "object": "chat.completion", "created": created, "model": model.name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": t.strip()}, "finish_reason": "stop"}
                            for i, t in enumerate(texts)]}

    if ui:
        import gradio as gr

        from lmtune.serve.ui import build_ui

        app = gr.mount_gradio_app(app, build_ui(served), path="/")
    return app


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The model's chat template when it has one (SmolLM2-Instruct does), else 'role: content' lines."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _with_done(events: Iterator[str]) -> Iterator[str]:
    yield from events
    yield "data: [DONE]\n\n"
