"""Text generation with sampling controls, streaming token by token.

`SamplingSettings` is the one definition of the sampling values and their valid ranges: the CLI builds a
`GenerationSettings` from its options, the server's request bodies extend `SamplingSettings` (and take
their OpenAI fields' ranges from the same types), so the two can never disagree about what is valid."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from lmtune.errors import LmtuneError
from lmtune.hardware import release_cpu_workers
from lmtune.infer import LoadedModel, as_loaded
from lmtune.models.resolve import context_length_of

log = logging.getLogger("lmtune")
MAX_SEED = 2**32 - 1  # torch.manual_seed takes 64 bits; 32 are plenty and portable
GREEDY_BELOW = 1e-3  # a temperature this close to 0 is greedy: dividing logits by less overflows them to inf
# The valid ranges, as types: SamplingSettings and the server's OpenAI bodies both use them.
NewTokens = Annotated[int, Field(ge=1)]
Temperature = Annotated[float, Field(ge=0.0, le=5.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Sequences = Annotated[int, Field(ge=1, le=16)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class SamplingSettings(BaseModel):
    """How to sample a continuation. Documented here, shown by `--help` and the server's schema."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: NewTokens = Field(64, description="tokens to generate")
    temperature: Temperature = Field(0.8, description="0 = greedy; higher = more varied")
    top_k: int | None = Field(50, ge=0, description="sample from the k most likely tokens (0 or null: off)")
    top_p: TopP | None = Field(
        0.95, description="nucleus sampling: the smallest set of tokens with this much probability"
    )
    # Below 0.01 a penalty multiplies logits past what float32 holds.
    repetition_penalty: float = Field(1.0, ge=0.01, le=10.0, description=">1 discourages repeats")
    num_return_sequences: Sequences = Field(1, description="continuations to return")
    seed: Seed | None = Field(None, description="seed for reproducible sampling")
    ignore_eos: bool = Field(False, description="keep generating past the end-of-text token (benchmarks)")


_NOT_A_FIELD = re.compile(r"^(body|str|int|float|bool|list|dict)$|[\[\-]")
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def describe(error: dict) -> str:
    """One pydantic error as one line naming the field: 'temperature must be >= 0 (got -1)'. The field's
    path leaves out FastAPI's 'body' and pydantic's names of union branches ('str', 'list[str]')."""
    where = (
        ".".join(
            str(part) for part in error.get("loc", ()) if not (isinstance(part, str) and _NOT_A_FIELD.search(part))
        )
        or "body"
    )
    if error.get("type") in _BOUNDS:
        limit = next(iter(error["ctx"].values()))
        limit = int(limit) if isinstance(limit, float) and limit.is_integer() else limit
        return f"{where} must be {_BOUNDS[error['type']]} {limit} (got {error.get('input')!r})"
    if error.get("type") == "missing":
        return f"{where} is required"
    message = error.get("msg", "is invalid")
    return f"{where}: {message[0].lower() + message[1:]}"


class GenerationSettings(SamplingSettings):
    """Sampling settings as the library takes them: bad values raise LmtuneError naming each field."""

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise LmtuneError("; ".join(describe(e) for e in err.errors())) from None

    @property
    def sampled(self) -> bool:
        """Whether tokens are sampled (else greedy: every sequence is the same one)."""
        return self.temperature >= GREEDY_BELOW and self.top_k != 1

    def generate_kwargs(self, tokenizer) -> dict:
        sample = self.sampled
        kwargs = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": sample,
            "repetition_penalty": self.repetition_penalty,
            "num_return_sequences": self.num_return_sequences,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": None if self.ignore_eos else tokenizer.eos_token_id,
        }
        if sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k or 0, top_p=self.top_p or 1.0)
        else:
            kwargs.update(temperature=None, top_k=None, top_p=None)
        return kwargs


def room_for_prompt(loaded: LoadedModel, max_new_tokens: int) -> int | None:
    """How many prompt tokens fit the model's context beside `max_new_tokens` (None: it does not say);
    LmtuneError when none do."""
    limit = context_length_of(loaded.model.config)
    if limit is not None and max_new_tokens >= limit:
        raise LmtuneError(
            f"max_new_tokens {max_new_tokens} leaves no room for the prompt in the model's "
            f"context of {limit} tokens; ask for fewer"
        )
    return None if limit is None else limit - max_new_tokens


def prompt_ids(loaded: LoadedModel, prompt: str, max_new_tokens: int) -> list[int]:
    """The prompt's ids; a prompt that leaves no room for the new tokens loses its start (with a warning)."""
    room = room_for_prompt(loaded, max_new_tokens)
    bos = loaded.tokenizer.bos_token
    # A prompt that already opens with the BOS token (a chat template's rendering) does not get a second one.
    ids = loaded.tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos))).input_ids
    if not ids:  # an empty prompt: start from the BOS/EOS token
        ids = [
            loaded.tokenizer.bos_token_id
            if loaded.tokenizer.bos_token_id is not None
            else loaded.tokenizer.eos_token_id
        ]
    if room is not None and len(ids) > room:
        log.warning(
            "warning: the prompt has %d tokens; only its last %d fit the model's context with %d new tokens",
            len(ids),
            room,
            max_new_tokens,
        )
        ids = ids[-room:]
    return ids


def encode_prompt(loaded: LoadedModel, prompt: str, max_new_tokens: int) -> dict[str, torch.Tensor]:
    """`prompt_ids` as the model's input tensors, on its device."""
    ids = torch.tensor([prompt_ids(loaded, prompt, max_new_tokens)], device=next(loaded.model.parameters()).device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _llama_cpp(loaded: LoadedModel) -> bool:
    return getattr(loaded.model, "engine", "torch") == "llama.cpp"


def _llama_cpp_pieces(
    loaded: LoadedModel,
    prompt: str,
    settings: GenerationSettings,
    seed: int | None,
    stop: threading.Event | None = None,
) -> Iterator[str]:
    ids = prompt_ids(loaded, prompt, settings.max_new_tokens)
    return loaded.model.generate_pieces(ids, settings, loaded.tokenizer.eos_token_id, seed, stop)


def _settings(settings: GenerationSettings | None, overrides: dict) -> GenerationSettings:
    return settings if settings is not None else GenerationSettings(**overrides)


class _StopWhenSet(StoppingCriteria):
    """Ends `model.generate` at the next token once the event is set (a client that went away)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def generate(
    model: str | LoadedModel,
    prompt: str,
    settings: GenerationSettings | None = None,
    stop: threading.Event | None = None,
    **overrides,
) -> list[str]:
    """Continuations of `prompt` (without the prompt), one per returned sequence. Setting `stop` (from
    another thread) ends the generation at the next token."""
    loaded = as_loaded(model, "generate")
    settings = _settings(settings, overrides)
    if _llama_cpp(loaded):  # one sequence at a time; greedy ones are all the same
        sampled, n = settings.sampled, settings.num_return_sequences
        texts = [
            "".join(
                _llama_cpp_pieces(loaded, prompt, settings, None if settings.seed is None else settings.seed + i, stop)
            )
            for i in range(n if sampled else 1)
        ]
        return texts if sampled else texts * n
    enc = encode_prompt(loaded, prompt, settings.max_new_tokens)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    kwargs = settings.generate_kwargs(loaded.tokenizer)
    copies = 1
    if not kwargs["do_sample"]:  # greedy: every sequence would be the same one (and HF refuses to make several)
        copies, kwargs["num_return_sequences"] = kwargs["num_return_sequences"], 1
    stopping = StoppingCriteriaList([_StopWhenSet(stop)] if stop is not None else [])
    out = loaded.model.generate(**enc, **kwargs, stopping_criteria=stopping)
    new = out[:, enc["input_ids"].shape[1] :]
    return loaded.tokenizer.batch_decode(new, skip_special_tokens=True) * copies


class Stream:
    """Text pieces as they are generated (one sequence), from a generation thread. `close()` (or leaving
    a `with` block) stops the generation within a token and waits for the thread."""

    def __init__(self, model: str | LoadedModel, prompt: str, settings: GenerationSettings | None = None, **overrides):
        loaded = as_loaded(model, "generate")
        settings = _settings(settings, overrides).model_copy(update={"num_return_sequences": 1})
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        if _llama_cpp(loaded):  # llama.cpp yields pieces itself: no thread, no streamer
            self.thread, self.streamer = None, _llama_cpp_pieces(loaded, prompt, settings, settings.seed, self.stop)
            return
        enc = encode_prompt(loaded, prompt, settings.max_new_tokens)
        self.streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {
            **enc,
            **settings.generate_kwargs(loaded.tokenizer),
            "streamer": self.streamer,
            "stopping_criteria": StoppingCriteriaList([_StopWhenSet(self.stop)]),
        }

        def work():
            try:
                if settings.seed is not None:
                    torch.manual_seed(settings.seed)
                with torch.inference_mode():
                    loaded.model.generate(**kwargs)
            except BaseException as err:  # surfaced in the caller's thread by __next__
                self.errors.append(err)
                self.streamer.end()

        release_cpu_workers()  # this thread hands the model to the generation thread (see release_cpu_workers)
        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()

    def __iter__(self):
        return self

    def __next__(self) -> str:
        try:
            return next(self.streamer)
        except StopIteration:
            if self.thread is not None:
                self.thread.join()
            if self.errors:
                raise self.errors[0] from None
            raise

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        else:
            while True:
                try:
                    self.streamer.close()
                    return
                except ValueError:  # a next() runs on another thread: with `stop` set it ends within a token
                    time.sleep(0.01)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def stream(
    model: str | LoadedModel, prompt: str, settings: GenerationSettings | None = None, **overrides
) -> Iterator[str]:
    """Yield text pieces as they are generated (one sequence)."""
    with Stream(model, prompt, settings, **overrides) as pieces:
        yield from pieces
