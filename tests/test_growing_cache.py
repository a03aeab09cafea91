"""The generation cache written in place (toolformer.growing_cache.GrowingLayer) against
DynamicLayer's concatenation."""

from __future__ import annotations

import datetime as dt

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from tests.test_generation import CALL, PROMPT, Fixed, make
from toolformer.decoding import _full_attention
from toolformer.growing_cache import GrowingLayer, new_cache
from toolformer.execution import CallContext

pytestmark = pytest.mark.usefixtures("one_thread")


def kv(b, t, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, t, 4, generator=g), torch.randn(b, 2, t, 4, generator=g)


def same(a: DynamicLayer, b: GrowingLayer):
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert a.get_seq_length() == b.get_seq_length()


def test_every_operation_the_loop_uses_gives_dynamiclayers_keys():
    ref, grow = DynamicLayer(), GrowingLayer()
    for layer in (ref, grow):
        out = layer.update(*kv(3, 5, 0))
    same(ref, grow)
    assert torch.equal(out[0], ref.keys)
    storage = grow._k.data_ptr()
    for step in range(4):  # one-token steps and a wider one: written in place, no new storage
        for layer in (ref, grow):
            layer.update(*kv(3, 1 + 2 * (step == 2), 10 + step))
        same(ref, grow)
    # sized at the prefill, with room for min_room more columns
    assert grow._k.data_ptr() == storage and grow._k.shape[2] == 5 + 128
    for layer in (ref, grow):  # a rollback crops; the next step overwrites the cropped columns
        layer.crop(-3)
    same(ref, grow)
    for layer in (ref, grow):
        layer.update(*kv(3, 2, 20))
    same(ref, grow)
    assert grow._k.data_ptr() == storage
    index = torch.tensor([2, 0])
    for layer in (ref, grow):  # rows leave the batch
        layer.batch_select_indices(index)
        layer.update(*kv(2, 1, 30))
    same(ref, grow)
    keys, values = kv(2, 9, 40)
    for layer in (ref, grow):  # keys assigned anew (as _share_prefix does) are the new content
        layer.keys, layer.values = keys.clone(), values.clone()
        layer.update(*kv(2, 1, 50))
    same(ref, grow)
    assert grow._k.shape[2] == 10 + 128  # reallocated when the keys were assigned anew
    storages = {grow._k.data_ptr()}
    for step in range(60):  # past the capacity: the storage grows (by 128 columns here), the content stays
        for layer in (ref, grow):
            layer.update(*kv(2, 3, 60 + step))
        storages.add(grow._k.data_ptr())
    same(ref, grow)
    assert grow.get_seq_length() == 190 and len(storages) == 2 and grow._k.shape[2] == 139 + 128


def test_the_cache_of_a_llama_is_growing_and_counts_as_full_attention(tiny_model, sliding_model):
    model, _ = tiny_model
    cache = new_cache(model.config)
    assert [type(layer) for layer in cache.layers] == [GrowingLayer] * model.config.num_hidden_layers
    assert _full_attention(cache) and _full_attention(new_cache(model.config, grow=False))
    sliding = new_cache(sliding_model[0].config)  # the sliding-window layer stays the library's
    assert [type(layer).__name__ for layer in sliding.layers] == ["DynamicSlidingWindowLayer", "GrowingLayer"]
    assert not _full_attention(sliding)


def test_generation_with_calls_and_rollbacks_is_the_same_in_place(tiny_model):
    plans = {PROMPT: CALL, "He paid 18 + 12 * 3": " [Calculator(1/0) ->"}
    prompts = ["The quick brown fox", PROMPT, "He paid 18 + 12 * 3", "In 2019 the town had"]

    class Calc(Fixed):
        def __call__(self, input, context):
            if input == "1/0":
                from tools.base import ToolError

                raise ToolError("div0", "division by zero")
            return "0.29"

    runs = {}
    for grow in (False, True):
        gen, proc = make(tiny_model, {"Calculator": Calc()}, plans, max_new_tokens=24)
        gen.grow_cache_in_place = grow
        outs = gen.generate(prompts, CallContext(date=dt.date(2023, 1, 30)), batch_size=len(prompts))
        runs[grow] = [(o.text, o.calls, o.num_tokens) for o in outs], proc.seen
    assert runs[True][0] == runs[False][0]
    assert runs[True][0][1][0].startswith(" [Calculator(400 / 1400) -> 0.29]")
    assert runs[True][0][2][1][0].error == "div0"  # the rolled-back call is recorded
    assert len(runs[True][1]) == len(runs[False][1])
    for (row_a, a), (row_b, b) in zip(runs[True][1], runs[False][1]):
        assert row_a == row_b and torch.allclose(a, b, atol=1e-6)
