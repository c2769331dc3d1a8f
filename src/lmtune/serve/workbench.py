"""`lmtune serve --workbench`: training from the browser, with nothing the CLI guarantees weakened.

Each training is an ordinary `lmtune train` subprocess writing an ordinary run folder (a crash of it never takes
the server down; every CLI verb works on the result), one at a time per server, the others waiting in a visible
queue. Stop sends what Ctrl-C sends (the run saves a checkpoint and exits 130); resume runs `lmtune train
RUN/config.yaml --resume`. Every path a browser names is confined below the server's data and runs folders
(`..`, absolute paths and symlinks out of them are refused); uploads go to a server-owned folder, with sanitized
names and a size cap."""

from __future__ import annotations

import filecmp
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmtune.errors import LmtuneError
from lmtune.outputs import claim_dir, is_lmtune_dir

UPLOADS = "uploads"  # below the data folder, made and marked by the server
LOGS = ".workbench"  # below the runs folder: each training's output


@dataclass
class Job:
    """One training asked for in the browser."""

    id: int
    run_dir: Path
    args: list[str]
    state: str = "waiting"  # waiting | running | done | stopped | failed
    proc: subprocess.Popen | None = None
    log: Path | None = None
    started: float = 0.0
    ended: float = 0.0
    error: str = ""
    stop_asked: bool = field(default=False, repr=False)


class Workbench:
    """The training queue and the rules for paths a browser names."""

    def __init__(self, data_dir: str | Path, runs_dir: str | Path, max_upload_mb: float = 512):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.max_upload_bytes = int(max_upload_mb * 2**20)
        self.jobs: list[Job] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        threading.Thread(target=self._run_queue, daemon=True, name="lmtune-workbench").start()

    # ---- paths ---------------------------------------------------------------------------------------
    def confined(self, given: str, under: str = "data") -> Path:
        """`given` (relative to the data or runs folder, or absolute) as a real path inside that folder; one
        line when it is not: `..` out of it, an absolute path elsewhere, a symlink pointing out."""
        root = self.data_dir if under == "data" else self.runs_dir
        text = (given or "").strip()
        if not text:
            raise LmtuneError(f"give a path below the server's {under} folder ({root})")
        path = (root / text).resolve()  # an absolute `text` replaces root; resolve() follows symlinks
        if path != root and root not in path.parents:
            raise LmtuneError(
                f"{text}: outside the server's {under} folder ({root}); the workbench reads and writes only below it"
            )
        if not path.exists():
            raise LmtuneError(f"{text}: not found below the server's {under} folder")
        return path

    def save_upload(self, temporary: str | Path, original_name: str) -> Path:
        """An uploaded file moved into the server's uploads folder, its name sanitized, its size capped."""
        temporary = Path(temporary)
        size = temporary.stat().st_size
        if size > self.max_upload_bytes:
            raise LmtuneError(
                f"{original_name}: {size / 2**20:,.0f} MB, more than this server takes "
                f"({self.max_upload_bytes / 2**20:,.0f} MB; lmtune serve --max-upload-mb)"
            )
        folder = self.data_dir / UPLOADS
        if folder.exists() and not is_lmtune_dir(folder):
            raise LmtuneError(f"{folder} exists and is not the server's uploads folder; move it away")
        claim_dir(folder, "uploads")
        name = sanitized(original_name)
        target = folder / name
        for n in itertools.count(2):
            if not target.exists():
                break
            if filecmp.cmp(temporary, target, shallow=False):  # the same file again (Check, then Train): one copy
                return target
            target = folder / f"{Path(name).stem}-{n}{Path(name).suffix}"
        shutil.copyfile(temporary, target)
        return target

    def data_choices(self) -> list[str]:
        """Files and folders a browser may pick: the data folder's, two levels down (hidden ones left out)."""
        found = []
        for path in sorted(self.data_dir.glob("*")) + sorted(self.data_dir.glob("*/*")):
            relative = path.relative_to(self.data_dir)
            if any(part.startswith(".") for part in relative.parts) or self.runs_dir in (path, *path.parents):
                continue
            found.append(str(relative) + ("/" if path.is_dir() else ""))
        return found

    # ---- the queue -------------------------------------------------------------------------------------
    def new_run_dir(self, stem: str) -> Path:
        stem = sanitized(stem) or "run"
        for n in itertools.count(1):
            candidate = self.runs_dir / (stem if n == 1 else f"{stem}-{n}")
            if not candidate.exists() and all(job.run_dir != candidate for job in self.jobs):
                return candidate
        raise AssertionError("unreachable")

    def submit_training(self, data: list[Path], options: list[str], stem: str) -> Job:
        """`lmtune train --data ... OPTIONS --output-dir RUNS/STEM`, queued."""
        run_dir = self.new_run_dir(stem)
        args = ["train", *[x for path in data for x in ("--data", str(path))], *options, "--output-dir", str(run_dir)]
        return self._queue(run_dir, args)

    def submit_resume(self, run_dir: Path) -> Job:
        if not (run_dir / "config.yaml").is_file():
            raise LmtuneError(f"{run_dir.name} has no config.yaml: not a run to resume")
        if any(job.run_dir == run_dir and job.state in ("waiting", "running") for job in self.jobs):
            raise LmtuneError(f"{run_dir.name} is already queued or training")
        return self._queue(run_dir, ["train", str(run_dir / "config.yaml"), "--resume"])

    def _queue(self, run_dir: Path, args: list[str]) -> Job:
        with self._lock:
            job = Job(next(self._ids), run_dir, args)
            self.jobs.append(job)
        self._wake.set()
        return job

    def stop(self, job_id: int) -> Job:
        """Stop a training as Ctrl-C would (it saves a checkpoint and exits 130); a waiting one leaves the queue."""
        job = self.job(job_id)
        with self._lock:
            job.stop_asked = True
            if job.state == "waiting":
                job.state = "stopped"
            elif job.state == "running" and job.proc is not None:
                job.proc.send_signal(signal.SIGINT)
        return job

    def job(self, job_id: int) -> Job:
        found = next((job for job in self.jobs if job.id == job_id), None)
        if found is None:
            raise LmtuneError(f"no training #{job_id} on this server")
        return found

    def _run_queue(self) -> None:
        while True:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            with self._lock:
                job = next((j for j in self.jobs if j.state == "waiting"), None)
                if job is None:
                    continue
                job.state, job.started = "running", time.time()
                logs = self.runs_dir / LOGS
                logs.mkdir(parents=True, exist_ok=True)
                job.log = logs / f"{job.id:04d}-{job.run_dir.name}.log"
                with open(job.log, "w") as out:  # the child keeps its own descriptor
                    job.proc = subprocess.Popen(
                        [sys.executable, "-m", "lmtune.cli", *job.args],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "LMTUNE_LOG": "INFO"},
                    )
            code = job.proc.wait()
            with self._lock:
                job.ended = time.time()
                # 130/143: lmtune stopped on the signal; -2/-15: it came before lmtune's handlers (at start-up)
                stopped = code in (130, 143, -signal.SIGINT, -signal.SIGTERM)
                job.state = "done" if code == 0 else "stopped" if stopped else "failed"
                if job.state == "failed":
                    job.error = last_error(job.log)
            self._wake.set()

    def close(self) -> None:
        """Stop the training under way (a shutdown of the server): it saves a checkpoint first."""
        for job in self.jobs:
            if job.state == "running" and job.proc is not None and job.proc.poll() is None:
                job.proc.send_signal(signal.SIGINT)
                try:
                    job.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    job.proc.kill()

    # ---- what a browser sees -----------------------------------------------------------------------------
    def queue_rows(self) -> list[list]:
        rows = []
        for job in self.jobs:
            progress = progress_of(job)
            rows.append(
                [
                    job.id,
                    job.run_dir.name,
                    job.state,
                    progress.get("step", ""),
                    progress.get("of", ""),
                    progress.get("tokens_per_s", ""),
                    progress.get("eta", ""),
                    job.error,
                ]
            )
        return rows


def sanitized(name: str) -> str:
    """A file or folder name with nothing but letters, digits, '.', '_' and '-' (no path, not hidden)."""
    name = Path(str(name).replace("\\", "/")).name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip("._")[:120]


def last_error(log: Path | None) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines() if log else []
    except OSError:
        return ""
    return next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")


STEPS = re.compile(r"training \S+ on .*?, (\d+) steps,")


def progress_of(job: Job) -> dict:
    """Step, planned steps, tokens/s and an estimate of the time left, from the run's own files."""
    found: dict = {}
    try:
        text = job.log.read_text(errors="replace") if job.log else ""
    except OSError:
        text = ""
    planned = STEPS.findall(text)
    records = []
    try:
        lines = (job.run_dir / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines[-200:] if line.strip()]
    except (OSError, ValueError):
        pass
    trained = [r for r in records if r.get("event") == "train"]
    if trained:
        last = trained[-1]
        found = {"step": last["step"], "tokens_per_s": round(last.get("tokens_per_s", 0))}
    if planned:
        found["of"] = int(planned[-1])
    if trained and planned and job.state == "running" and job.started:
        first = trained[0]["step"]
        elapsed = time.time() - job.started
        done = max(1, found["step"] - first + 1)
        left = max(0, found["of"] - found["step"]) * elapsed / done
        found["eta"] = f"{left / 60:.1f} min"
    return found
