"""Plots of a run, from its metrics.jsonl: training/validation loss curves."""
from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def plot_run(run_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [(r["step"], r["train_loss"]) for r in records if r.get("event") == "train"]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("event") == "eval" and "val_loss" in r]
    if not train and not val:
        return []
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(Path(run_dir).name)
    fig.tight_layout()
    path = Path(run_dir) / "loss.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]
