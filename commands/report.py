"""The augmentation report: what the data-generation pipeline kept, why, and what failed.

Run it on any pipeline output directory::

    toolformer report runs/augment-001                 # writes runs/augment-001/report/
    toolformer report runs/augment-001 --output /tmp/r # prints /tmp/r/index.html

It reads the run's ``candidates-*.jsonl``, ``texts-*.jsonl``, ``errors-*.jsonl`` and ``stats.json``
(``.jsonl.gz`` shards too) and writes ``report.md`` with PNG plots beside it and ``index.html``
(the same report with the plots embedded, one self-contained file):

* kept calls per tool (table and bar chart),
* the distribution of L⁻ − L⁺ (``delta``) per tool, with the filtering threshold τf drawn in,
* the best examples per tool (highest L⁻ − L⁺) as text with the call inserted at its position,
* tool failures per tool and reason (candidates' ``error``) and the dead letters per stage,
* the run's ``stats.json``.

A malformed line in a shard is skipped and listed in the report (file and line), so one bad
record never hides the rest of the run.

This module reads the run (``load_run``) and writes the report (``write_report``, the ``report``
command); ``commands.report_plots`` draws the plots and ``commands.report_render`` renders the
Markdown and the HTML.
"""

from __future__ import annotations

import collections
import dataclasses
import heapq
import json
import logging
import math
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from commands.report_plots import _bins, _plot_range, plot_deltas, plot_failures, plot_kept
from commands.report_render import DROP_REASONS, EMPTY_MESSAGE, LAZY_NOTE, render_html, render_markdown
from toolformer import runs
from toolformer.call_format import render_call, strip_calls
from toolformer.errors import UserError

__all__ = [
    "BEST_EXAMPLES", "CONTEXT_AFTER", "CONTEXT_BEFORE", "DROP_REASONS", "EMPTY_MESSAGE", "LAZY_NOTE",
    "MAX_WARNINGS", "Example", "RunData", "ToolSummary", "load_run", "plot_deltas", "plot_failures",
    "plot_kept", "render_html", "render_markdown", "report", "write_report",
    "_bins", "_cut", "_plot_range",  # private, imported by the tests
]


log = logging.getLogger(__name__)

BEST_EXAMPLES = 3  # per tool
CONTEXT_BEFORE = 220  # characters of the document shown before an example's call
CONTEXT_AFTER = 140
MAX_WARNINGS = 20  # skipped records listed one by one; the rest are only counted


@dataclasses.dataclass
class ToolSummary:
    """Per-tool counts over the candidates of one run."""

    candidates: int = 0
    dropped: int = 0  # ``dropped`` set (e.g. "ungrounded"): recorded, never executed, filtered or kept
    failed: int = 0  # the call produced no result (``error`` set): dropped before filtering
    kept: int = 0  # ``kept`` as the pipeline (or a later refilter) recorded it
    inserted: int = 0  # calls of this tool in texts-*.jsonl
    deltas: list[float] = dataclasses.field(default_factory=list)
    thresholds: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def executed(self) -> int:
        return self.candidates - self.dropped - self.failed

    @property
    def threshold(self) -> float | None:
        """The most common τf of the tool's candidates (a run uses one τf per tool)."""
        return self.thresholds.most_common(1)[0][0] if self.thresholds else None


@dataclasses.dataclass
class Example:
    """A kept call with its document context, ready to render."""

    tool: str
    doc_id: str
    delta: float
    loss_plus: float | None
    loss_minus: float | None
    call: str  # rendered with its result, e.g. "[Calculator(400 / 1400) -> 0.29]"
    before: str  # text before the call (possibly cut, starting with "…")
    after: str
    found: bool  # whether the document's text was in texts-*.jsonl


@dataclasses.dataclass
class RunData:
    run_dir: str  # a local path or a Beam file system URL (gs://...)
    complete: bool  # _SUCCESS present
    tools: dict[str, ToolSummary]
    failures: collections.Counter  # (tool, reason) -> count
    drops: collections.Counter  # (tool, reason) -> candidates dropped before execution
    dead_letters: collections.Counter  # (stage, reason) -> count
    examples: dict[str, list[Example]]
    stats: dict[str, Any]
    documents: int  # records in texts-*.jsonl
    documents_with_calls: int
    warnings: list[str]
    skipped: int  # malformed lines skipped in all
    lazy_filter: bool = False  # run.json's lazy_filter: rejected calls' L⁻ is L(ε), an upper bound

    @property
    def n_candidates(self) -> int:
        return sum(t.candidates for t in self.tools.values())


# ---------------------------------------------------------------------------------------------
# Reading a run


def _records(paths: list[str], run_dir: str, warnings: list[str], counter: list[int]) -> Iterator[
        tuple[str, int, dict]]:
    """(file name, line number, record) for every JSON object line; bad lines are reported."""
    for path in paths:
        name = runs.relative(run_dir, path)
        lineno = 0
        try:
            for lineno, rec, problem in runs.json_lines(path):
                if problem is not None:
                    _skip(warnings, counter, f"{name} line {lineno}: {problem}")
                    continue
                yield name, lineno, rec
        except (OSError, EOFError, zlib.error) as e:  # a truncated .gz shard: keep what was read, report the rest
            _skip(warnings, counter, f"{name} after line {lineno}: unreadable ({e})")


def _skip(warnings: list[str], counter: list[int], message: str) -> None:
    counter[0] += 1
    log.warning("skipped %s", message)
    if len(warnings) < MAX_WARNINGS:
        warnings.append(message)


def _number(value: Any) -> float | None:
    """A finite float, or None for null/NaN/inf (a failed call has no losses)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def load_run(run_dir: str | Path, best: int = BEST_EXAMPLES) -> RunData:
    """Read a pipeline output directory (local or on a Beam file system) into the counts and
    examples the report shows."""
    run_dir = str(run_dir)
    if not runs.is_remote(run_dir):
        if not Path(run_dir).exists():
            raise UserError(f"run directory {run_dir} does not exist")
        if not Path(run_dir).is_dir():
            raise UserError(f"{run_dir} is not a directory")
    stats_path = runs.join(run_dir, runs.STATS)
    shards = {kind: runs.shards(run_dir, kind) for kind in runs.SHARD_KINDS}
    if not runs.exists(stats_path) and not any(shards.values()):
        raise UserError(f"{run_dir} is not a pipeline run directory (no stats.json, candidates-*.jsonl "
                        "or texts-*.jsonl in it)")
    warnings: list[str] = []
    skipped = [0]

    stats: dict[str, Any] = {}
    if runs.exists(stats_path):
        try:
            stats = runs.read_json(stats_path)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            _skip(warnings, skipped, f"stats.json: unreadable ({e})")
        if not isinstance(stats, dict):
            _skip(warnings, skipped, "stats.json: not a JSON object")
            stats = {}

    tools: dict[str, ToolSummary] = collections.defaultdict(ToolSummary)
    failures: collections.Counter = collections.Counter()
    drops: collections.Counter = collections.Counter()
    # Per tool a min-heap of the `best` largest deltas; the counter breaks ties in file order.
    heaps: dict[str, list[tuple[float, int, dict]]] = collections.defaultdict(list)
    order = 0
    for name, lineno, rec in _records(shards["candidates"], run_dir, warnings, skipped):
        tool = rec.get("tool")
        if not isinstance(tool, str) or not tool:
            _skip(warnings, skipped, f"{name} line {lineno}: candidate without a tool name")
            continue
        error, delta = rec.get("error"), _number(rec.get("delta"))
        if rec.get("dropped"):  # not executed (e.g. ungrounded): no result and no losses, by design
            tools[tool].candidates += 1
            tools[tool].dropped += 1
            drops[(tool, str(rec["dropped"]))] += 1
            threshold = _number(rec.get("threshold"))
            if threshold is not None:
                tools[tool].thresholds[threshold] += 1
            continue
        if error is None and delta is None:
            # An executed call always has both losses; without them it cannot be plotted or ranked.
            _skip(warnings, skipped, f"{name} line {lineno}: executed candidate without a numeric delta")
            continue
        summary = tools[tool]
        summary.candidates += 1
        threshold = _number(rec.get("threshold"))
        if threshold is not None:
            summary.thresholds[threshold] += 1
        if error is not None:
            summary.failed += 1
            failures[(tool, str(error))] += 1
            continue
        summary.deltas.append(delta)
        if rec.get("kept") is True:
            summary.kept += 1
            order += 1
            item = (delta, -order, rec)
            if len(heaps[tool]) < best:
                heapq.heappush(heaps[tool], item)
            elif item > heaps[tool][0]:
                heapq.heapreplace(heaps[tool], item)

    dead_letters: collections.Counter = collections.Counter()
    for _, _, rec in _records(shards["errors"], run_dir, warnings, skipped):
        dead_letters[(str(rec.get("stage", "?")), str(rec.get("reason", "?")))] += 1

    wanted = {str(rec.get("doc_id")) for heap in heaps.values() for _, _, rec in heap}
    originals: dict[str, str] = {}
    documents = with_calls = 0
    for name, lineno, rec in _records(shards["texts"], run_dir, warnings, skipped):
        text, calls = rec.get("text"), rec.get("calls", [])
        if not isinstance(text, str) or not isinstance(calls, list):
            _skip(warnings, skipped, f"{name} line {lineno}: text record without 'text' or 'calls'")
            continue
        documents += 1
        with_calls += bool(calls)
        for call in calls:
            if isinstance(call, dict) and isinstance(call.get("tool"), str):
                tools[call["tool"]].inserted += 1
        doc_id = str(rec.get("doc_id"))
        if doc_id in wanted:
            # Positions refer to the original text: remove the inserted calls to get it back.
            originals[doc_id] = strip_calls(text)

    examples = {
        tool: [_example(tool, rec, originals) for _, _, rec in sorted(heap, reverse=True)]
        for tool, heap in heaps.items()
    }
    if skipped[0] > len(warnings):
        warnings.append(f"... and {skipped[0] - len(warnings)} more skipped records")
    return RunData(
        run_dir=run_dir,
        complete=runs.is_complete(run_dir),
        tools=dict(sorted(tools.items())),
        failures=failures,
        drops=drops,
        dead_letters=dead_letters,
        examples=dict(sorted(examples.items())),
        stats=stats,
        documents=documents,
        documents_with_calls=with_calls,
        warnings=warnings,
        skipped=skipped[0],
        lazy_filter=_lazy_filter(run_dir),
    )


def _lazy_filter(run_dir: str) -> bool:
    try:
        return runs.read_json(runs.join(run_dir, runs.SETTINGS)).get("lazy_filter") is True
    except (OSError, ValueError, AttributeError):  # no run.json (an older run, a copy): not stated
        return False


def _cut(text: str, n: int, from_end: bool) -> str:
    """The last (``from_end``) or first ``n`` characters of ``text``, less a word cut in two
    (where the piece holds a word boundary)."""
    if from_end:
        piece, split = text[-n:], not text[-n - 1].isspace() and not text[-n].isspace()
        m = re.search(r"\s", piece) if split else None
        return (piece[m.end():] if m else piece).lstrip()
    piece, split = text[:n], not text[n].isspace() and not text[n - 1].isspace()
    m = max((i for i, c in enumerate(piece) if c.isspace()), default=None) if split else None
    return (piece[:m] if m else piece).rstrip()


def _example(tool: str, rec: dict, originals: dict[str, str]) -> Example:
    result = rec.get("result")
    call = render_call(tool, str(rec.get("input", "")), None if result is None else str(result))
    doc_id = str(rec.get("doc_id"))
    original = originals.get(doc_id)
    before = after = ""
    if original is not None:
        pos = rec.get("position")
        pos = pos if isinstance(pos, int) and 0 <= pos <= len(original) else len(original)
        before, after = original[:pos], original[pos:]
        if len(before) > CONTEXT_BEFORE:
            before = "…" + _cut(before, CONTEXT_BEFORE, from_end=True)
        if len(after) > CONTEXT_AFTER:
            after = _cut(after, CONTEXT_AFTER, from_end=False) + "…"
    return Example(tool, doc_id, float(rec["delta"]), _number(rec.get("loss_plus")),
                   _number(rec.get("loss_minus")), call, before, after, original is not None)


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write report.md, its PNGs and index.html into ``output`` (default RUN_DIR/report).

    Returns the path of ``index.html``.
    """
    data = load_run(run_dir)
    if output is None and runs.is_remote(str(run_dir)):
        raise UserError(f"{run_dir} is not a local folder: pass --output DIR (a local folder for the report)")
    out = Path(output) if output is not None else Path(run_dir) / "report"
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, bytes] = {}
    if data.n_candidates:
        pngs["kept"] = plot_kept(data)
        if (deltas := plot_deltas(data)) is not None:
            pngs["deltas"] = deltas
    if (failures := plot_failures(data)) is not None:
        pngs["failures"] = failures
    files = {"kept": "kept_per_tool.png", "deltas": "delta_per_tool.png", "failures": "failures_per_tool.png"}
    for key, png in pngs.items():
        (out / files[key]).write_bytes(png)
    (out / "report.md").write_text(render_markdown(data, {k: files[k] for k in pngs}), encoding="utf-8")
    index = out / "index.html"
    index.write_text(render_html(data, pngs), encoding="utf-8")
    return index


def report(run_dir: str, output: str | None = None) -> int:
    """Write the augmentation report of a pipeline run (report.md + PNG plots + index.html); print its path.

    Args:
        run_dir: the pipeline's output directory (candidates-*.jsonl, texts-*.jsonl, errors-*.jsonl,
            stats.json).
        output: directory for the report (default RUN_DIR/report).
    """
    print(write_report(run_dir, output))
    return 0
