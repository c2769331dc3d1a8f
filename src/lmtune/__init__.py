"""lmtune: adapt a language model to your own text.

Python API (plain data in, plain data out):

    import lmtune
    config = lmtune.load_config("configs/hamlet-smollm2.yaml", {"train": {"max_steps": 20}})
    summary = lmtune.train(config)
    lmtune.generate(summary["final_model"], "To be, or not to be", max_new_tokens=30)
    lmtune.fill_mask("runs/hamlet-mlm", "To be, or not to [MASK].", top_k=5)
    lmtune.classify("runs/reviews", ["A triumph.", "A mess."])
"""

from __future__ import annotations

__version__ = "0.1.0"

import logging  # noqa: E402

# bitsandbytes (QLoRA; peft imports it whenever it is installed) warns on import, on CPUs with AVX512-BF16,
# that it could not fetch an optional kernel from the Hub: lmtune never downloads code at run time, and
# bitsandbytes' own CPU kernel is used instead (the `kernels` package says the same, offline). Set before
# anything of lmtune's can import peft.
for _name in ("bitsandbytes.backends.cpu.ops", "kernels"):
    logging.getLogger(_name).setLevel(logging.ERROR)

from lmtune.config import RunConfig, load_config  # noqa: E402
from lmtune.errors import LmtuneError  # noqa: E402


def train(config: RunConfig, resume: bool = False, progress: bool = True) -> dict:
    from lmtune.train.loop import train as _train

    return _train(config, resume=resume, progress=progress)


def prepare(config: RunConfig, out_dir):
    from lmtune.train.data import prepare_data

    return prepare_data(config, out_dir)


def generate(model, prompt: str, **settings) -> list[str]:
    from lmtune.infer.generate import generate as _generate

    return _generate(model, prompt, **settings)


def fill_mask(model, text: str, top_k: int = 5) -> list[list[dict]]:
    from lmtune.infer.fill_mask import fill_mask as _fill_mask

    return _fill_mask(model, text, top_k=top_k)


def classify(model, texts) -> list[dict]:
    from lmtune.infer.classify import classify as _classify

    return _classify(model, texts)


def evaluate(model, data, **kwargs) -> dict:
    from lmtune.train.evaluate import evaluate_model

    return evaluate_model(model, data, **kwargs)


__all__ = [
    "RunConfig",
    "LmtuneError",
    "load_config",
    "train",
    "prepare",
    "generate",
    "fill_mask",
    "classify",
    "evaluate",
    "__version__",
]
