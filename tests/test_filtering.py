"""The paper's filter, exactly: weights, L+, the L- minimum, the tau_f edge, padding invariance."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from toolformer.filtering import (
    FilterJob,
    batches_by_tokens,
    filter_losses,
    keep_if_useful,
    loss_weights,
    token_logprobs,
    weighted_loss,
)

# Tiny models are latency-bound: extra threads only contend on a 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")

# Vocabulary of the hand-set model: 0 start, 1 pad, 2 "A", 3 "B", 4 result token R, 5 call token C.
START, PAD, A, B, R, C = range(6)
V = 8
W = [1 / 3, 4 / 15, 1 / 5, 2 / 15, 1 / 15]


class HandSetModel(torch.nn.Module):
    """log p(next) depends only on which of R / C occurred before: uniform 1/8 by default;
    after R: p(B) = 0.5 (the rest 0.5/7); after C without R: p(A) = 0.5 (the rest 0.5/7).

    Its "hidden states" are those log-probabilities and its output layer is the identity, so
    log_softmax gives them back unchanged."""

    device = torch.device("cpu")

    def get_decoder(self):
        return self

    def get_output_embeddings(self):
        return torch.nn.Identity()

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        seen_r = (input_ids == R).long().cumsum(-1) > 0
        seen_c = (input_ids == C).long().cumsum(-1) > 0
        logp = torch.full((*input_ids.shape, V), math.log(1 / 8))
        boosted = torch.full((V,), math.log(0.5 / 7))
        after_r, after_c = boosted.clone(), boosted.clone()
        after_r[B] = math.log(0.5)
        after_c[A] = math.log(0.5)
        logp[seen_c & ~seen_r] = after_c
        logp[seen_r] = after_r
        return type("Out", (), {"last_hidden_state": logp})()


def test_loss_weights_are_the_papers_normalised_five():
    assert torch.allclose(loss_weights(), torch.tensor(W), atol=1e-7)
    assert float(loss_weights().sum()) == pytest.approx(1.0, abs=1e-7)


def test_weighted_loss_reads_five_tokens_from_position_i():
    lp = torch.tensor([-9.0, -1.0, -2.0, -3.0, -4.0, -5.0, -9.0])
    assert weighted_loss(lp, 1) == pytest.approx(sum(w * k for w, k in zip(W, [1, 2, 3, 4, 5])))
    # near the end only the remaining tokens count (weights not renormalised)
    assert weighted_loss(lp, 5) == pytest.approx(W[0] * 5 + W[1] * 9)


def test_l_plus_and_l_minus_exact_values():
    x = (A, B, B, A, B, B, A)
    job = FilterJob(text_ids=x, candidates=((1, (C, R), (C,)),))
    ((losses,),) = filter_losses(HandSetModel(), [job], START, PAD)
    # x_1..x_5 = B B A B B: after R, p(B) = 0.5 and p(A) = 0.5/7
    expected_plus = (W[0] + W[1] + W[3] + W[4]) * math.log(2) + W[2] * math.log(14)
    assert losses.loss_plus == pytest.approx(expected_plus, abs=1e-6)
    assert losses.loss_empty == pytest.approx(math.log(8), abs=1e-6)
    # after C alone: p(A) = 0.5, p(B) = 0.5/7
    assert losses.loss_no_result == pytest.approx(
        (W[0] + W[1] + W[3] + W[4]) * math.log(14) + W[2] * math.log(2), abs=1e-6
    )
    assert losses.loss_minus == pytest.approx(math.log(8), abs=1e-6)  # the minimum is L(eps) here
    assert losses.delta == pytest.approx(math.log(8) - expected_plus, abs=1e-6)


def test_l_minus_takes_the_call_without_result_when_lower():
    x = (A, A, A, A, A, A)
    ((losses,),) = filter_losses(HandSetModel(), [FilterJob(x, ((1, (C, R), (C,)),))], START, PAD)
    assert losses.loss_no_result == pytest.approx(math.log(2), abs=1e-6)
    assert losses.loss_minus == pytest.approx(math.log(2), abs=1e-6)
    assert losses.loss_plus == pytest.approx(math.log(14), abs=1e-6)
    assert not keep_if_useful(losses.loss_plus, losses.loss_minus, 0.0)


def test_lazy_filter_skips_only_the_passes_that_cannot_change_the_decision():
    """L- <= L(eps): a candidate with L(eps) - L+ < tau_f is rejected without L(e(c, eps)); the
    others get exactly the full losses, and every keep decision is the full filter's."""
    jobs = [
        FilterJob((A, B, B, A, B, B, A), ((1, (C, R), (C,)),)),  # L(eps) - L+ = 0.997
        FilterJob((A, A, A, A, A, A), ((1, (C, R), (C,)),)),  # L(eps) - L+ < 0
    ]
    rows: list[int] = []

    class Counting(HandSetModel):
        def forward(self, input_ids, **kw):
            rows.append(input_ids.shape[0])
            return super().forward(input_ids, **kw)

    full = filter_losses(Counting(), jobs, START, PAD)
    full_rows, rows[:] = sum(rows), []
    for tau_f in (0.5, 2.0):
        lazy = filter_losses(Counting(), jobs, START, PAD, settle_below=[tau_f, tau_f])
        (open_one,), (settled,) = lazy
        assert (open_one == full[0][0]) is (tau_f == 0.5)  # 0.997 >= 0.5: computed in full
        if tau_f == 2.0:
            assert open_one.loss_no_result is None and open_one.loss_minus == full[0][0].loss_empty
        assert settled.loss_no_result is None and settled.loss_minus == settled.loss_empty
        assert settled.loss_plus == full[1][0].loss_plus
        for got, ref in zip((open_one, settled), (full[0][0], full[1][0])):
            assert keep_if_useful(got.loss_plus, got.loss_minus, tau_f) == keep_if_useful(
                ref.loss_plus, ref.loss_minus, tau_f
            )
        assert sum(rows) == full_rows - (1 if tau_f == 0.5 else 2)  # the skipped (C,) passes
        rows[:] = []


def test_tau_f_edge_keeps_equality():
    assert keep_if_useful(1.0, 1.5, 0.5)
    assert not keep_if_useful(1.0, 1.4999, 0.5)
    assert keep_if_useful(2.0, 2.0, 0.0)


def test_context_window_changes_nothing_when_the_model_ignores_distance():
    x = (A, B, B, A, B, B, A, B)
    job = FilterJob(x, ((1, (C, R), (C,)), (5, (C, R), (C,))))
    exact = filter_losses(HandSetModel(), [job], START, PAD)
    windowed = filter_losses(HandSetModel(), [job], START, PAD, context_window=2)
    assert exact == windowed


def test_batches_by_tokens_respects_the_budget():
    assert batches_by_tokens([3, 10, 4, 9], 20) == [[1, 3], [2, 0]]
    assert batches_by_tokens([30], 20) == [[0]]  # a row longer than the budget goes alone
    # least padding + call cost: [300] [250] [165, 160] costs 3 x 32 + 880 tokens
    assert batches_by_tokens([300, 250, 160, 165], 4096) == [[0], [1], [3, 2]]
    assert batches_by_tokens([300, 250, 160, 165], 4096, call_cost=1000) == [[0, 1, 3, 2]]


@pytest.mark.parametrize("side", ["right", "left"])
def test_token_logprobs_do_not_depend_on_padding(tiny_model, side):
    model, tok = tiny_model
    seqs = [[1, 5, 9, 33, 7], [1, 12, 40, 41, 42, 43, 44, 45, 46], [1, 8]]
    alone = [token_logprobs(model, [s], tok.pad_token_id)[0] for s in seqs]
    batched = token_logprobs(model, seqs, tok.pad_token_id, padding_side=side)
    for a, b in zip(alone, batched):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5)
    # equal to the model's own full-sequence logits, and keep_from returns the tail only
    ref = torch.log_softmax(model(torch.tensor([seqs[1]])).logits[0, :-1].float(), -1)
    ref = ref.gather(-1, torch.tensor(seqs[1][1:])[:, None])[:, 0]
    assert torch.allclose(alone[1], ref, atol=1e-5)
    tail = token_logprobs(model, seqs, tok.pad_token_id, padding_side=side, keep_from=[2, 5, 0])
    for a, t, f in zip(alone, tail, [2, 5, 0]):
        assert torch.allclose(a[f:], t, atol=1e-5)


def test_candidate_losses_do_not_depend_on_batch_neighbours(tiny_model):
    model, tok = tiny_model
    enc = lambda s: tuple(tok(s, add_special_tokens=False)["input_ids"])
    job = FilterJob(
        enc(" Out of 1400 participants, 400 (or 29%) passed the test."),
        (
            (9, enc("[Calculator(400 / 1400) -> 0.29]"), enc("[Calculator(400 / 1400)]")),
            (3, enc("[Calculator(1400 - 400) -> 1000]"), enc("[Calculator(1400 - 400)]")),
        ),
    )
    other = FilterJob(
        enc(" He paid 18 + 12 * 3 = 54 dollars for 3 books and a pen at the store."),
        ((4, enc("[Calculator(18 + 12) -> 30]"), enc("[Calculator(18 + 12)]")),),
    )
    alone = filter_losses(model, [job], tok.bos_token_id, tok.pad_token_id)[0]
    together = filter_losses(model, [other, job], tok.bos_token_id, tok.pad_token_id, max_batch_tokens=64)[1]
    for a, b in zip(alone, together):
        for field in ("loss_plus", "loss_minus", "loss_empty", "loss_no_result"):
            assert getattr(a, field) == pytest.approx(getattr(b, field), abs=1e-5)
    # and the shared-prefix passes equal one pass per candidate over text up to i + 4
    seq = [tok.bos_token_id, *job.candidates[0][1], *job.text_ids[: 9 + 5]]
    lp = token_logprobs(model, [seq], tok.pad_token_id)[0][len(job.candidates[0][1]) :]
    assert alone[0].loss_plus == pytest.approx(weighted_loss(lp, 9), abs=1e-5)


@pytest.mark.real_model
def test_real_model_filter_matches_three_full_passes_and_keeps_a_true_result(real_model_dir):
    """On the default model: our shared-prefix filter equals three separate full forward passes,
    and a calculator call whose result the text states lowers the loss of what follows."""
    from toolformer.models import load_model

    model, tok = load_model(str(real_model_dir), device="cpu")
    text = "The craft store made 36 sales. It made 36 / 3 = 12 sales in the fabric section."
    enc = lambda s: tuple(tok(s, add_special_tokens=False)["input_ids"])
    x = enc(" " + text)
    i = len(enc(" " + text[: text.index(" 12 sales")]))  # the call goes before " 12"
    plus, minus = enc("[Calculator(36 / 3) -> 12]"), enc("[Calculator(36 / 3)]")
    ((losses,),) = filter_losses(
        model, [FilterJob(x, ((i, plus, minus),))], tok.bos_token_id, tok.pad_token_id
    )
    full = [
        token_logprobs(model, [[tok.bos_token_id, *z, *x]], tok.pad_token_id)[0][len(z) :]
        for z in (plus, (), minus)
    ]
    assert losses.loss_plus == pytest.approx(weighted_loss(full[0], i), abs=1e-4)
    assert losses.loss_empty == pytest.approx(weighted_loss(full[1], i), abs=1e-4)
    assert losses.loss_no_result == pytest.approx(weighted_loss(full[2], i), abs=1e-4)
    assert losses.delta > 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=7), st.integers(1, 150), st.integers(0, 50))
def test_batches_by_tokens_is_a_cheapest_valid_split(lengths, budget, call_cost):
    """A partition of the rows, within the budget, and no split of the sorted rows is cheaper."""
    got = batches_by_tokens(lengths, budget, call_cost)
    assert sorted(k for b in got for k in b) == list(range(len(lengths)))
    cost = lambda batches: sum(call_cost + len(b) * max(lengths[k] for k in b) for b in batches)
    for b in got:
        assert len(b) == 1 or len(b) * max(lengths[k] for k in b) <= budget
    order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
    best = None
    for mask in range(2 ** (len(order) - 1)):  # every split of the sorted rows into runs
        runs, start = [], 0
        for j in range(1, len(order) + 1):
            if j == len(order) or mask >> (j - 1) & 1:
                runs.append(order[start:j])
                start = j
        if all(len(r) == 1 or len(r) * lengths[r[0]] <= budget for r in runs):
            best = cost(runs) if best is None else min(best, cost(runs))
    assert cost(got) == best


# --- Departures for small models: blank-token window start, inline calls, a cached prompt ------


class RecordingModel(HandSetModel):
    """The hand-set model, recording every row it is given (pads stripped)."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        self.rows += [[t for t, m in zip(r.tolist(), k.tolist()) if m] for r, k in zip(input_ids, attention_mask)]
        return super().forward(input_ids, attention_mask, position_ids)


def test_loss_starts_skip_blank_tokens_only_when_asked():
    from toolformer.filtering import loss_starts

    S = 7  # a whitespace-only token
    assert loss_starts([A, S, S, B, S], None) == [0, 1, 2, 3, 4]
    assert loss_starts([A, S, S, B, S], frozenset({S})) == [0, 3, 3, 3, 4]


def test_blank_start_moves_the_window_past_lone_spaces():
    S = 7
    x = (A, S, B, B, A, B, B, A)
    job = FilterJob(text_ids=x, candidates=((1, (C, R), (C,)),))
    ((literal,),) = filter_losses(HandSetModel(), [job], START, PAD)
    ((skipped,),) = filter_losses(HandSetModel(), [job], START, PAD, blank_ids=frozenset({S}))
    # literal: the window is S B B A B (S gets p = 0.5/7 after R); skipped: B B A B B from x_2
    assert literal.loss_plus == pytest.approx((W[0] + W[3]) * math.log(14) + (W[1] + W[2] + W[4]) * math.log(2), abs=1e-6)
    assert skipped.loss_plus == pytest.approx((W[0] + W[1] + W[3] + W[4]) * math.log(2) + W[2] * math.log(14), abs=1e-6)


def test_inline_mode_puts_the_call_before_x_i_and_reads_the_same_tokens():
    x = (A, B, B, A, B, B, A)
    job = FilterJob(text_ids=x, candidates=((1, (C, R), (C,)),))
    model = RecordingModel()
    ((inline,),) = filter_losses(model, [job], START, PAD, inline=True)
    assert sorted(model.rows) == sorted([
        [START, A, B, B, A, B, B],  # no call: x up to x_5
        [START, A, C, R, B, B, A, B, B],  # the call with its result, inline before x_1
        [START, A, C, B, B, A, B, B],  # without its result
    ])
    ((prefix,),) = filter_losses(HandSetModel(), [job], START, PAD)
    # the hand-set model depends only on what came before, not where: the same losses
    assert (inline.loss_plus, inline.loss_minus) == pytest.approx((prefix.loss_plus, prefix.loss_minus), abs=1e-6)


@pytest.mark.parametrize("which", ["tiny_model", "sliding_model"])
def test_cached_prompt_prefix_equals_the_uncached_sequence(request, which):
    """Also on sliding-window layers (Gemma) with a prefix longer than the window (16 keys)."""
    from toolformer.filtering import CachedPrefix

    model, _ = request.getfixturevalue(which)
    head = [5, 17, 42, 9, 88, 31] * (4 if which == "sliding_model" else 1)
    x = (40, 41, 42, 43, 44, 45, 46, 47, 48)
    call_r, call_e = (60, 61, 62), (60, 61)
    job = FilterJob(text_ids=x, candidates=((3, call_r, call_e), (6, call_e, call_e)))
    ((a, b),) = filter_losses(model, [job], head[-1], 0, prefix=CachedPrefix(model, head[:-1]), inline=True)

    def direct(seq, first, i):
        (lp,) = token_logprobs(model, [seq], 0, keep_from=[first])
        return weighted_loss(lp, 0)

    assert a.loss_plus == pytest.approx(direct([*head, *x[:3], *call_r, *x[3:8]], len(head) + 3 + 3 - 1, 3), abs=1e-5)
    assert a.loss_empty == pytest.approx(direct([*head, *x[:8]], len(head) + 3 - 1, 3), abs=1e-5)
    assert b.loss_no_result == pytest.approx(direct([*head, *x[:6], *call_e, *x[6:]], len(head) + 6 + 2 - 1, 6), abs=1e-5)
