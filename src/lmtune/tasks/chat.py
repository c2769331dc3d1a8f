"""Chat fine-tuning: conversations in (OpenAI's `messages` or ShareGPT's `conversations` rows, in JSONL, JSON,
Parquet or a dataset folder), a chat model out.

Each conversation is rendered with the tokenizer's own chat template (a model without one gets
`DEFAULT_TEMPLATE`, saved with it, so training and inference agree), and the loss covers every assistant turn
and its end-of-turn token, nothing else: the tokens between the conversation rendered up to a reply's prompt
and rendered through the reply. A conversation longer than the block loses its oldest turns (the system
prompt stays); batches group similar lengths, so padding stays small."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter

import torch

from lmtune.config import RunConfig
from lmtune.data.ingest import read_documents
from lmtune.data.prepare import write_columns
from lmtune.errors import LmtuneError
from lmtune.tasks.base import Objective
from lmtune.tasks.common import DEFAULT_TEMPLATE, eval_batches, length_grouped_batches, pad_batch, pad_id
from lmtune.tasks.losses import causal_lm_training_loss

log = logging.getLogger("lmtune")

ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}
COLUMNS = ("messages", "conversations")


class BadRow(Exception):
    """A conversation that cannot be trained on as it is (skipped and counted)."""


def ensure_template(tokenizer):
    """The tokenizer, with the default chat template when it has none of its own (saved with it)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_TEMPLATE
    return tokenizer


def conversation(row: dict, where: str) -> list[dict[str, str]]:
    """A row's turns as [{"role", "content"}]: OpenAI's `messages` ({role, content}) or ShareGPT's
    `conversations` ({from, value}). A field of the wrong shape is an error naming the row; a conversation
    that cannot teach anything (no assistant turn, an empty reply) raises BadRow."""
    column = next((c for c in COLUMNS if c in row), None)
    turns = row.get(column) if column else None
    if not isinstance(turns, list):
        raise LmtuneError(f"{where}: '{column or 'messages'}' must be a list of turns, not {type(turns).__name__}")
    messages = []
    for n, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise LmtuneError(f"{where}: turn {n} is a {type(turn).__name__}, not an object with a role and content")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role not in ROLES:
            raise LmtuneError(
                f"{where}: turn {n} has role {role!r} (roles: system, user, assistant; ShareGPT: system, human, gpt)"
            )
        if not isinstance(content, str):
            raise LmtuneError(f"{where}: turn {n}'s content is a {type(content).__name__}, not text")
        messages.append({"role": ROLES[role], "content": content.strip()})
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRow("no assistant turn")
    if any(m["role"] == "assistant" and not m["content"] for m in messages):
        raise BadRow("an empty assistant turn")
    return messages


def read_conversations(paths) -> tuple[list[list[dict]], Counter]:
    """Every valid conversation of `paths`, and the skipped ones counted by reason."""
    docs = read_documents(paths, None)
    found, skipped = [], Counter()
    for n, doc in enumerate(docs, 1):
        try:
            found.append(conversation(doc.fields, f"{doc.source}: row {n}"))
        except BadRow as why:
            skipped[str(why)] += 1
    return found, skipped


def _ids(tokenizer, messages: list[dict], generation_prompt: bool = False) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation, and a 0/1 mask of the tokens the loss covers: each assistant
    reply with its end-of-turn token (what the template adds after the reply)."""
    ids = _ids(tokenizer, messages)
    mask = [0] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_ids(tokenizer, messages[:i], generation_prompt=True))
        through = _ids(tokenizer, messages[: i + 1])
        if ids[: len(through)] != through or len(through) <= start:
            raise LmtuneError(
                "the chat template does not render a conversation as its turns one after another; "
                "lmtune cannot tell the replies' tokens apart with it"
            )
        mask[start : len(through)] = [1] * (len(through) - start)
    return ids, mask


def fit(tokenizer, messages: list[dict], block_size: int) -> tuple[list[int], list[int], int]:
    """The conversation's ids and mask within `block_size` tokens: the oldest turns dropped first (the system
    prompt kept, the conversation starting at a user turn). Returns also how many turns were dropped; raises
    BadRow when even its last exchange does not fit."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system) :]
    for dropped in range(len(rest)):
        kept = rest[dropped:]
        if kept[0]["role"] == "assistant" or not any(m["role"] == "assistant" for m in kept):
            continue
        ids, mask = encode(tokenizer, system + kept)
        if len(ids) <= block_size:
            return ids, mask, dropped
    raise BadRow("longer than data.block_size even with only its last exchange")


def prepare_splits(config: RunConfig, tokenizer):
    data = config.data
    if data.train is None:
        raise LmtuneError("no training data: set data.train (conversations: messages or conversations rows)")
    tokenizer = ensure_template(tokenizer)
    conversations, skipped = read_conversations(data.train)
    if data.validation:
        held_out, more = read_conversations(data.validation)
        skipped += more
        named, how = {"train": conversations, "validation": held_out}, "own validation files"
    else:
        order = torch.randperm(len(conversations), generator=torch.Generator().manual_seed(data.seed)).tolist()
        n_val = round(len(conversations) * data.val_fraction)
        named = {
            "validation": [conversations[i] for i in sorted(order[:n_val])],
            "train": [conversations[i] for i in sorted(order[n_val:])],
        }
        how = "a seeded share of the conversations"
    columns, cut = {}, 0
    for name, rows in named.items():
        encoded = []
        for messages in rows:
            try:
                ids, mask, dropped = fit(tokenizer, messages, data.block_size)
            except BadRow as why:
                skipped[str(why)] += 1
                continue
            cut += dropped > 0
            kept = messages[:1] + messages[1 + dropped :] if messages[0]["role"] == "system" else messages[dropped:]
            encoded.append((ids, mask, json.dumps(kept)))
        columns[name] = {
            "input_ids": [e[0] for e in encoded],
            "loss_mask": [e[1] for e in encoded],
            "messages": [e[2] for e in encoded],
        }  # as trained on: for the report's examples
    if not columns["train"]["input_ids"]:
        raise LmtuneError(f"no conversation to train on in {data.train} (skipped: {dict(skipped) or 'none'})")
    if skipped:
        log.warning(
            "warning: %d conversation(s) skipped: %s",
            sum(skipped.values()),
            ", ".join(f"{n} {why}" for why, n in skipped.items()),
        )
    stats = {
        "conversations": sum(len(c["input_ids"]) for c in columns.values()),
        "split": how,
        **{f"{name} conversations": len(c["input_ids"]) for name, c in columns.items()},
        "conversations cut to the block (oldest turns dropped)": cut,
        "assistant tokens (train)": sum(map(sum, columns["train"]["loss_mask"])),
        "tokens (train)": sum(map(len, columns["train"]["input_ids"])),
        "block_size": data.block_size,
        "skipped": dict(skipped),
        "chat template": "the model's own"
        if tokenizer.chat_template != DEFAULT_TEMPLATE
        else "lmtune's default (saved with the model)",
    }
    return columns, tokenizer, stats


def make_collator(tokenizer, config=None):
    padding = pad_id(tokenizer)

    def collate(rows):
        batch = pad_batch([row["input_ids"] for row in rows], padding)
        for i, row in enumerate(rows):  # only the replies (and their end-of-turn token) are learned
            mask = torch.tensor(row["loss_mask"], dtype=torch.bool)
            batch["labels"][i, : len(mask)][~mask] = -100
        return batch

    return collate


@torch.no_grad()  # not inference_mode: FSDP must reuse the gathered parameters in training
def evaluate(model, dataset, tokenizer, config, autocast, batch_size: int = 8, max_batches: int | None = None):
    """Loss and perplexity over the held-out replies' tokens (token-weighted)."""
    model.eval()
    total, count = 0.0, 0
    for batch in eval_batches(dataset, make_collator(tokenizer), batch_size, max_batches):
        with autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        total += float(
            torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="sum"
            )
        )
        count += int((targets != -100).sum())
    loss = total / max(count, 1)
    return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50)), "val_assistant_tokens": count}


class ChatSFT(Objective):
    name = "chat"
    summary = "chat fine-tuning: conversations rendered with the chat template, the loss on the replies only"
    auto_class = "AutoModelForCausalLM"
    lora_task_type = "CAUSAL_LM"
    native_gpt = supports_qlora = True
    used_as = "clm"  # a tuned chat model generates (and chats) like any causal LM
    reference_metric = False  # its text is conversations, scored on their replies
    own_keys = ()

    def matches_columns(self, columns: set[str]) -> bool:
        return any(column in columns for column in COLUMNS)

    def write_splits(self, config, tokenizer, out_dir):
        return write_columns(out_dir, *prepare_splits(config, tokenizer))  # rows: a small table, in memory

    def batch_order(self, dataset, batch_size, generator):
        return length_grouped_batches([len(x) for x in dataset["input_ids"]], batch_size, generator)

    def make_collator(self, tokenizer, config):
        return make_collator(tokenizer, config)

    def make_loss(self, config, train_set):
        return causal_lm_training_loss  # the collator's labels mask everything but the replies with -100

    def evaluate(self, model, dataset, tokenizer, config, autocast, batch_size=8, max_batches=None):
        return evaluate(model, dataset, tokenizer, config, autocast, batch_size, max_batches)

    def report_examples(self, dataset, n: int) -> list[dict]:
        """Held-out conversations up to their last reply, and that reply."""
        examples = []
        for row in dataset.select(range(min(n, len(dataset))))["messages"]:
            messages = json.loads(row)
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            examples.append({"messages": messages[:last], "reference": messages[last]["content"]})
        return examples


OBJECTIVE = ChatSFT()
