"""The interface every training objective implements (in the spirit of torchtune's recipe and loss
interfaces): everything that differs between objectives lives behind it, so the loop, the loaders, the
report and the server ask the objective instead of switching on its name.

Adding an objective = one module in `tasks/` with an `Objective` subclass + one line in the registry
(`tasks/__init__.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from lmtune.config import RunConfig
from lmtune.data.pack import Framing
from lmtune.data.stream import prepare_packed
from lmtune.tasks.common import default_loss

Batch = dict[str, torch.Tensor]


@dataclass
class Baseline:
    """A simple model scored on the run's validation split; `save(folder)` writes it as a model lmtune can use
    (where it can be), in case it beats the fine-tuned one."""

    metrics: dict[str, float]
    save: Callable[[Path], None] | None = None


class Objective:
    """Defaults fit packed language modelling; subclasses override what differs."""

    name: ClassVar[str]  # the one vocabulary: the recipe's `objective`, run folders, reports
    summary: ClassVar[str] = ""
    auto_class: ClassVar[str]  # transformers class that loads a saved model of this objective
    lora_task_type: ClassVar[str | None] = None  # peft TaskType
    random_collate: ClassVar[bool] = False  # its collator draws from the global RNG (MLM masks): no workers
    preset_family: ClassVar[str] = "gpt2"  # the from-scratch presets (models/resolve.py PRESETS) it can train
    native_gpt: ClassVar[bool] = False  # lmtune's own GPT (model.impl native, models/gpt.py) can train it
    supports_qlora: ClassVar[bool] = False  # a 4-bit base under LoRA adapters (model.quantize) can train it
    export_formats: ClassVar[tuple[str, ...]] = ("hf",)  # `lmtune export --format` choices for its models
    # Inference weights on CPUs with fast bf16 (infer.weights_format): bf16, or int8 where decoding is
    # bound by reading the weights once per token (causal LMs).
    cpu_weights: ClassVar[str] = "bf16"
    used_as: ClassVar[str | None] = None  # the objective a saved model serves as (SFT models generate like CLM)
    capabilities: ClassVar[tuple[str, ...]] = ()  # what inference and the server offer for its models
    pipeline_tag: ClassVar[str] = "text-generation"  # the transformers pipeline (and Hub tag) for its models
    metadata_file: ClassVar[str | None] = None  # written into final/ by `save_metadata` (e.g. SFT's tasks)
    default_model: ClassVar[str] = "smollm2-135m"  # for `lmtune train --data` (offline aliases)
    selection_metric: ClassVar[str] = "val_loss"  # train.select_by auto: what picks the best model
    reference_metric: ClassVar[bool] = True  # models text: scored on general text too (eval.reference, forgetting)
    table_columns: ClassVar[frozenset[str]] = frozenset()  # a table with these columns is this objective's data
    # Recipe keys (dotted; a section name covers its keys) that only this objective reads: `lmtune keys`
    # groups them under it, and a recipe that sets one for another objective gets a warning.
    own_keys: ClassVar[tuple[str, ...]] = ()

    # ---- data ------------------------------------------------------------------------------------
    def write_splits(self, config: RunConfig, tokenizer, out_dir: Path) -> tuple[Any, dict]:
        """Write the tokenized splits into `out_dir` (Arrow, as `datasets.load_from_disk` reads them); return
        the tokenizer (maybe trained here) and stats. Default: packed text, streamed (data/stream.py)."""

        return prepare_packed(config, tokenizer, self.framing, out_dir)

    def framing(self, tokenizer):
        """Token ids around packed blocks: EOS between documents (encoders override)."""

        return Framing.eos(tokenizer)

    def batch_order(self, dataset, batch_size: int, generator: torch.Generator) -> list[list[int]]:
        """One epoch's micro-batches as index lists; a fixed function of the generator (exact resume)."""
        order = torch.randperm(len(dataset), generator=generator).tolist()
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def matches_columns(self, columns: set[str]) -> bool:
        """Whether a table with these columns is this objective's data (`lmtune train --data`)."""
        return bool(self.table_columns) and self.table_columns <= columns

    def default_train_settings(self, rows: int, parameters: int | None) -> dict[str, Any]:
        """`lmtune train --data`: train settings this objective needs beyond the corpus-size defaults."""
        return {}

    def default_lr(self, parameters: int | None) -> float:
        """The usual full fine-tuning learning rate for a model of this size (the learning-rate probe's centre)."""
        return 5e-5

    # ---- training --------------------------------------------------------------------------------
    def make_collator(self, tokenizer, config: RunConfig) -> Callable[[list[dict]], Batch]:
        raise NotImplementedError

    def make_loss(self, config: RunConfig, train_set) -> Callable[[Any, Batch], torch.Tensor]:
        """The training loss of a batch. Default: the model's own (shifted cross-entropy on `labels`)."""
        return default_loss

    # ---- evaluation ------------------------------------------------------------------------------
    def evaluate(
        self,
        model,
        dataset,
        tokenizer,
        config: RunConfig,
        autocast,
        batch_size: int = 8,
        max_batches: int | None = None,
    ) -> dict[str, Any]:
        """Validation metrics; keys start with `val_`."""
        raise NotImplementedError

    def metric_mode(self, metric: str) -> str:
        """Whether lower ("min") or higher ("max") is better for `metric`."""
        return "min" if any(word in metric for word in ("loss", "perplexity")) else "max"

    def baselines(self, train_set, val_set, labels: list[str]) -> dict[str, Baseline]:
        """Simple models scored on the same validation split, shown next to the tuned one."""
        return {}

    # ---- the trained model -----------------------------------------------------------------------
    def init_model(self, model, missing_keys: list[str], head_init: str = "identity") -> None:
        """Fix up a freshly loaded pretrained model (e.g. an encoder saved without its MLM head)."""

    def prepare_model(self, model, config: RunConfig):
        """The model about to train, as the recipe's own keys for this objective want it (e.g. a classifier
        with a frozen encoder); returns it."""
        return model

    def lora_modules_to_save(self, model) -> list[str] | None:
        """Modules that train in full beside LoRA adapters (a new head, say)."""
        return None

    def recognizes(self, hf_config) -> bool:
        """Whether a saved model (its config.json) is one of this objective's, for inference."""
        return False

    def save_metadata(self, final_dir, prepared) -> None:
        """Anything inference needs beyond the HF folder (e.g. SFT task prefixes), in `metadata_file`."""

    def report_examples(self, dataset, n: int) -> list[dict]:
        """Up to `n` held-out examples the report shows both models answering: [{"messages", "reference"}]
        (conversations up to a reply, and that reply); none by default."""
        return []

    def task_prompt(self, model_dir, tokenizer, task: str, prompt: str) -> str:
        """A prompt for one of the tasks a saved model of this objective was trained on (`generate --task`)."""
        from lmtune.errors import LmtuneError

        raise LmtuneError(f"{model_dir} was not trained on tasks (a {self.name} model)")
