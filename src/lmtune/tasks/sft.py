"""Multi-task prompt/completion fine-tuning (SFT).

Each example is `template(prefix, prompt)` + completion + EOS; the loss covers the completion (and its EOS)
only. Examples are batched one per row with dynamic padding, so they never attend to each other. Per-task
validation loss, and exact match of greedy completions for tasks scored that way."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path

import torch

from lmtune.config import RunConfig, SftConfig, TaskConfig
from lmtune.data.ingest import read_documents
from lmtune.data.prepare import write_columns
from lmtune.errors import LmtuneError
from lmtune.tasks.base import Objective
from lmtune.tasks.common import eval_batches, pad_batch, pad_id
from lmtune.tasks.losses import causal_lm_training_loss

METADATA_FILE = "lmtune_tasks.json"  # in final/: tasks and template, for `lmtune generate --task`


def format_prompt(tokenizer, sft: SftConfig, prefix: str, prompt: str) -> str:
    if sft.chat:
        if not getattr(tokenizer, "chat_template", None):
            raise LmtuneError("sft.chat is set but the tokenizer has no chat template")
        content = f"{prefix} {prompt}".strip()
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    return sft.template.format(prefix=prefix, prompt=prompt).lstrip()


def encode(tokenizer, sft: SftConfig, prefix: str, prompt: str, completion: str, max_len: int) -> tuple[list[int], int]:
    """Token ids of prompt + completion + EOS, and where the completion starts. Long prompts lose their start."""
    prompt_ids = tokenizer(format_prompt(tokenizer, sft, prefix, prompt), add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    completion_ids = completion_ids[: max_len - 1]
    prompt_ids = prompt_ids[-(max_len - len(completion_ids)) :]
    return prompt_ids + completion_ids, len(prompt_ids)


def _rows(paths, config: RunConfig) -> list[dict]:

    docs = read_documents(paths, None)
    rows = [d.fields for d in docs]
    need = {config.data.prompt_column, config.data.completion_column}
    if rows and not need <= set(rows[0]):
        raise LmtuneError(
            f"{paths}: needs columns {sorted(need)} (has {', '.join(map(str, rows[0]))}); "
            "set data.prompt_column / data.completion_column"
        )
    return [r for r in rows if str(r.get(config.data.completion_column) or "").strip()]


def read_tasks(config: RunConfig) -> tuple[list[TaskConfig], dict[str, list[dict]], dict[str, list[dict]]]:
    """Tasks with their training and validation rows (validation: own files, else a seeded share of each task)."""
    tasks = list(config.tasks)
    train: dict[str, list[dict]] = {}
    val: dict[str, list[dict]] = {}
    if not tasks:
        if config.data.train is None:
            raise LmtuneError("sft needs `tasks:` (one file per task) or data.train with a task column")
        rows = _rows(config.data.train, config)
        column = config.sft.task_column
        if rows and column not in rows[0]:
            tasks = [TaskConfig(name="default")]
            train["default"] = rows
        else:
            for row in rows:
                train.setdefault(str(row[column]), []).append(row)
            tasks = [TaskConfig(name=name, prefix=f"[{name.upper()}]") for name in sorted(train)]
    else:
        for task in tasks:
            if task.train is None:
                raise LmtuneError(f"task '{task.name}' has no train file")
            train[task.name] = _rows(task.train, config)
            if task.validation is not None:
                val[task.name] = _rows(task.validation, config)
    rng = random.Random(config.data.seed)
    for task in tasks:
        rows = train[task.name]
        if not rows:
            raise LmtuneError(f"task '{task.name}' has no examples")
        if task.name not in val:
            rows = rows[:]
            rng.shuffle(rows)
            n_val = round(len(rows) * config.data.val_fraction)
            val[task.name], train[task.name] = rows[:n_val], rows[n_val:]
    return tasks, train, val


def prepare_splits(config: RunConfig, tokenizer):
    if tokenizer.eos_token_id is None:
        raise LmtuneError("the tokenizer has no EOS token to end completions with")
    tasks, train, val = read_tasks(config)
    columns = {}
    for split, named in (("train", train), ("validation", val)):
        ids, prompt_lens, task_ids, weights, names, metrics = [], [], [], [], [], []
        for t, task in enumerate(tasks):
            for row in named.get(task.name, []):
                x, n = encode(
                    tokenizer,
                    config.sft,
                    task.prefix,
                    str(row[config.data.prompt_column]),
                    str(row[config.data.completion_column]).strip(),
                    config.data.block_size,
                )
                ids.append(x)
                prompt_lens.append(n)
                task_ids.append(t)
                weights.append(task.weight)
                names.append(task.name)
                metrics.append(task.metric)
        columns[split] = {
            "input_ids": ids,
            "prompt_length": prompt_lens,
            "task": task_ids,
            "weight": weights,
            "task_name": names,
            "metric": metrics,
        }
    stats = {
        "tasks": [t.model_dump(mode="json", include={"name", "prefix", "metric", "weight"}) for t in tasks],
        "template": config.sft.template,
        "chat": config.sft.chat,
        "train examples": {t.name: len(train[t.name]) for t in tasks},
        "validation examples": {t.name: len(val.get(t.name, [])) for t in tasks},
        "example (train)": format_prompt(
            tokenizer, config.sft, tasks[0].prefix, str(train[tasks[0].name][0][config.data.prompt_column])
        ),
    }
    return columns, tokenizer, stats


def batch_order(dataset, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Uniform over examples, or drawn by task weight when the tasks' weights differ."""
    weights = torch.tensor(list(dataset["weight"]), dtype=torch.float)
    if torch.all(weights == weights[0]):
        order = torch.randperm(len(weights), generator=generator).tolist()
    else:
        order = torch.multinomial(weights, len(weights), replacement=True, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def make_collator(tokenizer, config=None):
    padding = pad_id(tokenizer)

    def collate(examples):
        batch = pad_batch([ex["input_ids"] for ex in examples], padding)
        for i, ex in enumerate(examples):
            batch["labels"][i, : ex["prompt_length"]] = -100  # only the completion (and its EOS) is learned
        return batch

    return collate


@torch.no_grad()
def greedy_completion(model, prompt_ids: list[int], eos_id: int, max_new_tokens: int) -> list[int]:
    """Greedy decoding with a plain loop: works for any model that returns logits (ours or HF's)."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    out: list[int] = []
    for _ in range(max_new_tokens):
        next_id = int(model(input_ids=ids).logits[0, -1].argmax())
        if next_id == eos_id:
            break
        out.append(next_id)
        ids = torch.cat([ids, torch.tensor([[next_id]], device=device)], dim=1)
    return out


@torch.no_grad()  # not inference_mode: FSDP must reuse the gathered parameters in training
def evaluate(model, dataset, tokenizer, config, autocast, batch_size: int = 8, max_batches: int | None = None):
    """Token-weighted completion loss overall and per task; exact match of greedy completions."""
    model.eval()
    task_col = list(dataset["task"])
    info = {t: {"name": n, "metric": m} for t, n, m in zip(task_col, dataset["task_name"], dataset["metric"])}
    totals, counts = defaultdict(float), defaultdict(int)
    collate = make_collator(tokenizer)
    start = 0
    for batch in eval_batches(dataset, collate, batch_size, max_batches):
        with autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        shifted = batch["labels"][:, 1:]
        per_token = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), shifted, reduction="none", ignore_index=-100
        )
        task_ids = task_col[start : start + len(shifted)]
        start += len(shifted)
        for row, t in enumerate(task_ids):
            mask = shifted[row] != -100
            totals[t] += float(per_token[row][mask].sum())
            counts[t] += int(mask.sum())
    metrics: dict[str, float] = {}
    all_loss = sum(totals.values()) / max(sum(counts.values()), 1)
    metrics["val_loss"] = all_loss
    metrics["val_perplexity"] = math.exp(min(all_loss, 50))
    scored = []
    for t, task in sorted(info.items()):
        if counts[t]:
            metrics[f"val_{task['name']}_loss"] = totals[t] / counts[t]
        if task["metric"] != "exact_match":
            continue
        indices = [i for i, x in enumerate(task_col) if x == t][: config.sft.eval_generate_max]
        if not indices:
            continue
        hits = 0
        for i in indices:
            example = dataset[i]
            prompt = example["input_ids"][: example["prompt_length"]]
            reference = tokenizer.decode(example["input_ids"][example["prompt_length"] : -1], skip_special_tokens=True)
            with autocast():
                produced = greedy_completion(model, prompt, tokenizer.eos_token_id, config.sft.max_new_tokens)
            hits += tokenizer.decode(produced, skip_special_tokens=True).strip() == reference.strip()
        metrics[f"val_{task['name']}_exact_match"] = hits / len(indices)
        scored.append(hits / len(indices))
    if scored:
        metrics["val_exact_match"] = sum(scored) / len(scored)
    return metrics


def metadata(prepared) -> dict:
    """What `lmtune generate --task` needs to format prompts like training did."""
    stats = prepared.stats
    return {"tasks": stats["tasks"], "template": stats["template"], "chat": stats["chat"]}


def task_prompt(model_dir: str | Path, tokenizer, task: str, prompt: str) -> str:
    path = Path(model_dir) / METADATA_FILE
    if not path.exists():
        raise LmtuneError(f"{model_dir} was not trained on tasks (no {METADATA_FILE})")
    meta = json.loads(path.read_text())
    by_name = {t["name"].lower(): t for t in meta["tasks"]}
    by_prefix = {t["prefix"].strip("[]").lower(): t for t in meta["tasks"]}
    chosen = by_name.get(task.lower()) or by_prefix.get(task.strip("[]").lower())
    if chosen is None:
        raise LmtuneError(f"unknown task '{task}' (this model knows: {', '.join(t['name'] for t in meta['tasks'])})")
    return format_prompt(tokenizer, SftConfig(template=meta["template"], chat=meta["chat"]), chosen["prefix"], prompt)


class MultiTaskSFT(Objective):
    name = "sft"
    summary = "multi-task prompt/completion fine-tuning: loss on completions only, per-task metrics"
    auto_class = "AutoModelForCausalLM"
    lora_task_type = "CAUSAL_LM"
    native_gpt = supports_qlora = True
    used_as = "clm"  # a tuned SFT model generates like any causal LM
    metadata_file = METADATA_FILE
    table_columns = frozenset({"prompt", "completion"})
    reference_metric = False  # its texts are labelled rows or prompts, not language to keep
    own_keys = ("data.prompt_column", "data.completion_column", "tasks", "sft")

    def write_splits(self, config, tokenizer, out_dir):
        return write_columns(out_dir, *prepare_splits(config, tokenizer))  # rows: a small table, in memory

    def batch_order(self, dataset, batch_size, generator):
        return batch_order(dataset, batch_size, generator)

    def make_collator(self, tokenizer, config):
        return make_collator(tokenizer, config)

    def make_loss(self, config, train_set):
        return causal_lm_training_loss  # the collator's labels mask prompts and padding with -100

    def evaluate(self, model, dataset, tokenizer, config, autocast, batch_size=8, max_batches=None):
        return evaluate(model, dataset, tokenizer, config, autocast, batch_size, max_batches)

    def save_metadata(self, final_dir, prepared) -> None:
        (Path(final_dir) / METADATA_FILE).write_text(json.dumps(metadata(prepared), indent=2))

    def task_prompt(self, model_dir, tokenizer, task, prompt):
        return task_prompt(model_dir, tokenizer, task, prompt)


OBJECTIVE = MultiTaskSFT()
