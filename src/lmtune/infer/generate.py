"""Text generation with sampling controls, streaming token by token."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from lmtune.infer import LoadedModel, as_loaded


@dataclass
class GenerationSettings:
    max_new_tokens: int = 64
    temperature: float = 0.8  # 0: greedy
    top_k: int | None = 50
    top_p: float | None = 0.95
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1
    seed: int | None = None
    stop_at_eos: bool = True

    def generate_kwargs(self, tokenizer) -> dict:
        sample = self.temperature > 0 and self.top_k != 1
        kwargs = {"max_new_tokens": self.max_new_tokens, "do_sample": sample,
                  "repetition_penalty": self.repetition_penalty, "num_return_sequences": self.num_return_sequences,
                  "pad_token_id": tokenizer.pad_token_id,
                  "eos_token_id": tokenizer.eos_token_id if self.stop_at_eos else None}
        if sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k or 0, top_p=self.top_p or 1.0)
        else:
            kwargs.update(temperature=None, top_k=None, top_p=None)
        return kwargs


def _encode(loaded: LoadedModel, prompt: str) -> dict[str, torch.Tensor]:
    enc = loaded.tokenizer(prompt, return_tensors="pt")
    if enc["input_ids"].shape[1] == 0:  # an empty prompt: start from the EOS/BOS token
        start = loaded.tokenizer.bos_token_id if loaded.tokenizer.bos_token_id is not None else loaded.tokenizer.eos_token_id
        enc = {"input_ids": torch.tensor([[start]]), "attention_mask": torch.ones(1, 1, dtype=torch.long)}
    device = next(loaded.model.parameters()).device
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


@torch.inference_mode()
def generate(model: str | LoadedModel, prompt: str, settings: GenerationSettings | None = None, **overrides) -> list[str]:
    """Continuations of `prompt` (without the prompt), one per returned sequence."""
    loaded = as_loaded(model, "generate")
    settings = settings or GenerationSettings(**overrides)
    enc = _encode(loaded, prompt)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    out = loaded.model.generate(**enc, **settings.generate_kwargs(loaded.tokenizer))
    new = out[:, enc["input_ids"].shape[1]:]
    return loaded.tokenizer.batch_decode(new, skip_special_tokens=True)


def stream(model: str | LoadedModel, prompt: str, settings: GenerationSettings | None = None, **overrides) -> Iterator[str]:
    """Yield text pieces as they are generated (one sequence)."""
    from transformers import TextIteratorStreamer

    loaded = as_loaded(model, "generate")
    settings = settings or GenerationSettings(**overrides)
    settings.num_return_sequences = 1
    enc = _encode(loaded, prompt)
    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    errors: list[BaseException] = []

    def work():
        try:
            with torch.inference_mode():
                loaded.model.generate(**enc, **settings.generate_kwargs(loaded.tokenizer), streamer=streamer)
        except BaseException as err:  # surfaced in the caller's thread below
            errors.append(err)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]
