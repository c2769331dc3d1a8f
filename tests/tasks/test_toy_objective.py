"""A new objective is one module-like object registered at run time: it trains, evaluates and serves
without a line changed anywhere else (the Objective is the only place objectives differ)."""

import torch
from fastapi.testclient import TestClient

import lmtune.tasks as tasks
from lmtune.config import build_config
from lmtune.data.pack import Framing, pack_splits, tokenize
from lmtune.data.prepare import read_clean, write_columns
from lmtune.tasks.base import Objective
from lmtune.tasks.common import eval_batches, pad_batch, pad_id


class Shout(Objective):
    """A toy: causal language modelling of the text in capitals."""

    name = "shout"
    summary = "causal LM on upper-cased text (a test's toy)"
    auto_class = "AutoModelForCausalLM"
    capabilities = ("generate", "completions")

    def write_splits(self, config, tokenizer, out_dir):
        docs, report = read_clean(config.data.train, config, tokenizer)
        ids = tokenize(tokenizer, [doc.text.upper() for doc in docs])
        splits, info = pack_splits(
            ids, config.data.block_size, Framing.eos(tokenizer), 0, config.data.val_fraction, config.data.seed, True
        )
        columns = {name: {"input_ids": [b.tolist() for b in blocks]} for name, blocks in splits.items()}
        return write_columns(out_dir, columns, tokenizer, {**info, "cleaning": report})

    def make_collator(self, tokenizer, config):
        return lambda rows: pad_batch([row["input_ids"] for row in rows], pad_id(tokenizer))

    @torch.no_grad()
    def evaluate(self, model, dataset, tokenizer, config, autocast, batch_size=8, max_batches=None):
        model.eval()
        losses = [
            float(model(**batch).loss)
            for batch in eval_batches(dataset, self.make_collator(tokenizer, config), batch_size, max_batches)
        ]
        return {"val_loss": sum(losses) / len(losses)}


def test_a_registered_toy_objective_trains_evaluates_and_serves(tmp_path, corpus_dir, monkeypatch):
    monkeypatch.setattr(tasks, "INFERENCE_ORDER", list(tasks.INFERENCE_ORDER))
    monkeypatch.setattr(tasks, "OBJECTIVES", dict(tasks.OBJECTIVES))
    tasks.register(Shout())
    from lmtune.infer import load
    from lmtune.serve.app import create_app
    from lmtune.train.evaluate import evaluate_model
    from lmtune.train.loop import train

    config = build_config(
        {
            "objective": "shout",
            "output_dir": str(tmp_path / "run"),
            "model": {"name": "gpt-tiny", "dropout": 0.0},
            "data": {"train": str(corpus_dir), "block_size": 32},
            "train": {"batch_size": 8, "lr": 3e-3, "max_steps": 12, "eval_every": 6, "precision": "fp32"},
            "report": {"compare_base": False},
        }
    )
    summary = train(config, progress=False)
    assert summary["final"]["val_loss"] < summary["base"]["val_loss"]  # it learned the capitals

    loaded = load(summary["final_model"], dtype="fp32")
    assert loaded.objective.name == "shout"  # recognised from the model's own config
    assert evaluate_model(loaded, str(corpus_dir))["val_loss"] < summary["base"]["val_loss"]

    with TestClient(create_app([summary["final_model"]], ui=False)) as client:
        card = client.get("/v1/models").json()["data"][0]
        assert card["objective"] == "shout" and card["capabilities"] == ["generate", "completions"]
        reply = client.post("/v1/generate", json={"prompt": "THE KING", "max_new_tokens": 8, "temperature": 0})
        assert reply.status_code == 200
        continuation = reply.json()["completions"][0]
        assert continuation.strip() and continuation == continuation.upper()  # it shouts
