"""Classification: the label and the probability of every class, for one text or many."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from lmtune.infer import LoadedModel, as_loaded
from lmtune.outputs import write_file_atomic


@torch.inference_mode()
def classify(
    model: str | LoadedModel,
    texts: str | list[str],
    batch_size: int = 32,
    max_length: int = 512,
    progress: bool = False,
) -> list[dict]:
    """`[{"label": ..., "score": p, "scores": {label: p, ...}}]`, one per text, in input order."""
    loaded = as_loaded(model, "classify")
    texts = [texts] if isinstance(texts, str) else list(texts)
    labels = loaded.labels
    if getattr(loaded.model, "engine", "torch") == "sklearn":  # a classical model (tasks/classical.py)
        return [_result(labels, row) for row in loaded.model.probabilities(texts).tolist()]
    device = next(loaded.model.parameters()).device
    # Sorted by length so each batch pads little; results are put back in input order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    results: list[dict | None] = [None] * len(texts)
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(order), batch_size), desc="classify", unit="batch", disable=not progress):
        idx = order[start : start + batch_size]
        enc = loaded.tokenizer(
            [texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True, max_length=max_length
        ).to(device)
        probs = (
            loaded.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float().softmax(-1)
        )
        for i, row in zip(idx, probs.tolist()):
            results[i] = _result(labels, row)
    return results


def _result(labels: list[str], row: list[float]) -> dict:
    best = max(range(len(row)), key=row.__getitem__)
    return {"label": labels[best], "score": row[best], "scores": dict(zip(labels, row))}


OUTPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}


def _format_of(path: Path | None) -> str | None:
    if path is None:
        return None
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2", ".xz")]
    return OUTPUT_FORMATS.get(suffixes[-1]) if suffixes else None


def write_predictions(path: Path, rows: list[dict], results: list[dict], input_path: Path | None = None) -> Path:
    """Each input row with `predicted_label`, `score` and the class probabilities, in the format the
    output's suffix names (else the input's: JSONL in, JSONL out). Nested values stay JSON, never a
    Python repr. Written to a temporary file and renamed: a crash never leaves half a file."""
    fmt = _format_of(Path(path)) or _format_of(input_path) or "csv"
    records = [
        {**row, "predicted_label": result["label"], "score": result["score"], "scores": result["scores"]}
        for row, result in zip(rows, results)
    ]

    def write(fh) -> None:
        if fmt == "jsonl":
            fh.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        elif fmt == "json":
            json.dump(records, fh, ensure_ascii=False, indent=1)
        else:
            labels = list(results[0]["scores"]) if results else []
            fields = list(dict.fromkeys(key for row in rows for key in row))
            fields += ["predicted_label", "score", *[f"p_{label}" for label in labels]]
            writer = csv.DictWriter(fh, fieldnames=fields, delimiter="\t" if fmt == "tsv" else ",")
            writer.writeheader()
            for record in records:
                flat = {
                    k: json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v
                    for k, v in record.items()
                    if k != "scores"
                }
                flat["score"] = f"{record['score']:.6f}"
                flat.update({f"p_{k}": f"{v:.6f}" for k, v in record["scores"].items()})
                writer.writerow(flat)

    return write_file_atomic(path, write)
