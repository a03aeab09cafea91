"""Tokenizers that put a BOS first (Gemma) get it where this project tokenizes without special tokens."""

import pytest
import torch

from finetune.features import IGNORE_INDEX, encode_texts
from evaluation.perplexity import perplexity
from toolformer.models import leading_ids

TEXT = "Out of 1400 participants, 400 passed the test. The quick brown fox jumps over the lazy dog."


class BosTokenizer:
    """The tiny model's tokenizer, but adding ``bos`` in front like Gemma's (add_special_tokens=True)."""

    def __init__(self, tok, bos: int):
        self._tok, self.bos = tok, bos

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, add_special_tokens=True, **kw):
        enc = self._tok(text, add_special_tokens=False, **kw)
        if add_special_tokens:
            assert isinstance(text, str) and "return_tensors" not in kw
            enc["input_ids"] = [self.bos, *enc["input_ids"]]
        return enc


def test_leading_ids_are_found_not_assumed(tiny_model):
    _, tok = tiny_model
    assert leading_ids(tok) == []  # a bos_token the tokenizer never adds is not prepended
    assert leading_ids(BosTokenizer(tok, 7)) == [7]


def test_perplexity_windows_start_with_the_bos(tiny_model):
    model, tok = tiny_model
    ids = tok(TEXT, add_special_tokens=False, return_tensors="pt").input_ids
    with_bos = torch.cat([torch.tensor([[7]]), ids], dim=1)
    labels = with_bos.clone()
    labels[0, :2] = -100  # the BOS and the text's first token are not scored (no context in the text)
    with torch.no_grad():
        expected = model(with_bos, labels=labels).loss.item()
        plain = model(ids, labels=ids).loss.item()
    got = perplexity(model, BosTokenizer(tok, 7), TEXT, window=4096, stride=4096, progress=False)
    assert got.tokens == ids.shape[1] - 1
    assert got.nll == pytest.approx(expected, rel=1e-5)
    assert abs(got.nll - plain) > 1e-4  # the BOS changed what the (random, near-uniform) model saw
    # and with the project's own tokenizer, nothing changes
    assert perplexity(model, tok, TEXT, window=4096, stride=4096, progress=False).nll == pytest.approx(plain, rel=1e-5)


def test_finetune_features_start_with_the_bos_never_a_label(tiny_model):
    _, tok = tiny_model
    plain = encode_texts([TEXT], tok, max_length=16)
    got = encode_texts([TEXT], BosTokenizer(tok, 7), max_length=16)
    assert got["input_ids"][0] == [7, *plain["input_ids"][0][:14], tok.eos_token_id]
    assert got["labels"][0] == [IGNORE_INDEX, *plain["labels"][0][:14], tok.eos_token_id]
    assert len(got["input_ids"][0]) == 16 == len(got["attention_mask"][0])
