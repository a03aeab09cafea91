"""The decode loop of :class:`toolformer.generation.ToolGenerator`: rows, the shared KV cache, calls.

The loop itself is described in :mod:`toolformer.generation` (section "The decode loop"). This module
holds its bookkeeping:

* :func:`_open_call_state`: is the text written since `` [`` still a call, one that reached the arrow,
  or no call at all;
* :class:`_Row`: the decoding state of one prompt (its kept ids, their cache columns, the open call);
* :class:`DecodeLoop`: the steps (one forward of the batch, the choice of each row's next token(s),
  the tools run at arrows, rollbacks, the holes they leave in the cache), mixed into ``ToolGenerator``.

Where the time goes (``benchmarks/bench_generate.py``: SmolLM2-135M on one CPU thread, 8 few-shot
prompts of ~132 tokens, 24 new): the forward passes take ~98% of it, the Python of a step 2-10 ms.
A 1-token step of 8 rows costs 1.2-2.3x one of 1 row (the weights are read once; the spread is the
load of a shared 2-core box), but the prefill is compute-bound: 8 prompts cost about 8x one, as much
as all the decode steps. Hence a head common to every prompt of a batch (the few-shot examples) runs
once (:meth:`DecodeLoop._share_prefix`): batch 8 went from 1.9-2.5x to 2.6-4.9x the tokens/s of
batch 1 (runs on a busy box; the bare forward loop without sharing: 2.1-2.9x).
A step that injects a result feeds every row as many columns as the longest feed (holes for the
others); the model's Linear layers then run on the real tokens only (:mod:`toolformer.ragged`): at
batch 8 such a step took ~2x a 1-token step padded (285 ms against 146) and 1.6x with the holes
skipped (228 ms); the 4 such steps of a batch were a quarter of its time. Attention still runs over
the padded step (cheap at these lengths) -- on the CPU without repeating the key/value heads
(:mod:`toolformer.gqa_attention`: those copies were half of such a step), and the cache is written in
place (:class:`toolformer.growing_cache.GrowingLayer`) rather than concatenated every step. On
another VM (Intel Xeon, one thread), batch 8 of the benchmark: 2.78 s with neither, 2.69 s with the GQA path, 2.63 s with both
(minimum of 3 interleaved runs; the same texts); an injection step 187 -> ~155 ms against 87 ms for a
one-token step of 8 rows.

A row can record what happens to it (``_Row.log``): each token appended, each injected result and each
rollback, in order -- ``ToolGenerator.tokens()`` turns that log into events. ``generate()`` leaves it
off.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicLayer

from toolformer.call_format import DEFAULT_FORMAT, UNTERMINATED, CallFormat, parse_calls
from toolformer.execution import CallContext, ToolOutcome
from toolformer.growing_cache import GrowingLayer, new_cache
from toolformer.ragged import real_rows_only

log = logging.getLogger("toolformer.generation")  # one logger for the generator, wherever the code lives


def _full_attention(cache) -> bool:
    """Whether every layer of ``cache`` keeps all its keys (no sliding window, no recurrent state):
    only then may positions be shared or skipped per token."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, GrowingLayer) for layer in layers)


@dataclass
class CallRecord:
    """One executed call: ``result`` on success, ``error`` (the tool's reason) when rolled back."""

    tool: str
    input: str
    result: str | None
    error: str | None


# States of an open call (see _open_call_state).
_OPEN, _READY, _INVALID = "open", "ready", "invalid"


def _open_call_state(text: str, fmt: CallFormat = DEFAULT_FORMAT):
    """Classify the text the model has written since the call-opening marker (``text`` starts with it).

    Returns ``(_OPEN, None)`` while the call may still become valid, ``(_READY, call)`` when it ends
    with the arrow (``call`` is the parsed, unterminated call with result ``''``), and
    ``(_INVALID, None)`` when it can no longer be a call that reaches the arrow.
    """
    if text.endswith("\ufffd"):  # half of a multi-byte character (e.g. "→"): wait for the rest
        return _OPEN, None
    calls = parse_calls(text, fmt, no_input_tools=())
    if calls and calls[0].span[0] == 0:
        call = calls[0]
        if call.status == UNTERMINATED and call.span[1] == len(text):
            if call.result is None:
                return _OPEN, None  # still in the input, or between ")" and the arrow
            if call.result == "":
                return _READY, call
            return _INVALID, None  # one token ran past the arrow into a result of the model's own
        # An arrow split over tokens ("-" then ">") reads as malformed until its second half comes.
        for arrow in fmt.arrows:
            for cut in range(1, len(arrow)):
                if text.endswith(arrow[:cut]):
                    state, _ = _open_call_state(text + arrow[cut:], fmt)
                    if state == _READY:
                        return _OPEN, None
        return _INVALID, None
    if re.fullmatch(re.escape(fmt.start) + r"[A-Za-z_][A-Za-z0-9_]*|" + re.escape(fmt.start), text):
        return _OPEN, None  # the tool name is still being written
    return _INVALID, None


# Kinds of the entries of _Row.log (and of TokenEvent.kind).
TOKEN, RESULT, ROLLBACK = "token", "result", "rollback"


@dataclass
class _Row:
    """Decoding state of one prompt. ``out[i]`` sits at position ``n_prompt + i``."""

    index: int  # position in the caller's prompt list
    prompt: str
    context: CallContext
    n_prompt: int  # prompt tokens (without padding)
    out: list[int] = field(default_factory=list)  # completion ids kept in the output
    cols: list[int] = field(default_factory=list)  # cache column of each fed token of `out`
    holes: list[int] = field(default_factory=list)  # cache columns of a rolled-back call, to mask
    prompt_ids: list[int] = field(default_factory=list)
    call_start: int | None = None  # index in `out` of the open call's " [" token
    call_scores: torch.Tensor | None = None  # next-token scores where the call started
    attempts: int = 0
    calls: list[CallRecord] = field(default_factory=list)
    abandoned: int = 0
    done: bool = False
    # (kind, ids, in a call) of what happened to `out`, in order, when recording (ToolGenerator.tokens):
    # TOKEN ids appended, RESULT ids injected after an arrow, ROLLBACK ids removed from its end.
    log: list[tuple[str, list[int], bool]] | None = None

    @property
    def fed(self) -> int:
        return len(self.cols)

    def record(self, kind: str, ids: list[int]) -> None:
        if self.log is not None:
            self.log.append((kind, ids, self.call_start is not None))


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix of two id lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class DecodeLoop:
    """The decode loop, mixed into :class:`toolformer.generation.ToolGenerator`.

    It uses the generator's ``model``, ``tokenizer``, ``executor``, ``config``, ``logits_processor``,
    ``fmt``, ``api_id``, ``eos_ids``, ``pad_id``, ``device``, ``_cache_kw``, ``tool_threads`` and
    ``result_ids()``, and adds the time spent waiting on tools to ``tool_seconds``.
    """

    # A batch whose prompts share a head of at least this many tokens runs the head once (_share_prefix).
    min_shared_prefix = 16
    # The last head run, kept for the next calls (_share_prefix): (weights' fingerprint, ids, per-layer
    # (keys, values) of one row). None until a head has run.
    _head_memo: tuple | None = None
    # ... of at most this many leading tokens (a few-shot head; 1024 of SmolLM2-135M's fp32 cache: 47 MB)
    memo_max_tokens = 1024
    # Ragged steps run the Linear layers on their real tokens only (toolformer.ragged).
    unpad_ragged_steps = True
    # Full-attention cache layers are written in place (GrowingLayer), not concatenated.
    grow_cache_in_place = True

    @torch.inference_mode()
    def _decode(self, rows: list[_Row], gen: torch.Generator | None) -> Iterator[None]:
        """Decode ``rows`` together until each ends; yields after every step (for streaming)."""
        enc = self.tokenizer([r.prompt for r in rows], return_tensors="pt", padding=True,
                             padding_side="left").to(self.device)
        mask = enc.attention_mask
        for b, row in enumerate(rows):
            row.prompt_ids = enc.input_ids[b][mask[b] == 1].tolist()
            row.n_prompt = len(row.prompt_ids)
            if row.n_prompt == 0:
                raise ValueError(f"prompt {row.index} tokenizes to nothing")
        cache = new_cache(self.model.config, grow=self.grow_cache_in_place)
        # Left padding: positions count real tokens only, so a row's logits do not see its padding.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        fingerprint = self._fingerprint()  # of the weights, once per call: the memo is valid for them only
        memo = self._head_memo if self._head_memo and self._head_memo[0] == fingerprint else None
        shared = self._shared_prefix(rows, cache, memo)
        if shared:  # the common head of the prompts runs once (see _share_prefix)
            self._share_prefix(rows, cache, shared, mask.shape[1], memo, fingerprint)
        logits = self.model(input_ids=enc.input_ids[:, shared:], attention_mask=mask,
                            position_ids=positions[:, shared:], **{self._cache_kw: cache}, use_cache=True,
                            logits_to_keep=1).logits
        if len(rows) == 1 and _full_attention(cache):  # the whole prompt, for the next call's head
            self._remember(rows[0].prompt_ids, cache, fingerprint)
        active = list(rows)
        unpad = self.unpad_ragged_steps and _full_attention(cache)
        while True:
            scores = logits[:, -1, :].float()
            rolled_back = self._choose(active, scores, gen)
            yield
            keep = [b for b, row in enumerate(active) if not row.done]
            if not keep:
                return
            if len(keep) < len(active):  # finished rows leave the batch
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask = mask[index]
                active = [active[b] for b in keep]
            if rolled_back:
                mask = self._drop_holes(cache, mask, active)
            # Feed each row the tokens it has not fed yet, right-aligned; shorter rows get holes.
            feeds = [row.out[row.fed:] for row in active]
            width = max(len(f) for f in feeds)
            cache_len = mask.shape[1]
            ids, pos, new_mask = [], [], []
            for row, f in zip(active, feeds):
                holes = width - len(f)
                first = row.n_prompt + row.fed
                ids.append([self.pad_id] * holes + f)
                pos.append([first] * holes + list(range(first, first + len(f))))
                new_mask.append([0] * holes + [1] * len(f))
                row.cols.extend(range(cache_len + holes, cache_len + width))
            new_mask = torch.tensor(new_mask, dtype=mask.dtype, device=self.device)
            mask = torch.cat([mask, new_mask], dim=1)
            # A ragged step (a result injected beside one-token feeds): the Linear layers skip the holes.
            ragged = real_rows_only(self.model, new_mask.bool()) if unpad and width > 1 else nullcontext()
            with ragged:
                logits = self.model(input_ids=torch.tensor(ids, device=self.device), attention_mask=mask,
                                    position_ids=torch.tensor(pos, device=self.device),
                                    **{self._cache_kw: cache}, use_cache=True, logits_to_keep=1).logits

    def _choose(self, active: list[_Row], scores: torch.Tensor, gen: torch.Generator | None) -> bool:
        """Pick each active row's next token(s) from ``scores`` (B, V); run tools at arrows.

        Rows inside a call first take their greedy token; the calls of the rows that reach the arrow
        run together (:meth:`_run_calls`); then each row, in order, goes on: its result injected, its
        call rolled back, its next text token appended (so a sampler draws in the same order as a
        loop that runs each tool as its row comes). Returns whether a call was rolled back (the
        cache may then have a tail to crop).
        """
        cfg = self.config
        if self.logits_processor is not None:
            scores = self.logits_processor(self._input_ids(active), scores)
        api = self.api_id
        # The paper's trigger: " [" is among the top-k, i.e. fewer than k tokens score higher.
        api_scores = scores[:, api:api + 1]
        in_top_k = ((scores > api_scores).sum(-1) < cfg.top_k_trigger) & (api_scores[:, 0] > -float("inf"))
        call_pick = scores.argmax(-1)  # inside a call: greedy, as in the paper
        text_pick = self._pick(self._mask_api(scores), gen)
        triggers, call_picks, text_picks = torch.stack([in_top_k.long(), call_pick, text_pick]).tolist()
        in_call = {b: self._call_token(row, call_picks[b]) for b, row in enumerate(active)
                   if row.call_start is not None}
        ready = [b for b, (state, _, _) in in_call.items() if state == _READY]
        outcomes = dict(zip(ready, self._run_calls([(active[b], in_call[b][1]) for b in ready])))
        rolled_back = False
        for b, row in enumerate(active):
            if b in in_call:
                rolled_back |= self._end_call_step(row, *in_call[b], outcomes.get(b), gen)
            elif triggers[b] and cfg.use_tools and row.attempts < cfg.max_calls:
                row.attempts += 1
                row.call_start = len(row.out)
                row.call_scores = scores[b].clone()
                row.out.append(api)
                row.record(TOKEN, [api])
                if len(row.out) >= cfg.max_new_tokens:  # no room left for the call
                    row.abandoned += 1
                    self._roll_back(row, gen)
                    rolled_back = True
            else:
                self._add_text_token(row, text_picks[b])
        return rolled_back

    def _call_token(self, row: _Row, token: int) -> tuple[str, object, str]:
        """Add a greedy token to the open call: ``(state, call, text)`` of the call so far, where a
        state of ``_OPEN`` past the input or length limit counts as ``_INVALID``."""
        cfg = self.config
        row.out.append(token)
        row.record(TOKEN, [token])
        written = len(row.out) - row.call_start - 1  # tokens after " ["
        text = self._text(row.out[row.call_start:])
        # lstrip: some tokenizers drop the space of " [" when decoding a slice that starts with it
        call_text = text.lstrip(" ")
        state, call = (_INVALID, None) if token in self.eos_ids else _open_call_state(call_text, self.fmt)
        if state == _OPEN and not (written < cfg.max_call_input_tokens and len(row.out) < cfg.max_new_tokens):
            state = _INVALID  # K tokens / the length limit reached before the arrow
        return state, call, text

    def _end_call_step(self, row: _Row, state: str, call, text: str, outcome: ToolOutcome | None,
                       gen: torch.Generator | None) -> bool:
        """After :meth:`_call_token`: roll back a call that cannot be completed, or inject the result
        of the call that ran (``outcome``). Returns True on rollback."""
        if state == _OPEN:
            return False
        if state != _READY:  # malformed, or K tokens / the length limit reached before the arrow
            row.abandoned += 1
            self._roll_back(row, gen)
            return True
        row.calls.append(CallRecord(call.tool, call.input, outcome.result, outcome.error))
        if not outcome.ok:
            self._roll_back(row, gen)
            return True
        space = "" if text.endswith(" ") else " "
        result = self.result_ids(space + outcome.result)
        row.out.extend(result)
        row.record(RESULT, result)
        row.call_start = row.call_scores = None
        if len(row.out) >= self.config.max_new_tokens:
            row.done = True
        return False

    def _run_calls(self, calls: list[tuple[_Row, object]]) -> list[ToolOutcome]:
        """Run the calls of the rows that reached the arrow in one step; their outcomes, in order.

        Up to ``tool_threads`` calls run at once, in a thread pool. An executor that says it is
        ``thread_safe`` runs any of them side by side; any other runs one call per distinct tool at a
        time (a tool's own state -- a worker process, a lazily loaded model -- sees one caller; the
        calls of one tool go in the rows' order, so the second of two identical calls finds the first
        in the executor's cache), and all of them in turn when it keeps an SQLite cache
        (``cache_path``: a connection serves only the thread that opened it). ``tool_seconds`` grows
        by the time the step waited on its tools.
        """
        if not calls:
            return []
        started = time.perf_counter()
        groups: dict[object, list[int]] = {}
        if self.tool_threads <= 1 or getattr(self.executor, "cache_path", None) is not None:
            groups[None] = list(range(len(calls)))
        elif getattr(self.executor, "thread_safe", False):
            groups = {i: [i] for i in range(len(calls))}
        else:
            for i, (_, call) in enumerate(calls):
                groups.setdefault(call.tool, []).append(i)
        outcomes: list[ToolOutcome | None] = [None] * len(calls)

        def run(group: list[int]) -> None:
            for i in group:
                row, call = calls[i]
                outcomes[i] = self._execute(call.tool, call.input, row.context)

        first, *rest = groups.values()
        if rest:
            # this thread runs the first group: the pool needs one thread less than run at once
            pool = ThreadPoolExecutor(max(1, min(self.tool_threads, len(groups)) - 1),
                                      thread_name_prefix="toolformer-tool")
            try:
                futures = [pool.submit(run, group) for group in rest]
                run(first)  # on this thread, beside the others
                for future in futures:
                    future.result()
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
        else:
            run(first)
        self.tool_seconds += time.perf_counter() - started
        return outcomes  # type: ignore[return-value]

    def _execute(self, tool: str, input: str, context: CallContext) -> ToolOutcome:
        try:
            return self.executor.execute(tool, input, context)
        except Exception as e:  # noqa: BLE001 - tools raise ToolError; a bug in one must not end the batch
            log.warning("tool %s raised %s on %r; call rolled back", tool, type(e).__name__, input)
            return ToolOutcome(None, "internal", str(e))

    def _roll_back(self, row: _Row, gen: torch.Generator | None) -> None:
        """Drop the open call: out of the output, out of attention; continue with " [" masked."""
        start = row.call_start
        row.record(ROLLBACK, row.out[start:])
        row.out = row.out[:start]
        row.holes.extend(row.cols[start:])  # masked (and cropped when at the end) by _drop_holes
        del row.cols[start:]
        row.call_start = None
        scores, row.call_scores = row.call_scores, None
        self._add_text_token(row, int(self._pick(self._mask_api(scores[None]), gen)[0]))

    def _shared_prefix(self, rows: list[_Row], cache, memo: tuple | None) -> int:
        """How many leading prompt tokens, common to every row, the prefill runs once (0: none).

        Only for a batch whose prompts share at least ``min_shared_prefix`` tokens (a few-shot head), or
        a single prompt that shares as many with the prompt or head an earlier call ran (``memo``: the
        ``_head_memo`` if it is valid for the weights),
        and a cache of full layers (a sliding-window layer keeps only its last keys);
        never the whole of the longest prompt, whose last token must be fed for its logits.
        """
        if not _full_attention(cache):
            return 0
        first = rows[0].prompt_ids
        if len(rows) < 2:  # what it shares with the prompt or head an earlier call ran (_head_memo)
            shared = _common(memo[1], first) if memo else 0
        else:
            shared = min(row.n_prompt for row in rows)
            for row in rows[1:]:
                shared = _common(row.prompt_ids[:shared], first)
        shared = min(shared, max(row.n_prompt for row in rows) - 1)
        return shared if shared >= self.min_shared_prefix else 0

    def _fingerprint(self) -> tuple:
        """What the memo's keys and values depend on: the weights (their storage and in-place version)."""
        return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.model.parameters())

    def _remember(self, ids: Sequence[int], cache, fingerprint: tuple) -> None:
        """Keep the one-row keys and values of ``ids`` (``cache``'s columns; the first ``memo_max_tokens``)
        for later calls."""
        n = min(len(ids), self.memo_max_tokens)
        kept = [(layer.keys[:, :, :n].clone(), layer.values[:, :, :n].clone()) for layer in cache.layers]
        self._head_memo = (fingerprint, list(ids[:n]), kept)

    def _share_prefix(self, rows: list[_Row], cache, shared: int, width: int, memo: tuple | None,
                      fingerprint: tuple) -> None:
        """Fill ``cache`` with the first ``shared`` columns of the left-padded batch of ``rows``
        (``width`` columns), computing the common prompt head once.

        The head runs as one row (positions 0 .. shared-1); its keys and values are then laid out
        per row where the padded batch has them: column j of a row with ``pad`` padding columns holds
        head token j - pad (a padding column holds a copy of some head token, masked like the padding
        it stands for). The rest of the batch (columns ``shared`` ..) is fed as usual: the batch is
        the same as if every row had run its whole prompt, at one copy of the head's cost.

        The head's one-row keys and values are kept (``_head_memo``, one head: the last) for the next
        calls: the tokens a later head shares with it are not run again while the weights are the same
        tensors at the same in-place version (a prompt's few-shot examples, batch after batch, or
        prompt after prompt at batch 1). The values equal a fresh prefill's up to float rounding (the
        rest of the head runs as a continuation, as the batch's suffixes already do).
        """
        ids = rows[0].prompt_ids[:shared]
        reuse = min(_common(memo[1], ids), shared) if memo else 0
        if reuse:  # the memo's first `reuse` columns, as a fresh cache (assigned: never written in place)
            for layer, (k, v) in zip(cache.layers, memo[2]):
                layer.lazy_initialization(k, v)
                layer.keys, layer.values = k[:, :, :reuse], v[:, :, :reuse]
        if reuse < shared:
            head = torch.tensor([ids[reuse:]], device=self.device)
            mask = torch.ones((1, shared), dtype=torch.long, device=self.device)
            self.model(input_ids=head, attention_mask=mask,
                       position_ids=torch.arange(reuse, shared, device=self.device)[None],
                       **{self._cache_kw: cache}, use_cache=True, logits_to_keep=1)
            self._remember(ids, cache, fingerprint)
        pads = torch.tensor([width - row.n_prompt for row in rows], device=self.device)
        columns = (torch.arange(shared, device=self.device)[None] - pads[:, None]).clamp(min=0)  # (B, shared)
        for layer in cache.layers:
            # (1, H, shared, D) -> (B, H, shared, D): row b's column j is head column columns[b, j]
            layer.keys = layer.keys[0][:, columns].transpose(0, 1).contiguous()
            layer.values = layer.values[0][:, columns].transpose(0, 1).contiguous()

    def _drop_holes(self, cache, mask: torch.Tensor, active: list[_Row]) -> torch.Tensor:
        """Mask rolled-back columns; crop cache columns that are holes for every row at the end."""
        mask = mask.clone()
        for b, row in enumerate(active):
            if row.holes:
                mask[b, row.holes] = 0
                row.holes.clear()
        length = mask.shape[1]
        keep = int(mask.any(0).nonzero().max()) + 1
        if keep < length:
            cache.crop(keep - length)
            mask = mask[:, :keep]
        return mask

    def _add_text_token(self, row: _Row, token: int) -> None:
        if token in self.eos_ids:
            row.done = True
            return
        row.out.append(token)
        row.record(TOKEN, [token])
        full = len(row.out) >= self.config.max_new_tokens
        row.done = full or (self.config.stop_at_newline and "\n" in self.tokenizer.decode([token]))

    def _mask_api(self, scores: torch.Tensor) -> torch.Tensor:
        masked = scores.clone()
        masked[:, self.api_id] = -float("inf")
        return masked

    def _pick(self, scores: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Greedy argmax, or a sample after temperature and top-p (transformers' warpers)."""
        if not self.config.do_sample:
            return scores.argmax(-1)
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        if self.config.temperature != 1.0:
            scores = TemperatureLogitsWarper(self.config.temperature)(None, scores)
        if self.config.top_p < 1.0:
            scores = TopPLogitsWarper(self.config.top_p)(None, scores)
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, 1, generator=gen)[:, 0]

    def _input_ids(self, active: list[_Row]) -> torch.Tensor:
        """(B, S) real token ids of each row (prompt + completion), left-padded, for logits processors."""
        seqs = [r.prompt_ids + r.out for r in active]
        width = max(len(s) for s in seqs)
        return torch.tensor([[self.pad_id] * (width - len(s)) + s for s in seqs], device=self.device)

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
