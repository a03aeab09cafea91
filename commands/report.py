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
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import heapq
import html
import io
import json
import logging
import math
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolformer import runs
from toolformer.call_format import render_call, strip_calls
from toolformer.errors import UserError

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
            for lineno, line in runs.lines(path):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    _skip(warnings, counter, f"{name} line {lineno}: invalid JSON ({e.msg})")
                    continue
                if not isinstance(rec, dict):
                    _skip(warnings, counter, f"{name} line {lineno}: not a JSON object")
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


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib's object API with the Agg canvas: no pyplot global state, no display needed)


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_kept(data: RunData) -> bytes:
    """Grouped bars per tool: executed candidates and kept calls, with the counts on top."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = list(data.tools)
    fig = Figure(figsize=(max(5.0, 1.3 * len(names) + 2), 3.6))
    ax = fig.add_subplot()
    xs = range(len(names))
    executed = [data.tools[n].executed for n in names]
    kept = [data.tools[n].kept for n in names]
    bars = ax.bar([x - 0.2 for x in xs], executed, width=0.4, color="#b0b7c3", label="executed candidates")
    ax.bar_label(bars, padding=2, fontsize=9, color="#555555")
    bars = ax.bar([x + 0.2 for x in xs], kept, width=0.4, color="#2a9d8f", label="kept (L⁻ − L⁺ ≥ τf)")
    ax.bar_label(bars, padding=2, fontsize=9)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("calls")
    ax.set_title("Kept calls per tool")
    ax.set_ylim(0, max(executed + kept + [1]) * 1.15)
    ax.legend(frameon=False, fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1))  # never on a bar
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _plot_range(values: list[float]) -> tuple[float, float]:
    """Min and max, narrowed to 3 interquartile ranges beyond the quartiles (outliers lie outside)."""
    s = sorted(values)
    if len(s) < 20:
        return s[0], s[-1]
    q1, q3 = s[len(s) // 4], s[(3 * len(s)) // 4]
    spread = 3 * max(q3 - q1, 1e-6)
    return max(s[0], q1 - spread), min(s[-1], q3 + spread)


def _bins(lo: float, hi: float, tau: float | None, n: int = 30) -> list[float]:
    """``n`` equal bins over [lo, hi], shifted so that τf is a bin edge (no bar straddles it)."""
    if tau is not None:
        lo, hi = min(lo, tau), max(hi, tau)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / n
    if tau is not None:
        lo = tau - math.ceil((tau - lo) / width - 1e-9) * width
        hi = max(hi, tau + width)  # values at or above τf get a bin right of the line
    count = math.ceil((hi - lo) / width - 1e-9)
    return [lo + width * i for i in range(count + 1)]


def plot_deltas(data: RunData) -> bytes | None:
    """One histogram of L⁻ − L⁺ per tool; bars at or above τf (kept) coloured, τf as a dashed line."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = [n for n, t in data.tools.items() if t.deltas]
    if not names:
        return None
    cols = min(2, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):  # axes may outnumber tools
        t = data.tools[name]
        tau = t.threshold
        bins = _bins(*_plot_range(t.deltas), tau)
        # Outliers go into the edge bins, so a few extreme values do not squash the plot.
        clipped = [min(max(d, bins[0]), bins[-1]) for d in t.deltas]
        outliers = sum(c != d for c, d in zip(clipped, t.deltas, strict=True))
        below = [d for d in clipped if tau is None or d < tau]
        above = [d for d in clipped if tau is not None and d >= tau]
        ax.hist(below, bins=bins, color="#b0b7c3", label="rejected (< τf)")
        if above:
            ax.hist(above, bins=bins, color="#2a9d8f", label="kept (≥ τf)")
        if tau is not None:
            ax.axvline(tau, color="#e76f51", linestyle="--", linewidth=1.5, label=f"τf = {tau:g}")
        ax.axvline(0, color="#444444", linewidth=0.6)
        ax.set_title(f"{name}: {len(above)} of {len(t.deltas)} at or above τf", fontsize=10, pad=20)
        note = f"\n({outliers} outliers counted in the edge bins)" if outliers else ""
        ax.set_xlabel("L⁻ − L⁺ (loss reduction from the call and its result)" + note)
        ax.set_ylabel("candidates")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        # above the plot, under the title: inside it would cover bars or the τf line
        ax.legend(frameon=False, fontsize=8, loc="lower left", bbox_to_anchor=(0, 1), ncols=3,
                  borderaxespad=0.2)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return _png(fig)


def plot_failures(data: RunData) -> bytes | None:
    """Horizontal stacked bars: failed calls per tool, one colour per reason."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not data.failures:
        return None
    names = sorted({tool for tool, _ in data.failures})
    reasons = sorted({reason for _, reason in data.failures})
    fig = Figure(figsize=(6.5, 0.6 * len(names) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    left = [0] * len(names)
    most = max(sum(n for (tool, _), n in data.failures.items() if tool == name) for name in names)
    colours = ["#e76f51", "#f4a261", "#e9c46a", "#8ab17d", "#287271", "#6d597a", "#b56576", "#355070"]
    for i, reason in enumerate(reasons):
        counts = [data.failures.get((n, reason), 0) for n in names]
        bars = ax.barh(names, counts, left=left, color=colours[i % len(colours)], label=reason)
        # Label only segments wide enough to hold their number.
        labels = [str(c) if c >= 0.04 * most else "" for c in counts]
        ax.bar_label(bars, labels=labels, label_type="center", fontsize=9)
        left = [a + b for a, b in zip(left, counts, strict=True)]
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("failed calls (dropped)")
    ax.set_title("Tool failures per tool and reason")
    ax.legend(frameon=False, fontsize=8, title="reason", loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# Rendering


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(_flatten(value, name + "."))
        else:
            rows.append((name, value))
    return rows


def _tables(data: RunData) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Every table of the report as (header, rows) of strings: Markdown and HTML show the same."""
    tables = {}
    rows = []
    tot = list(data.tools.values())
    # A column for candidates dropped before execution only in runs that have them.
    drop = (lambda n: [str(n)]) if any(t.dropped for t in tot) else (lambda n: [])
    for name, t in data.tools.items():
        rows.append([name, str(t.candidates), *drop(t.dropped), str(t.failed), str(t.executed), str(t.kept),
                     _pct(t.kept, t.executed), _fmt(t.threshold), _fmt(_median(t.deltas)),
                     _fmt(max(t.deltas) if t.deltas else None), str(t.inserted)])
    executed = sum(t.executed for t in tot)
    kept = sum(t.kept for t in tot)
    rows.append(["all", str(data.n_candidates), *drop(sum(t.dropped for t in tot)),
                 str(sum(t.failed for t in tot)), str(executed), str(kept), _pct(kept, executed), "", "", "",
                 str(sum(t.inserted for t in tot))])
    tables["kept"] = (["tool", "candidates", *drop("dropped before execution"), "failed", "executed",
                       "kept", "kept / executed", "τf", "median L⁻ − L⁺", "max L⁻ − L⁺", "calls in texts"],
                      rows)
    tables["failures"] = (["tool", "reason", "failed calls", "share of the tool's candidates"], [
        [tool, reason, str(n), _pct(n, data.tools[tool].candidates)]
        for (tool, reason), n in sorted(data.failures.items())])
    tables["dead_letters"] = (["stage", "reason", "records"], [
        [stage, reason, str(n)] for (stage, reason), n in sorted(data.dead_letters.items())])
    tables["stats"] = (["statistic", "value"], [
        [key, json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value]
        for key, value in _flatten(data.stats)])
    return tables


def _summary_lines(data: RunData) -> list[str]:
    lines = [f"Run directory: {data.run_dir}"]
    if not data.complete:
        lines.append("Warning: no _SUCCESS marker: the run is incomplete or still running; counts are "
                     "partial.")
    lines.append(f"Documents in texts: {data.documents} ({data.documents_with_calls} with at least one "
                 "call).")
    executed = sum(t.executed for t in data.tools.values())
    kept = sum(t.kept for t in data.tools.values())
    dropped = sum(t.dropped for t in data.tools.values())
    dropped = f"dropped before execution: {dropped}; " if dropped else ""
    lines.append(f"Candidates: {data.n_candidates}; {dropped}executed: {executed}; kept: {kept} "
                 f"({_pct(kept, executed)} "
                 "of executed).")
    return lines


DROP_REASONS = {"ungrounded": "the call's input is not in the text before it, an answer from the future"}


def _drops_line(data: RunData) -> str | None:
    """What the candidates dropped before execution were, per tool and reason (None if none)."""
    if not data.drops:
        return None
    parts = [f"{tool} {n} ({reason}" + (f": {DROP_REASONS[reason]})" if reason in DROP_REASONS else ")")
             for (tool, reason), n in sorted(data.drops.items())]
    return ("Dropped before execution (recorded in candidates-*.jsonl, never executed, filtered or kept): "
            + "; ".join(parts) + ".")


LAZY_NOTE = ("This run used lazy_filter: a call rejected without computing L(call without result) shows "
             "L⁻ = L(ε), an upper bound, so its L⁻ − L⁺ is an upper bound too (it lies below τf either "
             "way).")


EMPTY_MESSAGE = ("This run has no candidate calls: no position passed the sampling threshold τs, or no "
                 "document was accepted by any tool's heuristic. Lower τs or raise k/m for small models "
                 "(see METHOD.md), or check the input documents.")


# Characters that would turn data into emphasis, code, links, HTML or table cells.
_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<|"})


def _md(text: str) -> str:
    """Document text as literal Markdown (no emphasis, links or HTML from the data)."""
    return re.sub(r"\s+", " ", text).translate(_MD_SPECIAL)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return out + [""]


def render_markdown(data: RunData, images: dict[str, str]) -> str:
    tables = _tables(data)
    out = ["# Augmentation report", ""]
    out += [line + "  " for line in _summary_lines(data)] + [""]
    if data.warnings:
        out += [f"Skipped {data.skipped} malformed record(s):", ""]
        out += [f"- {_md(w)}" for w in data.warnings] + [""]
    if not data.n_candidates:
        out += [EMPTY_MESSAGE, ""]
    else:
        out += ["## Kept calls per tool", ""]
        out += _md_table(*tables["kept"])
        if (drops := _drops_line(data)) is not None:
            out += [_md(drops), ""]
        out += [f"![Kept calls per tool]({images['kept']})", ""]
        out += ["## Distribution of L⁻ − L⁺ per tool", "",
                "A call is kept when L⁻ − L⁺ ≥ τf (dashed line): the call and its result reduce the loss "
                "of the following tokens by at least τf compared with no call or the call without result.",
                ""]
        if data.lazy_filter:
            out += [_md(LAZY_NOTE), ""]
        if "deltas" in images:
            out += [f"![L⁻ − L⁺ per tool]({images['deltas']})", ""]
        else:
            out += ["No executed candidates: every call failed.", ""]
        out += ["## Best examples per tool", ""]
        if not data.examples:
            out += ["No call was kept.", ""]
        for tool, examples in data.examples.items():
            out += [f"### {tool}", ""]
            for ex in examples:
                out += [f"Document `{ex.doc_id}`, L⁻ − L⁺ = {ex.delta:.2f} (L⁺ = {_fmt(ex.loss_plus)}, "
                        f"L⁻ = {_fmt(ex.loss_minus)}):", ""]
                if ex.found:
                    # " " + call at the position: exactly how the pipeline inserts a call.
                    out += [f"> {_md(ex.before)} **{_md(ex.call)}**{_md(ex.after)}", ""]
                else:
                    out += [f"> **{_md(ex.call)}** (the document's text is not in texts-\\*.jsonl)", ""]
    out += ["## Tool failures", ""]
    if data.failures:
        out += _md_table(*tables["failures"])
        out += [f"![Tool failures]({images['failures']})", ""]
    else:
        out += ["No tool call failed.", ""]
    out += ["### Dead letters (errors-*.jsonl)", ""]
    out += _md_table(*tables["dead_letters"]) if data.dead_letters else ["None.", ""]
    out += ["## Run statistics (stats.json)", ""]
    out += _md_table(*tables["stats"]) if data.stats else ["No stats.json in this run.", ""]
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f1f3f5; }
img { max-width: 100%; }
blockquote { border-left: 4px solid #2a9d8f; margin: 0.5em 0 1.2em; padding: 0.4em 1em; background: #f8f9fa;
             white-space: pre-wrap; }
mark.call { background: #ffe08a; padding: 0 0.15em; border-radius: 3px;
            font-family: ui-monospace, monospace; }
.warn { color: #9c2c13; }
"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(data: RunData, pngs: dict[str, bytes]) -> str:
    """The report as one HTML file; the plots are embedded as data URIs so it can be sent alone."""
    e = html.escape
    tables = _tables(data)

    def img(key: str, alt: str) -> str:
        return f'<img alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(pngs[key]).decode()}">'

    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>Augmentation report</title>", f"<style>{_CSS}</style></head><body>",
           "<h1>Augmentation report</h1>"]
    out += [f"<p>{e(line)}</p>" for line in _summary_lines(data)]
    if data.warnings:
        out.append(f'<p class="warn">Skipped {data.skipped} malformed record(s):</p><ul class="warn">')
        out += [f"<li>{e(w)}</li>" for w in data.warnings] + ["</ul>"]
    if not data.n_candidates:
        out.append(f"<p><strong>{e(EMPTY_MESSAGE)}</strong></p>")
    else:
        out += ["<h2>Kept calls per tool</h2>", _html_table(*tables["kept"])]
        if (drops := _drops_line(data)) is not None:
            out.append(f"<p>{e(drops)}</p>")
        out.append(img("kept", "Kept calls per tool"))
        out += ["<h2>Distribution of L⁻ − L⁺ per tool</h2>",
                "<p>A call is kept when L⁻ − L⁺ ≥ τf (dashed line).</p>"]
        if data.lazy_filter:
            out.append(f"<p>{e(LAZY_NOTE)}</p>")
        out.append(img("deltas", "L⁻ − L⁺ per tool") if "deltas" in pngs
                   else "<p>No executed candidates: every call failed.</p>")
        out.append("<h2>Best examples per tool</h2>")
        if not data.examples:
            out.append("<p>No call was kept.</p>")
        for tool, examples in data.examples.items():
            out.append(f"<h3>{e(tool)}</h3>")
            for ex in examples:
                out.append(f"<p>Document <code>{e(ex.doc_id)}</code>, L⁻ − L⁺ = {ex.delta:.2f} "
                           f"(L⁺ = {_fmt(ex.loss_plus)}, L⁻ = {_fmt(ex.loss_minus)}):</p>")
                call = f'<mark class="call">{e(ex.call)}</mark>'
                if ex.found:
                    out.append(f"<blockquote>{e(ex.before)} {call}{e(ex.after)}</blockquote>")
                else:
                    out.append(f"<blockquote>{call} (the document's text is not in "
                               "texts-*.jsonl)</blockquote>")
    out.append("<h2>Tool failures</h2>")
    if data.failures:
        out += [_html_table(*tables["failures"]), img("failures", "Tool failures")]
    else:
        out.append("<p>No tool call failed.</p>")
    out.append("<h3>Dead letters (errors-*.jsonl)</h3>")
    out.append(_html_table(*tables["dead_letters"]) if data.dead_letters else "<p>None.</p>")
    out.append("<h2>Run statistics (stats.json)</h2>")
    out.append(_html_table(*tables["stats"]) if data.stats else "<p>No stats.json in this run.</p>")
    out.append("</body></html>")
    return "\n".join(out)


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
