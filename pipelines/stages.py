"""The pipeline's steps: the small DoFns that run the core's plain functions inside Beam.

Route -> (ScoreAndSample: RunInference) -> Execute -> (Filter: RunInference) -> FinishUnit ->
Merge. The functions (route, ground, execute, candidate records, merge) live in
:mod:`toolformer.augment`, which also runs them in-process (``augment_texts``); each DoFn here only
counts metrics and routes outputs (main or dead letter), and the resume journal is this module's.
Built into a pipeline by ``pipelines/augment.py``.

A *unit* is one (document, tool, token window). Its outcome -- candidate records, dead letters of
failed calls, and its counts -- travels with it to ``FinishUnitFn``, which adds the counts to the
Beam counters and appends the outcome as one line to the run's resume journal before any barrier
(the join by document waits for all model work). A resumed run replays journaled units through the
same ``FinishUnitFn`` instead of recomputing them, so its records and counts equal an
uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.rundir import RESUME_HINT

# The steps themselves are the core's (toolformer/augment.py, also run in-process by augment_texts);
# re-exported here for the pipeline's modules and code written against this path.
from toolformer.augment import (  # noqa: F401
    add_counts,
    attach_samples,
    candidate_records,
    execute_candidates,
    execute_counts,
    ground_candidates,
    merge_document,
    route_document,
    sample_counts,
    split_windows,
    unit_key,
)
from toolformer.documents import dead_letter
from toolformer.errors import raise_if_storage_full
from toolformer.sampling import stable_seed


def stable_digest(*parts: object) -> str:
    """A hex digest of ``parts`` (stable across processes and runs)."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=True).encode("ascii")).hexdigest()[:32]


NAMESPACE = "toolformer"
DEAD = "dead_letter"
FINISHED = "finished"  # a unit's outcome (no candidates: it skips Execute and Filter)
RESUMED = "resumed"  # a journaled unit's outcome, replayed instead of recomputed
JOURNAL_ROTATE_UNITS = 200  # a journal file is closed (committed, on object stores) after this many
JOURNAL_ROTATE_S = 60.0  # ... units or seconds, and at the end of every bundle


def count(name: str, n: int = 1) -> None:
    if n:
        Metrics.counter(NAMESPACE, name).inc(n)


def record_seconds(stage: str, seconds: float) -> None:
    Metrics.distribution(NAMESPACE, f"time_ms:{stage}").update(round(seconds * 1000))


def in_part(key: str, part: int, parts: int) -> bool:
    return stable_seed("part", key) % parts == part


# --- Route -----------------------------------------------------------------------------------


class RouteFn(beam.DoFn):
    def __init__(
        self,
        tool_specs: Mapping[str, str],
        tool_config: Mapping[str, dict],
        windows: Mapping[str, int],
        model_spec: str,
        seed: int,
    ):
        self.tool_specs, self.tool_config, self.windows = dict(tool_specs), dict(tool_config), dict(windows)
        self.model_spec, self.seed = model_spec, seed

    def setup(self):
        from toolformer.models import load_tokenizer
        from tools.base import get_tool

        self.tokenizer = load_tokenizer(self.model_spec)
        self.tools = {
            name: get_tool(spec, **self.tool_config.get(name, {})) for name, spec in self.tool_specs.items()
        }

    def process(self, doc):
        t0 = time.perf_counter()
        units = route_document(doc, self.tools, self.windows, self.tokenizer, self.seed)
        for name in sorted({u["tool"] for u in units}):
            count(f"docs_routed:{name}")
            count(f"windows:{name}", sum(u["tool"] == name for u in units))
        record_seconds("route", time.perf_counter() - t0)
        yield from units


# --- After sampling ---------------------------------------------------------------------------


def unit_input(unit: Mapping[str, Any]) -> str:
    """A digest of what a unit's records are computed from besides the run's settings (checked
    by resume through run.json): its text and document date. A journaled outcome is replayed only
    for the same input, so a document edited between a crash and its resume is recomputed."""
    return stable_digest(unit["text"], unit.get("date"))


def finished_unit(unit: dict, records: list[dict], dead: list[dict], counts: Mapping[str, int]) -> dict:
    """A unit's outcome, as FinishUnitFn takes it and the journal stores it (plain JSON data)."""
    return {
        "key": list(unit_key(unit)),
        "input": unit_input(unit),
        "records": records,
        "dead": dead,
        "counts": dict(counts),
    }


class CountSamplesFn(beam.DoFn):
    """Attach the unit's sampling counts; a unit without candidates is finished here (tagged
    ``FINISHED``: it needs no tool call and no losses)."""

    def process(self, pair):
        unit, sampled = pair
        counts = sample_counts(unit, sampled)
        record_seconds("score_positions", sampled["timing"]["score_s"])
        record_seconds("sample_calls", sampled["timing"]["sample_s"])
        if sampled["candidates"]:
            yield {**attach_samples(unit, sampled), "counts": counts}
        else:
            yield beam.pvalue.TaggedOutput(FINISHED, finished_unit(unit, [], [], counts))


# --- Execute ----------------------------------------------------------------------------------


class ExecuteFn(beam.DoFn):
    """Execute a unit's calls; its dead letters and counts travel on with it to FinishUnit."""

    def __init__(
        self,
        tool_specs: Mapping[str, str],
        tool_config: Mapping[str, dict],
        retries: int,
        require_grounded: Mapping[str, bool] | None = None,
    ):
        self.tool_specs, self.tool_config, self.retries = dict(tool_specs), dict(tool_config), retries
        self.require_grounded = dict(require_grounded or {})

    def setup(self):
        from tools.base import get_tool
        from tools.executor import ToolExecutor

        self.executor = ToolExecutor(
            {name: get_tool(spec, **self.tool_config.get(name, {})) for name, spec in self.tool_specs.items()}
        )

    def process(self, unit):
        t0 = time.perf_counter()
        tool = self.executor.tools[unit["tool"]]
        unit = ground_candidates(unit, tool, self.require_grounded.get(unit["tool"], False))
        unit, dead = execute_candidates(unit, self.executor, self.retries)
        record_seconds("execute", time.perf_counter() - t0)
        yield {**unit, "counts": add_counts(unit["counts"], execute_counts(unit)), "dead": dead}


# --- Filter -----------------------------------------------------------------------------------


class CandidateRecordsFn(beam.DoFn):
    def __init__(self, tau_f: Mapping[str, float]):
        self.tau_f = dict(tau_f)

    def process(self, pair):
        unit, filtered = pair
        record_seconds("filter", filtered["seconds"])
        records = candidate_records(unit, filtered["losses"], self.tau_f[unit["tool"]])
        counts = add_counts(unit["counts"], {f"kept:{unit['tool']}": sum(r["kept"] for r in records)})
        yield finished_unit(unit, records, unit["dead"], counts)


# --- Finish (and the resume journal) ----------------------------------------------------------


def journal_line(finished: dict) -> bytes:
    """One journal line: the unit's outcome as ASCII JSON (exact round trip of floats and text)."""
    return (json.dumps(finished, sort_keys=True) + "\n").encode("ascii")


def parse_journal(data: bytes) -> tuple[list[dict], int]:
    """The units of one journal file, and how many lines were torn or invalid (left out).

    A process killed while writing leaves at most a torn last line; it does not parse, so that
    unit counts as not done and is recomputed.
    """
    entries, torn = [], 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            ok = (
                isinstance(entry, dict)
                and isinstance(entry.get("key"), list)
                and len(entry["key"]) == 3
                and isinstance(entry.get("records"), list)
                and isinstance(entry.get("dead"), list)
                and isinstance(entry.get("counts"), dict)
            )
        except ValueError:
            ok = False
        if ok:
            entries.append(entry)
        else:
            torn += 1
    return entries, torn


def resume_unit(keyed) -> Iterable:
    """Join of one unit key: the routed unit (main: still to compute) or its journaled outcome
    (tagged ``RESUMED``). A key journaled twice (a retried bundle) is replayed once: its records
    are deterministic, so either copy is the same; one no longer routed, or journaled for another
    input (the document changed since), is stale: dropped, and the unit recomputed."""
    _, grouped = keyed
    units, entries = list(grouped["units"]), list(grouped["journal"])
    if not units:
        count("journal_stale", len(entries))
        return
    same = [e for e in entries if e.get("input") == unit_input(units[0])]
    count("journal_stale", len(entries) - len(same))  # journaled for another text or date
    entries = same
    if not entries:
        yield units[0]
        return
    count("units_resumed")
    count("journal_duplicates", len(entries) - 1)
    yield beam.pvalue.TaggedOutput(RESUMED, entries[0])


class ReadJournalFn(beam.DoFn):
    """The journaled units of one journal file, keyed by unit key; torn lines counted."""

    def process(self, path: str):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path) as f:
            entries, torn = parse_journal(f.read())
        count("journal_torn", torn)
        for entry in entries:
            yield tuple(entry["key"]), entry


class FinishUnitFn(beam.DoFn):
    """Count a unit's outcome, journal it (when ``journal_dir`` is set), emit its records (main)
    and dead letters (``DEAD``).

    The journal is ``journal_dir/<uuid4>.jsonl`` per writer, opened lazily (the DoFn must pickle),
    each unit written and flushed as it finishes (a SIGKILL loses at most a torn last line), and
    rotated every ``JOURNAL_ROTATE_UNITS`` units or ``JOURNAL_ROTATE_S`` seconds and at the end of
    every bundle: an object store commits a file only when it is closed, so there a crash loses
    the units since the last rotation. Written through Beam's FileSystems (any file system the
    runner can write). A retried bundle may journal a unit twice; the reader keeps one.
    """

    def __init__(self, journal_dir: str | None):
        self.journal_dir = journal_dir
        self._file = None

    def _write(self, finished: dict) -> None:
        from apache_beam.io.filesystems import FileSystems

        if self._file is None:
            self._path = FileSystems.join(self.journal_dir, f"{uuid.uuid4().hex}.jsonl")
            self._file, self._units, self._opened = FileSystems.create(self._path), 0, time.monotonic()
        try:
            self._file.write(journal_line(finished))
            self._file.flush()
        except Exception as e:
            # Disk full or file too large: the file may end in a torn line, which a resume ignores
            # (parse_journal), so this unit counts as not done. Drop the file object without
            # flushing its buffer again (teardown would raise a second error over this one).
            broken, self._file = self._file, None
            try:
                broken.close()
            except Exception:  # noqa: BLE001 - the same write failing again
                pass
            raise_if_storage_full(e, self._path, RESUME_HINT)
            raise
        self._units += 1
        if self._units >= JOURNAL_ROTATE_UNITS or time.monotonic() - self._opened >= JOURNAL_ROTATE_S:
            self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def process(self, finished: dict):
        for name, n in finished["counts"].items():
            count(name, n)
        if self.journal_dir is not None:
            self._write(finished)
            count("units_journaled")
        for d in finished["dead"]:
            yield beam.pvalue.TaggedOutput(DEAD, d)
        yield from finished["records"]

    def finish_bundle(self):
        self._close()

    def teardown(self):
        self._close()


# --- Merge ------------------------------------------------------------------------------------


def unique_document(keyed) -> Iterable:
    """One document per id (the one with the smallest text); the others become dead letters."""
    doc_id, docs = keyed
    docs = sorted(docs, key=lambda d: d["text"])
    yield docs[0]
    for _ in docs[1:]:
        count("docs_duplicate_id")
        yield beam.pvalue.TaggedOutput(
            DEAD, dead_letter(doc_id, "read", "duplicate_id", f"another document has id {doc_id!r}")
        )


class MergeFn(beam.DoFn):
    def process(self, keyed):
        _, grouped = keyed
        t0 = time.perf_counter()
        for doc in grouped["docs"]:  # exactly one: ids are unique after DedupeIds
            text = merge_document(doc, grouped["records"])
            count("texts_written")
            count("texts_with_calls", bool(text["calls"]))
            record_seconds("merge", time.perf_counter() - t0)
            yield text
