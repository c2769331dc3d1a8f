import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lmtune.models.gpt import GPT, GPTConfig

TINY = dict(vocab_size=300, n_positions=64, n_layer=2, n_head=4, n_embd=32)


def test_hf_gpt2_weights_load_into_ours_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(**TINY)).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = GPT.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 300, (3, 20))
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max() <= 1e-4


def test_ours_exports_a_folder_gpt2lmheadmodel_loads(tmp_path):
    torch.manual_seed(1)
    ours = GPT(GPTConfig(**TINY)).eval()
    ours.save_pretrained(tmp_path / "native")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "native").eval()
    ids = torch.randint(0, 300, (2, 17))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0  # right padding goes through the masked attention path
    with torch.no_grad():
        diff = (ours(ids, attention_mask=mask).logits - hf(ids, attention_mask=mask).logits).abs()
    assert diff[0].max() <= 1e-4 and diff[1, :12].max() <= 1e-4


def test_loss_matches_hf_and_training_lowers_it():
    torch.manual_seed(2)
    ours = GPT(GPTConfig(**TINY))
    ids = torch.randint(0, 300, (4, 16))
    hf = GPT2LMHeadModel(GPT2Config(**TINY))
    hf.load_state_dict(ours.hf_state_dict(), strict=False)
    hf.tie_weights()
    hf.eval()  # GPT2Config defaults to dropout 0.1
    assert float(ours(ids, labels=ids).loss) == pytest.approx(float(hf(ids, labels=ids).loss), abs=1e-4)
    opt = torch.optim.AdamW(ours.parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        loss = ours(ids, labels=ids).loss
        first = first if first is not None else float(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert float(loss) < first / 2


def test_native_run_trains_and_exports(tiny_clm_config):
    from lmtune.train.loop import train

    config = tiny_clm_config(max_steps=20)
    config.model.impl = "native"
    summary = train(config, progress=False)
    assert summary["final"]["val_loss"] < summary["base"]["val_loss"] - 1.0
    from lmtune.infer.generate import generate

    assert generate(summary["final_model"], "The king", max_new_tokens=5, temperature=0)  # plain HF loads it
