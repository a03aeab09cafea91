"""Execute calls: one place for caching, result sanitising and turning failures into outcomes.

Both data generation and inline decoding run tools through :class:`ToolExecutor`. It never
raises for a tool's failure: it returns a :class:`ToolOutcome` whose ``error`` names the reason,
so the pipeline can drop and count the candidate, and decoding can roll the call back.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Mapping

from toolformer.call_format import DEFAULT_FORMAT, CallFormat, neutralize
from tools.base import CallContext, Tool, ToolError


@dataclasses.dataclass(frozen=True)
class ToolOutcome:
    result: str | None  # sanitised result, ready to insert; None on failure
    error: str | None = None  # ToolError.reason
    message: str = ""
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


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
    ):
        self.tools = dict(tools)
        self.fmt = fmt
        self.max_result_chars = max_result_chars
        self.cache_size = cache_size
        self._cache: collections.OrderedDict[tuple, ToolOutcome] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def execute(self, tool_name: str, input: str, context: CallContext = CallContext()) -> ToolOutcome:
        tool = self.tools.get(tool_name)
        if tool is None:
            return ToolOutcome(None, "unknown_tool", f"no tool named {tool_name!r}")
        key = (tool_name, input, context.cache_key())
        if tool.deterministic and key in self._cache:
            self.hits += 1
            self._cache.move_to_end(key)
            return dataclasses.replace(self._cache[key], cached=True)
        self.misses += 1
        try:
            raw = tool(input, context)
            outcome = ToolOutcome(sanitize_result(str(raw), self.fmt, self.max_result_chars))
            if not outcome.result:
                outcome = ToolOutcome(None, "empty_result", "the tool returned nothing")
        except ToolError as e:
            outcome = ToolOutcome(None, e.reason, e.message)
        if tool.deterministic and outcome.error not in self.TRANSIENT and not (
            outcome.error or "").startswith("http_"):
            self._cache[key] = outcome
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return outcome
