"""The model side of data generation (paper, section 2): one object that holds a causal LM, its
tokenizer and the tools' cached prompt heads, and does the two model steps of the method on
*units* (one window of one document, for one tool):

* :meth:`AugmentModel.sample`: score every position by p(" [" | P(x), x_<i), keep the top k above
  tau_s, sample m calls at each, parse and dedupe them;
* :meth:`AugmentModel.losses`: L+, L- (L(eps) and L(call without result)) of each executed candidate.

Plain data in and out (lists of dicts), so the same object serves :func:`toolformer.augment.augment_texts`
in-process and the Beam pipeline's RunInference handler (``pipelines/model_handler.py``), where it may
sit behind a cross-process proxy.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence

import torch

from toolformer.call_format import render_call
from toolformer.errors import OutOfMemory, free_memory, is_out_of_memory
from toolformer.filtering import CachedPrefix, FilterJob, batches_by_tokens, filter_losses
from toolformer.insertion import char_position
from toolformer.models import ModelError, load_model
from toolformer.sampling import (
    PromptCache,
    RowPool,
    SampleRequest,
    call_start_check,
    parse_sampled_call,
    score_positions,
    select_positions,
    stable_seed,
    stop_token_ids,
)

LOSS_DECIMALS = 6  # losses are stored rounded, and kept/refilter decide on the stored values


def token_classes(tokenizer) -> tuple[frozenset[int], frozenset[int], frozenset[int]]:
    """(tokens that begin with a space or tab, tokens that end a line, whitespace-only tokens)."""
    space, line, blank = set(), set(), set()
    for tid in range(len(tokenizer)):
        t = tokenizer.decode([tid])
        if t[:1] in (" ", "\t"):
            space.add(tid)
        if t.endswith("\n"):
            line.add(tid)
        if t and not t.strip():
            blank.add(tid)
    return frozenset(space), frozenset(line), frozenset(blank)


def unit_tokens(unit: dict) -> int:
    """A unit's weight for batching: its text appears twice in P(x) + x (a cheap estimate)."""
    return 2 * unit["n_tokens"] + 8


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """Everything an :class:`AugmentModel` is built from, in one picklable value: the Beam handler
    ships it to every worker, :func:`toolformer.augment.augment_texts` builds it from the settings.

    Args:
        model_spec: anything :func:`toolformer.models.load_model` accepts.
        templates: tool name -> few-shot prompt template with one ``{input}`` slot.
        tool_settings: tool name -> ToolSettings fields (tau_s, k, m, max_call_tokens, temperature...)
            and ``filter_examples`` (the filter's prompt with filter_context=prompt).
        takes_input: tool name -> whether the tool takes an input (Calendar does not).
        max_batch_tokens: token budget of one batched pass (halved on out-of-memory).
        context_window: cut the filter's left context to this many tokens (not the paper).
        lazy_filter: skip L(call without result) where L(eps) already rejects the call.
        device: cuda, cpu or mps (default: the best available).
    """

    model_spec: str
    templates: Mapping[str, str]
    tool_settings: Mapping[str, dict]
    takes_input: Mapping[str, bool]
    max_batch_tokens: int = 4096
    context_window: int | None = None
    lazy_filter: bool = False
    device: str | None = None

    def load(self) -> AugmentModel:
        return AugmentModel(
            self.model_spec, dict(self.templates), dict(self.tool_settings), dict(self.takes_input),
            self.max_batch_tokens, self.context_window, self.device, lazy_filter=self.lazy_filter,
        )


class AugmentModel:
    """One worker's model, tokenizer and per-tool prompt caches.

    Args:
        model_spec: anything :func:`toolformer.models.load_model` accepts.
        templates: tool name -> few-shot prompt template with one ``{input}`` slot.
        tool_settings: tool name -> ToolSettings fields (tau_s, k, m, max_call_tokens, temperature).
        takes_input: tool name -> whether the tool takes an input (Calendar does not).
        decode_rows: rows of the sampling pool (default: the knee measured for the device,
            :func:`toolformer.sampling.decode_rows_for`); the token budget bounds it too.
    """

    def __init__(
        self,
        model_spec: str,
        templates: dict[str, str],
        tool_settings: dict[str, dict],
        takes_input: dict[str, bool],
        max_batch_tokens: int = 4096,
        context_window: int | None = None,
        device: str | None = None,
        lazy_filter: bool = False,
        decode_rows: int | None = None,
    ):
        # No packed few-row weights (toolformer.packed_linear): the sampling pool decodes 48 rows
        # a step, where the plain product is as fast, and the copies would cost each worker 0.9 GB.
        self.model, self.tokenizer = load_model(model_spec, device=device, pack_weights=False)
        tok = self.tokenizer
        api = tok(" [", add_special_tokens=False)["input_ids"]
        if len(api) != 1:
            raise ModelError(
                f"the tokenizer of {model_spec!r} splits ' [' into {len(api)} tokens; "
                "the <API> marker must be one token"
            )
        self.api_id = api[0]
        self.start_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.pad_id = tok.pad_token_id
        self.settings = tool_settings
        self.takes_input = takes_input
        self.max_batch_tokens = max_batch_tokens
        self.first_batch_tokens, self.oom_halvings = max_batch_tokens, 0  # (see infer)
        self.context_window = context_window
        self.lazy_filter = lazy_filter
        self.decode_rows = decode_rows  # the sampling pool's rows (None: measured default for the device)
        self.prompts = {name: PromptCache(self.model, tok, t) for name, t in templates.items()}
        self.closing, self.abandoning = stop_token_ids(tok)
        self.space_start, self.line_end, self.blank = token_classes(tok)
        # filter_context=prompt: [start, examples] cached but for its last token, which starts each pass
        self.filter_prefixes: dict[str, tuple[CachedPrefix, int]] = {}
        for name, s in tool_settings.items():
            if s.get("filter_context") == "prompt":
                ids = [self.start_id, *tok(s["filter_examples"].rstrip(" "), add_special_tokens=False)["input_ids"]]
                self.filter_prefixes[name] = (CachedPrefix(self.model, ids[:-1]), ids[-1])
        # The shape of the last forward pass (rows, tokens): after an out-of-memory error it says
        # whether the batch that failed could be smaller (see infer). Every pass, scoring, sampling
        # and the filter's, runs the decoder.
        # (per thread: a multi-threaded worker shares one model between its threads)
        self._forward = threading.local()
        self.model.get_decoder().register_forward_pre_hook(self._note_forward, with_kwargs=True)

    def _note_forward(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is not None:
            self._forward.shape = (int(ids.shape[0]), int(ids.shape[0] * ids.shape[1]))

    def infer(self, task: str, units: list[dict]) -> tuple[list[dict], list[str]]:
        """:meth:`sample` (task "sample") or :meth:`losses` ("filter") of ``units``, and a line per
        out-of-memory retry.

        On an out-of-memory error the token budget of every batched pass (``max_batch_tokens``:
        scoring and filter batches, the sampling cache as 16x it) is halved and the whole call is
        redone; the budget stays halved for this worker's later batches. Records do not depend on
        the batching (every unit's samples draw from their own seeds; the filter's losses are
        batch-invariant with ``filter_context=prefix`` and move by float noise, ~1e-6, with
        ``prompt``), so a retried batch gives what it would have given at the smaller budget from
        the start. A pass of a single row that runs out of memory cannot be made smaller: that
        stops the run with :class:`~toolformer.errors.OutOfMemory` (one line; ``--resume`` then
        redoes only the units not journaled).

        Not accelerate's ``find_executable_batch_size``: it cuts a batch by 10% per failure and
        runs ``gc.collect()`` (plus the device cache) before every call, not only after a failure
        (here: every batch of a run), and it cannot tell a one-row pass (nothing left to halve)
        from a large one; its out-of-memory test (``should_reduce_batch_size``) is used.
        """
        retries: list[str] = []
        while True:
            try:
                out = self.sample(units) if task == "sample" else self.losses(units)
                return out, retries
            except RuntimeError as e:
                if not is_out_of_memory(e):
                    raise
                rows, tokens = getattr(self._forward, "shape", (0, 0))
                first = (str(e).strip().splitlines() or ["out of memory"])[0][:200]
            # (outside the except block: its traceback holds the failed pass's tensors)
            free_memory()
            if rows <= 1 or self.max_batch_tokens <= 1:
                raise OutOfMemory(
                    f"augment {task}: out of memory on a single row of {tokens} tokens (max_batch_tokens "
                    f"{self.max_batch_tokens}, halved {self.oom_halvings} times from {self.first_batch_tokens}), "
                    f"{first}; lower context_window "
                    "or the tool's window, or use a device with more memory, then rerun with --resume"
                )
            before, self.max_batch_tokens = self.max_batch_tokens, max(1, self.max_batch_tokens // 2)
            self.oom_halvings += 1
            retries.append(
                f"augment {task}: out of memory on a pass of {rows} rows ({tokens} tokens); "
                f"max_batch_tokens {before} -> {self.max_batch_tokens}, retrying {len(units)} units"
            )

    def word_starts(self, ids: Sequence[int]) -> torch.Tensor:
        """Positions i where a call may go with ``positions=word``: x_i begins with a space, or
        x_(i-1) ends a line. Never between two digits or inside a word (SmolLM2 writes " 555" as
        " ", "5", "5", "5": only the lone space starts the word)."""
        ok = [tid in self.space_start or (i > 0 and ids[i - 1] in self.line_end) for i, tid in enumerate(ids)]
        return torch.tensor(ok, dtype=torch.bool)

    def encode_text(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tokenizer(" " + text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], enc["offset_mapping"]

    def sample(self, units: list[dict]) -> list[dict]:
        """Score positions and sample calls for each unit ``{"doc_id", "tool", "offset", "text",
        "seed"}``; returns per unit its kept positions, parsed unique candidates and counts.

        One :class:`~toolformer.sampling.RowPool` serves the whole call: each scoring batch's
        positions join it as they are scored, and rows freed by ended samples are refilled at once
        from any window, document or tool of ``units``. The pool runs until every position of a
        batch has its row before the next batch is scored (one batch's scoring cache alive at a
        time), and is drained at the end. Samples do not depend on this schedule (each draws from its
        own seed) up to float rounding: the batch shape moves logits by ~1e-5, which flips a draw only
        where its uniform lands that close to a CDF boundary (1 sample in 150 on 6 GSM8K documents)."""
        results: list[dict | None] = [None] * len(units)
        by_tool: dict[str, list[int]] = {}
        for n, u in enumerate(units):
            by_tool.setdefault(u["tool"], []).append(n)
        pool = RowPool(
            self.model, self.api_id, self.closing, self.abandoning,
            max_rows=self.decode_rows, max_cache_tokens=16 * self.max_batch_tokens,
        )
        done: list[tuple] = []  # per scoring batch: (tool, units, kept positions, probs, encodings, requests, samples)
        score_s: dict[int, float] = {}
        sample_s = 0.0
        for tool, members in sorted(by_tool.items()):
            prompt = self.prompts[tool]
            s = self.settings[tool]
            viable = call_start_check(self.tokenizer, tool)
            enc = [self.encode_text(units[n]["text"]) for n in members]
            mids = [
                self.tokenizer(prompt.parts.middle(units[n]["text"]), add_special_tokens=False)["input_ids"]
                for n in members
            ]
            for chunk in batches_by_tokens(
                [len(m) + len(e[0]) for m, e in zip(mids, enc)], self.max_batch_tokens
            ):
                t0 = time.perf_counter()
                scored = score_positions(
                    self.model,
                    prompt,
                    [mids[c] for c in chunk],
                    [enc[c][0] for c in chunk],
                    self.api_id,
                    self.pad_id,
                )
                t1 = time.perf_counter()
                requests, kept, probs = [], [], scored.probs
                for row, c in enumerate(chunk):
                    u = units[members[c]]
                    p = probs[row]
                    if s.get("positions", "token") == "word":
                        p = p.masked_fill(~self.word_starts(enc[c][0]), 0.0)
                    positions = select_positions(p, s["k"], s["tau_s"])
                    kept.append(positions)
                    requests += [
                        SampleRequest(row, i, stable_seed(u["seed"], u["doc_id"], tool, u["offset"], i, j))
                        for i in positions
                        for j in range(s["m"])
                    ]
                    score_s[members[c]] = (t1 - t0) / len(chunk)
                samples = pool.add(scored, requests, s["max_call_tokens"], s["temperature"], viable)
                del scored  # the pool holds it until its last position has a row
                pool.run(drain=False)
                sample_s += time.perf_counter() - t1
                done.append((tool, [members[c] for c in chunk], kept, probs, [enc[c] for c in chunk], requests, samples))
        t0 = time.perf_counter()
        pool.run()
        sample_s += time.perf_counter() - t0
        for tool, ns, kept, probs, encs, requests, samples in done:
            by_row: dict[int, list] = {}
            for req, toks in zip(requests, samples):
                by_row.setdefault(req.row, []).append((req.position, toks))
            for row, n in enumerate(ns):
                results[n] = self._candidates(
                    units[n],
                    tool,
                    kept[row],
                    probs[row],
                    encs[row],
                    by_row.get(row, []),
                    {"score_s": score_s[n], "sample_s": sample_s / len(units)},
                )
        return results

    def _candidates(
        self,
        unit: dict,
        tool: str,
        positions: list[int],
        probs: torch.Tensor,
        encoded: tuple[list[int], list[tuple[int, int]]],
        samples: list,
        timing: dict,
    ) -> dict:
        _, offsets = encoded
        seen: set[tuple[int, str]] = set()
        cands, unterminated, unparsed, duplicates = [], 0, 0, 0
        for i, toks in samples:
            if toks is None:  # never closed, or abandoned early: it did not start with "Tool("
                unterminated += 1
                continue
            arg = parse_sampled_call(tool, self.tokenizer.decode(toks), takes_input=self.takes_input[tool])
            if arg is None:
                unparsed += 1
                continue
            if (i, arg) in seen:
                duplicates += 1
                continue
            seen.add((i, arg))
            cands.append(
                {
                    "token_position": i,
                    "position": unit["offset"] + char_position(offsets, i, unit["text"]),
                    "input": arg,
                    "call": render_call(tool, arg),
                }
            )
        cands.sort(key=lambda c: (c["token_position"], c["input"]))
        return {
            "positions": [{"token_position": i, "p": float(probs[i])} for i in positions],
            "candidates": cands,
            "samples": len(samples),
            "unterminated": unterminated,
            "unparsed": unparsed,
            "duplicates": duplicates,
            "timing": timing,
        }

    def losses(self, units: list[dict]) -> list[dict]:
        """L+, L-, L(eps) and L(call without result) for every candidate (with a result) of each
        unit ``{"tool", "text", "candidates": [{"token_position", "input", "result", "error"}]}``;
        candidates whose call failed (``error`` set) are skipped."""
        t0 = time.perf_counter()
        losses: list = [None] * len(units)
        # units of one tool share its filter settings; one filter call per (tool) group
        by_tool: dict[str, list[int]] = {}
        for n, u in enumerate(units):
            by_tool.setdefault(u["tool"], []).append(n)
        for tool, members in sorted(by_tool.items()):
            s = self.settings[tool]
            mode = s.get("filter_context", "prefix")
            lead = " " if mode != "prefix" else ""  # inline: the call follows x_<i with its own space
            enc = lambda t: tuple(self.tokenizer(lead + t, add_special_tokens=False)["input_ids"])
            jobs = [
                FilterJob(
                    tuple(self.encode_text(units[n]["text"])[0]),
                    tuple(
                        (
                            c["token_position"],
                            enc(render_call(tool, c["input"], c["result"])),
                            enc(render_call(tool, c["input"])),
                        )
                        for c in units[n]["candidates"]
                        if c.get("error") is None and not c.get("dropped")
                    ),
                )
                for n in members
            ]
            prefix, first_id = self.filter_prefixes.get(tool, (None, self.start_id))
            got = filter_losses(
                self.model,
                jobs,
                first_id,
                self.pad_id,
                self.context_window,
                self.max_batch_tokens,
                settle_below=[s["tau_f"]] * len(jobs) if self.lazy_filter else None,
                blank_ids=self.blank if s.get("loss_start", "token") == "nonspace" else None,
                prefix=prefix,
                inline=mode != "prefix",
            )
            for n, per_unit in zip(members, got):
                losses[n] = per_unit
        seconds = (time.perf_counter() - t0) / max(1, len(units))
        r = lambda v: None if v is None else round(v, LOSS_DECIMALS)
        return [
            {
                "losses": [
                    {
                        "loss_plus": r(x.loss_plus),
                        "loss_minus": r(x.loss_minus),
                        "loss_empty": r(x.loss_empty),
                        "loss_no_result": r(x.loss_no_result),
                    }
                    for x in per_unit
                ],
                "seconds": seconds,
            }
            for per_unit in losses
        ]
