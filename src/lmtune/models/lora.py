"""LoRA through peft: only small low-rank adapters train; `final/` gets them merged into the weights."""
from __future__ import annotations

from lmtune.config import LoraConfig

TASK_TYPES = {"clm": "CAUSAL_LM", "sft": "CAUSAL_LM", "classify": "SEQ_CLS", "mlm": None}


def apply_lora(model, config: LoraConfig, objective: str):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                 target_modules=config.target_modules, task_type=TASK_TYPES[objective])
    if objective == "mlm":  # the (possibly new) MLM head must train in full
        peft_config.modules_to_save = ["cls"] if hasattr(model, "cls") else ["lm_head"]
    return get_peft_model(model, peft_config)
