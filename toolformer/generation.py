"""Decoding with tools: the model writes ``[Calculator(400 / 1400) ->`` and gets ``0.29]`` inserted.

Run it::

    toolformer generate --model smollm2-135m "Out of 1400 participants, 400 passed, that is"
    toolformer generate --model runs/ft --json --max-new-tokens 40 "2 + 3 * 4 =" "Today is"

or from Python::

    gen = ToolGenerator(model, tokenizer, ToolExecutor({"Calculator": get_tool("Calculator")}))
    out = gen.generate(["Out of 1400 participants, 400 passed, that is"])[0]
    out.text, out.calls

The decode loop, as in the paper (section "Inference", METHOD.md "Decoding with tools"):

* Greedy decoding (sampling on request). A call starts whenever the call-opening token `` [`` (the
  paper's <API>) is among the ``top_k_trigger`` most likely next tokens (k = 10 in the paper, k = 1 is
  plain greedy) and the row has calls left (``max_calls``, 1 in the paper); it is then emitted even if
  another token is more likely. Once the calls are used, `` [`` is masked out.
* The tool name and input are decoded greedily until the arrow (``->``, `` ->`` or ``→``). There
  decoding of the row stops, the open call is parsed with :mod:`toolformer.call_format`, the tool runs
  through :class:`tools.executor.ToolExecutor` (which sanitises the result: it can never open or close
  a call), and the tokens of ``" " + result + "]"`` are appended. Decoding continues from the existing
  KV cache: only the new tokens are fed, the prefix is never re-run.
* A call that cannot be completed -- a tool error or an unknown tool, an argument that does not reach
  the arrow within ``max_call_input_tokens`` tokens, a malformed call, an end-of-sequence or a newline
  inside the call, a call closed without an arrow -- is ROLLED BACK: its tokens are removed from the
  output and from the cache, and the row continues from the position before `` [`` with `` [`` masked
  out for that step (TESTPLAN E36). No error text ever reaches the output. The paper does not say what
  happens on failure; this is our choice. Every attempt, failed or not, counts against ``max_calls``,
  which bounds the work a row can waste on calls.
* Rows of a batch are interrupted independently. The batch shares one DynamicCache; a row that feeds
  fewer tokens than another at a step (a 1-token step beside an injected result) is padded with
  masked "holes", and a rolled-back call becomes a hole in its row's attention mask (position ids are
  kept per row, so a row's logits do not depend on the holes). Cache columns that are holes for every
  row at the end of the cache are cut with ``DynamicCache.crop``: for a single row a rollback crops the
  cache back to the position before `` [``. Finished rows leave the batch (``batch_select_indices``).
  Tools run synchronously between two forward passes, so a row waiting on a tool holds the others
  exactly as long as the tool takes.

Differences from the paper: the markers are ordinary text (`` [``, ``]``, ``->``) rather than new
tokens, and ``max_new_tokens`` counts the tokens that stay in the output (injected result tokens
included, rolled-back call tokens not); a completed call may run past it by its result span.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from toolformer.call_format import (
    DEFAULT_FORMAT,
    UNTERMINATED,
    CallFormat,
    load_call_format,
    parse_calls,
    strip_calls,
)
from toolformer.cache_api import cache_keyword, output_cache  # noqa: F401  (re-exported)
from toolformer.errors import OutOfMemory, free_memory, is_out_of_memory
from toolformer.execution import CallContext, Executor, ToolOutcome

log = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    """How to decode. Defaults are the paper's (greedy, top-10 trigger, one call per output).

    With ``do_sample`` one generator seeded with ``seed`` serves a whole ``generate()`` call, so a
    sampled output depends on the batch it was decoded in; greedy outputs do not.
    """

    max_new_tokens: int = 64
    top_k_trigger: int = 10  # start a call when " [" is among the top-k next tokens (k=1: plain greedy)
    max_calls: int = 1  # call attempts per output, as in the paper
    use_tools: bool = True  # False = the paper's "Toolformer (disabled)": " [" is never emitted
    max_call_input_tokens: int = 32  # a call that has not reached the arrow after K tokens is abandoned
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop_at_newline: bool = False  # end a row at its first newline (the newline is not in the text)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.top_k_trigger < 1:
            raise ValueError(f"top_k_trigger must be >= 1, got {self.top_k_trigger}")
        if self.max_calls < 0:
            raise ValueError(f"max_calls must be >= 0, got {self.max_calls}")
        if self.max_call_input_tokens < 1:
            raise ValueError(f"max_call_input_tokens must be >= 1, got {self.max_call_input_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class CallRecord:
    """One executed call: ``result`` on success, ``error`` (the tool's reason) when rolled back."""

    tool: str
    input: str
    result: str | None
    error: str | None


@dataclass
class GenerationOutput:
    prompt: str
    text: str  # the completion (without the prompt) with calls and results shown
    text_without_calls: str  # the completion with calls removed (call_format.strip_calls)
    calls: list[CallRecord]  # executed calls, in order (failed ones too: they were rolled back)
    num_tokens: int  # tokens of the completion, injected result tokens included
    abandoned_calls: int = 0  # calls dropped before execution (never reached the arrow, malformed)


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

    @property
    def fed(self) -> int:
        return len(self.cols)


class ToolGenerator:
    """Greedy (or sampled) decoding that runs tools inline. See the module docstring for the loop.

    Args:
        model: a causal LM (transformers) in eval mode.
        tokenizer: its tokenizer; `` [`` must be a single token in it (it is in SmolLM2's).
        executor: what runs the calls (:class:`toolformer.execution.Executor`), e.g.
            ``tools.executor.ToolExecutor({"Calculator": Calculator()})``: its cache is shared by
            every call of this generator.
        config: decoding settings.
        logits_processor: optional transformers ``LogitsProcessorList`` applied to the raw next-token
            scores before the trigger test (``input_ids`` are the rows' real tokens, left-padded).
        fmt: the call markers.
    """

    def __init__(self, model, tokenizer, executor: Executor,
                 config: GenerationConfig | None = None, logits_processor=None,
                 fmt: CallFormat = DEFAULT_FORMAT):
        self.model = model
        self.tokenizer = tokenizer
        if not callable(getattr(executor, "execute", None)):
            raise TypeError(f"executor must have execute(tool, input, context), got {type(executor).__name__} "
                            "(wrap a {name: Tool} mapping in tools.executor.ToolExecutor)")
        self.executor = executor
        self.config = config or GenerationConfig()
        self.logits_processor = logits_processor
        self.fmt = fmt
        trained = load_call_format(getattr(tokenizer, "name_or_path", "") or ".")
        if (trained.start, trained.arrow, trained.end) != (fmt.start, fmt.arrow, fmt.end):
            # A model fine-tuned with --marker-tokens writes <API> ... → ... </API>; the decode loop
            # triggers on the single token " " + start, which such a tokenizer does not have.
            raise ValueError(f"{tokenizer.name_or_path} was trained with the call markers "
                             f"{trained.start} {trained.arrow} {trained.end} (finetune --marker-tokens); "
                             "generation supports only the text markers ' [', '->', ']' so far")
        api_ids = tokenizer(" " + fmt.start, add_special_tokens=False).input_ids
        if len(api_ids) != 1:
            raise ValueError(f"{' ' + fmt.start!r} must be one token in this tokenizer, got {api_ids}")
        self.api_id = api_ids[0]  # the paper's <API> token
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = set(eos) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        # A result must tokenise as text even if it spells a special token ("<|im_end|>").
        self._split_special = bool(tokenizer.all_special_tokens)
        self.device = next(model.parameters()).device
        self._cache_kw = cache_keyword(model)
        self.tool_seconds = 0.0  # time spent in tools by the last generate()/stream()
        self.oom_retries = 0  # batches the last generate() decoded again, halved, after running out of memory
        self.last_output: GenerationOutput | None = None  # the last stream()'s full output

    # ---- public API -------------------------------------------------------------------------

    def generate(self, prompts: Sequence[str], contexts: CallContext | Sequence[CallContext] | None = None,
                 batch_size: int = 8, progress: bool = False) -> list[GenerationOutput]:
        """Complete every prompt; ``contexts`` (one for all, or one per prompt) default to today's date.

        Prompts are decoded in batches of ``batch_size``, grouped by length; outputs come back in
        the order of ``prompts`` and do not depend on the batching (greedy decoding).

        A batch that runs out of memory is decoded again in halves, and the later batches are no
        larger (:attr:`oom_retries` counts the halvings, each logged as a warning; the batch's tool
        calls run again; sampled outputs, which depend on the batch, then differ). A prompt that runs
        out of memory alone raises :class:`~toolformer.errors.OutOfMemory` (one line in the CLI).
        """
        prompts = list(prompts)
        ctxs = self._contexts(contexts, len(prompts))
        self.tool_seconds = 0.0
        self._check(prompts)
        lengths = [len(ids) for ids in self.tokenizer(prompts).input_ids] if prompts else []
        empty = [i for i, n in enumerate(lengths) if n == 0]
        if empty:
            raise ValueError(f"prompt {empty[0]} tokenizes to nothing")
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])  # less padding per batch
        outputs: list[GenerationOutput | None] = [None] * len(prompts)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), desc="generate", unit="prompt")
        gen = self._sampler()
        self.oom_retries = 0
        start, size = 0, max(1, batch_size)
        while start < len(order):
            idx = order[start:start + size]
            rows = self._start_rows([(i, prompts[i], ctxs[i]) for i in idx])
            try:
                for _ in self._decode(rows, gen):
                    pass
            except RuntimeError as e:
                if not is_out_of_memory(e):
                    raise
                first = (str(e).strip().splitlines() or ["out of memory"])[0][:200]
            else:
                for row in rows:
                    outputs[row.index] = self._output(row)
                if bar is not None:
                    bar.update(len(idx))
                start += len(idx)
                continue
            # Out of memory: the batch is decoded again in halves, and later batches are no larger
            # (greedy outputs do not depend on the batch; the batch's tool calls run again).
            free_memory()  # (outside the except block: its traceback holds the batch's tensors)
            if len(idx) == 1:
                raise self._out_of_memory(rows[0], first)
            size = len(idx) // 2
            self.oom_retries += 1
            log.warning("generate: out of memory with a batch of %d prompts (%s); retrying in batches of %d",
                        len(idx), first, size)
        if bar is not None:
            bar.close()
        return outputs  # type: ignore[return-value]

    def _out_of_memory(self, row: _Row, first: str) -> OutOfMemory:
        n = row.n_prompt or len(self.tokenizer(row.prompt).input_ids)
        return OutOfMemory(f"generate: out of memory decoding prompt {row.index} alone ({n} prompt tokens, up to "
                           f"{self.config.max_new_tokens} new), {first}; shorten the prompt, lower "
                           "--max-new-tokens or use a device with more memory")

    def stream(self, prompt: str, context: CallContext | None = None) -> Iterator[str]:
        """Yield the completion of ``prompt`` piece by piece as it is decoded.

        A call is held back while it is being written and appears as one piece, with its result,
        once it has run (a rolled-back call never appears). The full output is then in
        :attr:`last_output`.
        """
        self.tool_seconds = 0.0
        self._check([prompt])
        (row,) = rows = self._start_rows([(0, prompt, self._contexts(context, 1)[0])])
        shown = ""
        for _ in self._decode_one(rows, self._sampler()):
            settled = row.out if row.call_start is None else row.out[:row.call_start]
            text = self._text(settled)
            if self.config.stop_at_newline:
                text = text.split("\n", 1)[0]
            if text.endswith("\ufffd"):
                continue  # wait for the rest of a multi-byte character
            if text.startswith(shown) and len(text) > len(shown):
                yield text[len(shown):]
                shown = text
        self.last_output = self._output(row)
        text = self.last_output.text
        if text.startswith(shown) and len(text) > len(shown):
            yield text[len(shown):]

    def _decode_one(self, rows: list[_Row], gen: torch.Generator | None) -> Iterator[None]:
        """:meth:`_decode` of one row: out of memory there is :class:`OutOfMemory` (one line)."""
        try:
            yield from self._decode(rows, gen)
        except RuntimeError as e:
            if not is_out_of_memory(e):
                raise
            first = (str(e).strip().splitlines() or ["out of memory"])[0][:200]
        else:
            return
        free_memory()
        raise self._out_of_memory(rows[0], first)

    # ---- the decode loop --------------------------------------------------------------------

    def _contexts(self, contexts, n: int) -> list[CallContext]:
        if contexts is None:
            return [CallContext(date=dt.date.today())] * n  # Calendar answers with today's date
        if isinstance(contexts, CallContext):
            return [contexts] * n
        contexts = list(contexts)
        if len(contexts) != n:
            raise ValueError(f"got {len(contexts)} contexts for {n} prompts")
        return contexts

    def _sampler(self) -> torch.Generator | None:
        if not self.config.do_sample:
            return None
        return torch.Generator(device=self.device).manual_seed(self.config.seed)

    @staticmethod
    def _check(prompts: list[str]) -> None:
        """Reject bad prompts before any decoding starts."""
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt:
                raise ValueError(f"prompt {index} is empty or not a string")

    def _start_rows(self, items: list[tuple[int, str, CallContext]]) -> list[_Row]:
        return [_Row(index, prompt, ctx, n_prompt=0) for index, prompt, ctx in items]

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
        row.out.extend(self.result_ids(space + outcome.result))
        row.call_start = row.call_scores = None
        if len(row.out) >= cfg.max_new_tokens:
            row.done = True
        return False

    def result_ids(self, result: str) -> list[int]:
        """Token ids injected after the arrow: ``result`` (with its leading space) and the closing marker."""
        kwargs = {"split_special_tokens": True} if self._split_special else {}
        return self.tokenizer(result + self.fmt.end, add_special_tokens=False, **kwargs).input_ids

    def _roll_back(self, row: _Row, gen: torch.Generator | None) -> None:
        """Drop the open call: out of the output, out of attention; continue with " [" masked."""
        start = row.call_start
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

    def _output(self, row: _Row) -> GenerationOutput:
        text = self._text(row.out)
        if self.config.stop_at_newline:
            text = text.split("\n", 1)[0]
        return GenerationOutput(prompt=row.prompt, text=text, text_without_calls=strip_calls(text, self.fmt),
                                calls=row.calls, num_tokens=len(row.out), abandoned_calls=row.abandoned)
