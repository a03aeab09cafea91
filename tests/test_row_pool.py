"""The sampling row pool (continuous batching): samples equal decoding each one alone, whatever
the pool's rows, budgets, batches and settings; ended rows are refilled at once; storage the
pool never wrote never reaches attention; the same on CUDA where there is one."""

import random

import pytest
import torch

import toolformer.row_pool as sampling  # the pool and its layers (toolformer/row_pool.py)
from toolformer.sampling import (
    PromptCache,
    RowPool,
    SampleRequest,
    _draw,
    sample_calls,
    score_positions,
    stable_seed,
)

TEMPLATE = (
    "Your task is to add calls to a Calculator API.\nInput: Out of 1400 participants, 400 passed.\n"
    "Output: Out of 1400 participants, 400 ([Calculator(400 / 1400)] 29%) passed.\nInput: {input}\nOutput:"
)
DOCS = [
    "He paid 18 + 12 * 3 = 54 dollars.",
    "In 2019 the town had 1,280 people; in 2020 it had 1,350.",
    "Out of 1400 participants, 400 passed the test, and 1000 did not pass it at the store in Paris.",
]

pytestmark = pytest.mark.usefixtures("one_thread")


def ends_early(toks):
    """A ``viable`` that abandons about one sample in six at every token: mixed lengths."""
    return toks[-1] % 6 != 0


def stops(vocab: int) -> tuple[frozenset[int], frozenset[int]]:
    """Stop sets that end a random tiny model's samples often (about one in nine tokens closes
    the call, one in nine abandons it): many closed samples of varied lengths to compare token
    by token, where the tokenizer's own "]" tokens would leave nearly every sample unclosed."""
    return frozenset(t for t in range(vocab) if t % 9 == 1), frozenset(t for t in range(vocab) if t % 9 == 4)


@pytest.fixture(scope="module")
def setup(tiny_model):
    model, tok = tiny_model
    prompt = PromptCache(model, tok, TEMPLATE)
    api = tok.convert_tokens_to_ids("Ġ[")
    mids = [tok(prompt.parts.middle(d), add_special_tokens=False)["input_ids"] for d in DOCS]
    texts = [tok(" " + d, add_special_tokens=False)["input_ids"] for d in DOCS]
    closing, abandoning = stops(len(tok))
    return model, tok, prompt, api, mids, texts, closing, abandoning


@torch.no_grad()
def reference(model, seq, seed, closing, abandoning, max_new, temperature=1.0, viable=None):
    """One sample decoded alone from scratch: (its tokens or None, how many tokens it drew)."""
    rng, out = random.Random(seed), []
    for _ in range(max_new):
        logits = model(torch.tensor([seq + out], device=model.device)).logits[0, -1].float().cpu()
        tid = _draw(logits, rng, temperature)
        out.append(tid)
        if tid in closing:
            return out, len(out)
        if tid in abandoning or (viable is not None and not viable(out)):
            return None, len(out)
    return None, len(out)


def prefix(setup, doc, position):
    _, _, prompt, api, mids, texts, _, _ = setup
    return prompt.head_ids + mids[doc] + texts[doc][:position] + [api]


def score(setup, docs):
    model, tok, prompt, api, mids, texts, _, _ = setup
    return score_positions(model, prompt, [mids[d] for d in docs], [texts[d] for d in docs], api, tok.pad_token_id)


def count_rows(model):
    rows: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, a, k: rows.append(k["input_ids"].shape[0]), with_kwargs=True)
    return rows, hook


def greedy_schedule(draws: list[int], max_rows: int) -> list[int]:
    """Rows per step of a pool that refills every ended row at once (one sample per group)."""
    queue, active, rows = list(draws), [], []
    while queue or active:
        while queue and len(active) < max_rows:
            active.append(queue.pop(0))
        rows.append(len(active))
        active = [n - 1 for n in active if n > 1]
    return rows


def test_pool_refills_ended_rows_at_once_and_equals_one_at_a_time(setup):
    """One sample per position (no forks), more positions than rows, lengths from 1 to 12: the
    pool decodes exactly the greedy continuous-batching schedule, and every sample equals the
    same sample decoded alone."""
    model, _, _, api, _, texts, closing, abandoning = setup
    scored = score(setup, [0, 1, 2])
    requests = [
        SampleRequest(b, i, stable_seed(5, b, i)) for b in range(3) for i in range(1, len(texts[b]), 3)
    ]
    rows, hook = count_rows(model)
    try:
        got = sample_calls(
            model, scored, requests, api, closing, abandoning, max_new_tokens=12, viable=ends_early, max_rows=3
        )
    finally:
        hook.remove()
    refs = [
        reference(model, prefix(setup, r.row, r.position), r.seed, closing, abandoning, 12, viable=ends_early)
        for r in requests
    ]
    assert got == [out for out, _ in refs]
    draws = [n for _, n in refs]
    assert len(requests) > 3 and len(set(draws)) >= 4  # more positions than rows, mixed lengths
    closed = [out for out, _ in refs if out is not None]
    assert len(closed) >= len(refs) // 4 and len({len(c) for c in closed}) >= 3  # closed, of varied lengths
    assert rows == greedy_schedule(draws, 3)
    assert sum(rows) == sum(draws)


def test_pool_with_forks_budgets_and_compaction_equals_one_at_a_time(setup, monkeypatch):
    """m samples per position (rows fork), a pool of 2 rows, one spare column, long samples (one
    token in thirteen closes, none abandons) and positions longest prefix first: the write column
    runs past the storage and the live columns are moved back in place, again and again. The
    samples still equal decoding each alone, and equal the pool with roomy budgets."""
    model, tok, _, api, _, _, _, _ = setup
    closing, abandoning = frozenset(t for t in range(len(tok)) if t % 13 == 1), frozenset()
    scored = score(setup, [0, 1, 2])
    requests = [
        SampleRequest(b, i, stable_seed(6, b, i, s)) for b in (2, 1, 0) for i in (14, 8, 5, 1) for s in range(3)
    ]
    roomy = sample_calls(model, scored, requests, api, closing, abandoning, max_new_tokens=16)
    moves = []
    reshape = sampling._PoolLayer.reshape
    monkeypatch.setattr(
        sampling._PoolLayer, "reshape",
        lambda self, rows, lo, col, cap, width, new_col: moves.append((width, new_col - col, self.width))
        or reshape(self, rows, lo, col, cap, width, new_col),
    )
    monkeypatch.setattr(sampling, "POOL_SLACK", 1)
    rows, hook = count_rows(model)
    try:
        tight = sample_calls(model, scored, requests, api, closing, abandoning, max_new_tokens=16, max_rows=2)
    finally:
        hook.remove()
    assert tight == roomy
    closed = [t for t in tight if t is not None]
    assert len(closed) >= len(tight) // 3 and len({len(c) for c in closed}) >= 4
    for req, sample in zip(requests, tight):
        assert sample == reference(model, prefix(setup, req.row, req.position), req.seed, closing, abandoning, 16)[0]
    assert max(rows) > 2  # forks pass the row budget (a fork cannot wait) ...
    assert rows[0] <= 2  # ... but positions join only within it
    assert sum(shift < 0 and width == was for width, shift, was in moves) >= len(scored.cache.layers)  # in place


def test_pool_across_scoring_batches_and_settings(setup):
    """Two scoring batches with different settings (temperature, max tokens, viable), the second
    added while the first's rows are in flight and with a longer prefix (the live columns move
    right to make room): each sample equals decoding it alone with its own settings."""
    model, _, _, api, _, _, closing, abandoning = setup
    first, second = score(setup, [0]), score(setup, [2, 1])
    req_a = [SampleRequest(0, i, stable_seed(7, i, s)) for i in (2, 6) for s in range(3)]
    req_b = [SampleRequest(b, i, stable_seed(8, b, i, s)) for b in (0, 1) for i in (3, 9, 14) for s in range(2)]
    pool = RowPool(model, api, closing, abandoning, max_rows=4)
    out_a = pool.add(first, req_a, max_new_tokens=8, temperature=1.0, viable=ends_early)
    pool.run(drain=False)  # every position of the first batch has a row, none has ended yet
    assert len(pool._rows) == 2 and pool.steps == 0
    out_b = pool.add(second, req_b, max_new_tokens=12, temperature=0.7)
    pool.run()
    docs_b = [2, 1]
    assert sum(o is not None for o in out_a + out_b) >= (len(out_a) + len(out_b)) // 4
    for req, got in zip(req_a, out_a):
        assert got == reference(model, prefix(setup, 0, req.position), req.seed, closing, abandoning, 8,
                                viable=ends_early)[0]
    for req, got in zip(req_b, out_b):
        seq = prefix(setup, docs_b[req.row], req.position)
        assert got == reference(model, seq, req.seed, closing, abandoning, 12, temperature=0.7)[0]
    assert not pool._rows and pool._layers is None  # drained: the storage is freed


def test_unwritten_storage_never_reaches_attention(setup, monkeypatch):
    """The pool's storage is not zeroed when allocated: filled with NaN instead, every sample is
    unchanged (the columns a step reads were all written or zeroed)."""
    model, _, _, api, _, _, closing, abandoning = setup
    scored = score(setup, [0, 1, 2])
    requests = [SampleRequest(b, i, stable_seed(9, b, i, s)) for b in range(3) for i in (2, 7) for s in range(3)]
    plain = sample_calls(model, scored, requests, api, closing, abandoning, max_new_tokens=10, viable=ends_early,
                         max_rows=3)
    init = sampling._PoolLayer.__init__

    def poisoned(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self._k.fill_(float("nan"))
        self._v.fill_(float("nan"))

    monkeypatch.setattr(sampling._PoolLayer, "__init__", poisoned)
    monkeypatch.setattr(sampling, "POOL_SLACK", 2)  # compactions and reallocations too
    poisoned_out = sample_calls(model, scored, requests, api, closing, abandoning, max_new_tokens=10,
                                viable=ends_early, max_rows=3)
    assert poisoned_out == plain and sum(p is not None for p in plain) >= len(plain) // 4
    for req, sample in zip(requests, poisoned_out):
        ref, _ = reference(model, prefix(setup, req.row, req.position), req.seed, closing, abandoning, 10,
                           viable=ends_early)
        assert sample == ref


def test_token_budget_bounds_the_rows_that_join(setup):
    """With a token budget below one row, positions join one at a time (a lone position always
    joins); the samples are unchanged."""
    model, _, _, api, _, _, closing, abandoning = setup
    scored = score(setup, [0, 1])
    requests = [SampleRequest(b, i, stable_seed(10, b, i)) for b in range(2) for i in (1, 4, 7)]
    free = sample_calls(model, scored, requests, api, closing, abandoning, max_new_tokens=8, viable=ends_early)
    rows, hook = count_rows(model)
    try:
        one = sample_calls(model, scored, requests, api, closing, abandoning, max_new_tokens=8, viable=ends_early,
                           max_cache_tokens=1)
    finally:
        hook.remove()
    assert one == free and max(rows) == 1 and any(o is not None for o in one)


def test_decode_rows_default_per_device():
    assert sampling.decode_rows_for("cpu") == sampling.DECODE_ROWS_CPU
    assert sampling.decode_rows_for("cuda") == sampling.DECODE_ROWS_ACCELERATOR


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pool_on_cuda_equals_one_at_a_time(tiny_model_dir):
    """The pool's tensors live on the model's device: on CUDA the samples equal decoding each
    sample alone on CUDA."""
    from toolformer.models import load_model

    model, tok = load_model(str(tiny_model_dir), device="cuda")
    with torch.no_grad():
        prompt = PromptCache(model, tok, TEMPLATE)
        api = tok.convert_tokens_to_ids("Ġ[")
        mids = [tok(prompt.parts.middle(d), add_special_tokens=False)["input_ids"] for d in DOCS]
        texts = [tok(" " + d, add_special_tokens=False)["input_ids"] for d in DOCS]
        closing, abandoning = stops(len(tok))
        scored = score_positions(model, prompt, mids, texts, api, tok.pad_token_id)
        assert scored.cache.layers[0].keys.device.type == "cuda"
        requests = [SampleRequest(b, i, stable_seed(11, b, i, s)) for b in range(3) for i in (1, 4, 8) for s in range(3)]
        pool = RowPool(model, api, closing, abandoning, max_rows=4)
        got = pool.add(scored, requests, max_new_tokens=10, viable=ends_early)
        pool.run()
        for req, sample in zip(requests, got):
            seq = prompt.head_ids + mids[req.row] + texts[req.row][: req.position] + [api]
            assert sample == reference(model, seq, req.seed, closing, abandoning, 10, viable=ends_early)[0]


def test_every_row_sees_the_logits_of_its_sequence_alone(setup, monkeypatch):
    """Stronger than comparing drawn tokens (a random tiny model's draws barely depend on its
    attention): at every step, through forks, refills, compactions, a batch with longer prefixes
    joining live rows and reallocations, each row's logits equal a from-scratch forward over its
    own [P(x), x_<i, " [", tokens so far]."""
    model, tok, _, api, _, _, _, _ = setup
    monkeypatch.setattr(sampling, "POOL_SLACK", 1)
    pool = RowPool(model, api, frozenset(), frozenset(), max_rows=3)

    def staggered(toks):  # nothing closes: a sample's first token sets its length (4 .. 15)
        return len(toks) < 4 + toks[0] % 12

    meta: list[tuple[int, int]] = []  # (document, position) of each sample id, in the order added
    seen: list[tuple[list, torch.Tensor]] = []
    step = pool._step

    def recorded():
        state = [(meta[r.samples[0]], list(r.tokens)) for r in pool._rows]
        hook = model.register_forward_hook(lambda m, a, k, o: seen.append((state, o.logits[:, -1].detach())),
                                           with_kwargs=True)
        try:
            step()
        finally:
            hook.remove()

    monkeypatch.setattr(pool, "_step", recorded)
    shifts = []  # (columns moved, whether in place)
    reshape = pool._reshape

    def noted(rows, new_col, min_width=0):
        width = pool._layers[0].width
        shift = new_col - pool._col
        reshape(rows, new_col, min_width)
        shifts.append((shift, pool._layers[0].width == width and rows <= pool._layers[0].capacity))

    monkeypatch.setattr(pool, "_reshape", noted)
    # the first batch's longest prefix comes first (it sets the storage's width), the short ones
    # after it let the pool compact; the second batch's long prefixes then join live rows
    for batch in (((2, (17,)), (0, (14, 12, 10, 8, 6, 5, 3, 2, 1))), ((2, (16,)), (1, (12, 9, 6, 3)))):
        docs = [d for d, _ in batch]
        requests = [SampleRequest(b, i, stable_seed(12, d, i)) for b, (d, positions) in enumerate(batch)
                    for i in positions]
        meta += [(docs[r.row], r.position) for r in requests]
        pool.add(score(setup, docs), requests, max_new_tokens=16, viable=staggered)
        pool.run(drain=False)
    pool.run()
    assert {s < 0 for s, in_place in shifts if in_place} >= {True} <= {s > 0 for s, in_place in shifts if in_place}
    assert len(seen) > 20
    with torch.no_grad():
        for state, logits in seen:
            for ((doc, position), toks), got in zip(state, logits):
                want = model(torch.tensor([prefix(setup, doc, position) + toks])).logits[0, -1]
                assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_pool_layer_moves_live_columns_in_place_and_on_reallocation():
    like = torch.zeros(1, 2, 1, 3)
    layer = sampling._PoolLayer(like, capacity=3, width=20)
    data = torch.arange(3 * 2 * 20 * 3, dtype=torch.float32).reshape(3, 2, 20, 3)
    layer._k.copy_(data)
    layer._v.copy_(-data)
    layer.reshape(2, 5, 12, 3, 20, 9)  # left, in place
    assert torch.equal(layer._k[:2, :, 2:9], data[:2, :, 5:12]) and torch.equal(layer._v[:2, :, 2:9], -data[:2, :, 5:12])
    layer.reshape(2, 2, 9, 3, 20, 16)  # right, in place
    assert torch.equal(layer._k[:2, :, 9:16], data[:2, :, 5:12]) and torch.equal(layer._v[:2, :, 9:16], -data[:2, :, 5:12])
    layer.reshape(2, 9, 16, 5, 30, 25)  # reallocated: more rows and columns
    assert layer.capacity == 5 and layer.width == 30
    assert torch.equal(layer._k[:2, :, 18:25], data[:2, :, 5:12]) and torch.equal(layer._v[:2, :, 18:25], -data[:2, :, 5:12])
    assert not layer._k[:2, :, :18].any() and not layer._v[:2, :, :18].any()  # zeros before the moved columns
