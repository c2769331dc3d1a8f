import pytest
import torch

from lmtune.models.load import load_tokenizer
from lmtune.tasks.mlm import MaskingCollator
from tests.conftest import assert_same_gradients, twin_models


def bert_tokenizer():
    return load_tokenizer(None, "minilm-l6")


def batch_of_text(tok, n=64):
    text = "the unbelievably magnificent castle of elsinore stands tall while hamlet wanders its corridors"
    enc = tok([text] * n, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_masking_rates_and_80_10_10():
    tok = bert_tokenizer()
    ids, attn = batch_of_text(tok, 400)
    collator = MaskingCollator(tok, 0.15, generator=torch.Generator().manual_seed(0))
    inputs, labels = collator.mask(ids, attn)
    masked = labels != -100
    special = torch.isin(ids, torch.tensor(tok.all_special_ids))
    assert not (masked & special).any()  # [CLS]/[SEP] never masked
    rate = masked.sum() / (~special).sum()
    assert 0.13 < rate < 0.17
    assert torch.equal(labels[masked], ids[masked])
    as_mask = (inputs[masked] == tok.mask_token_id).float().mean()
    unchanged = (inputs[masked] == ids[masked]).float().mean()
    assert 0.76 < as_mask < 0.84
    assert 0.07 < unchanged < 0.14  # 10% kept + the odd random draw that hits the same token
    assert torch.equal(inputs[~masked], ids[~masked])


def test_whole_word_masking_masks_words_together():
    tok = bert_tokenizer()
    ids, attn = batch_of_text(tok, 300)
    pieces = tok.convert_ids_to_tokens(ids[0])
    assert any(p.startswith("##") for p in pieces)  # the sentence has multi-piece words
    collator = MaskingCollator(tok, 0.15, whole_word=True, generator=torch.Generator().manual_seed(1))
    _, labels = collator.mask(ids, attn)
    masked = labels != -100
    assert masked.any()
    for row in range(ids.shape[0]):
        for j in range(1, ids.shape[1]):
            if pieces[j].startswith("##"):
                assert masked[row, j] == masked[row, j - 1], (row, pieces[j - 1 : j + 1])


def test_eval_masks_are_fixed_by_seed():
    tok = bert_tokenizer()
    ids, attn = batch_of_text(tok, 8)
    a = MaskingCollator(tok, generator=torch.Generator().manual_seed(5)).mask(ids, attn)[1]
    b = MaskingCollator(tok, generator=torch.Generator().manual_seed(5)).mask(ids, attn)[1]
    assert torch.equal(a, b)


def test_minilm_gets_an_identity_head_that_training_updates():
    from lmtune.models.load import load_model

    tok = bert_tokenizer()
    model = load_model("mlm", "minilm-l6", tok)
    dense = model.cls.predictions.transform.dense.weight
    assert torch.equal(dense, torch.eye(dense.shape[0]))
    assert model.cls.predictions.decoder.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert dense.requires_grad


def _tiny_bert_pair():
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=200,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    ours, theirs = twin_models(BertForMaskedLM, config)
    input_ids = torch.randint(5, 200, (4, 12))
    labels = torch.full_like(input_ids, -100)
    where = torch.rand(4, 12) < 0.2
    where[0, 3] = True
    labels[where] = input_ids[where]
    attention_mask = torch.ones_like(input_ids)
    attention_mask[3, 9:] = 0
    labels[3, 9:] = -100
    return ours, theirs, {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def test_training_loss_runs_the_head_on_masked_rows_only_and_matches_hugging_face():
    from lmtune.tasks.mlm import training_loss

    ours, theirs, batch = _tiny_bert_pair()
    head_inputs = []
    ours.cls.register_forward_hook(lambda module, args, out: head_inputs.append(args[0].shape))
    loss = training_loss(ours, batch)
    loss.backward()
    reference = theirs(**batch).loss
    reference.backward()

    assert head_inputs == [torch.Size([int((batch["labels"] != -100).sum()), 32])]  # the masked rows, not 4 x 12
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert_same_gradients(ours, theirs)


def test_masked_logits_through_lora_and_for_a_head_it_cannot_find():
    from lmtune.config import LoraConfig
    from lmtune.models.lora import apply_lora
    from lmtune.tasks import get_objective
    from lmtune.tasks.heads import masked_logits

    ours, theirs, batch = _tiny_bert_pair()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    where = batch["labels"] != -100
    expected = theirs(**inputs).logits[where]
    adapted = apply_lora(ours, LoraConfig(r=4, target_modules=["query", "value"]), get_objective("mlm")).eval()
    with torch.no_grad():
        assert torch.allclose(masked_logits(adapted, inputs, where), expected, atol=1e-5)

        class Wrapped(torch.nn.Module):  # no `cls` / `lm_head` to hook: every row computed, then selected
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, **kw):
                return self.inner(**kw)

        assert torch.allclose(masked_logits(Wrapped(theirs), inputs, where), expected, atol=1e-6)
