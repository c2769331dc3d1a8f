"""Third-party libraries' own chatter, turned down: lmtune's progress bars and logs say what happens."""
from __future__ import annotations

import logging


def quiet_libraries() -> None:
    for noisy in ("httpx", "huggingface_hub", "gguf"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
