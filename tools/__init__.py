"""Tools the model learns to call: the interface (:mod:`tools.base`), execution with caching and
sanitising (:mod:`tools.executor`) and one module per tool (registered by :mod:`tools.builtin`)."""

from tools.base import CallContext, Tool, ToolError, available_tools, get_tool, register_tool
from tools.executor import ToolExecutor, ToolOutcome

__all__ = [
    "CallContext",
    "Tool",
    "ToolError",
    "ToolExecutor",
    "ToolOutcome",
    "available_tools",
    "get_tool",
    "register_tool",
]
