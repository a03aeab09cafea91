"""The decode loop of :class:`toolformer.generation.ToolGenerator`: rows, the shared KV cache, calls.

The loop itself is described in :mod:`toolformer.generation` (section "The decode loop"). This module
holds its bookkeeping:

* :func:`_open_call_state`: is the text written since `` [`` still a call, one that reached the arrow,
  or no call at all;
* :class:`_Row`: the decoding state of one prompt (its kept ids, their cache columns, the open call);
* :class:`DecodeLoop`: the steps (one forward of the batch, the choice of each row's next token(s),
  the tool run at an arrow, rollbacks, the holes they leave in the cache), mixed into ``ToolGenerator``.

A row can record what happens to it (``_Row.log``): each token appended, each injected result and each
rollback, in order -- ``ToolGenerator.tokens()`` turns that log into events. ``generate()`` leaves it
off.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from toolformer.call_format import DEFAULT_FORMAT, UNTERMINATED, CallFormat, parse_calls
from toolformer.execution import CallContext, ToolOutcome

log = logging.getLogger("toolformer.generation")  # one logger for the generator, wherever the code lives


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


class DecodeLoop:
    """The decode loop, mixed into :class:`toolformer.generation.ToolGenerator`.

    It uses the generator's ``model``, ``tokenizer``, ``executor``, ``config``, ``logits_processor``,
    ``fmt``, ``api_id``, ``eos_ids``, ``pad_id``, ``device``, ``_cache_kw`` and ``result_ids()``, and
    adds the time spent in tools to ``tool_seconds``.
    """

    @torch.inference_mode()
    def _decode(self, rows: list[_Row], gen: torch.Generator | None) -> Iterator[None]:
        """Decode ``rows`` together until each ends; yields after every step (for streaming)."""
        from transformers import DynamicCache

        enc = self.tokenizer([r.prompt for r in rows], return_tensors="pt", padding=True,
                             padding_side="left").to(self.device)
        mask = enc.attention_mask
        for b, row in enumerate(rows):
            row.prompt_ids = enc.input_ids[b][mask[b] == 1].tolist()
            row.n_prompt = len(row.prompt_ids)
            if row.n_prompt == 0:
                raise ValueError(f"prompt {row.index} tokenizes to nothing")
        cache = DynamicCache(config=self.model.config)
        # Left padding: positions count real tokens only, so a row's logits do not see its padding.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=enc.input_ids, attention_mask=mask, position_ids=positions,
                            **{self._cache_kw: cache}, use_cache=True, logits_to_keep=1).logits
        active = list(rows)
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
            mask = torch.cat([mask, torch.tensor(new_mask, dtype=mask.dtype, device=self.device)], dim=1)
            logits = self.model(input_ids=torch.tensor(ids, device=self.device), attention_mask=mask,
                                position_ids=torch.tensor(pos, device=self.device),
                                **{self._cache_kw: cache}, use_cache=True, logits_to_keep=1).logits

    def _choose(self, active: list[_Row], scores: torch.Tensor, gen: torch.Generator | None) -> bool:
        """Pick each active row's next token(s) from ``scores`` (B, V); run tools at arrows.

        Returns whether a call was rolled back (the cache may then have a tail to crop).
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
        rolled_back = False
        for b, row in enumerate(active):
            if row.call_start is not None:
                rolled_back |= self._continue_call(row, call_picks[b], gen)
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

    def _continue_call(self, row: _Row, token: int, gen: torch.Generator | None) -> bool:
        """Add a greedy token to the open call; at the arrow run the tool. Returns True on rollback."""
        cfg = self.config
        row.out.append(token)
        row.record(TOKEN, [token])
        written = len(row.out) - row.call_start - 1  # tokens after " ["
        text = self._text(row.out[row.call_start:])
        # lstrip: some tokenizers drop the space of " [" when decoding a slice that starts with it
        call_text = text.lstrip(" ")
        state, call = (_INVALID, None) if token in self.eos_ids else _open_call_state(call_text, self.fmt)
        if state == _OPEN and written < cfg.max_call_input_tokens and len(row.out) < cfg.max_new_tokens:
            return False
        if state != _READY:  # malformed, or K tokens / the length limit reached before the arrow
            row.abandoned += 1
            self._roll_back(row, gen)
            return True
        started = time.perf_counter()
        try:
            outcome = self.executor.execute(call.tool, call.input, row.context)
        except Exception as e:  # noqa: BLE001 - tools raise ToolError; a bug in one must not end the batch
            log.warning("tool %s raised %s on %r; call rolled back", call.tool, type(e).__name__, call.input)
            outcome = ToolOutcome(None, "internal", str(e))
        self.tool_seconds += time.perf_counter() - started
        row.calls.append(CallRecord(call.tool, call.input, outcome.result, outcome.error))
        if not outcome.ok:
            self._roll_back(row, gen)
            return True
        space = "" if text.endswith(" ") else " "
        result = self.result_ids(space + outcome.result)
        row.out.extend(result)
        row.record(RESULT, result)
        row.call_start = row.call_scores = None
        if len(row.out) >= cfg.max_new_tokens:
            row.done = True
        return False

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
