"""The core's side of the tool interface: what a call runs with (:class:`CallContext`), what it
returns (:class:`ToolOutcome`) and what runs it (:class:`Executor`).

The method core (sampling, filtering, generation) calls tools only through an ``Executor``; the
tools layer implements it (``tools.executor.ToolExecutor``: caching, timeouts, result sanitising),
so the core never imports the tools.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class CallContext:
    """What a call may depend on besides its input. Part of the cache key."""

    date: dt.date | None = None  # the document's date (data generation) or "today" (inference)
    doc_id: str | None = None

    def cache_key(self) -> tuple:
        return (self.date.isoformat() if self.date else None,)


@dataclasses.dataclass(frozen=True)
class ToolOutcome:
    result: str | None  # sanitised result, ready to insert; None on failure
    error: str | None = None  # ToolError.reason
    message: str = ""
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


class Executor(Protocol):
    """Runs one call: ``tool`` by name on ``input``; never raises for a tool's own failure (that is
    an outcome with ``error`` set)."""

    def execute(self, tool: str, input: str, context: CallContext) -> ToolOutcome: ...
