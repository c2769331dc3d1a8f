"""lmtune's own REST routes, request -> predict -> response: /health, /v1/models, /v1/fill-mask, /v1/classify,
/v1/generate. Shared state (the served models, the caps, the API key) reaches them through FastAPI
dependencies on the app's state."""

import hmac
from types import SimpleNamespace
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from lmtune.infer.fill_mask import check_masks
from lmtune.serve.errors import ApiError
from lmtune.serve.scheduling import Served, pick
from lmtune.serve.schemas import (
    ERRORS,
    ClassifyResponse,
    FillMaskResponse,
    GenerateChunk,
    GenerateResponse,
    Health,
    Limits,
    ModelList,
    generation_settings,
    streamed,
)
from lmtune.serve.streams import completions_of, stream_events


def served_models(request: Request) -> dict[str, Served]:
    return request.app.state.served


def server_limits(request: Request) -> Limits:
    return request.app.state.limits


def check_key(request: Request) -> None:
    """The server's API key (`--api-key`), as `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    api_key = request.app.state.api_key
    if api_key is None:
        return
    given = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), api_key.encode()):
        raise ApiError(
            401,
            "missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')",
            "authentication_error",
        )


Models = Annotated[dict[str, Served], Depends(served_models)]
KEYED = [Depends(check_key)]


def rest_router(bodies: SimpleNamespace) -> APIRouter:
    """The routes, their bodies carrying this server's caps (`schemas.request_bodies`)."""
    router = APIRouter()

    @router.get("/health", response_model=Health)
    async def health(served: Models):
        return {"status": "ok", "models": list(served), "load": {m.name: m.load for m in served.values()}}

    @router.get("/v1/models", dependencies=KEYED, response_model=ModelList, responses=ERRORS)
    async def list_models(served: Models):
        return {
            "data": [
                {
                    "id": m.name,
                    "objective": m.loaded.objective.name,
                    "capabilities": m.capabilities,
                    "labels": m.loaded.labels or None,
                }
                for m in served.values()
            ]
        }

    @router.post("/v1/fill-mask", dependencies=KEYED, response_model=FillMaskResponse, responses=ERRORS)
    async def fill_mask_route(body: bodies.FillMaskRequest, request: Request, served: Models):
        model = pick(served, body.model, "fill-mask")
        texts = [body.text] if isinstance(body.text, str) else body.text
        check_masks(model.loaded.tokenizer, texts)  # a bad text fails its own request, not the batch it would join
        results = await model.micro(texts, body.top_k, request)
        return {"model": model.name, "results": [{"text": t, "masks": r} for t, r in zip(texts, results)]}

    @router.post("/v1/classify", dependencies=KEYED, response_model=ClassifyResponse, responses=ERRORS)
    async def classify_route(body: bodies.ClassifyRequest, request: Request, served: Models):
        model = pick(served, body.model, "classify")
        texts = [body.text] if isinstance(body.text, str) else body.text
        results = await model.micro(texts, None, request)
        return {"model": model.name, "results": [{"text": t, **r} for t, r in zip(texts, results)]}

    @router.post("/v1/generate", dependencies=KEYED, response_model=GenerateResponse, responses=streamed(GenerateChunk))
    async def generate_route(body: bodies.GenerateRequest, request: Request, served: Models):
        model = pick(served, body.model, "generate")
        settings = generation_settings(body)
        if body.stream:
            return stream_events(model, body.prompt, settings, lambda piece: {"text": piece})
        [jobs] = await completions_of(model, [body.prompt], settings, request)
        return {"model": model.name, "prompt": body.prompt, "completions": [job.full_text for job in jobs]}

    return router
