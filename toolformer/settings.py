"""Settings of an augmentation run: per-tool sampling/filtering knobs with the paper's defaults.

Override order: defaults < ``--config FILE`` (JSON ``{"tools": {"calculator": {"tau_s": 0}}, ...}``)
< ``--set calculator.tau_s=0 --set seed=3``. Used by ``toolformer augment`` and ``beam_runner.py``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from toolformer.errors import UserError


@dataclasses.dataclass(frozen=True)
class ToolSettings:
    tau_s: float = 0.05  # keep positions with p(" [") above this
    k: int = 5  # at most this many positions per window
    m: int = 5  # samples per position
    tau_f: float = 1.0  # keep a call if L- - L+ >= tau_f
    window: int = 512  # documents are split into windows of at most this many tokens
    max_call_tokens: int = 32  # a sample that has not closed after this many tokens is dropped
    temperature: float = 1.0
    # Departures from the paper for small models with digit-by-digit tokenizers (README lists them):
    # "word": a call may go only before a word start (a token that begins with a space, or the first
    # of a line), never between two digits or inside a word; "token": before any token (the paper).
    positions: str = "word"
    # "nonspace": L_i's window starts at the first token from x_i on that is not whitespace only
    # (SmolLM2's lone " " before digits); "token": at x_i, the paper's formula literally.
    loss_start: str = "nonspace"
    # Drop a candidate before the filter unless its input is read in the text before it (tools
    # with such a rule: Calculator's numbers, MT's text; the paper's rule for MT, App. A.1).
    grounded: bool = True
    # Where the filter puts the call: "prefix" before the whole text (the paper), "inline" at its
    # position, "prompt" inline after the tool's few-shot examples with results.
    filter_context: str = "prompt"

    def __post_init__(self) -> None:
        if self.k < 1 or self.m < 1 or self.window < 8 or self.max_call_tokens < 2:
            raise UserError(
                f"invalid tool settings {self}: need k >= 1, m >= 1, window >= 8, max_call_tokens >= 2"
            )
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")


CHOICES = {
    "positions": ("word", "token"),
    "loss_start": ("nonspace", "token"),
    "filter_context": ("prefix", "inline", "prompt"),
}


# The paper: tau_s = 0.05, k = 5, m = 5, tau_f = 1.0; Calculator and MT: tau_s = 0, k = 20, m = 10,
# tau_f = 0.5.
PAPER_DEFAULTS: dict[str, ToolSettings] = {
    "calculator": ToolSettings(tau_s=0.0, k=20, m=10, tau_f=0.5),
    "mt": ToolSettings(tau_s=0.0, k=20, m=10, tau_f=0.5),
}


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Everything that decides the records of a run (saved as run.json; resume checks it)."""

    model: str = "smollm2-135m"
    tools: tuple[str, ...] = ("calculator",)
    tool_settings: tuple[tuple[str, ToolSettings], ...] = ()
    seed: int = 0
    text_field: str = "text"
    limit: int | None = None  # at most this many documents (the first by stable id order per part)
    context_window: int | None = None  # cut the filter's left context to W tokens (not the paper)
    # skip L(call without result) when L(eps) - L+ < tau_f already rejects the call: same kept
    # calls, about half the filter's work; rejected records then hold an upper bound of L-
    lazy_filter: bool = False
    max_batch_tokens: int = 4096  # token budget of one model batch
    parts: int = 1  # documents are processed in this many resumable parts
    max_failure_ratio: float = 0.5  # fail the job if a tool fails more often than this ...
    min_calls_for_ratio: int = 20  # ... once it has run at least this many calls
    tool_retries: int = 2  # extra attempts for transient tool failures (timeouts, connections)
    index: str | None = None  # WikiSearch index directory
    large_model: bool = False  # share one model per machine across worker processes
    num_shards: int = 0  # output shards per part (0: the runner decides)
    threads: int = 0  # torch threads per worker process (0: torch's default); 1 on a busy small machine

    def for_tool(self, tool: str) -> ToolSettings:
        return dict(self.tool_settings).get(tool.lower(), PAPER_DEFAULTS.get(tool.lower(), ToolSettings()))

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tool_settings"] = {name: dataclasses.asdict(s) for name, s in self.tool_settings}
        d["tools"] = list(self.tools)
        return d


_RUN_FIELDS = {f.name: f for f in dataclasses.fields(RunSettings)}
_TOOL_FIELDS = {f.name: f for f in dataclasses.fields(ToolSettings)}


def _convert(value: Any, default: Any, name: str) -> Any:
    if isinstance(value, str):
        kind = type(default) if default is not None else str
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            if kind is tuple:
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if default is None and value.lstrip("-").isdigit():
                return int(value)
            return kind(value)
        except ValueError:
            raise UserError(f"setting {name}: cannot read {value!r} as {kind.__name__}") from None
    return tuple(value) if isinstance(value, list) else value


def build_settings(
    config: str | None = None, overrides: list[str] | None = None, **flags: Any
) -> RunSettings:
    """RunSettings from defaults, a JSON config file, ``key=value`` overrides and explicit flags.

    ``overrides`` entries are ``name=value`` (run settings) or ``tool.name=value`` (tool settings).
    ``flags`` with value None are ignored (the flag was not given).
    """
    run: dict[str, Any] = {}
    tools: dict[str, dict[str, Any]] = {}
    if config:
        try:
            data = json.loads(Path(config).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"--config {config}: {e}") from None
        for name, values in data.pop("tools", {}).items():
            tools.setdefault(name.lower(), {}).update(values)
        run.update(data)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected name=value or tool.name=value")
        if "." in key:
            tool, _, name = key.rpartition(".")
            tools.setdefault(tool.lower(), {})[name] = value
        else:
            run[key] = value
    run.update({k: v for k, v in flags.items() if v is not None})
    for name in run:
        if name not in _RUN_FIELDS or name == "tool_settings":
            raise UserError(f"unknown setting {name!r}; known: {', '.join(sorted(_RUN_FIELDS))}")
    run = {k: _convert(v, _RUN_FIELDS[k].default, k) for k, v in run.items()}
    if isinstance(run.get("tools"), str):
        run["tools"] = (run["tools"],)
    base = RunSettings(**run)
    per_tool = []
    for tool in base.tools:
        values = tools.pop(tool.lower(), {})
        defaults = base.for_tool(tool)
        for name in values:
            if name not in _TOOL_FIELDS:
                raise UserError(f"unknown tool setting {tool}.{name}; known: {', '.join(_TOOL_FIELDS)}")
        converted = {n: _convert(v, getattr(defaults, n), f"{tool}.{n}") for n, v in values.items()}
        per_tool.append((tool.lower(), dataclasses.replace(defaults, **converted)))
    if tools:
        raise UserError(f"settings given for tools not in --tools: {', '.join(sorted(tools))}")
    settings = dataclasses.replace(base, tool_settings=tuple(per_tool))
    if settings.parts < 1 or settings.max_batch_tokens < 64:
        raise UserError("need parts >= 1 and max_batch_tokens >= 64")
    if not 0 < settings.max_failure_ratio <= 1:
        raise UserError(f"max_failure_ratio must be in (0, 1], got {settings.max_failure_ratio}")
    return settings


def settings_from_json(data: dict[str, Any]) -> RunSettings:
    data = dict(data)
    tool_settings = tuple((k, ToolSettings(**v)) for k, v in data.pop("tool_settings").items())
    data["tools"] = tuple(data["tools"])
    return RunSettings(**data, tool_settings=tool_settings)
