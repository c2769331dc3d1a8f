"""Sequence classification: labelled rows from CSV/JSONL/datasets, stratified split, length-grouped
dynamic padding, optional class weights; accuracy, macro-F1, per-class P/R/F1, confusion matrix."""

from __future__ import annotations

import logging
import random
from collections import Counter

import torch
from threadpoolctl import threadpool_limits

from lmtune.config import RunConfig
from lmtune.data.prepare import read_clean, write_columns
from lmtune.errors import LmtuneError
from lmtune.tasks import classical
from lmtune.tasks.base import Baseline, Objective
from lmtune.tasks.common import eval_batches, length_grouped_batches, pad_batch, pad_id

MEGA_BATCH = 50  # batches sorted by length together: little padding, order still random
# How tables spell a missing value (pandas writes NaN, R writes NA): never a class of its own.
MISSING_LABELS = {"", "nan", "na", "n/a", "<na>", "null"}
log = logging.getLogger("lmtune")


def _label_order(values: list[str]) -> list[str]:
    """Label ids in a stable order: numerically for numeric labels ("2" before "10"), else alphabetically."""
    unique = set(values)
    try:
        return sorted(unique, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(unique)


def label_of(value) -> str | None:
    """A row's label as text, None when the value is missing (None, empty, NaN)."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text.lower() in MISSING_LABELS else text


def read_labelled(paths, config: RunConfig, tokenizer):
    docs, report = read_clean(paths, config, tokenizer)
    column = config.data.label_column
    if docs and column not in docs[0].fields:
        raise LmtuneError(
            f"no label column '{column}' (columns: {', '.join(map(str, docs[0].fields))}); set data.label_column"
        )
    labelled = [(d.text, label_of(d.fields.get(column))) for d in docs]
    rows = [(text, label) for text, label in labelled if label is not None]
    if len(rows) < len(labelled):
        missing = len(labelled) - len(rows)
        log.warning("warning: %d row(s) without a label (empty or NaN in column '%s') left out", missing, column)
        report = {**report, "rows without a label": missing}
    if config.data.keep_labels is not None:
        keep = set(map(str, config.data.keep_labels))
        rows = [r for r in rows if r[1] in keep]
    return rows, report


def stratified_split(labels: list[str], fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Indices for each split, each class divided in the same proportions; seeded."""
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    rng = random.Random(seed)
    out: dict[str, list[int]] = {name: [] for name in ["train", *fractions]}
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        start = 0
        for name, fraction in fractions.items():
            n = round(len(members) * fraction)
            out[name] += members[start : start + n]
            start += n
        out["train"] += members[start:]
    return {name: sorted(idx) for name, idx in out.items()}


def prepare_splits(config: RunConfig, tokenizer):
    data = config.data
    if data.train is None:
        raise LmtuneError("no training data: set data.train (a CSV/JSONL file or dataset folder)")
    rows, report = read_labelled(data.train, config, tokenizer)
    if not rows:
        raise LmtuneError(f"no labelled rows in {data.train} (label column '{data.label_column}')")
    labels = [str(v) for v in data.keep_labels] if data.keep_labels else _label_order([r[1] for r in rows])
    if len(set(r[1] for r in rows)) < 2:
        raise LmtuneError(
            f"only one class ({rows[0][1]!r}) in column '{data.label_column}': classification needs at least two"
        )
    if data.validation:
        val_rows, _ = read_labelled(data.validation, config, tokenizer)
        named = {"train": rows, "validation": val_rows}
        how = "own validation files"
    else:
        fractions = {"validation": data.val_fraction}
        if data.test_fraction:
            fractions["test"] = data.test_fraction
        idx = stratified_split([r[1] for r in rows], fractions, data.seed)
        named = {name: [rows[i] for i in indices] for name, indices in idx.items()}
        how = "stratified by label"
    label_id = {label: i for i, label in enumerate(labels)}
    columns, truncated = {}, 0
    for name, split_rows in named.items():
        split_rows = [r for r in split_rows if r[1] in label_id]
        enc = tokenizer([r[0] for r in split_rows], truncation=False)["input_ids"] if split_rows else []
        truncated += sum(len(ids) > data.block_size for ids in enc)
        ids = [x[: data.block_size - 1] + x[-1:] if len(x) > data.block_size else x for x in enc]  # keep [SEP]
        columns[name] = {
            "input_ids": ids,
            "label": [label_id[r[1]] for r in split_rows],
            "text": [r[0] for r in split_rows],
        }  # for the baselines
    stats = {
        "labels": labels,
        "rows": len(rows),
        "split": how,
        **{f"{name} rows": len(c["label"]) for name, c in columns.items()},
        "class counts (train)": {labels[k]: v for k, v in sorted(Counter(columns["train"]["label"]).items())},
        "max length": data.block_size,
        "truncated samples": truncated,
        "cleaning": report,
    }
    return columns, tokenizer, stats


def make_collator(tokenizer, config=None):
    padding = pad_id(tokenizer)

    def collate(examples):
        batch = pad_batch([ex["input_ids"] for ex in examples], padding)
        batch["labels"] = torch.tensor([ex["label"] for ex in examples], dtype=torch.long)
        return batch

    return collate


def make_loss(config: RunConfig, train_set):
    """Cross-entropy, weighted by inverse class frequency when train.class_weights is set."""
    weights = None
    if config.train.class_weights:
        counts = Counter(train_set["label"])
        n_classes = max(counts) + 1
        weights = torch.tensor([len(train_set) / (n_classes * counts.get(c, 1)) for c in range(n_classes)])

    def loss(model, batch):
        labels = batch["labels"]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        w = weights.to(logits.device) if weights is not None else None
        return torch.nn.functional.cross_entropy(logits.float(), labels, weight=w)

    return loss


def scores_from_confusion(confusion: list[list[int]], labels: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class precision/recall/F1 from a confusion matrix (rows: true)."""
    cm = torch.tensor(confusion, dtype=torch.float64)
    tp = cm.diag()
    precision = tp / cm.sum(0).clamp(min=1)
    recall = tp / cm.sum(1).clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    return {
        "val_accuracy": float(tp.sum() / cm.sum().clamp(min=1)),
        "val_macro_f1": float(f1.mean()),
        "val_per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(cm[i].sum()),
            }
            for i, label in enumerate(labels)
        },
    }


def baselines(train_set, val_set, labels: list[str]) -> dict[str, Baseline]:
    """What fine-tuning must beat, on the same split: the majority class, TF-IDF + logistic regression as a
    user would first try it (scikit-learn's defaults), and a tuned one (word and character n-grams, C chosen
    by cross-validation), which is saved as a model of its own if it beats the fine-tuned one."""
    if len(val_set) == 0 or "text" not in train_set.column_names:
        return {}
    texts, y_train, y_val = list(train_set["text"]), list(train_set["label"]), list(val_set["label"])
    n = len(labels)

    def scores(predicted) -> dict[str, float]:
        confusion = [[0] * n for _ in range(n)]
        for true, pred in zip(y_val, predicted):
            confusion[true][pred] += 1
        found = scores_from_confusion(confusion, labels)
        return {"val_accuracy": found["val_accuracy"], "val_macro_f1": found["val_macro_f1"]}

    majority = Counter(y_train).most_common(1)[0][0]
    found = {"majority class": Baseline(scores([majority] * len(y_val)))}
    with threadpool_limits(1):  # scikit-learn's numpy would take every core from the training that follows
        plain = classical.default_tfidf(texts, y_train)
        found["TF-IDF + logistic regression"] = Baseline(scores(plain.predict(val_set["text"])))
        tuned = classical.tuned_tfidf(texts, y_train)
    found["TF-IDF + logistic regression (tuned)"] = Baseline(
        scores(tuned.predict(val_set["text"])), lambda folder: classical.save(tuned, folder, labels)
    )
    return found


@torch.no_grad()  # not inference_mode: FSDP must reuse the gathered parameters in training
def evaluate(model, dataset, tokenizer, config, autocast, batch_size: int = 32, max_batches: int | None = None):
    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    if getattr(model, "engine", "torch") == "sklearn":  # a classical model a run kept (tasks/classical.py)
        rows = len(dataset) if max_batches is None else min(len(dataset), max_batches * batch_size)
        probs = torch.tensor(model.probabilities(list(dataset["text"][:rows])), dtype=torch.float64)
        return _scores(labels, probs.clamp(min=1e-12).log(), torch.tensor(dataset["label"][:rows]))
    model.eval()
    logits, truth = [], []
    for batch in eval_batches(dataset, make_collator(tokenizer), batch_size, max_batches):
        with autocast():
            logits.append(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float())
        truth.append(batch["labels"])
    return _scores(labels, torch.cat(logits), torch.cat(truth))


def _scores(labels: list[str], logits: torch.Tensor, truth: torch.Tensor) -> dict:
    """Validation metrics from [rows, classes] logits (or log-probabilities) and the true label ids."""
    n = len(labels)
    confusion = [[0] * n for _ in range(n)]
    for true, pred in zip(truth.tolist(), logits.argmax(-1).tolist()):
        confusion[true][pred] += 1
    loss = float(torch.nn.functional.cross_entropy(logits.float(), truth, reduction="mean")) if len(truth) else 0.0
    return {
        "val_loss": loss,
        **scores_from_confusion(confusion, labels),
        "val_confusion_matrix": confusion,
        "val_labels": labels,
        "val_samples": len(truth),
    }


class Classification(Objective):
    name = "classify"
    summary = "sequence classification: labelled rows, stratified split, accuracy / macro-F1"
    auto_class = "AutoModelForSequenceClassification"
    lora_task_type = "SEQ_CLS"
    capabilities = ("classify",)
    pipeline_tag = "text-classification"
    preset_family = "bert"
    export_formats = ("hf", "onnx")
    default_model = "minilm-l6"
    reference_metric = False  # its texts are labelled rows or prompts, not language to keep
    own_keys = (
        "data.label_column",
        "data.keep_labels",
        "data.test_fraction",
        "train.class_weights",
        "model.freeze_encoder",
    )
    table_columns = frozenset({"label"})

    selection_metric = "val_accuracy"

    def default_train_settings(self, rows: int, parameters: int | None) -> dict:
        return {"batch_size": 16}

    def default_lr(self, parameters: int | None) -> float:
        # Measured on 1,000 Rotten Tomatoes snippets (docs/learning.md): a small encoder (under 50M parameters,
        # like MiniLM) learns a fresh head faster at 1e-4 than at the usual 2e-5.
        return 1e-4 if parameters is not None and parameters < 50_000_000 else 3e-5

    def write_splits(self, config, tokenizer, out_dir):
        return write_columns(out_dir, *prepare_splits(config, tokenizer))  # rows: a small table, in memory

    def prepare_model(self, model, config):
        if config.model.freeze_encoder:  # a linear probe: only what sits on top of the encoder trains
            for name, param in model.base_model.named_parameters():
                param.requires_grad = "pooler" in name  # BERT-style encoders pool inside base_model
        return model

    def batch_order(self, dataset, batch_size, generator):
        return length_grouped_batches([len(x) for x in dataset["input_ids"]], batch_size, generator, MEGA_BATCH)

    def make_collator(self, tokenizer, config):
        return make_collator(tokenizer, config)

    def make_loss(self, config, train_set):
        return make_loss(config, train_set)

    def evaluate(self, model, dataset, tokenizer, config, autocast, batch_size=8, max_batches=None):
        return evaluate(model, dataset, tokenizer, config, autocast, batch_size, max_batches)

    def baselines(self, train_set, val_set, labels):
        return baselines(train_set, val_set, labels)

    def recognizes(self, hf_config) -> bool:
        return "SequenceClassification" in " ".join(getattr(hf_config, "architectures", None) or [])


OBJECTIVE = Classification()
