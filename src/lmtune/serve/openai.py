"""The OpenAI-compatible routes, /v1/completions and /v1/chat/completions: OpenAI's request and response
shapes over lmtune's generation, so OpenAI clients work with `base_url=http://HOST:PORT/v1`."""

import time
import uuid
from types import SimpleNamespace
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from lmtune.infer.chat import chat_prompt
from lmtune.serve.errors import ApiError
from lmtune.serve.routes import KEYED, Models, server_limits
from lmtune.serve.scheduling import pick
from lmtune.serve.schemas import (
    ChatChunk,
    ChatResponse,
    CompletionChunk,
    CompletionResponse,
    Limits,
    generation_settings,
    streamed,
)
from lmtune.serve.streams import completions_of, stream_events


def openai_router(bodies: SimpleNamespace) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/v1/completions", dependencies=KEYED, response_model=CompletionResponse, responses=streamed(CompletionChunk)
    )
    async def completions(body: bodies.CompletionRequest, request: Request, served: Models):
        model = pick(served, body.model, "completions")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        settings = generation_settings(body)
        head = {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model.name,
        }
        if body.stream:
            if len(prompts) != 1 or body.n != 1:
                raise ApiError(422, "streaming supports one prompt and n=1")
            return stream_events(
                model,
                prompts[0],
                settings,
                lambda piece: {**head, "choices": [{"text": piece, "index": 0, "finish_reason": None}]},
                last={**head, "choices": [{"text": "", "index": 0, "finish_reason": "stop"}]},
            )
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for jobs in await completions_of(model, prompts, settings, request):
            prompt_tokens += jobs[0].prompt_ids.shape[1]
            for job in jobs:
                completion_tokens += len(job.ids)
                choices.append({"text": job.full_text, "index": len(choices), "finish_reason": job.finish_reason})
        return {
            **head,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    @router.post("/v1/chat/completions", dependencies=KEYED, response_model=ChatResponse, responses=streamed(ChatChunk))
    async def chat_completions(
        body: bodies.ChatRequest, request: Request, served: Models, limits: Annotated[Limits, Depends(server_limits)]
    ):
        model = pick(served, body.model, "chat")
        chars = sum(len(m.content) for m in body.messages)
        if chars > limits.max_input_chars:
            raise ApiError(413, f"messages too long: {chars} characters > {limits.max_input_chars}")
        prompt = chat_prompt(model.loaded.tokenizer, [m.model_dump() for m in body.messages])
        settings = generation_settings(body)
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model.name,
        }
        if body.stream:
            if body.n != 1:
                raise ApiError(422, "streaming supports n=1")
            return stream_events(
                model,
                prompt,
                settings,
                lambda piece: {**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]},
                first={**head, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
                last={**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            )
        [jobs] = await completions_of(model, [prompt], settings, request)
        return {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": job.full_text.strip()},
                    "finish_reason": job.finish_reason,
                }
                for i, job in enumerate(jobs)
            ],
        }

    return router
