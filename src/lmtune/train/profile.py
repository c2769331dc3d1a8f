"""Where a training step's time goes: data, forward, backward, optimizer, other (`train.profile`).

Wall-clock marks at the phase boundaries of the loop. On a GPU, work is queued asynchronously, so each mark
first waits for the device (a synchronization the hot path otherwise avoids): profiling slows a GPU run a
little and is off by default. On a CPU the marks cost nothing measurable."""

from __future__ import annotations

import time

import torch

PHASES = ("data", "forward", "backward", "optimizer", "other")


class StepPhases:
    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self._sync = torch.cuda.synchronize if enabled and device.type == "cuda" else (lambda: None)
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._last = 0.0

    def start(self) -> None:
        if self.enabled:
            self._sync()
            self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        """The time since the previous mark was spent in `phase`."""
        if self.enabled:
            self._sync()
            now = time.perf_counter()
            self.seconds[phase] += now - self._last
            self._last = now

    def shares(self) -> dict[str, float]:
        """Each phase's share of the profiled time (empty when profiling was off or nothing ran)."""
        total = sum(self.seconds.values())
        return {phase: seconds / total for phase, seconds in self.seconds.items()} if self.enabled and total else {}
