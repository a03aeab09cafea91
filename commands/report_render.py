"""The augmentation report as Markdown and as one self-contained HTML page (see commands/report.py).

What the report shows is decided once, by ``_blocks``: its headings, summary lines, tables, notes,
plots and examples, in order, from the run's data. ``render_markdown`` and ``render_html`` only
format those blocks, so report.md and index.html always show the same report.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import re
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from commands.report import Example, RunData


# ---------------------------------------------------------------------------------------------
# The content, shared by both formats


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

KEPT_RULE = "A call is kept when L⁻ − L⁺ ≥ τf (dashed line)"
KEPT_RULE_WHY = ("the call and its result reduce the loss of the following tokens by at least τf compared "
                 "with no call or the call without result")

NOT_IN_TEXTS = "(the document's text is not in texts-*.jsonl)"


def _losses(ex: Example) -> str:
    return f"L⁻ − L⁺ = {ex.delta:.2f} (L⁺ = {_fmt(ex.loss_plus)}, L⁻ = {_fmt(ex.loss_minus)})"


@dataclasses.dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclasses.dataclass(frozen=True)
class Lines:
    """Short lines shown one under the other (the run summary)."""

    lines: list[str]


@dataclasses.dataclass(frozen=True)
class Warnings:
    """The malformed records that were skipped, as a list."""

    skipped: int
    items: list[str]


@dataclasses.dataclass(frozen=True)
class Paragraph:
    text: str
    page_text: str | None = None  # the HTML page's wording where it is shorter than the Markdown's
    strong: bool = False  # bold on the HTML page


@dataclasses.dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclasses.dataclass(frozen=True)
class Plot:
    key: str  # "kept", "deltas" or "failures": the plot's key in the renderers' images
    alt: str


@dataclasses.dataclass(frozen=True)
class Quote:
    """A best example: its document, losses, and the call in its context."""

    example: Example


Block = Heading | Lines | Warnings | Paragraph | Table | Plot | Quote


def _blocks(data: RunData, plots: Collection[str]) -> list[Block]:
    """The report's content in order; ``plots`` holds the keys of the plots there are images of."""
    tables = _tables(data)
    out: list[Block] = [Heading(1, "Augmentation report"), Lines(_summary_lines(data))]
    if data.warnings:
        out.append(Warnings(data.skipped, data.warnings))
    if not data.n_candidates:
        out.append(Paragraph(EMPTY_MESSAGE, strong=True))
    else:
        out += [Heading(2, "Kept calls per tool"), Table(*tables["kept"])]
        if (drops := _drops_line(data)) is not None:
            out.append(Paragraph(drops))
        out += [Plot("kept", "Kept calls per tool"), Heading(2, "Distribution of L⁻ − L⁺ per tool"),
                Paragraph(f"{KEPT_RULE}: {KEPT_RULE_WHY}.", page_text=f"{KEPT_RULE}.")]
        if data.lazy_filter:
            out.append(Paragraph(LAZY_NOTE))
        out.append(Plot("deltas", "L⁻ − L⁺ per tool") if "deltas" in plots
                   else Paragraph("No executed candidates: every call failed."))
        out.append(Heading(2, "Best examples per tool"))
        if not data.examples:
            out.append(Paragraph("No call was kept."))
        for tool, examples in data.examples.items():
            out.append(Heading(3, tool))
            out += [Quote(ex) for ex in examples]
    out.append(Heading(2, "Tool failures"))
    if data.failures:
        out += [Table(*tables["failures"]), Plot("failures", "Tool failures")]
    else:
        out.append(Paragraph("No tool call failed."))
    out += [Heading(3, "Dead letters (errors-*.jsonl)"),
            Table(*tables["dead_letters"]) if data.dead_letters else Paragraph("None."),
            Heading(2, "Run statistics (stats.json)"),
            Table(*tables["stats"]) if data.stats else Paragraph("No stats.json in this run.")]
    return out


# ---------------------------------------------------------------------------------------------
# Markdown


# Characters that would turn data into emphasis, code, links, HTML or table cells.
_MD_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*_[]<|"})


def _md(text: str) -> str:
    """Document text as literal Markdown (no emphasis, links or HTML from the data)."""
    return re.sub(r"\s+", " ", text).translate(_MD_SPECIAL)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return out + [""]


def _md_block(block: Block, images: dict[str, str]) -> list[str]:
    """The Markdown lines of one block, the last one empty. Headings, the summary lines and document
    ids are written as they are; paragraphs, warnings, table cells and quoted text are escaped (``_md``)."""
    match block:
        case Heading(level, text):
            return ["#" * level + " " + text, ""]
        case Lines(lines):
            return [line + "  " for line in lines] + [""]  # two trailing spaces: a line break
        case Warnings(skipped, items):
            return [f"Skipped {skipped} malformed record(s):", ""] + [f"- {_md(w)}" for w in items] + [""]
        case Paragraph(text):
            return [_md(text), ""]
        case Table(header, rows):
            return _md_table(header, rows)
        case Plot(key, alt):
            return [f"![{alt}]({images[key]})", ""]
        case Quote(ex):
            if ex.found:
                # " " + call at the position: exactly how the pipeline inserts a call.
                quote = f"> {_md(ex.before)} **{_md(ex.call)}**{_md(ex.after)}"
            else:
                quote = f"> **{_md(ex.call)}** {_md(NOT_IN_TEXTS)}"
            return [f"Document `{ex.doc_id}`, {_losses(ex)}:", "", quote, ""]
    raise TypeError(f"not a report block: {block!r}")


def render_markdown(data: RunData, images: dict[str, str]) -> str:
    """The report as Markdown; ``images`` maps a plot's key to its PNG file's name beside report.md."""
    out: list[str] = []
    for block in _blocks(data, images):
        out += _md_block(block, images)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# HTML


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


def _html_block(block: Block, pngs: dict[str, bytes]) -> list[str]:
    """The HTML lines of one block, everything from the data escaped."""
    e = html.escape
    match block:
        case Heading(level, text):
            return [f"<h{level}>{e(text)}</h{level}>"]
        case Lines(lines):
            return [f"<p>{e(line)}</p>" for line in lines]
        case Warnings(skipped, items):
            return ([f'<p class="warn">Skipped {skipped} malformed record(s):</p><ul class="warn">']
                    + [f"<li>{e(w)}</li>" for w in items] + ["</ul>"])
        case Paragraph(text, page_text, strong):
            text = e(text if page_text is None else page_text)
            return [f"<p><strong>{text}</strong></p>" if strong else f"<p>{text}</p>"]
        case Table(header, rows):
            return [_html_table(header, rows)]
        case Plot(key, alt):
            uri = "data:image/png;base64," + base64.b64encode(pngs[key]).decode()
            return [f'<img alt="{e(alt)}" src="{uri}">']
        case Quote(ex):
            call = f'<mark class="call">{e(ex.call)}</mark>'
            if ex.found:
                quote = f"{e(ex.before)} {call}{e(ex.after)}"
            else:
                quote = f"{call} {e(NOT_IN_TEXTS, quote=False)}"  # text, not an attribute: ' stays
            return [f"<p>Document <code>{e(ex.doc_id)}</code>, {_losses(ex)}:</p>",
                    f"<blockquote>{quote}</blockquote>"]
    raise TypeError(f"not a report block: {block!r}")


def render_html(data: RunData, pngs: dict[str, bytes]) -> str:
    """The report as one HTML file; the plots are embedded as data URIs so it can be sent alone."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>Augmentation report</title>", f"<style>{_CSS}</style></head><body>"]
    for block in _blocks(data, pngs):
        out += _html_block(block, pngs)
    out.append("</body></html>")
    return "\n".join(out)
