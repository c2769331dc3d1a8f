"""Causal language modelling: predict each next token of packed blocks."""

from __future__ import annotations

import math

import torch

from lmtune.tasks.base import Objective
from lmtune.tasks.common import eval_batches, pad_batch, pad_id
from lmtune.tasks.losses import causal_lm_training_loss


def make_collator(tokenizer, config=None):
    padding = pad_id(tokenizer)

    def collate(examples):
        return pad_batch([ex["input_ids"] for ex in examples], padding)

    return collate


@torch.no_grad()  # not inference_mode: FSDP must reuse the gathered parameters in training
def evaluate(model, dataset, tokenizer, config, autocast, batch_size: int = 8, max_batches: int | None = None):
    """Token-weighted mean loss over the split (each batch's mean weighted by its predicted tokens)."""
    model.eval()
    total, count = 0.0, 0
    for batch in eval_batches(dataset, make_collator(tokenizer), batch_size, max_batches):
        n = int((batch["labels"][:, 1:] != -100).sum())
        with autocast():
            out = model(**batch)
        total += float(out.loss) * n
        count += n
    loss_value = total / max(count, 1)
    return {"val_loss": loss_value, "val_perplexity": math.exp(min(loss_value, 50))}


class CausalLM(Objective):
    name = "clm"
    summary = "causal language modelling: next-token loss on packed blocks"
    auto_class = "AutoModelForCausalLM"
    lora_task_type = "CAUSAL_LM"
    native_gpt = supports_qlora = True
    export_formats = ("hf", "gguf")
    cpu_weights = "int8"
    capabilities = ("generate", "completions", "chat")

    def make_collator(self, tokenizer, config):
        return make_collator(tokenizer, config)

    def make_loss(self, config, train_set):
        return causal_lm_training_loss

    def evaluate(self, model, dataset, tokenizer, config, autocast, batch_size=8, max_batches=None):
        return evaluate(model, dataset, tokenizer, config, autocast, batch_size, max_batches)

    def recognizes(self, hf_config) -> bool:
        return True  # the fallback: whatever is neither a classifier nor a masked LM generates


OBJECTIVE = CausalLM()
