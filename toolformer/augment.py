"""The method without Beam: augment a list of texts in-process (paper, section 2).

:func:`augment_texts` runs the steps of data generation on plain documents, in this order, and
returns the records a pipeline run writes (``texts``, ``candidates``, ``errors``) with its counts:

1. **route** (:func:`route_document`): every tool whose heuristic accepts a document gets its
   windows of at most ``window`` tokens -- a *unit* is one (document, tool, window);
2. **score and sample** (:meth:`~toolformer.augment_model.AugmentModel.sample`): positions by
   p(" [" | P(x), x_<i), the top k above tau_s, m calls sampled at each, parsed and deduped;
3. **ground and execute** (:func:`ground_candidates`, :func:`execute_candidates`): candidates whose
   input is not in the text before them are dropped (a departure from the paper, README); the
   others run through the executor;
4. **filter** (:meth:`~toolformer.augment_model.AugmentModel.losses`,
   :func:`candidate_records`): L+, L- and the decision L- - L+ >= tau_f;
5. **merge** (:func:`merge_document`): the kept calls inserted into the text, one per position.

The Beam pipeline (``pipelines/``) runs these same functions inside its steps (and adds what a
cluster needs: reading files in parallel, resumable parts, a journal, sharded writers, metrics).
Records are the same as the pipeline's for the same documents and settings, except for float
noise in the losses (~1e-6 before rounding, from the batching) -- a test compares the two.

Example::

    from toolformer.augment import augment_texts
    from toolformer.settings import build_settings
    from tools.base import build_tools
    from tools.executor import ToolExecutor

    settings = build_settings(tools=("calculator",), overrides=["calculator.tau_f=0.3"])
    out = augment_texts(["She has 10 + 20 = 30 apples."], "smollm2-135m",
                        ToolExecutor(build_tools(["calculator"])), settings)
    out.texts[0]["text"], out.candidates, out.counts
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from toolformer.augment_model import AugmentModel, ModelPlan, unit_tokens
from toolformer.documents import DOC, dead_letter, doc_rng, document_date, make_document, unique_documents
from toolformer.execution import CallContext, Executor
from toolformer.filtering import batches_by_tokens, keep_if_useful
from toolformer.insertion import insert_calls
from toolformer.progress import Throttle, progress_text
from toolformer.settings import RunSettings

progress_log = logging.getLogger("toolformer.progress")


def add_counts(counts: Mapping[str, int], more: Mapping[str, int]) -> dict[str, int]:
    """``counts`` plus ``more``, zeros left out (a zero is never a counter: the totals match)."""
    out = dict(counts)
    for k, v in more.items():
        if v:
            out[k] = out.get(k, 0) + v
    return out


def split_windows(text: str, tokenizer, window: int) -> list[tuple[int, str, int]]:
    """``(char offset, window text, tokens)`` pieces of at most ``window`` tokens of " " + text.

    Cuts fall on token boundaries; each window's text starts at a non-space character.
    """
    enc = tokenizer(" " + text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    pieces = []
    for start in range(0, len(offsets), window):
        a = max(0, offsets[start][0] - 1)
        end = min(len(offsets), start + window)
        b = len(text) if end == len(offsets) else max(0, offsets[end][0] - 1)
        while a < b and text[a].isspace():
            a += 1
        if a < b:
            piece = text[a:b]
            pieces.append((a, piece, len(tokenizer(" " + piece, add_special_tokens=False)["input_ids"])))
    return pieces


def route_document(
    doc: Mapping[str, Any], tools: Mapping[str, Any], windows: Mapping[str, int], tokenizer, seed: int
) -> list[dict]:
    """The (window, tool) units of a document: every tool whose heuristic accepts it, per window.

    The heuristic's randomness (e.g. Calculator's 1% share) comes from :func:`doc_rng`, a stable
    hash of (document, seed, tool), so routing does not depend on order or workers.
    """
    date = document_date(doc)
    units = []
    for name in sorted(tools):
        if not tools[name].accepts(doc, doc_rng(doc["doc_id"], seed, name)):
            continue
        for offset, text, n_tokens in split_windows(doc["text"], tokenizer, windows[name]):
            units.append(
                {
                    "doc_id": doc["doc_id"],
                    "tool": name,
                    "offset": offset,
                    "text": text,
                    "n_tokens": n_tokens,
                    "seed": seed,
                    "date": date.isoformat() if date else None,
                }
            )
    return units


def unit_key(unit: Mapping[str, Any]) -> tuple[str, str, int]:
    """What identifies a unit across runs: (document id, tool, window offset)."""
    return unit["doc_id"], unit["tool"], unit["offset"]


def attach_samples(unit: dict, sampled: dict) -> dict:
    """The unit with its unique parsed candidates (what Execute needs)."""
    return {**unit, "candidates": sampled["candidates"]}


def sample_counts(unit: dict, sampled: dict) -> dict[str, int]:
    """The sampling step's counts of one unit, as counter name -> increment."""
    tool = unit["tool"]
    return add_counts(
        {},
        {
            f"positions:{tool}": len(sampled["positions"]),
            f"samples:{tool}": sampled["samples"],
            f"unterminated:{tool}": sampled["unterminated"],
            f"unparsed:{tool}": sampled["unparsed"],
            f"duplicates:{tool}": sampled["duplicates"],
            f"candidates:{tool}": len(sampled["candidates"]),
        },
    )


def ground_candidates(unit: dict, tool, required: bool) -> dict:
    """Mark each candidate ``grounded`` (its input is read in the text before it: the tool's rule,
    :meth:`tools.base.Tool.grounded`); with ``required`` the others are ``dropped`` before they are
    executed or filtered (``dropped: "ungrounded"``; recorded, never kept). The text before is the
    unit's window up to the call."""
    out = []
    for c in unit["candidates"]:
        before = unit["text"][: max(0, c["position"] - unit["offset"])]
        ok = bool(tool.grounded(c["input"], before))
        out.append({**c, "grounded": ok, "dropped": None if ok or not required else "ungrounded"})
    return {**unit, "candidates": out}


def execute_candidates(unit: dict, executor, retries: int = 2) -> tuple[dict, list[dict]]:
    """Run every candidate's call through the executor, with the document's date as context
    (candidates already ``dropped`` are not run: result and error stay None).

    Returns the unit (each candidate now has ``result`` or ``error``/``message``) and dead letters
    for the failures. Transient failures are retried (tools are deterministic or read-only, so a
    retry is safe); an exception a tool should not raise is recorded as ``exception``, not fatal.
    """
    context = CallContext(
        date=dt.date.fromisoformat(unit["date"]) if unit["date"] else None, doc_id=unit["doc_id"]
    )
    out, dead = [], []
    for cand in unit["candidates"]:
        if cand.get("dropped"):
            out.append({**cand, "result": None, "error": None})
            continue
        for _ in range(retries + 1):
            try:
                outcome = executor.execute(unit["tool"], cand["input"], context)
                result, error, message = outcome.result, outcome.error, outcome.message
            except Exception as e:  # noqa: BLE001  (a tool bug must cost one candidate, not the job)
                result, error, message = None, "exception", f"{type(e).__name__}: {e}"
            if error not in executor.TRANSIENT and not (error or "").startswith("http_"):
                break
        out.append({**cand, "result": result, "error": error})
        if error is not None:
            dead.append(
                dead_letter(
                    unit["doc_id"],
                    "execute",
                    error,
                    f"tool {unit['tool']} position {cand['position']} call {cand['call']}: {message}",
                )
            )
    return {**unit, "candidates": out}, dead


def execute_counts(unit: dict) -> dict[str, int]:
    """Executed calls and failures by reason (``tool_failures:<tool>:<reason>``) of an executed unit."""
    tool = unit["tool"]
    dropped = sum(bool(c.get("dropped")) for c in unit["candidates"])
    counts = {f"executed:{tool}": len(unit["candidates"]) - dropped}
    if dropped:
        counts[f"ungrounded:{tool}"] = dropped
    for c in unit["candidates"]:
        if c["error"] is not None:
            counts = add_counts(counts, {f"tool_failures:{tool}:{c['error']}": 1})
    return counts


def candidate_records(unit: dict, losses: list[dict], tau_f: float) -> list[dict]:
    """One output record per candidate of a unit (failed calls too: error set, no losses, not kept)."""
    loss_iter = iter(losses)
    records = []
    for c in unit["candidates"]:
        rec = {
            "doc_id": unit["doc_id"],
            "tool": unit["tool"],
            "window_offset": unit["offset"],
            "position": c["position"],
            "token_position": c["token_position"],
            "call": c["call"],
            "input": c["input"],
            "result": c["result"],
            "error": c["error"],
            "threshold": tau_f,
            "grounded": c.get("grounded"),
            "dropped": c.get("dropped"),
        }
        if c["error"] is None and not c.get("dropped"):
            loss = next(loss_iter)
            delta = round(loss["loss_minus"] - loss["loss_plus"], 6)
            rec.update(loss, delta=delta, kept=keep_if_useful(loss["loss_plus"], loss["loss_minus"], tau_f))
        else:
            rec.update(
                loss_plus=None, loss_minus=None, loss_empty=None, loss_no_result=None, delta=None, kept=False
            )
        records.append(rec)
    return records


def merge_document(doc: dict, records: Iterable[dict]) -> dict:
    """The text record: the document with its kept calls inserted (x*), calls as data.

    At most one call per character position: the one with the largest loss reduction (ties:
    the smaller call text), so calls from several tools or windows never stack at one spot.
    """
    best: dict[int, dict] = {}
    for r in records:
        if not r["kept"]:
            continue
        cur = best.get(r["position"])
        if cur is None or (-r["delta"], r["call"], r["tool"]) < (-cur["delta"], cur["call"], cur["tool"]):
            best[r["position"]] = r
    calls = [
        {"tool": r["tool"], "input": r["input"], "result": r["result"], "position": r["position"]}
        for _, r in sorted(best.items())
    ]
    return {**doc, "text": insert_calls(doc["text"], calls), "calls": calls}




# --- The whole method, in-process ----------------------------------------------------------------


def model_plan(tools: Mapping[str, Any], settings: RunSettings, specs: Mapping[str, str] | None = None) -> ModelPlan:
    """The :class:`~toolformer.augment_model.ModelPlan` of a run: the settings' model and batching,
    and of each tool (by name) its few-shot prompt P(x), whether it takes an input, and its
    ToolSettings as a dict with the filter's examples when ``filter_context`` is "prompt". ``specs``
    maps a tool's name to the spec its settings are keyed by (``--tools calculator`` or
    ``module:Class``; default: the name)."""
    templates, takes_input, per_tool = {}, {}, {}
    for name, tool in tools.items():
        s = dict(dataclasses.asdict(settings.for_tool((specs or {}).get(name, name))))
        # the examples the filter puts before each text with filter_context=prompt (results included)
        s["filter_examples"] = tool.filter_examples() if s["filter_context"] == "prompt" else ""
        templates[name], takes_input[name], per_tool[name] = tool.prompt_template, tool.takes_input, s
    return ModelPlan(settings.model, templates, per_tool, takes_input, settings.max_batch_tokens,
                     settings.context_window, settings.lazy_filter)


@dataclasses.dataclass
class Augmented:
    """What :func:`augment_texts` returns: the records of a pipeline run's three shard kinds and its
    counters (the names ``stats.json`` is summarised from: ``docs_read``, ``kept:Calculator``...)."""

    texts: list[dict]  # every document, with its kept calls inserted (``calls`` as data)
    candidates: list[dict]  # every candidate with its losses and decision
    errors: list[dict]  # dead letters: unreadable records, duplicate ids, failed calls
    counts: dict[str, int]


def _batches(units: list[dict], max_tokens: int) -> list[list[dict]]:
    return [[units[i] for i in chunk] for chunk in batches_by_tokens([unit_tokens(u) for u in units], max_tokens)]


def augment_texts(
    texts: Iterable[str | Mapping[str, Any]],
    model: AugmentModel | str,
    executor: Executor,
    settings: RunSettings | None = None,
    specs: Mapping[str, str] | None = None,
    progress: bool = False,
) -> Augmented:
    """Augment ``texts`` (strings, or records ``{"doc_id"?, "text", "date"?, ...}``) with the tools of
    ``executor`` (an :class:`~toolformer.execution.Executor` with a ``tools`` mapping, e.g.
    ``tools.executor.ToolExecutor``) and the model ``model`` (an :class:`AugmentModel`, or a model
    spec loaded with the run settings). Returns the records a pipeline run writes for the same
    documents, in document-id order.

    ``settings`` (default: the paper's, :class:`~toolformer.settings.RunSettings`) is read as the
    pipeline reads it; ``parts``, ``num_shards``, ``large_model`` and ``threads`` only shape a
    pipeline run and are ignored here; ``limit`` keeps the documents with the smallest ids, as the
    pipeline does. A bad record becomes a dead letter naming its index (``texts[3]``), the others
    are processed. ``progress`` logs a line every 15 s (logger ``toolformer.progress``).
    """
    settings = settings or RunSettings()
    tools = dict(executor.tools)
    plan = model_plan(tools, settings if isinstance(model, AugmentModel) else
                      dataclasses.replace(settings, model=model), specs)
    if isinstance(model, str):
        model = plan.load()
    counts: dict[str, int] = {}
    errors: list[dict] = []
    docs = []
    for n, record in enumerate(texts):
        kind, made = make_document({"text": record} if isinstance(record, str) else record, f"texts[{n}]",
                                   settings.text_field)
        if kind == DOC:
            docs.append(made)
        else:
            errors.append(made)
            counts = add_counts(counts, {"docs_bad": 1, f"bad_records:{made['reason']}": 1})
    unique, duplicates = unique_documents(docs, settings.limit)
    for doc in [*unique.values(), *duplicates]:
        counts = add_counts(counts, {"docs_read": 1, "docs_truncated": int(bool(doc.get("truncated")))})
    for doc in duplicates:
        counts = add_counts(counts, {"docs_duplicate_id": 1})
        errors.append(dead_letter(doc["doc_id"], "read", "duplicate_id", f"another document has id {doc['doc_id']!r}"))
    windows = {name: s["window"] for name, s in plan.tool_settings.items()}
    units = []
    for doc in unique.values():
        routed = route_document(doc, tools, windows, model.tokenizer, settings.seed)
        for name in sorted({u["tool"] for u in routed}):
            counts = add_counts(counts, {f"docs_routed:{name}": 1,
                                         f"windows:{name}": sum(u["tool"] == name for u in routed)})
        units += routed

    throttle = Throttle(15.0)
    t0 = time.monotonic()

    def report(what: str, done: int, total: int) -> None:
        if progress and throttle.due(force=done == total):
            progress_log.info("%s", progress_text(f"augment {what}", done, time.monotonic() - t0, total))

    to_filter, records, done = [], [], 0
    for batch in _batches(units, model.max_batch_tokens):
        sampled, retries = model.infer("sample", batch)
        for line in retries:
            progress_log.warning("%s", line)
        for unit, got in zip(batch, sampled):
            counts = add_counts(counts, sample_counts(unit, got))
            if got["candidates"]:
                unit = ground_candidates(attach_samples(unit, got), tools[unit["tool"]],
                                         plan.tool_settings[unit["tool"]]["grounded"])
                unit, dead = execute_candidates(unit, executor, settings.tool_retries)
                counts = add_counts(counts, execute_counts(unit))
                errors += dead
                to_filter.append(unit)
        done += len(batch)
        report("sample", done, len(units))
    t0, done = time.monotonic(), 0
    for batch in _batches(to_filter, model.max_batch_tokens):
        filtered, retries = model.infer("filter", batch)
        for line in retries:
            progress_log.warning("%s", line)
        for unit, got in zip(batch, filtered):
            tool = unit["tool"]
            recs = candidate_records(unit, got["losses"], plan.tool_settings[tool]["tau_f"])
            counts = add_counts(counts, {f"kept:{tool}": sum(r["kept"] for r in recs)})
            records += recs
        done += len(batch)
        report("filter", done, len(to_filter))
    by_doc: dict[str, list[dict]] = {}
    for r in records:
        by_doc.setdefault(r["doc_id"], []).append(r)
    merged = []
    for doc_id, doc in unique.items():
        text = merge_document(doc, by_doc.get(doc_id, []))
        counts = add_counts(counts, {"texts_written": 1, "texts_with_calls": int(bool(text["calls"]))})
        merged.append(text)
    return Augmented(merged, records, errors, counts)
