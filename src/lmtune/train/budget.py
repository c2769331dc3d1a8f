"""`train.epochs: auto` with a time budget (`lmtune train --data X --minutes N`): as many steps as fit in the
minutes left once the base model is evaluated and the learning rate probed, counting the evaluations along
the way; the learning-rate schedule then decays over exactly those steps (a run cut short by the clock
would stop with its rate still high). Early stopping ends the run sooner when validation stops improving."""

from __future__ import annotations

from lmtune.train.selection import eval_interval
from lmtune.train.setup import AUTO_MAX_EPOCHS


def steps_within(
    seconds_left: float, step_seconds: float, eval_seconds: float, steps_per_epoch: int, setting: int | str = "auto"
) -> int:
    """The most steps (at most AUTO_MAX_EPOCHS epochs) whose training and evaluations fit in `seconds_left`."""
    most = AUTO_MAX_EPOCHS * steps_per_epoch

    def cost(steps: int) -> float:
        every = eval_interval(setting, steps, steps_per_epoch)
        return steps * step_seconds + (steps // every if every else 0) * eval_seconds

    low, high = 1, most
    while low < high:  # the largest step count whose cost fits
        middle = (low + high + 1) // 2
        low, high = (middle, high) if cost(middle) <= seconds_left else (low, middle - 1)
    return max(1, min(low, most))


def describe_plan(steps: int, steps_per_epoch: int, minutes_left: float) -> str:
    return (
        f"time budget: {steps} steps ({steps / steps_per_epoch:.1f} epochs) fit in the {minutes_left:.1f} minutes "
        f"left; early stopping ends the run sooner if validation stops improving"
    )
