"""Ragged decode steps (toolformer/ragged.py): the Linear layers compute the real tokens only."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from tests.test_generation import CALL, PROMPT, Fixed, make
from toolformer.ragged import real_rows_only

pytestmark = pytest.mark.usefixtures("one_thread")


def linear_rows(model):
    """Hook every Linear; return (list of input row counts, remove())."""
    rows = []
    handles = [m.register_forward_hook(lambda m, a, y: rows.append(a[0].numel() // a[0].shape[-1]))
               for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return rows, lambda: [h.remove() for h in handles]


@torch.no_grad()
def ragged_step(model, tok, unpad: bool):
    """Prefill two prompts, then feed row 0 three tokens and row 1 one (two holes). Logits (2, 3, V)."""
    enc = tok(["The quick brown fox", "Out of 1400 participants"], return_tensors="pt", padding=True,
              padding_side="left")
    mask = enc.attention_mask
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    model(input_ids=enc.input_ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
    feed = torch.tensor([[5, 6, 7], [tok.pad_token_id, tok.pad_token_id, 8]])
    new = torch.tensor([[1, 1, 1], [0, 0, 1]])
    last = pos[:, -1:] + 1
    step_pos = torch.cat([last, last + 1, last + 2], dim=1)
    step_pos[1] = last[1]  # holes sit at the row's next position, masked
    with real_rows_only(model, new.bool()) if unpad else torch.no_grad():
        out = model(input_ids=feed, attention_mask=torch.cat([mask, new], 1), position_ids=step_pos,
                    past_key_values=cache, use_cache=True).logits
    return out, cache


def test_real_positions_equal_the_padded_step_and_the_layers_see_only_them(tiny_model):
    model, tok = tiny_model
    padded, padded_cache = ragged_step(model, tok, unpad=False)
    rows, remove = linear_rows(model)
    try:
        ragged, ragged_cache = ragged_step(model, tok, unpad=True)
    finally:
        remove()
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    # The prefill (2 rows x its width) runs as usual; in the step every Linear takes the 4 real tokens
    # of the 6 positions (the output layer too: without logits_to_keep its input is the (B, W) step).
    prefill = rows[:linears]
    step = rows[linears:]
    assert len(step) == linears and set(prefill) == {prefill[0]} and prefill[0] > 6
    assert step == [4] * linears
    real = torch.tensor([[1, 1, 1], [0, 0, 1]]).bool()
    assert torch.allclose(ragged[real], padded[real], atol=1e-5)
    # The holes' own logits are not computed (zeros from the output layer)
    assert torch.count_nonzero(ragged[~real]) == 0
    # The cache: real columns equal; hole columns hold zero keys and values instead of the pad token's.
    for a, b in zip(padded_cache.layers, ragged_cache.layers):
        assert torch.allclose(a.keys[0, :, -3:], b.keys[0, :, -3:], atol=1e-5)
        assert torch.allclose(a.keys[1, :, -1], b.keys[1, :, -1], atol=1e-5)
        assert torch.count_nonzero(b.values[1, :, -3:-1]) == 0


def test_hooks_go_away_on_exit_and_on_error(tiny_model):
    model, _ = tiny_model
    real = torch.tensor([[True, False], [True, True]])
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with real_rows_only(model, real) as hooked:
        assert hooked == len(linears) and all(m._forward_pre_hooks for m in linears)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in linears)
    with pytest.raises(RuntimeError, match="boom"):
        with real_rows_only(model, real):
            raise RuntimeError("boom")
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in linears)
    # Nothing to skip (no holes), or nothing real: no hooks at all.
    for mask in (torch.ones(2, 3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool)):
        with real_rows_only(model, mask) as hooked:
            assert hooked == 0


def test_a_result_injected_in_a_batch_runs_the_linears_on_the_real_tokens_only(tiny_model):
    """Row 0 reaches its arrow and gets " 0.29]" (several tokens) while row 1 feeds one token: that
    step's Linears take 1 + len(result) + 1 rows, not 2 x (1 + len(result)); the texts equal the
    padded loop's (and the loop's other steps feed 1 or 2 rows, the prefill 2 x the prompt)."""
    model, tok = tiny_model
    prompts = [PROMPT, "The quick brown fox"]
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    texts = {}
    for unpad in (False, True):
        gen, _ = make(tiny_model, {"Calculator": Fixed("0.29")}, {PROMPT: CALL}, max_new_tokens=30)
        gen.unpad_ragged_steps = unpad
        # The Linear row counts of each forward call, by the call's input width.
        steps: list[tuple[int, list[int]]] = []
        start = model.register_forward_pre_hook(
            lambda m, a, k: steps.append((k["input_ids"].shape[1], [])), with_kwargs=True)
        rows, remove = linear_rows(model)
        try:
            outs = gen.generate(prompts, batch_size=2)
        finally:
            remove()
            start.remove()
        for _, step_rows in steps:
            step_rows.extend(rows[:linears])
            del rows[:linears]
        texts[unpad] = [(o.text, o.calls) for o in outs]
        result = len(gen.result_ids(" 0.29"))
        width = 1 + result  # the arrow and the result, right-aligned
        injection = [r for w, r in steps if w == width]
        assert len(injection) == 1  # one step feeds the arrow and the result beside a one-token row
        # The body's Linears take the real tokens (1 + result + 1) or all 2 x width positions; the
        # output layer (logits_to_keep=1) takes one position per row either way.
        body = 1 + result + 1 if unpad else 2 * width
        assert injection[0] == [body] * (linears - 1) + [2]
    assert texts[True] == texts[False]
    assert texts[True][0][0].startswith(" [Calculator(400 / 1400) -> 0.29]")
