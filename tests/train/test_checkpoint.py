"""checkpoint.py on its own: atomic saves, the newest kept, leftovers ignored, state restored exactly."""

import random

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lmtune.errors import LmtuneError
from lmtune.models.load import load_tokenizer
from lmtune.outputs import checkpoint_dirs
from lmtune.train import checkpoint


@pytest.fixture
def parts():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=60, n_positions=16, n_layer=1, n_head=2, n_embd=8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    scheduler.step()
    return model, load_tokenizer("gpt2-bpe", "gpt-tiny"), optimizer, scheduler


def test_save_keeps_the_newest_and_skips_leftovers(tmp_path, parts):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, *parts, {"step": step}, keep=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-2", "step-3"]
    (tmp_path / "checkpoints" / "step-9.tmp").mkdir()  # a save cut short
    (tmp_path / "checkpoints" / "step-8").mkdir()  # a folder without trainer_state.pt: never complete
    assert checkpoint.latest(tmp_path).name == "step-3"
    checkpoint.clean_leftovers(tmp_path)
    assert not (tmp_path / "checkpoints" / "step-9.tmp").exists()
    again = checkpoint.save(tmp_path, *parts, {"step": 3}, keep=2)  # the same step: kept as it is
    assert again.name == "step-3"


def test_state_round_trip_is_exact(tmp_path, parts):
    model, tokenizer, optimizer, scheduler = parts
    random.seed(5)
    torch.manual_seed(5)
    path = checkpoint.save(tmp_path, model, tokenizer, optimizer, scheduler, {"step": 7, "epoch": 1})
    expected_draw, expected_random = torch.rand(3), random.random()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    fresh_opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh_sched = torch.optim.lr_scheduler.LambdaLR(fresh_opt, lambda step: 1.0)
    checkpoint.load_weights(model, path)  # as the loop resumes: the weights, then the rest
    state = checkpoint.load_trainer_state(path, fresh_opt, fresh_sched, model=model)
    assert state == {"step": 7, "epoch": 1}
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.rand(3), expected_draw) and random.random() == expected_random
    assert fresh_opt.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]
    assert fresh_sched.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"]


def test_a_damaged_checkpoint_is_named(tmp_path, parts):
    path = checkpoint.save(tmp_path, *parts, {"step": 1})
    (path / "trainer_state.pt").write_bytes(b"not a torch file")
    with pytest.raises(LmtuneError, match="trainer_state.pt: cannot read the checkpoint"):
        checkpoint.load_trainer_state(path, parts[2], parts[3], model=parts[0])
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(LmtuneError, match="model.safetensors: corrupt or truncated"):
        checkpoint.load_weights(parts[0], path)
