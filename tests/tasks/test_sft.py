import json

import pytest
import torch

from lmtune.config import SftConfig, build_config
from lmtune.models.load import load_tokenizer
from lmtune.tasks import sft
from tests.conftest import write_tasks


def test_prompt_tokens_get_no_gradient():
    tok = load_tokenizer("gpt2-bpe", "gpt-tiny")
    ids, n_prompt = sft.encode(tok, SftConfig(), "[SPELL]", "Effect: To unlock a door.", "Alohomora", 64)
    batch = sft.make_collator(tok)([{"input_ids": ids, "prompt_length": n_prompt}])
    assert (batch["labels"][0, :n_prompt] == -100).all()
    assert batch["labels"][0, -1] == tok.eos_token_id  # the completion ends with EOS, which is learned

    from lmtune.models.load import load_model

    model = load_model("sft", "gpt-tiny", tok)
    embeddings = model.get_input_embeddings()
    # Gradient reaching each position's output: zero wherever the next token is part of the prompt.
    logits = model(input_ids=batch["input_ids"]).logits
    logits.retain_grad()
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], batch["labels"][0, 1:], ignore_index=-100)
    loss.backward()
    grad = logits.grad[0].abs().sum(-1)
    assert torch.all(grad[: n_prompt - 1] == 0)
    assert torch.all(grad[n_prompt - 1 : -1] > 0)
    # So whatever a prompt token's label were, training could not learn it: its position's gradient is 0.
    assert embeddings.weight.grad is not None


def test_weighted_task_sampling():
    from datasets import Dataset

    ds = Dataset.from_dict({"weight": [1.0] * 50 + [4.0] * 50})
    order = sft.batch_order(ds, 10, torch.Generator().manual_seed(0))
    drawn = [i for batch in order for i in batch]
    heavy = sum(i >= 50 for i in drawn) / len(drawn)
    assert 0.72 < heavy < 0.88  # expected 0.8
    uniform = sft.batch_order(Dataset.from_dict({"weight": [1.0] * 30}), 10, torch.Generator().manual_seed(0))
    assert sorted(i for b in uniform for i in b) == list(range(30))  # a permutation: every example once


def test_multitask_training(tmp_path):
    from lmtune.train.loop import train

    config = build_config(
        {
            "objective": "sft",
            "output_dir": str(tmp_path / "run"),
            "model": {"name": "gpt-tiny", "dropout": 0.0},
            "data": {"train": str(write_tasks(tmp_path / "tasks.csv")), "block_size": 32, "val_fraction": 0.1},
            "sft": {"max_new_tokens": 4},
            "train": {"batch_size": 16, "lr": 3e-3, "epochs": 12, "eval_every": 1000, "precision": "fp32"},
            "report": {"compare_base": False},
        }
    )
    summary = train(config, progress=False)
    base, final = summary["base"], summary["final"]
    assert final["val_loss"] < base["val_loss"] - 2
    for task in ("opposite", "shout"):
        assert final[f"val_{task}_loss"] < base[f"val_{task}_loss"]
        assert f"val_{task}_exact_match" in final
    assert final["val_exact_match"] > base["val_exact_match"]
    evals = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"eval"' in line
    ]
    assert "val_opposite_exact_match" in evals[-1]

    meta = json.loads((tmp_path / "run" / "final" / sft.METADATA_FILE).read_text())
    assert [t["prefix"] for t in meta["tasks"]] == ["[OPPOSITE]", "[SHOUT]"]
    tok = load_tokenizer(None, summary["final_model"])
    assert sft.task_prompt(summary["final_model"], tok, "shout", "say hot loudly") == "[SHOUT] say hot loudly\n"
    from lmtune.errors import LmtuneError

    with pytest.raises(LmtuneError, match="unknown task"):
        sft.task_prompt(summary["final_model"], tok, "sing", "x")
