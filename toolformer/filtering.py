"""Filtering sampled API calls by how much they help the model predict the text (paper section 2).

For a call c at token position i of a text x with result r, and a prefix z:

    L_i(z) = - sum_{j=i..n} w_{j-i} * log p(x_j | z, x_1..x_{j-1}),   w~_t = max(0, 1 - 0.2 t),
    w_t = w~_t / sum_s w~_s

    L+ = L_i(e(c, r))                     the call with its result, given as a PREFIX to the text
    L- = min(L_i(eps), L_i(e(c, eps)))    no call at all, or the call without its result
    keep the call if L- - L+ >= tau_f

The call is a prefix of the whole text, never inserted at i: the model has not seen inline calls
yet. Every sequence starts with one "document start" token (BOS, else EOS) so x_1 is predicted
from something in all three variants alike, and the prefix is followed directly by the text,
whose tokens are those of " " + x (a leading space, as the text would follow the call inline):
``[Calculator(400 / 1400) -> 0.29] Out of 1400 ...``.

Because the weights vanish after 5 tokens, L_i needs the text only up to x_{i+4}; and all the
candidates of a document that share a prefix (the same call, or no call) share one forward pass
over [start, z, x_1..x_max], reading L_i off at each of their positions. Run by the pipeline
(``toolformer augment``); the tests call these functions directly on hand-set models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

DECAY = 0.2  # the paper's weight decay: w~_t = max(0, 1 - 0.2 t), five non-zero weights


def loss_weights(decay: float = DECAY) -> torch.Tensor:
    """Normalised weights ``w_t`` (shape ``(T,)``, T = tokens with a non-zero weight; 5 for 0.2)."""
    t = torch.arange(round(1 / decay) + 1, dtype=torch.float64)
    w = torch.clamp(1 - decay * t, min=0)
    w = w[w > 0]
    return (w / w.sum()).to(torch.float32)


def weighted_loss(token_logprobs: torch.Tensor, i: int, weights: torch.Tensor | None = None) -> float:
    """``L_i`` from the log-probabilities of the text's tokens.

    Args:
        token_logprobs: FloatTensor of shape (n,): ``log p(x_j | z, x_<j)`` for j = 0..n-1.
        i: the position (0-based token index of x) the call belongs before.
        weights: from :func:`loss_weights`.

    Near the end of the text fewer than five tokens remain; we sum the weights that exist without
    renormalising them (the paper does not say; all three losses of a candidate cover the same
    tokens, so their difference is unaffected in kind).
    """
    w = loss_weights() if weights is None else weights
    seg = token_logprobs[i : i + len(w)]
    return float(-(w[: len(seg)].to(seg.dtype) * seg).sum())


def keep_if_useful(loss_plus: float, loss_minus: float, tau_f: float) -> bool:
    """The paper's filter: keep a call if it lowers the loss by at least ``tau_f`` (== keeps)."""
    return loss_minus - loss_plus >= tau_f


@torch.no_grad()
def token_logprobs(
    model,
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    padding_side: str = "right",
    keep_from: Sequence[int] | None = None,
    prefix=None,
) -> list[torch.Tensor]:
    """Log-probability of tokens given the ones before them, for a padded batch.

    Returns one FloatTensor per sequence, of shape (len(seq) - 1 - keep_from[r],): entry k is
    ``log p(seq[f+k+1] | seq[:f+k+1])`` with f = keep_from[r] (default 0: every token). The
    output layer runs only on the rows asked for (the filter needs 5 per candidate; the LM head
    is a fifth of SmolLM2-135M's FLOPs). Padding never changes a value beyond float noise: the
    attention mask hides pad tokens and, for left padding, position ids start at each sequence's
    first real token (the bug of ports that pad left without position ids).

    ``prefix`` (a :class:`toolformer.sampling.PromptCache`, right padding only): every sequence
    follows that cached prompt, which is not recomputed (its KV cache is expanded to the batch).
    """
    lengths = [len(s) for s in sequences]
    keep_from = [0] * len(sequences) if keep_from is None else list(keep_from)
    width = max(lengths)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    starts = []
    for r, s in enumerate(sequences):
        start = 0 if padding_side == "right" else width - len(s)
        ids[r, start : start + len(s)] = torch.tensor(s)
        mask[r, start : start + len(s)] = 1
        starts.append(start)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    device = model.device
    extra = {}
    if prefix is not None:
        if padding_side != "right":
            raise ValueError("a cached prefix needs right padding")
        position_ids = position_ids + len(prefix)
        mask = torch.cat([torch.ones((len(sequences), len(prefix)), dtype=torch.long), mask], dim=1)
        from toolformer.cache_api import cache_keyword

        extra[cache_keyword(model.get_decoder())] = prefix.expanded(len(sequences))
    hidden = model.get_decoder()(
        input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device),
        **extra,
    ).last_hidden_state
    rows = [hidden[r, st + f : st + n - 1] for r, (st, f, n) in enumerate(zip(starts, keep_from, lengths))]
    targets = torch.cat(
        [ids[r, st + f + 1 : st + n] for r, (st, f, n) in enumerate(zip(starts, keep_from, lengths))]
    )
    logits = model.get_output_embeddings()(torch.cat(rows)).float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None].to(device))[:, 0].cpu()
    return list(torch.split(logp, [len(r) for r in rows]))


CALL_COST_TOKENS = 32  # what one more forward call costs, in tokens of compute (CPU; see below)


def batches_by_tokens(
    lengths: Sequence[int], max_tokens: int, call_cost: int = CALL_COST_TOKENS
) -> list[list[int]]:
    """Indices grouped into batches of rows x longest row <= ``max_tokens`` (a longer row goes
    alone), longest first, with the least padded tokens + ``call_cost`` per batch.

    Padding is computed like real tokens, while one more forward call costs about what ~20-30
    tokens cost on this CPU (measured: SmolLM2-135M scoring 4 GSM8K documents of 161-301 tokens
    took 4.67 s in one padded batch, 3.3 s in three batches of similar lengths). The split is
    optimal for that cost (dynamic programming over the sorted lengths: a batch is always a run
    of consecutive rows). With many documents the lengths are dense and batches stay full.
    """
    order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of batching the j longest rows
    cut = [0] * (n + 1)
    for i in range(n):  # a batch starting at row i (its longest) ...
        longest = lengths[order[i]]
        for j in range(i + 1, n + 1):  # ... and ending before row j
            if j > i + 1 and (j - i) * longest > max_tokens:
                break
            cost = best[i] + call_cost + (j - i) * longest
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches, j = [], n
    while j > 0:
        batches.append([order[k] for k in range(cut[j], j)])
        j = cut[j]
    return batches[::-1]


@dataclasses.dataclass(frozen=True)
class CandidateLosses:
    loss_plus: float  # L_i(e(c, r))
    loss_minus: float  # min(loss_empty, loss_no_result)
    loss_empty: float  # L_i(eps)
    loss_no_result: float | None  # L_i(e(c, eps)); None when lazy filtering settled it

    @property
    def delta(self) -> float:
        return self.loss_minus - self.loss_plus


@dataclasses.dataclass(frozen=True)
class FilterJob:
    """One document's candidates, as token ids (plain data: crosses process boundaries).

    ``text_ids`` are the tokens of " " + x; each candidate is ``(i, with_result_ids,
    without_result_ids)``: its position and the tokens of e(c, r) and e(c, eps).
    """

    text_ids: tuple[int, ...]
    candidates: tuple[tuple[int, tuple[int, ...], tuple[int, ...]], ...]


SETTLE_MARGIN = 1e-4  # lazy filtering skips L(e(c, eps)) only this far below tau_f (rounding)


class CachedPrefix:
    """Token ids encoded once whose KV cache every filter pass continues (``filter_prompt``):
    the same interface as :class:`toolformer.sampling.PromptCache` (``len`` and ``expanded``)."""

    def __init__(self, model, ids: Sequence[int]):
        from transformers import DynamicCache

        from toolformer.cache_api import cache_keyword, output_cache

        self.ids = list(ids)
        with torch.no_grad():
            # full layers (see toolformer.sampling.PromptCache): a sliding-window layer's default
            # cache would keep only the last window of the prefix's keys
            out = model(input_ids=torch.tensor([self.ids], device=model.device),
                        **{cache_keyword(model): DynamicCache()}, use_cache=True)

        self._layers = [(layer.keys, layer.values) for layer in output_cache(out).layers]
        self._cache_cls = DynamicCache

    def __len__(self) -> int:
        return len(self.ids)

    def expanded(self, batch: int):
        return self._cache_cls(
            [(k.expand(batch, -1, -1, -1).contiguous(), v.expand(batch, -1, -1, -1).contiguous())
             for k, v in self._layers]
        )


def loss_starts(text_ids: Sequence[int], blank_ids: frozenset[int] | None) -> list[int]:
    """Where L_i's window starts for a call before x_i: i itself (the paper's formula), or with
    ``blank_ids`` the first token from i on that is not whitespace only. SmolLM2 writes " 555" as
    " ", "5", "5", "5": the lone space is predicted with near certainty after any prefix, and at
    w_0 it would carry a third of the window's weight while telling nothing about the call."""
    n = len(text_ids)
    starts = list(range(n))
    if blank_ids:
        nxt = n - 1 if n else 0
        for j in range(n - 1, -1, -1):
            if text_ids[j] not in blank_ids:
                nxt = j
            starts[j] = nxt if text_ids[j] in blank_ids else j
    return starts


def filter_losses(
    model,
    jobs: Sequence[FilterJob],
    start_id: int,
    pad_id: int,
    context_window: int | None = None,
    max_batch_tokens: int = 8192,
    weights: torch.Tensor | None = None,
    settle_below: Sequence[float] | None = None,
    blank_ids: frozenset[int] | None = None,
    prefix: CachedPrefix | None = None,
    inline: bool = False,
) -> list[list[CandidateLosses]]:
    """The three losses of every candidate of every job, batched across jobs.

    With ``context_window = None`` (exact) each distinct prefix of a document (no call, each call
    with and without result) costs one pass over [start, z, x_1..x_{i_max+4}]. With a window W
    the text before position i is cut to its last W tokens (a speed setting; it differs from the
    paper, which conditions on the whole text), one pass per (prefix, position).

    Lazy filtering (``settle_below[j]``: job j's tau_f): L- = min(L(eps), L(e(c, eps))) <= L(eps),
    so a candidate with L(eps) - L+ < tau_f is rejected whatever L(e(c, eps)) is. Its pass is then
    skipped (``loss_no_result`` None, ``loss_minus`` = L(eps), an upper bound): the same calls are
    kept, and most candidates are rejected, so the filter does about half the work. The bound is
    exact for any tau_f at least the run's; a lower tau_f needs the full losses.

    Departures from the paper, each off by default here (the pipeline's settings choose):
    ``blank_ids`` starts each window at the first non-blank token (:func:`loss_starts`);
    ``inline`` puts the call where it belongs, [start, x_<i, z, x_i..], instead of before the
    whole text (one pass per candidate); ``prefix`` (with ``start_id`` its last token) puts a
    cached prompt before every sequence -- the tool's few-shot examples, which show the model
    what a call and its result mean, so a right result can lower the loss of the text after it.
    """
    w = loss_weights() if weights is None else weights
    span = len(w)
    starts = [loss_starts(job.text_ids, blank_ids) for job in jobs]

    def lo_of(i: int) -> int:
        return 0 if context_window is None else max(0, i - context_window)

    def key_of(j: int, z: tuple[int, ...], i: int) -> tuple:
        return (j, z, lo_of(i), i if inline and z else None)

    def passes(wanted: Sequence[tuple[int, tuple[int, ...], int]]) -> dict:
        """Log-probs of the text for each (job, prefix, position): one pass per key_of(...)."""
        # key -> [first position, hi]: one pass covers x[lo:hi]; log-probs from x_first on.
        needs: dict[tuple, list[int]] = {}
        for j, z, i in wanted:
            hi = min(len(jobs[j].text_ids), starts[j][i] + span) if jobs[j].text_ids else 0
            need = needs.setdefault(key_of(j, z, i), [i, hi])
            need[0], need[1] = min(need[0], i), max(need[1], hi)
        keys = list(needs)
        seqs, first = [], []
        for j, z, lo, at in keys:
            text, (fst, hi) = jobs[j].text_ids, needs[(j, z, lo, at)]
            if at is None:
                seqs.append([start_id, *z, *text[lo:hi]])
                first.append(len(z) + fst - lo)
            else:  # inline: the call sits before x_at, log-probs from x_at on
                seqs.append([start_id, *text[lo:at], *z, *text[at:hi]])
                first.append(at - lo + len(z))
        found = {}
        for batch in batches_by_tokens([len(q) for q in seqs], max_batch_tokens):
            got = token_logprobs(model, [seqs[k] for k in batch], pad_id, keep_from=[first[k] for k in batch],
                                 prefix=prefix)
            for k, lp in zip(batch, got):
                found[keys[k]] = (lp, needs[keys[k]][0])  # log-probs of x[first:hi], and first
        return found

    def loss(found: dict, j: int, z: tuple[int, ...], i: int) -> float:
        logp, first_i = found[key_of(j, z, i)]
        return weighted_loss(logp, starts[j][i] - first_i, w)

    cands = [(j, i, plus, minus) for j, job in enumerate(jobs) for i, plus, minus in job.candidates]
    lazy = settle_below is not None
    found = passes(
        [(j, z, i) for j, i, plus, minus in cands for z in (((), plus) if lazy else ((), plus, minus))]
    )
    unsettled = {(j, minus, i) for j, i, plus, minus in cands}
    if lazy:
        unsettled = {
            (j, minus, i)
            for j, i, plus, minus in cands
            if loss(found, j, (), i) - loss(found, j, plus, i) >= settle_below[j] - SETTLE_MARGIN
        }
        found.update(passes(sorted(unsettled)))
    out: list[list[CandidateLosses]] = [[] for _ in jobs]
    for j, i, plus, minus in cands:
        empty, with_result = loss(found, j, (), i), loss(found, j, plus, i)
        if (j, minus, i) in unsettled:
            no_result = loss(found, j, minus, i)
            out[j].append(CandidateLosses(with_result, min(empty, no_result), empty, no_result))
        else:  # settled: rejected whatever L(e(c, eps)) is
            out[j].append(CandidateLosses(with_result, empty, empty, None))
    return out
