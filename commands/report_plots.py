"""The augmentation report's plots, as PNG bytes (see commands/report.py).

matplotlib's object API with the Agg canvas: no pyplot global state, no display needed. matplotlib is
imported inside the functions, so loading a run does not pay for it.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from commands.report import RunData


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
