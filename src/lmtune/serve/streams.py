"""Generation for the routes: server-sent events as tokens come (through the model's batcher, or holding the
model in its line), or each prompt's finished generations; either stops within a token once its client
is gone. A stream that fails sends an SSE error event, then `[DONE]`."""

import asyncio
import functools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio
import torch
from fastapi import Request
from fastapi.responses import StreamingResponse

from lmtune.infer import LoadedModel
from lmtune.infer.batching import Job
from lmtune.infer.generate import GenerationSettings, Stream, generate, room_for_prompt
from lmtune.serve.errors import error_payload
from lmtune.serve.scheduling import ClientGone, Served, predict


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


def stream_events(
    model: Served,
    prompt: str,
    settings: GenerationSettings,
    event: Callable[[str], dict],
    first: dict | None = None,
    last: dict | None = None,
) -> EventStream:
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
                    while (
                        piece := await asyncio.get_running_loop().run_in_executor(None, next, pieces, None)
                    ) is not None:
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


async def completions_of(
    model: Served, prompts: list[str], settings: GenerationSettings, request: Request
) -> list[list[Job]]:
    """Each prompt's finished jobs (n per prompt), generated through the batcher when the model has
    one (all at once), else one prompt at a time in the model's line."""
    n = settings.num_return_sequences
    if model.batcher is None:
        done = []
        for prompt in prompts:
            texts = await predict(model, request, functools.partial(_generate_until, model.loaded, prompt, settings))
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
            jobs.append(
                [
                    model.batcher.submit(prompt, one, None if one.seed is None else one.seed + i, loop=loop)
                    for i in range(n if sampled else 1)
                ]
            )  # greedy: n copies of one
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


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _generate_until(loaded: LoadedModel, prompt: str, settings: GenerationSettings, stop) -> list[str]:
    return generate(loaded, prompt, settings, stop=stop)
