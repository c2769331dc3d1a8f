import torch

from lmtune.models.load import load_tokenizer
from lmtune.tasks.mlm import MaskingCollator


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
