"""Masked grouped-query attention on the CPU without repeating the KV heads (toolformer/gqa_attention.py)."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations import sdpa_attention

from toolformer import gqa_attention

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def repeats(monkeypatch):
    """Count the library's repeat_kv calls (the copies of the key/value heads)."""
    calls = []
    original = sdpa_attention.repeat_kv

    def counted(hidden, n_rep):
        calls.append(tuple(hidden.shape))
        return original(hidden, n_rep)

    monkeypatch.setattr(sdpa_attention, "repeat_kv", counted)
    return calls


def padded_batch(tok):
    enc = tok(["The quick brown fox jumps", "Out of 1400"], return_tensors="pt", padding=True,
              padding_side="left")
    pos = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)
    return dict(input_ids=enc.input_ids, attention_mask=enc.attention_mask, position_ids=pos)


def test_load_model_enables_it_and_the_logits_are_the_repeated_heads(tiny_model, repeats):
    model, tok = tiny_model  # load_model enabled it
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert hasattr(sdpa_attention.use_gqa_in_sdpa, "toolformer_original")
    batch = padded_batch(tok)
    with torch.no_grad():
        grouped = model(**batch).logits
    assert repeats == []  # no copy of the heads in any layer
    gqa_attention.disable()
    try:
        with torch.no_grad():
            repeated = model(**batch).logits
        assert len(repeats) == 2 * model.config.num_hidden_layers  # the library's path: K and V per layer
    finally:
        assert gqa_attention.enable()
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(grouped[mask], repeated[mask], rtol=0, atol=1e-6)


def test_training_and_one_token_steps_keep_the_library_path(tiny_model, repeats):
    model, tok = tiny_model
    batch = padded_batch(tok)
    with torch.enable_grad():
        model(**batch).logits.sum().backward()
    model.zero_grad(set_to_none=True)
    assert len(repeats) == 2 * model.config.num_hidden_layers  # with gradients: repeat_kv, as before
    rule = sdpa_attention.use_gqa_in_sdpa
    key = torch.zeros(2, 2, 5, 8)
    with torch.no_grad():
        assert rule(torch.ones(2, 1, 3, 5, dtype=torch.bool), key, key)  # masked, several queries
        assert not rule(torch.ones(2, 1, 1, 5, dtype=torch.bool), key, key)  # one query: pack_gqa
        assert rule(None, key, key)  # no mask: the library already says yes


def test_enable_is_idempotent_and_the_switch_turns_it_off(monkeypatch):
    assert gqa_attention.enable() and gqa_attention.enable()
    assert not hasattr(sdpa_attention.use_gqa_in_sdpa.toolformer_original, "toolformer_original")
    gqa_attention.disable()
    try:
        monkeypatch.setenv("TOOLFORMER_CPU_GQA", "0")
        assert not gqa_attention.enable()
        assert not hasattr(sdpa_attention.use_gqa_in_sdpa, "toolformer_original")
    finally:
        monkeypatch.delenv("TOOLFORMER_CPU_GQA")
        assert gqa_attention.enable()
