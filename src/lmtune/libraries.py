"""Third-party libraries' own chatter, turned down: lmtune's progress bars and logs say what happens."""

from __future__ import annotations

import logging
import warnings


def quiet_libraries() -> None:
    for noisy in ("httpx", "huggingface_hub", "gguf"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # Remarks on what lmtune does on purpose (LoRA on GPT-2's Conv1D layers; a name transformers renames).
    warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False", category=UserWarning)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
