"""Ctrl-C and SIGTERM during training: finish the step, save a checkpoint, then stop."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM during training: finish the current step, save a checkpoint, exit.
    Handled at step boundaries, so the checkpoint equals a periodic one and resume is exact; a second
    signal never interrupts the save; a third aborts at once (the last complete checkpoint stays)."""

    def __init__(self):
        self.signum: int | None = None
        self.count = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            # Stopping on a signal: the process is on its way out, and a late second Ctrl-C must not
            # turn the clean exit (status 130/143, resume line) into a traceback or a kill.
            signal.signal(signum, signal.SIG_IGN if self.signum is not None else handler)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
            sys.stderr.write(
                f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then "
                "stopping (press Ctrl-C twice more to abort without saving)\n"
            )
        elif self.count >= 3:
            raise KeyboardInterrupt
        else:
            sys.stderr.write("still saving the checkpoint; press Ctrl-C once more to abort without it\n")
