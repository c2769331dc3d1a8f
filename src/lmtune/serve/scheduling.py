"""Access to the served models: each request waits its turn (first come, first served) without blocking the
event loop, leaves the line when its client goes, and runs off the event loop; fill-mask and classify
requests that arrive while their model is busy are answered together (`MicroBatcher`); continuous batching
of generation is infer/batching.py's `Batcher`."""

import asyncio
import contextlib
import itertools
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import Request

from lmtune.hardware import release_cpu_workers
from lmtune.infer import LoadedModel
from lmtune.infer.batching import Batcher
from lmtune.infer.generate import GenerationSettings, Stream
from lmtune.serve.errors import ApiError


class ClientGone(Exception):
    """The client disconnected before its request was served."""


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
        waiting = (
            len(self.line) + (self.batcher.waiting if batched else 0) + (len(self.micro.pending) if self.micro else 0)
        )
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
                    if asked.options == self.pending[0].options and (
                        not group or size + len(asked.texts) <= self.max_texts
                    ):
                        group.append(asked)
                        size += len(asked.texts)
                for asked in group:
                    self.pending.remove(asked)
                try:
                    results = await anyio.to_thread.run_sync(
                        on_worker, self.run, [t for a in group for t in a.texts], group[0].options
                    )
                except Exception as err:
                    for asked in group:
                        if not asked.answer.done():
                            asked.answer.set_exception(err)
                    continue
                start = 0
                for asked in group:
                    if not asked.answer.done():
                        asked.answer.set_result(results[start : start + len(asked.texts)])
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


def pick(served: dict[str, Served], name: str | None, capability: str) -> Served:
    """The served model a request names (it must offer `capability`), else the first that offers it."""
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
