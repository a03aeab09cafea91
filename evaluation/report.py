"""The evaluation's outputs: a Markdown table, ``results.json`` and a bar plot of each condition.

Written by ``toolformer evaluate ... --output DIR`` next to ``predictions.jsonl``:
``results.json`` (accuracy, n, tool-call share and calls per tool per condition, plus the run's
settings), ``results.md`` (the table printed on the terminal) and ``accuracy.png``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from evaluation.runner import ConditionResult


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown_table(task: str, results: list[ConditionResult]) -> str:
    """One row per condition; perplexity gets its own columns."""
    if task == "perplexity":
        lines = ["| condition | model | tokens | windows | perplexity |", "|---|---|---:|---:|---:|"]
        lines += [f"| {r.condition} | {r.model} | {r.tokens} | {r.windows} | {r.perplexity:.2f} |" for r in results]
        return "\n".join(lines)
    lines = ["| condition | model | tools | n | correct | accuracy (%) | examples with a call (%) | calls per tool |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        calls = ", ".join(f"{tool} {k}" for tool, k in r.calls_per_tool.items()) or "-"
        if r.failed_calls:
            calls += f" ({r.failed_calls} failed)"
        if r.unknown_tool_calls:
            calls += f"; {sum(r.unknown_tool_calls.values())} to unknown tools ({', '.join(r.unknown_tool_calls)})"
        tools = ", ".join(r.tool_names) if r.tools else "none"
        lines.append(f"| {r.condition} | {r.model} | {tools} | {r.n} | {r.correct} | {_pct(r.accuracy)} | "
                     f"{_pct(r.tool_call_share)} | {calls} |")
    return "\n".join(lines)


def results_document(task: str, results: list[ConditionResult], settings: dict[str, Any]) -> dict[str, Any]:
    return {"task": task, **settings, "conditions": [dataclasses.asdict(r) for r in results]}


def plot_results(task: str, results: list[ConditionResult], path: Path, title: str) -> None:
    """Bars of accuracy (or perplexity) per condition; with-tools bars in a second colour."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    names = [r.condition for r in results]
    if task == "perplexity":
        values, ylabel = [r.perplexity for r in results], "perplexity (lower is better)"
    else:
        values, ylabel = [100 * r.accuracy for r in results], "accuracy (%)"
    colours = ["tab:orange" if r.tools else "tab:blue" for r in results]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(results) + 1.5), 4.0))
    bars = ax.bar(range(len(results)), values, color=colours)
    ax.bar_label(bars, fmt="%.1f" if task != "perplexity" else "%.2f")
    ax.set_xticks(range(len(results)), names, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if task != "perplexity":
        ax.set_ylim(0, max(100.0, *values) if values else 100.0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(out_dir: Path, task: str, results: list[ConditionResult], settings: dict[str, Any]) -> None:
    """``results.json``, ``results.md`` and ``accuracy.png`` in ``out_dir``."""
    document = results_document(task, results, settings)
    (out_dir / "results.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    title = f"{task}: {Path(settings['data']).name if settings.get('data') else 'generated'}"
    if settings.get("one_shot"):
        title += " (one-shot)"
    (out_dir / "results.md").write_text(f"# {title}\n\n{markdown_table(task, results)}\n")
    plot_results(task, results, out_dir / "accuracy.png", title)
