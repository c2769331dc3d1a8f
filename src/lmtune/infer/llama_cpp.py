"""GGUF models run by llama.cpp (llama-cpp-python), the engine CPU users pick for speed.

`lmtune export RUN --format gguf` writes a tuned model as GGUF; `lmtune generate/serve MODEL.gguf` then
runs it here when llama-cpp-python is installed (`pip install 'lmtune[llama-cpp]'`; it builds from source
in ~5 minutes), with the same settings, streaming, limits and routes as the PyTorch path. Measured on
SmolLM2-135M Q4_1 (2 vCPUs): ~9x the PyTorch path's batch-1 decode (docs/performance.md).

The prompt is tokenized by the model's Hugging Face tokenizer (read from the GGUF file), so prompts,
chat templates, truncation and token counts are the same as on the PyTorch path; llama.cpp gets the ids."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

from lmtune.errors import LmtuneError

N_CTX = 2048  # the context llama.cpp allocates, capped by the model's own


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def _trained_context(path: Path) -> int:
    """The context length the GGUF file declares (read from its header, memory-mapped: no weights)."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    arch = bytes(fields["general.architecture"].parts[-1]).decode()
    field = fields.get(f"{arch}.context_length")
    return int(field.parts[-1][0]) if field is not None else N_CTX


class LlamaCppModel:
    """A llama.cpp model behind the few attributes lmtune's inference reads (`config`, `generate_pieces`).
    One generation at a time: llama.cpp's context holds one sequence's cache."""

    engine = "llama.cpp"

    def __init__(self, path: Path, threads: int | None = None):
        if not available():
            raise LmtuneError(
                "running GGUF models with llama.cpp needs llama-cpp-python: "
                "pip install 'lmtune[llama-cpp]' (or --engine torch)"
            )
        from llama_cpp import Llama

        self.path = path
        self.llm = Llama(
            model_path=str(path),
            n_ctx=min(_trained_context(path), N_CTX),
            n_threads=threads or os.cpu_count(),
            verbose=False,
        )
        self.config = SimpleNamespace(n_ctx=self.llm.n_ctx(), model_type="gguf", name_or_path=str(path))
        self.lock = threading.Lock()

    def eval(self) -> "LlamaCppModel":
        return self

    def generate_pieces(
        self,
        prompt_ids: list[int],
        settings,
        eos_token_id: int | None,
        seed: int | None,
        stop: threading.Event | None = None,
    ) -> Iterator[str]:
        """Text pieces of one continuation, as llama.cpp samples it with `settings`."""
        sample = settings.sampled
        kwargs = dict(
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature if sample else 0.0,
            top_k=(settings.top_k or 0) if sample else 1,
            top_p=(settings.top_p or 1.0) if sample else 1.0,
            min_p=0.0,
            repeat_penalty=settings.repetition_penalty,
            seed=seed if seed is not None else -1,
            stream=True,
        )
        if settings.ignore_eos and eos_token_id is not None:
            kwargs["logit_bias"] = {eos_token_id: float("-inf")}
        with self.lock:
            chunks = self.llm.create_completion(prompt_ids, **kwargs)
            try:
                for chunk in chunks:
                    if stop is not None and stop.is_set():
                        break
                    text = chunk["choices"][0]["text"]
                    if text:
                        yield text
            finally:
                chunks.close()
