"""Classification: the label and the probability of every class, for one text or many."""
from __future__ import annotations

import torch

from lmtune.infer import LoadedModel, as_loaded


@torch.inference_mode()
def classify(model: str | LoadedModel, texts: str | list[str], batch_size: int = 32, max_length: int = 512,
             progress: bool = False) -> list[dict]:
    """`[{"label": ..., "score": p, "scores": {label: p, ...}}]`, one per text, in input order."""
    loaded = as_loaded(model, "classifier")
    texts = [texts] if isinstance(texts, str) else list(texts)
    labels = loaded.labels
    device = next(loaded.model.parameters()).device
    # Sorted by length so each batch pads little; results are put back in input order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    results: list[dict | None] = [None] * len(texts)
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(order), batch_size), desc="classify", unit="batch", disable=not progress):
        idx = order[start : start + batch_size]
        enc = loaded.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                               max_length=max_length).to(device)
        probs = loaded.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float().softmax(-1)
        for i, row in zip(idx, probs.tolist()):
            best = max(range(len(row)), key=row.__getitem__)
            results[i] = {"label": labels[best], "score": row[best], "scores": dict(zip(labels, row))}
    return results
