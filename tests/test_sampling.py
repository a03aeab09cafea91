"""Position scores and call sampling: equal to one-forward / from-scratch references, per-sample
randomness independent of batch neighbours, the prompt's slot really filled, sample parsing."""

import random

import pytest
import torch

from toolformer.sampling import (
    PromptCache,
    PromptParts,
    SampleRequest,
    _draw,
    parse_sampled_call,
    sample_calls,
    score_positions,
    select_positions,
    stable_seed,
    stop_token_ids,
)

TEMPLATE = (
    "Your task is to add calls to a Calculator API.\nInput: Out of 1400 participants, 400 passed.\n"
    "Output: Out of 1400 participants, 400 ([Calculator(400 / 1400)] 29%) passed.\nInput: {input}\nOutput:"
)

# Tiny models are latency-bound: extra threads only contend on a 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")
DOCS = ["He paid 18 + 12 * 3 = 54 dollars.", "In 2019 the town had 1,280 people; in 2020 it had 1,350."]


@pytest.fixture(scope="module")
def setup(tiny_model):
    model, tok = tiny_model
    prompt = PromptCache(model, tok, TEMPLATE)
    api = tok.convert_tokens_to_ids("Ġ[")
    mids = [tok(prompt.parts.middle(d), add_special_tokens=False)["input_ids"] for d in DOCS]
    texts = [tok(" " + d, add_special_tokens=False)["input_ids"] for d in DOCS]
    return model, tok, prompt, api, mids, texts


def test_prompt_parts_fill_the_slot_once():
    parts = PromptParts.from_template(TEMPLATE)
    assert parts.head.endswith("\nInput:") and parts.gap == " " and parts.tail == "\nOutput:"
    assert parts.head + parts.middle("X y.") == TEMPLATE.replace("{input}", "X y.")
    with pytest.raises(ValueError, match="exactly one"):
        PromptParts.from_template("no slot here")


def test_score_positions_equals_one_forward_reference(setup):
    model, tok, prompt, api, mids, texts = setup
    scored = score_positions(model, prompt, mids, texts, api, tok.pad_token_id)
    for b in range(len(DOCS)):
        full = torch.tensor([prompt.head_ids + mids[b] + texts[b]])
        probs = torch.softmax(model(full).logits[0].float(), dim=-1)[:, api]
        start = len(prompt.head_ids) + len(mids[b]) - 1  # logits there predict x_1
        ref = probs[start : start + len(texts[b])]
        assert scored.probs[b].shape == (len(texts[b]),)
        assert torch.allclose(scored.probs[b], ref, atol=1e-6, rtol=1e-4)


def test_select_positions_top_k_above_threshold():
    p = torch.tensor([0.01, 0.30, 0.05, 0.30, 0.20, 0.04])
    assert select_positions(p, 2, 0.05) == [1, 3]  # tie 0.30/0.30 both in, text order
    assert select_positions(p, 3, 0.05) == [1, 3, 4]
    assert select_positions(p, 10, 0.05) == [1, 3, 4]  # 0.05 is not above tau_s
    assert select_positions(p, 1, 0.5) == []
    q = torch.tensor([0.9, 0.1, 0.2])
    assert select_positions(q, 1, 0.0) == [2]  # position 0 is skipped by default
    assert select_positions(q, 1, 0.0, first=0) == [0]


def _reference_sample(model, seq, seed, closing, abandoning, max_new, temperature=1.0):
    rng, out = random.Random(seed), []
    for _ in range(max_new):
        tid = _draw(model(torch.tensor([seq + out])).logits[0, -1].detach().float(), rng, temperature)
        out.append(tid)
        if tid in closing:
            return out
        if tid in abandoning:
            return None
    return None


def test_sample_calls_equal_from_scratch_decoding_and_ignore_neighbours(setup):
    model, tok, prompt, api, mids, texts = setup
    closing, abandoning = stop_token_ids(tok)
    scored = score_positions(model, prompt, mids, texts, api, tok.pad_token_id)
    requests = [
        SampleRequest(b, i, stable_seed(0, b, i, s)) for b in (0, 1) for i in (0, 4, 9) for s in range(2)
    ]
    together = sample_calls(
        model, scored, requests, api, closing, abandoning, max_new_tokens=12, max_cache_tokens=1
    )
    for req, got in zip(requests, together):
        seq = prompt.head_ids + mids[req.row] + texts[req.row][: req.position] + [api]
        assert got == _reference_sample(model, seq, req.seed, closing, abandoning, 12)
    # doc 1 scored and sampled alone gives the same samples
    alone = score_positions(model, prompt, mids[1:], texts[1:], api, tok.pad_token_id)
    solo = sample_calls(
        model,
        alone,
        [SampleRequest(0, r.position, r.seed) for r in requests if r.row == 1],
        api,
        closing,
        abandoning,
        max_new_tokens=12,
    )
    assert solo == [g for r, g in zip(requests, together) if r.row == 1]
    assert any(g is not None for g in together)  # some samples closed


def test_stable_seed_is_stable():
    assert stable_seed(0, "doc-1", "Calculator", 5, 2) == stable_seed(0, "doc-1", "Calculator", 5, 2)
    assert stable_seed(0, "doc-1") == 4290985938731222895
    assert stable_seed(0, "doc-1") != stable_seed(1, "doc-1")


def test_stop_tokens(tiny_model):
    _, tok = tiny_model
    closing, abandoning = stop_token_ids(tok)
    assert tok.convert_tokens_to_ids("]") in closing and tok.convert_tokens_to_ids("Ġ->") in closing
    assert tok.eos_token_id in abandoning and not closing & abandoning


@pytest.mark.parametrize(
    "continuation,expected",
    [
        ("Calculator(400 / 1400)]", "400 / 1400"),
        ("Calculator(400 / 1400)] 29%", "400 / 1400"),
        ("Calculator((2+3)*4)]", "(2+3)*4"),
        ("Calculator(2 + 3) ->", "2 + 3"),  # closed with an arrow: the tool supplies the result
        ("Calculator(2 + 3) -> 5]", "2 + 3"),
        ("WikiSearch(Paris)]", None),  # another tool's name
        ("Calculator()]", None),  # empty input
        ("Calculator(2 + [3])]", None),
        ("calculator(2)]", None),  # names are case-sensitive
        ("Calculator 2]", None),
    ],
)
def test_parse_sampled_call(continuation, expected):
    assert parse_sampled_call("Calculator", continuation) == expected


def test_parse_sampled_call_without_input():
    assert parse_sampled_call("Calendar", "Calendar()]", takes_input=False) == ""
    assert parse_sampled_call("Calendar", "Calendar(today)]", takes_input=False) is None


def test_early_abandoning_keeps_the_accepted_samples(setup):
    model, tok, prompt, api, mids, texts = setup
    closing, abandoning = stop_token_ids(tok)
    scored = score_positions(model, prompt, mids, texts, api, tok.pad_token_id)
    requests = [
        SampleRequest(b, i, stable_seed(1, b, i, s)) for b in (0, 1) for i in (2, 6) for s in range(4)
    ]
    plain = sample_calls(model, scored, requests, api, closing, abandoning, max_new_tokens=12)
    viable = lambda toks: toks[0] % 3 != 0
    early = sample_calls(model, scored, requests, api, closing, abandoning, max_new_tokens=12, viable=viable)
    assert early == [p if p is not None and viable(p) else None for p in plain]
    assert sum(e is not None for e in early) >= 1


def test_call_start_check(tiny_model):
    from toolformer.sampling import call_start_check

    _, tok = tiny_model
    viable = call_start_check(tok, "Calc")
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    assert viable(enc("Ca")) and viable(enc("Calc(7")) and viable(enc("Calc(7)]"))
    assert not viable(enc("Cx")) and not viable(enc("7"))


def test_samples_of_a_position_share_rows_until_they_differ(setup):
    """m samples of a position decode as one row until their draws differ: the first step costs
    one row per position, and forks never exceed one row per sample; samples are unchanged."""
    model, tok, prompt, api, mids, texts = setup
    closing, abandoning = stop_token_ids(tok)
    scored = score_positions(model, prompt, mids, texts, api, tok.pad_token_id)
    requests = [
        SampleRequest(b, i, stable_seed(2, b, i, s)) for b in (0, 1) for i in (1, 3, 5) for s in range(4)
    ]
    rows: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda m, a, k: rows.append(k["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        shared = sample_calls(model, scored, requests, api, closing, abandoning, max_new_tokens=12)
    finally:
        hook.remove()
    assert rows[0] == 6  # six positions, 24 samples
    assert max(rows) <= 24 and sum(rows) < 24 * len(rows)
    for req, got in zip(requests, shared):
        seq = prompt.head_ids + mids[req.row] + texts[req.row][: req.position] + [api]
        assert got == _reference_sample(model, seq, req.seed, closing, abandoning, 12)


def test_place_children_keeps_rows_and_fills_holes():
    from toolformer.row_pool import _place_children

    # child j continues row parents[j]; first children keep their rows, forks fill the holes
    assert _place_children([0, 1, 2]) == ([0, 1, 2], [])
    assert _place_children([2]) == ([0], [(0, 2)])
    assert _place_children([0, 0, 3]) == ([0, 1, 2], [(1, 0), (2, 3)])
    assert _place_children([1, 1, 1]) == ([1, 0, 2], [(0, 1), (2, 1)])


def test_sliding_window_layers_score_and_sample_like_the_reference(sliding_model):
    """Gemma's sliding layers: the prompt head (118 tokens) is longer than the window (16). The
    model's own cache keeps only the window's keys, which broke the rows expanded from the head."""
    model, tok = sliding_model
    with torch.no_grad():
        prompt = PromptCache(model, tok, TEMPLATE)
        assert len(prompt) > model.config.sliding_window
        api = tok.convert_tokens_to_ids("Ġ[")
        mids = [tok(prompt.parts.middle(d), add_special_tokens=False)["input_ids"] for d in DOCS]
        texts = [tok(" " + d, add_special_tokens=False)["input_ids"] for d in DOCS]
        scored = score_positions(model, prompt, mids, texts, api, tok.pad_token_id)
        for b in range(len(DOCS)):
            full = torch.tensor([prompt.head_ids + mids[b] + texts[b]])
            probs = torch.softmax(model(full).logits[0].float(), dim=-1)[:, api]
            start = len(prompt.head_ids) + len(mids[b]) - 1
            assert torch.allclose(scored.probs[b], probs[start : start + len(texts[b])], atol=1e-6, rtol=1e-4)
        closing, abandoning = stop_token_ids(tok)
        requests = [SampleRequest(b, i, stable_seed(0, b, i, s)) for b in (0, 1) for i in (0, 4, 9) for s in range(2)]
        got = sample_calls(model, scored, requests, api, closing, abandoning, max_new_tokens=12, max_cache_tokens=1)
        for req, sample in zip(requests, got):
            seq = prompt.head_ids + mids[req.row] + texts[req.row][: req.position] + [api]
            assert sample == _reference_sample(model, seq, req.seed, closing, abandoning, 12)
