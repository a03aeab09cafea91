"""The language model inside Beam: our own RunInference ModelHandler and the object it loads.

``apache_beam.ml.inference.huggingface_inference`` does not import under transformers 5 (it
imports TensorFlow classes), so this is a small handler of our own. RunInference loads one
:class:`AugmentModel` per worker process (or, with ``large_model=True``, one per machine shared
across processes through ``multi_process_shared``: then every call goes through a proxy, which is
why :class:`AugmentModel`'s methods take and return plain picklable data only). Batches are
formed by a token budget, not an element count. Used by ``pipelines/augment.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from toolformer.call_format import render_call
from toolformer.errors import OutOfMemory, free_memory, is_out_of_memory
from toolformer.filtering import CachedPrefix, FilterJob, batches_by_tokens, filter_losses
from toolformer.insertion import char_position
from toolformer.models import ModelError, load_model
from toolformer.progress import Throttle, progress_text
from toolformer.sampling import (
    PromptCache,
    SampleRequest,
    call_start_check,
    parse_sampled_call,
    sample_calls,
    score_positions,
    select_positions,
    stable_seed,
    stop_token_ids,
)

PROGRESS_EVERY_S = 15.0
log = logging.getLogger(__name__)
progress_log = logging.getLogger("toolformer.progress")  # `toolformer augment` shows it at INFO
PROGRESS_NAMESPACE = "toolformer_progress"  # not stats.json's "toolformer": never in a run's counts
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


class AugmentModel:
    """One worker's model, tokenizer and per-tool prompt caches.

    Args:
        model_spec: anything :func:`toolformer.models.load_model` accepts.
        templates: tool name -> few-shot prompt template with one ``{input}`` slot.
        tool_settings: tool name -> ToolSettings fields (tau_s, k, m, max_call_tokens, temperature).
        takes_input: tool name -> whether the tool takes an input (Calendar does not).
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
    ):
        self.model, self.tokenizer = load_model(model_spec, device=device)
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
        "seed"}``; returns per unit its kept positions, parsed unique candidates and counts."""
        results: list[dict | None] = [None] * len(units)
        by_tool: dict[str, list[int]] = {}
        for n, u in enumerate(units):
            by_tool.setdefault(u["tool"], []).append(n)
        for tool, members in sorted(by_tool.items()):
            prompt = self.prompts[tool]
            s = self.settings[tool]
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
                requests, kept = [], []
                for row, c in enumerate(chunk):
                    u = units[members[c]]
                    probs = scored.probs[row]
                    if s.get("positions", "token") == "word":
                        probs = probs.masked_fill(~self.word_starts(enc[c][0]), 0.0)
                    positions = select_positions(probs, s["k"], s["tau_s"])
                    kept.append(positions)
                    requests += [
                        SampleRequest(row, i, stable_seed(u["seed"], u["doc_id"], tool, u["offset"], i, j))
                        for i in positions
                        for j in range(s["m"])
                    ]
                samples = sample_calls(
                    self.model,
                    scored,
                    requests,
                    self.api_id,
                    self.closing,
                    self.abandoning,
                    s["max_call_tokens"],
                    s["temperature"],
                    max_cache_tokens=16 * self.max_batch_tokens,
                    viable=call_start_check(self.tokenizer, tool),
                )
                t2 = time.perf_counter()
                by_row: dict[int, list] = {}
                for req, toks in zip(requests, samples):
                    by_row.setdefault(req.row, []).append((req.position, toks))
                for row, c in enumerate(chunk):
                    u = units[members[c]]
                    results[members[c]] = self._candidates(
                        u,
                        tool,
                        kept[row],
                        scored.probs[row],
                        enc[c],
                        by_row.get(row, []),
                        {"score_s": (t1 - t0) / len(chunk), "sample_s": (t2 - t1) / len(chunk)},
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


def units_so_far(task: str, done: int) -> int | None:
    """This worker's units so far for ``task``: ``done`` plus those routed (sample) or executed,
    i.e. sampled with candidates (filter), in the current bundle but not yet through the task.

    Read from the Beam counters of the steps fused with the model in the current bundle (Route's
    ``windows:*``, Execute's ``time_ms:execute`` count, this handler's ``units_done:*``), through
    the SDK harness's state sampler (not a public Beam API: None wherever it cannot be read, or
    where Route runs in an earlier stage, e.g. on a resumed part).
    """
    try:
        from apache_beam.runners.worker import statesampler

        states = getattr(statesampler.get_current_tracker(), "_states_by_name", None) or {}
        containers = {id(s.metrics_container): s.metrics_container for s in list(states.values())}
        arrived = passed = 0
        for container in containers.values():
            if container is None:
                continue
            got = container.get_cumulative()
            for key, n in got.counters.items():
                ns, name = key.metric.namespace, key.metric.name
                if task == "sample" and ns == "toolformer" and name.startswith("windows:"):
                    arrived += n
                elif ns == PROGRESS_NAMESPACE and name == f"units_done:{task}":
                    passed += n
            if task == "filter":
                for key, d in got.distributions.items():
                    if key.metric.namespace == "toolformer" and key.metric.name == "time_ms:execute":
                        arrived += d.count
    except Exception:  # another runner's harness, another Beam version
        return None
    waiting = arrived - passed
    return done + waiting if arrived and waiting >= 0 else None


class AugmentModelHandler(ModelHandler):
    """RunInference handler: ``task`` "sample" (score positions + sample calls) or "filter" (losses).

    Batches hold at most ``max_batch_tokens`` estimated tokens (BatchElements counts element
    sizes, not elements); ``large_model`` shares one model per machine across processes.
    ``expected_units``, where the launcher knows it (e.g. a single-worker run that routed its
    documents first, with the tokenizer alone), makes the progress line done/total with an ETA.
    """

    def __init__(
        self,
        task: str,
        model_spec: str,
        templates: dict[str, str],
        tool_settings: dict[str, dict],
        takes_input: dict[str, bool],
        max_batch_tokens: int = 4096,
        context_window: int | None = None,
        large_model: bool = False,
        device: str | None = None,
        threads: int = 0,
        lazy_filter: bool = False,
        expected_units: int | None = None,
    ):
        if task not in ("sample", "filter"):
            raise ValueError(f"unknown task {task!r}")
        super().__init__(
            min_batch_size=max_batch_tokens,
            max_batch_size=max_batch_tokens,
            element_size_fn=unit_tokens,
            large_model=large_model,
        )
        self.task = task
        self.model_spec = model_spec
        self.templates = templates
        self.tool_settings = tool_settings
        self.takes_input = takes_input
        self.max_batch_tokens = max_batch_tokens
        self.context_window = context_window
        self.device = device
        self.threads = threads
        self.lazy_filter = lazy_filter
        self.expected_units = expected_units  # this task's units on this worker, where known

    def load_model(self) -> AugmentModel:
        if self.threads:
            # Measured here: on a shared 2-core machine a 2-thread matmul of a few rows waits ~24 ms
            # for its second thread; one thread ran the same work 10x faster.
            torch.set_num_threads(self.threads)
        return AugmentModel(
            self.model_spec,
            self.templates,
            self.tool_settings,
            self.takes_input,
            self.max_batch_tokens,
            self.context_window,
            self.device,
            lazy_filter=self.lazy_filter,
        )

    def run_inference(
        self, batch: Sequence[dict], model: AugmentModel, inference_args: dict[str, Any] | None = None
    ) -> Iterable[tuple[dict, Any]]:
        if getattr(self, "_throttle", None) is None:  # the progress clock starts with the first batch
            self._throttle, self._units, self._candidates = Throttle(PROGRESS_EVERY_S), 0, 0
        # no_grad here, not torch.set_grad_enabled(False) at load: that flag is global to the thread,
        # and the in-process runner shares its thread with whatever runs next (e.g. fine-tuning).
        with torch.no_grad():
            out, retries = model.infer(self.task, list(batch))
        for line in retries:  # out-of-memory retries with a halved batch budget (AugmentModel.infer)
            log.warning("%s", line)
            Metrics.counter("toolformer", f"oom_retries:{self.task}").inc()
        self._progress(batch)
        return list(zip(batch, out))

    def _progress(self, batch: Sequence[dict]) -> None:
        """A progress line per worker and task every ``PROGRESS_EVERY_S`` (units = document windows
        per tool): logged, so it reaches a terminal and a cluster worker's log alike.

        Done/total, rate and ETA where the total is known (``expected_units``). Otherwise the
        total is not known to a worker: Route runs fused with the model, so documents are routed
        only as the model consumes them (measured on the local runner: the units routed stay one
        batch ahead of those sampled). The line then gives the units routed (sample) or sampled
        with candidates (filter) so far in this bundle and no ETA (see :func:`units_so_far`).
        """
        self._units += len(batch)
        Metrics.counter(PROGRESS_NAMESPACE, f"units_done:{self.task}").inc(len(batch))
        if self.task == "filter":
            self._candidates += sum(len(u["candidates"]) for u in batch)
        total = self.expected_units
        finished = total is not None and self._units >= total
        if not self._throttle.due(force=finished):
            return
        what = "augment sample" if self.task == "sample" else "augment filter"
        extra = f" ({self._candidates} candidates)" if self.task == "filter" else ""
        if total is not None:
            line = progress_text(what, self._units, self._throttle.elapsed(), total, extra=extra)
        else:
            so_far = units_so_far(self.task, self._units)
            line = progress_text(
                what,
                self._units,
                self._throttle.elapsed(),
                so_far,
                final=False,
                so_far="routed" if self.task == "sample" else "sampled with candidates",
                extra=extra,
            )
        progress_log.info("%s", line)

    def get_metrics_namespace(self) -> str:
        return "toolformer_" + self.task
