"""Run statistics: a finished pipeline's counters (:func:`metrics_of`), stats.json
(:func:`summarise`) and the tool failure check (:func:`check_failure_ratio`).

Used by ``_run_parts`` in pipelines/augment.py, per part and for the whole run.
"""

from __future__ import annotations

from typing import Any

from pipelines.settings import RunSettings
from pipelines.stages import NAMESPACE
from toolformer.errors import UserError


def metrics_of(result) -> dict[str, float]:
    """Counters and stage times (``time_ms:<stage>`` sums) of a finished pipeline."""
    from apache_beam.metrics.metric import MetricsFilter

    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    out: dict[str, float] = {}
    for c in found["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + value
    for d in found["distributions"]:
        value = d.committed if d.committed is not None else d.attempted
        out[d.key.metric.name] = out.get(d.key.metric.name, 0) + (value.sum if value else 0)
    return out


def summarise(flat: dict[str, float], tools: list[str], wall_s: float) -> dict[str, Any]:
    """stats.json: documents, per-tool counts (failures by reason), bad records and stage times."""
    per_tool = {}
    for tool in tools:
        get = lambda k, tool=tool: int(flat.get(f"{k}:{tool}", 0))
        prefix = f"tool_failures:{tool}:"
        failures = {k[len(prefix) :]: int(v) for k, v in sorted(flat.items()) if k.startswith(prefix)}
        per_tool[tool] = {
            k: get(k)
            for k in (
                "docs_routed",
                "windows",
                "positions",
                "samples",
                "unterminated",
                "unparsed",
                "duplicates",
                "candidates",
                "ungrounded",  # dropped before execution: the input is not written before the call
                "executed",
                "kept",
            )
        }
        per_tool[tool]["failures"] = failures
        per_tool[tool]["failed"] = sum(failures.values())
    return {
        "documents": {
            k: int(flat.get(k, 0))
            for k in (
                "docs_read",
                "docs_bad",
                "docs_truncated",
                "docs_duplicate_id",
                "texts_written",
                "texts_with_calls",
            )
        },
        "bad_records": {
            k.split(":", 1)[1]: int(v) for k, v in sorted(flat.items()) if k.startswith("bad_records:")
        },
        "tools": per_tool,
        "stage_seconds": {
            k.split(":", 1)[1]: round(v / 1000, 3)
            for k, v in sorted(flat.items())
            if k.startswith("time_ms:")
        },
        "wall_seconds": round(wall_s, 3),
    }


def check_failure_ratio(flat: dict[str, float], tools: list[str], settings: RunSettings, out: str) -> None:
    for tool in tools:
        executed = flat.get(f"executed:{tool}", 0)
        failed = sum(v for k, v in flat.items() if k.startswith(f"tool_failures:{tool}:"))
        if (
            executed >= settings.min_calls_for_ratio
            and executed
            and failed / executed > settings.max_failure_ratio
        ):
            raise UserError(
                f"tool {tool} failed {int(failed)} of {int(executed)} calls ({failed / executed:.0%}), "
                f"above max_failure_ratio {settings.max_failure_ratio:.0%}; see {out}/errors-*.jsonl",
                exit_code=3,
            )
