"""Execute calls: one place for caching, result sanitising and turning failures into outcomes.

Both data generation and inline decoding run tools through :class:`ToolExecutor`. It never
raises for a tool's failure: it returns a :class:`ToolOutcome` whose ``error`` names the reason,
so the pipeline can drop and count the candidate, and decoding can roll the call back.

Caching: an identical call (tool, input, context key) runs once per executor (LRU in memory). With
``cache_path`` the cacheable outcomes are also kept in an SQLite file, shared by processes (WAL
mode) and reused by later runs: rerunning a pipeline with the same cache gives the same results
without calling remote services again. The key does not include the tool's configuration: use one
cache file per configuration (index, model, endpoint). SQLite rather than pickle or JSON lines: concurrent
writers from several Beam workers are safe and nothing is unpickled.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path

from toolformer.call_format import DEFAULT_FORMAT, CallFormat, neutralize
from toolformer.execution import CallContext, ToolOutcome
from tools.base import Tool, ToolError

NO_CONTEXT = CallContext()  # frozen, so one shared default is safe


def sanitize_result(result: str, fmt: CallFormat = DEFAULT_FORMAT, max_chars: int = 200) -> str:
    """One line, no call markers, at most ``max_chars`` characters (cut at a word if possible)."""
    text = " ".join(neutralize(result, fmt).split())
    if len(text) > max_chars:
        cut = text[:max_chars]
        space = cut.rfind(" ")
        text = cut[:space] if space > max_chars // 2 else cut
    return text


class ToolExecutor:
    """Runs calls by tool name, with an LRU cache of deterministic results and rejections.

    Transient failures (timeouts, connection and HTTP errors) are not cached, so a retry can
    succeed; deterministic rejections (``parse``, ``limit``, ``div0``, ``empty``) are.
    """

    TRANSIENT = frozenset({"timeout", "connect", "internal", "unavailable", "bad_response"})

    def __init__(
        self,
        tools: Mapping[str, Tool],
        fmt: CallFormat = DEFAULT_FORMAT,
        cache_size: int = 100_000,
        max_result_chars: int = 200,
        cache_path: str | Path | None = None,
    ):
        self.tools = dict(tools)
        self.fmt = fmt
        self.max_result_chars = max_result_chars
        self.cache_size = cache_size
        self.cache_path = str(cache_path) if cache_path is not None else None
        self._cache: collections.OrderedDict[tuple, ToolOutcome] = collections.OrderedDict()
        self._db: sqlite3.Connection | None = None
        self.hits = 0
        self.misses = 0

    def __getstate__(self) -> dict:
        # Beam pickles DoFns holding an executor: the connection is reopened where it runs.
        return dict(self.__dict__, _db=None)

    def _disk(self) -> sqlite3.Connection:
        if self._db is None:
            Path(self.cache_path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.cache_path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outcomes (key TEXT PRIMARY KEY, result TEXT, "
                "error TEXT, message TEXT)"
            )
        return self._db

    def _disk_get(self, key: tuple) -> ToolOutcome | None:
        row = (
            self._disk()
            .execute("SELECT result, error, message FROM outcomes WHERE key = ?", (json.dumps(key),))
            .fetchone()
        )
        return ToolOutcome(row[0], row[1], row[2]) if row else None

    def _disk_put(self, key: tuple, outcome: ToolOutcome) -> None:
        self._disk().execute(
            "INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?)",
            (json.dumps(key), outcome.result, outcome.error, outcome.message),
        )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _remember(self, key: tuple, outcome: ToolOutcome) -> None:
        self._cache[key] = outcome
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def execute(self, tool_name: str, input: str, context: CallContext = NO_CONTEXT) -> ToolOutcome:
        tool = self.tools.get(tool_name)
        if tool is None:
            return ToolOutcome(None, "unknown_tool", f"no tool named {tool_name!r}")
        key = (tool_name, input, context.cache_key())
        if tool.deterministic and key in self._cache:
            self.hits += 1
            self._cache.move_to_end(key)
            return dataclasses.replace(self._cache[key], cached=True)
        if tool.deterministic and self.cache_path is not None:
            stored = self._disk_get(key)
            if stored is not None:
                self.hits += 1
                self._remember(key, stored)
                return dataclasses.replace(stored, cached=True)
        self.misses += 1
        try:
            raw = tool(input, context)
            outcome = ToolOutcome(sanitize_result(str(raw), self.fmt, self.max_result_chars))
            if not outcome.result:
                outcome = ToolOutcome(None, "empty_result", "the tool returned nothing")
        except ToolError as e:
            outcome = ToolOutcome(None, e.reason, e.message)
        except Exception as e:  # noqa: BLE001 - a bug in a tool must not crash a pipeline or a generation loop
            outcome = ToolOutcome(None, "internal", " ".join(f"{type(e).__name__}: {e}".split())[:300])
        if (
            tool.deterministic
            and outcome.error not in self.TRANSIENT
            and not (outcome.error or "").startswith("http_")
        ):
            self._remember(key, outcome)
            if self.cache_path is not None:
                self._disk_put(key, outcome)
        return outcome
