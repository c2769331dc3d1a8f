"""What lmtune tells a user about a plan before training (settings almost surely wrong, plans that usually
overfit) and when a run goes wrong (divergence), each with what to do instead."""

from __future__ import annotations

from pathlib import Path

from lmtune.config import RunConfig


def divergence_message(step: int, loss: float, lr: float, last: Path | None) -> str:
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
    lower = lr / 10 if lr / 10 <= 1e-3 else 1e-4  # a sensible value, not a tenth of an absurd one
    return (
        f"training diverged at step {step}: the loss is {loss} (the learning rate {lr:g} is likely too high; "
        f"try --train.lr {lower:g}); {kept}; no final model was written"
    )


def setting_warnings(config: RunConfig, samples: int, total_steps: int) -> list[str]:
    """Settings that are legal but almost surely a mistake, said once before training."""
    tc, warnings = config.train, []
    if tc.warmup_steps >= total_steps > 1:
        warnings.append(
            f"train.warmup_steps {tc.warmup_steps} is not below the run's {total_steps} steps: the "
            f"learning rate never reaches train.lr; try --train.warmup_steps {max(0, total_steps // 10)}"
        )
    if tc.batch_size > samples:
        warnings.append(
            f"train.batch_size {tc.batch_size} is more than the {samples} training samples: every step "
            f"takes all of them (a batch of {samples})"
        )
    if tc.lr >= 0.1:
        warnings.append(
            f"train.lr {tc.lr:g} is far above what AdamW trains with (1e-5 to 1e-3): the run will likely diverge"
        )
    elif tc.lr == 0:
        warnings.append("train.lr 0: the weights will not change")
    return warnings


def plan_warnings(
    config: RunConfig, model, tokens: int, samples: int, total_steps: int, validated: bool = True
) -> list[str]:
    """Before training: plans that usually end in a model worse than the base, with what to do instead.
    `validated`: a validation split picks the best model (so many epochs cannot hand back an overfit one)."""
    warnings = setting_warnings(config, samples, total_steps)
    if tokens and tokens < config.data.block_size:
        warnings.append(
            f"the corpus has only {tokens:,} training tokens, less than one block of "
            f"{config.data.block_size}: add text (there is too little to learn from or to hold out)"
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    epochs = total_steps * min(config.train.batch_size, samples) * config.train.grad_accum / max(1, samples)
    if tokens and trainable > 10_000 * tokens and config.model.lora is None:
        warnings.append(
            f"a full fine-tune of {trainable / 1e6:.0f}M parameters on only {tokens:,} training tokens "
            "tends to overfit at once; consider LoRA (--model.lora.r 8) or more text"
        )
    if tokens and tokens < 50_000 and epochs > 3 and not (validated and config.train.keep == "best"):
        warnings.append(
            f"{epochs:.0f} epochs over only {tokens:,} training tokens will likely overfit, and without a "
            "validation split picking the best model the last one is what you get; try --train.epochs 2 "
            "or add text (or data.validation files)"
        )
    return warnings
