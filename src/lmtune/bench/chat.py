"""Chat fine-tuning side by side: TRL's SFTTrainer (what most chat fine-tuning runs on) against `lmtune train`,
the same conversations, model, batch, learning rate, precision and wall time; both trained on the assistant
replies only and scored by the same evaluator (lmtune's chat loss on held-out conversations). TRL is a bench
contender only (`pip install trl`), never a dependency of lmtune."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lmtune.bench.contenders import TimeLimit, _tuned_arguments, timed_training
from lmtune.config import build_config
from lmtune.errors import LmtuneError
from lmtune.infer import load
from lmtune.models.load import load_model, load_tokenizer
from lmtune.tasks import chat
from lmtune.tasks.chat import encode
from lmtune.train.loop import train
from lmtune.train.precision import autocast_for

CONVERSATIONS = Path(__file__).resolve().parents[3] / "examples" / "chat" / "pirate-arithmetic.jsonl"
# SmolLM2's own template, with TRL's {% generation %} marks around each reply and its end of turn (what lmtune's
# loss covers): assistant_only_loss needs them. It renders the same text as the original.
TAGGED_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + '<|im_end|>' + '\\n' }}{% endgeneration %}{% else %}"
    "{{ message['content'] + '<|im_end|>' + '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _conversations() -> tuple[list[list[dict]], list[list[dict]]]:
    if not CONVERSATIONS.exists():
        raise LmtuneError(f"the chat bench trains on {CONVERSATIONS} (run it from lmtune's repository)")
    rows = [json.loads(line)["messages"] for line in CONVERSATIONS.read_text().splitlines()]
    cut = int(len(rows) * 0.9)
    return rows[:cut], rows[cut:]


def held_out_loss(model, tokenizer, rows: list[list[dict]], batch: int) -> dict[str, float]:
    """lmtune's chat evaluator on the held-out conversations: the same yardstick for both contenders."""
    from datasets import Dataset

    encoded = [encode(tokenizer, messages) for messages in rows]
    split = Dataset.from_dict({"input_ids": [e[0] for e in encoded], "loss_mask": [e[1] for e in encoded]})
    autocast, _ = autocast_for("auto", torch.device("cpu"))
    return chat.evaluate(model.eval(), split, tokenizer, None, autocast, batch_size=batch)


def trl_chat(seconds: float, model_name: str = "smollm2-135m", seq: int = 192, batch: int = 8) -> dict[str, Any]:
    """TRL's SFTTrainer on the conversations (assistant_only_loss, bf16 where fast, fused AdamW), stopped after
    `seconds`."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    train_rows, held_out = _conversations()
    tok = load_tokenizer(None, model_name)
    own_template = tok.chat_template
    tok.chat_template = TAGGED_TEMPLATE
    torch.manual_seed(0)
    model = load_model(chat.OBJECTIVE, model_name, tok)
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(
            output_dir=tmp,
            per_device_train_batch_size=batch,
            learning_rate=1e-4,
            max_steps=10**6,
            lr_scheduler_type="constant",
            weight_decay=0.0,
            assistant_only_loss=True,
            max_length=seq,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            dataloader_num_workers=0,
            **_tuned_arguments(),
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_dict({"messages": train_rows}),
            processing_class=tok,
            callbacks=[TimeLimit(seconds)],
        )
        started = time.perf_counter()
        steps = trainer.train().global_step
        elapsed = time.perf_counter() - started
    tok.chat_template = own_template
    per_sample = sum(len(encode(tok, rows)[0]) for rows in train_rows) / len(train_rows)
    return {
        "steps": steps,
        "seconds": elapsed,
        "effective_tokens_per_s": steps * batch * per_sample / elapsed,
        "precision": "bf16" if args.bf16 else "fp32",
        **held_out_loss(model, tok, held_out, batch),
    }


def lmtune_chat(seconds: float, model_name: str = "smollm2-135m", seq: int = 192, batch: int = 8) -> dict[str, Any]:
    """`lmtune train` (objective chat) on the same conversations, with the same settings."""
    train_rows, held_out = _conversations()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps({"messages": rows}) + "\n" for rows in train_rows))
        config = build_config(
            {
                "objective": chat.OBJECTIVE.name,
                "output_dir": str(Path(tmp) / "run"),
                "model": {"name": model_name},
                "data": {"train": str(data), "block_size": seq, "val_fraction": 0.0},
                "train": timed_training(batch, 1e-4, seconds, weight_decay=0.0),
                "eval": {"reference": None},
                "report": {"compare_base": False},
            }
        )
        summary = train(config, progress=False)
        loaded = load(summary["final_model"], dtype="fp32")
        return {
            "steps": summary["steps"],
            "seconds": summary["train_seconds"],
            "effective_tokens_per_s": summary["train_tokens"] / summary["train_seconds"],
            "precision": summary["precision"],
            "padding": summary["padding_share"],
            **held_out_loss(loaded.model, loaded.tokenizer, held_out, batch),
        }
