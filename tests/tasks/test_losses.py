"""The fused cross-entropy gives the textbook loss and gradients, ignores -100, and trains a real model the
same way Hugging Face's own loss does."""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from lmtune.tasks import losses
from lmtune.tasks.losses import causal_lm_loss, causal_lm_training_loss, cross_entropy
from tests.conftest import assert_same_gradients, twin_models


def _textbook(logits, targets):
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_loss_and_gradient_match_the_textbook(dtype, monkeypatch):
    monkeypatch.setitem(losses._CHUNK_BYTES, "cpu", 3 * 1000 * 4)  # 3 rows per chunk: several chunks, a ragged end
    torch.manual_seed(0)
    base = (torch.randn(4, 5, 1000) * 3).to(dtype)
    targets = torch.randint(0, 1000, (4, 5))
    targets[0, :3] = -100  # ignored rows in the middle of a chunk
    targets[3, 4] = -100

    reference = base.clone().requires_grad_()
    expected = _textbook(reference, targets)
    expected.backward(torch.tensor(2.0))  # a non-unit upstream gradient (grad accumulation, loss scaling)

    logits = base.clone().requires_grad_()
    fused = cross_entropy(logits * 1, targets, consume_logits=True)  # `* 1`: a non-leaf, as a model's output is
    fused.backward(torch.tensor(2.0))

    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    assert fused.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(
        logits.grad.float(), reference.grad.float(), atol=tolerance * reference.grad.abs().max().item()
    )
    assert (logits.grad[0, :3] == 0).all() and (logits.grad[3, 4] == 0).all()


def test_all_ignored_gives_zero_loss_and_no_gradient():
    logits = torch.randn(2, 3, 50).requires_grad_()
    loss = cross_entropy(logits * 1, torch.full((2, 3), -100), consume_logits=True)
    loss.backward()
    assert loss.item() == 0 and (logits.grad == 0).all()


def test_without_consuming_the_logits_are_left_alone():
    logits = torch.randn(2, 4, 30, requires_grad=True)
    before = logits.detach().clone()
    loss = causal_lm_loss(logits, torch.randint(0, 30, (2, 4)))
    loss.backward()
    assert torch.equal(logits.detach(), before) and logits.grad is not None


def test_causal_training_loss_matches_hugging_face_loss_and_gradients():
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    ours, theirs = twin_models(LlamaForCausalLM, config)
    input_ids = torch.randint(0, 300, (3, 16))
    labels = input_ids.clone()
    labels[1, :5] = -100  # an SFT prompt
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 12:] = 0  # right padding, masked out of the labels as the collators do
    labels[2, 12:] = -100
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    loss = causal_lm_training_loss(ours, batch)
    loss.backward()
    reference = theirs(**batch).loss
    reference.backward()

    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert_same_gradients(ours, theirs)
