"""metrics.jsonl: the run's record, one JSON object per log or evaluation event."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lmtune.train.tracking import Tracker, log_record

log = logging.getLogger("lmtune")


class MetricsLog:
    """metrics.jsonl in the run folder: one JSON object per log or evaluation event, each also sent to the
    experiment trackers (train.report_to)."""

    def __init__(self, path: Path, keep_until_step: int | None = None, trackers: list[Tracker] | None = None):
        """`keep_until_step`: resume; events after the checkpoint go, and so does a line torn by a kill.
        None: a fresh run starts a fresh file."""
        self.path = path
        self.trackers = trackers if trackers is not None else []
        if keep_until_step is None:
            path.unlink(missing_ok=True)
        elif path.exists():
            kept, torn = [], 0
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    torn += 1
                    continue
                if isinstance(record, dict) and record.get("step", 0) <= keep_until_step:
                    kept.append(line)
            if torn:
                log.info("metrics.jsonl: dropped %d unreadable line(s) (a write cut off by a kill)", torn)
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        log_record(self.trackers, record)


class NoLog:
    """What processes other than the main one write: nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass
