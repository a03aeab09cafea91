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
  kept per row, so a row's logits do not depend on the holes; the Linear layers skip the padding
  holes of a step, :mod:`toolformer.ragged`). Cache columns that are holes for every
  row at the end of the cache are cut with ``DynamicCache.crop``: for a single row a rollback crops the
  cache back to the position before `` [``. Finished rows leave the batch (``batch_select_indices``).
  Tools run between two forward passes, so a row waiting on a tool holds the others as long as the
  tool takes; the calls of the rows that reach the arrow in the same step run concurrently, in a pool
  of up to ``tool_threads`` threads: all side by side with an executor that declares
  ``thread_safe = True``; otherwise one call per distinct tool at a time (a tool need not be
  reentrant; the calls of one tool go in the rows' order), and one call at a time with an executor
  that keeps an SQLite cache (``cache_path``: ``tools.executor.ToolExecutor``'s connection serves
  only the thread that opened it). Outcomes, and sampled tokens, are those of running the calls one
  by one in the rows' order.
* A batch whose prompts share a head of at least 16 tokens (a few-shot prompt) runs it once: the
  prefill is compute-bound, while a 1-token step of 8 rows costs far less than 8 steps of 1 row, so
  the head would otherwise cost a batch of 8 as much as all its decode steps. The generator keeps the
  last head's keys and values (a single prompt's: all of it) for its next call, so the same few-shot
  examples are not run again batch after batch, or prompt after prompt at batch 1, while the weights
  are unchanged (the benchmark's 8 prompts at batch 1: prefill 14 tokens instead of 132 from the
  second prompt on).

Streaming (one prompt): :meth:`ToolGenerator.tokens` yields a :class:`TokenEvent` for each decision
as it is made -- a token appended, the result ids injected at an arrow, a failed call taken back --
and :meth:`ToolGenerator.stream` the text, a call held back until it has run and shown with its
result in one piece. Both decode only a short window of the latest tokens per step
(:mod:`toolformer.detokenize`), so streaming N tokens costs O(N) decoding. The loop's bookkeeping
(rows, cache, calls, rollbacks) is in :mod:`toolformer.decoding`.

Differences from the paper: the markers are ordinary text (`` [``, ``]``, ``->``) rather than new
tokens, and ``max_new_tokens`` counts the tokens that stay in the output (injected result tokens
included, rolled-back call tokens not); a completed call may run past it by its result span.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from toolformer.cache_api import cache_keyword, output_cache  # noqa: F401  (re-exported)
from toolformer.call_format import DEFAULT_FORMAT, CallFormat, load_call_format, strip_calls
from toolformer.decoding import (
    _INVALID,
    _OPEN,
    _READY,
    ROLLBACK,
    TOKEN,
    CallRecord,
    DecodeLoop,
    _open_call_state,
    _Row,
)
from toolformer.detokenize import IncrementalText
from toolformer.errors import OutOfMemory, free_memory, is_out_of_memory
from toolformer.execution import CallContext, Executor

__all__ = ["CallRecord", "GenerationConfig", "GenerationOutput", "TokenEvent", "ToolGenerator",
           # re-exported: the cache helpers and the open-call states (toolformer.decoding)
           "cache_keyword", "output_cache", "_open_call_state", "_OPEN", "_READY", "_INVALID"]

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
class GenerationOutput:
    prompt: str
    text: str  # the completion (without the prompt) with calls and results shown
    text_without_calls: str  # the completion with calls removed (call_format.strip_calls)
    calls: list[CallRecord]  # executed calls, in order (failed ones too: they were rolled back)
    num_tokens: int  # tokens of the completion, injected result tokens included
    abandoned_calls: int = 0  # calls dropped before execution (never reached the arrow, malformed)


@dataclass(frozen=True)
class TokenEvent:
    """One decision of the decode loop, as :meth:`ToolGenerator.tokens` yields it.

    ``kind`` is ``"token"`` (one id appended to the completion), ``"result"`` (the ids of
    ``" " + result + "]"`` injected after a call's arrow: :meth:`ToolGenerator.result_ids`) or
    ``"rollback"`` (a failed call's ids -- each of them came in an earlier ``"token"`` event -- taken
    off the end of the completion). ``text`` is the text the ids add, or for a rollback the text the
    retracted events had added (``shown = shown[:len(shown) - len(event.text)]``). A token's text can
    be ``""`` and come with the next token (half of a multi-byte character). ``in_call``: the token
    belongs to an open call (from `` [`` to the arrow), which a ``"result"`` completes or a
    ``"rollback"`` removes.

    Applied in order, the texts give the decoded completion (``stop_at_newline`` does not cut them),
    except a trailing incomplete character.
    """

    kind: str  # "token" | "result" | "rollback"
    ids: tuple[int, ...]
    text: str
    in_call: bool = False


class ToolGenerator(DecodeLoop):
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
        tool_threads: the most calls, of rows that reach the arrow in the same step, run at once
            (1: one after another, in the rows' order). See the module docstring for which run together.
    """

    def __init__(self, model, tokenizer, executor: Executor,
                 config: GenerationConfig | None = None, logits_processor=None,
                 fmt: CallFormat = DEFAULT_FORMAT, tool_threads: int = 8):
        self.model = model
        self.tokenizer = tokenizer
        if not callable(getattr(executor, "execute", None)):
            raise TypeError(f"executor must have execute(tool, input, context), got {type(executor).__name__} "
                            "(wrap a {name: Tool} mapping in tools.executor.ToolExecutor)")
        self.executor = executor
        if tool_threads < 1:
            raise ValueError(f"tool_threads must be >= 1, got {tool_threads}")
        self.tool_threads = tool_threads
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
        self.tool_seconds = 0.0  # time the last generate()/stream()/tokens() waited on tools (wall clock)
        self.oom_retries = 0  # batches the last generate() decoded again, halved, after running out of memory
        self.last_output: GenerationOutput | None = None  # the last stream()'s or tokens()'s full output
        self.last_decoded_tokens = 0  # token ids the last tokens()/stream() decoded to make its text

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

    def tokens(self, prompt: str, context: CallContext | None = None) -> Iterator[TokenEvent]:
        """Yield a :class:`TokenEvent` for each token of the completion of ``prompt`` as it is decided.

        Example (a call that runs, then text)::

            TokenEvent("token", (api,), " [", in_call=True), ... TokenEvent("token", (arrow,), " ->", True),
            TokenEvent("result", gen.result_ids(" 0.29"), " 0.29]"), TokenEvent("token", (t,), " 29", False)

        and a call whose tool fails: its ``"token"`` events, then ``TokenEvent("rollback", <their ids>,
        <their text>)``, then the token chosen with `` [`` masked. Each step decodes a window of a few
        tokens (:class:`~toolformer.detokenize.IncrementalText`): linear in the length. The full
        output is then in :attr:`last_output`.
        """
        self.tool_seconds = 0.0
        self._check([prompt])
        (row,) = rows = self._start_rows([(0, prompt, self._contexts(context, 1)[0])])
        row.log = []
        text = IncrementalText(self._text)
        self.last_decoded_tokens = 0
        for _ in self._decode_one(rows, self._sampler()):
            events, row.log = row.log, []
            for kind, ids, in_call in events:
                piece = text.rollback(len(ids)) if kind == ROLLBACK else text.push(ids)
                self.last_decoded_tokens = text.decoded_tokens
                yield TokenEvent(kind, tuple(ids), piece, in_call and kind == TOKEN)
        self.last_output = self._output(row)

    def stream(self, prompt: str, context: CallContext | None = None) -> Iterator[str]:
        """Yield the completion of ``prompt`` piece by piece as it is decoded.

        A call is held back while it is being written and appears as one piece, with its result,
        once it has run (a rolled-back call never appears). The pieces add up to the text of
        ``generate([prompt], [context])`` (cut at the first newline with ``stop_at_newline``); the
        full output is then in :attr:`last_output`. Built on :meth:`tokens`: linear in the length.
        """
        held: list[str] = []  # the text of the open call
        shown: list[str] = []
        cut = False  # stop_at_newline: the newline has been reached
        for event in self.tokens(prompt, context):
            if event.kind == ROLLBACK:
                held.clear()
                continue
            if event.in_call:
                held.append(event.text)
                continue
            piece = "".join(held) + event.text  # a result comes with its call
            held.clear()
            if cut or not piece:
                continue
            if self.config.stop_at_newline and "\n" in piece:
                piece, cut = piece.split("\n", 1)[0], True
                if not piece:
                    continue
            shown.append(piece)
            yield piece
        text, done = self.last_output.text, "".join(shown)
        if text.startswith(done):
            if len(text) > len(done):
                yield text[len(done):]  # a trailing incomplete character, or a last piece held back
        else:
            log.debug("stream: the pieces shown are not a prefix of the decoded text (tokenizer %s)",
                      getattr(self.tokenizer, "name_or_path", "?"))

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

    # ---- helpers -----------------------------------------------------------------------------

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

    def result_ids(self, result: str) -> list[int]:
        """Token ids injected after the arrow: ``result`` (with its leading space) and the closing marker."""
        kwargs = {"split_special_tokens": True} if self._split_special else {}
        return self.tokenizer(result + self.fmt.end, add_special_tokens=False, **kwargs).input_ids

    def _output(self, row: _Row) -> GenerationOutput:
        text = self._text(row.out)
        if self.config.stop_at_newline:
            text = text.split("\n", 1)[0]
        return GenerationOutput(prompt=row.prompt, text=text, text_without_calls=strip_calls(text, self.fmt),
                                calls=row.calls, num_tokens=len(row.out), abandoned_calls=row.abandoned)
