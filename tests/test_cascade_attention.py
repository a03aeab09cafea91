"""Cascade attention (toolformer/cascade_attention.py): a shared head read once, merged exactly; the row
pool keeps the tool's prompt head once and samples as before."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

import tests.test_row_pool as row_pool_tests
import toolformer.cascade_attention as cascade_attention
from tests.test_row_pool import DOCS, ends_early, prefix, reference, score
from toolformer.cascade_attention import Cascade, cascade_forward
from toolformer.sampling import (PromptCache, RowPool, SampleRequest, sample_calls, score_positions,
                                 stable_seed)

pytestmark = pytest.mark.usefixtures("one_thread")
setup = row_pool_tests.setup  # the row pool tests' fixture: tiny model, prompt head, documents


def test_two_parts_merged_equal_attention_over_the_whole_sequence():
    g = torch.Generator().manual_seed(0)
    b, h, kv, d, n_head, n_own = 5, 6, 2, 8, 11, 7
    heads = [[(torch.randn(1, kv, n_head, d, generator=g), torch.randn(1, kv, n_head, d, generator=g))],
             [(torch.randn(1, kv, 4, d, generator=g), torch.randn(1, kv, 4, d, generator=g))]]
    rows = [torch.tensor([0, 2, 3]), torch.tensor([4])]  # row 1 has no head
    query = torch.randn(b, h, 1, d, generator=g)
    key, value = torch.randn(b, kv, n_own, d, generator=g), torch.randn(b, kv, n_own, d, generator=g)
    mask = torch.ones(b, 1, 1, n_own, dtype=torch.bool)
    mask[0, ..., :3] = False  # left padding of a shorter row
    mask[3, ..., :6] = False  # one own key only
    module = types.SimpleNamespace(layer_idx=0)
    got, _ = cascade_forward(module, query, key, value, mask, Cascade(heads, rows), scaling=0.3)
    assert got.shape == (b, 1, h, d)
    for r in range(b):
        which = [i for i, rs in enumerate(rows) if r in rs.tolist()]
        ks, vs, m = key[r:r + 1], value[r:r + 1], mask[r:r + 1]
        if which:
            hk, hv = heads[which[0]][0]
            ks, vs = torch.cat([hk, ks], 2), torch.cat([hv, vs], 2)
            m = torch.cat([torch.ones(1, 1, 1, hk.shape[2], dtype=torch.bool), m], -1)
        want = F.scaled_dot_product_attention(query[r:r + 1], ks, vs, attn_mask=m, scale=0.3, enable_gqa=True)
        torch.testing.assert_close(got[r], want[0].transpose(0, 1), rtol=0, atol=2e-6)


def test_several_queries_need_the_mask():
    q, k = torch.zeros(1, 2, 3, 4), torch.zeros(1, 1, 3, 4)
    with pytest.raises(ValueError, match="causal mask"):
        cascade_forward(types.SimpleNamespace(layer_idx=0), q, k, k, None, Cascade([], []))


def test_the_pool_keeps_the_head_once_and_samples_the_same(setup, monkeypatch):
    model, _, prompt, api, _, texts, closing, abandoning = setup
    assert cascade_attention.usable(model)
    scored = score(setup, [0, 1, 2])
    assert scored.head is prompt
    requests = [SampleRequest(b, i, stable_seed(3, b, i))
                for b in range(3) for i in range(1, len(texts[b]), 4)]
    calls, widths = [], {}
    real = cascade_attention.cascade_forward

    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(cascade_attention, "cascade_forward", counted)
    got = {}
    for on in (False, True):
        pool = RowPool(model, api, closing, abandoning, max_rows=4, cascade=on)
        out = pool.add(scored, requests, max_new_tokens=10, viable=ends_early)
        pool._admit()
        widths[on] = pool._layers[0].width
        pool.run()
        got[on] = out
        assert bool(calls) == on
    assert got[True] == got[False]
    assert widths[False] - widths[True] == len(prompt)  # the head's columns are not in the rows
    refs = [reference(model, prefix(setup, r.row, r.position), r.seed, closing, abandoning, 10,
                      viable=ends_early)[0] for r in requests]
    assert got[True] == refs
    assert sample_calls(model, scored, requests, api, closing, abandoning, max_new_tokens=10,
                        viable=ends_early, max_rows=4) == refs


def test_two_tools_heads_in_one_step_each_row_sees_its_own(setup):
    """Rows of two tools (two prompt heads of different lengths) decode in the same steps: each
    sample equals the same sample decoded alone from its own full prefix."""
    model, tok, prompt, api, mids, texts, closing, abandoning = setup
    other = PromptCache(model, tok, "Add Calendar calls.\nInput: It is May.\n"
                                    "Output: It is [Calendar()] May.\nInput: {input}\nOutput:")
    assert len(other) != len(prompt)
    other_mids = [tok(other.parts.middle(d), add_special_tokens=False)["input_ids"] for d in DOCS]
    first = score(setup, [1])
    second = score_positions(model, other, [other_mids[0], other_mids[2]], [texts[0], texts[2]], api,
                             tok.pad_token_id)
    req_a = [SampleRequest(0, i, stable_seed(11, i, s)) for i in (2, 5) for s in range(2)]
    req_b = [SampleRequest(b, i, stable_seed(12, b, i)) for b in (0, 1) for i in (3, 7)]
    steps = []
    pool = RowPool(model, api, closing, abandoning, max_rows=8, cascade=True)
    real = pool._cascade
    pool._cascade = lambda rows: steps.append(len({r.head for r in rows})) or real(rows)
    out_a = pool.add(first, req_a, max_new_tokens=8, viable=ends_early)
    out_b = pool.add(second, req_b, max_new_tokens=8, viable=ends_early)
    pool.run()
    assert max(steps) == 2 and len(pool._heads) == 0  # both heads in a step; forgotten once drained
    for req, got in zip(req_a, out_a):
        assert got == reference(model, prefix(setup, 1, req.position), req.seed, closing, abandoning, 8,
                                viable=ends_early)[0]
    for req, got in zip(req_b, out_b):
        doc = [0, 2][req.row]
        seq = other.head_ids + other_mids[doc] + texts[doc][:req.position] + [api]
        assert got == reference(model, seq, req.seed, closing, abandoning, 8, viable=ends_early)[0]
