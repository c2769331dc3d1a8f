"""LoRA through peft: only small low-rank adapters train; `final/` gets them merged into the weights."""

from __future__ import annotations

from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

from lmtune.config import LoraConfig
from lmtune.tasks import Objective


def apply_lora(model, config: LoraConfig, objective: Objective):
    peft_config = PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        task_type=objective.lora_task_type,
    )
    peft_config.modules_to_save = objective.lora_modules_to_save(model)
    return get_peft_model(model, peft_config)
