"""The tool interface every stage uses: a name, a few-shot prompt, a document heuristic and a call.

A tool is executed as ``tool(input, context) -> str`` and signals failure only by raising
:class:`ToolError` with a short machine-readable ``reason`` (``parse``, ``limit``, ``div0``,
``timeout``, ``connect``, ``http_503``, ``bad_response``, ``unavailable``, ``internal``, ...).

Adding a tool from outside this repository::

    from tools import Tool, register_tool

    @register_tool
    class Weather(Tool):
        name = "Weather"
        prompt_template = "... Input: {input}\\nOutput:"
        def __call__(self, input, context):
            return "sunny"

or, without touching code that imports it, expose the class under the entry-point group
``toolformer.tools`` in your package, or pass ``--tools mypkg.mymod:Weather`` on the command line.
"""

from __future__ import annotations

import functools
import importlib
import random
from importlib import metadata
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from toolformer.execution import CallContext  # noqa: F401  (part of the tool interface: Tool.__call__ takes it)

PROMPT_DIR = Path(__file__).parent / "prompts"
INPUT_SLOT = "{input}"


class ToolError(Exception):
    """A call that produced no result. ``reason`` is short and stable (used in metrics)."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message


class Tool:
    """Base class. Subclasses set ``name`` and implement ``__call__``.

    ``prompt_template`` is the few-shot prompt P(x) of the paper, with exactly one ``{input}``
    slot where the document goes (filled by :meth:`prompt`, never by ``str.format``: documents
    contain braces). Prompts live in ``tools/prompts/<name>.txt``.
    """

    name: ClassVar[str] = ""
    takes_input: ClassVar[bool] = True
    prompt_file: ClassVar[str | None] = None  # defaults to prompts/<name lower>.txt
    # Whether the result depends only on (input, context): such results may be cached.
    deterministic: ClassVar[bool] = True

    @property
    def prompt_template(self) -> str:
        path = PROMPT_DIR / (self.prompt_file or f"{self.name.lower()}.txt")
        return path.read_text(encoding="utf-8")

    def prompt(self, document: str) -> str:
        template = self.prompt_template
        if template.count(INPUT_SLOT) != 1:
            raise ValueError(f"prompt of {self.name} must contain exactly one {INPUT_SLOT} slot")
        return template.replace(INPUT_SLOT, document)

    def accepts(self, document: Mapping[str, Any], rng: random.Random) -> bool:
        """The paper's document heuristic: should this tool see this document?"""
        return True

    def grounded(self, input: str, text_before: str) -> bool:
        """Whether a sampled call's input can be read in the text before the call. Tools with such
        a rule (Calculator, MT) refuse calls that copy what the text says only later (a model
        reading ``sold [Calculator(555 - 315) -> 240] 240 rolls ... 555 in total`` copies the
        answer). Tools without one accept every input."""
        return True

    def filter_examples(self) -> str:
        """The prompt's examples as plain texts with calls *and results*, one per paragraph: what
        the filter puts before each text with ``filter_context=prompt``. A call this tool cannot
        answer without a document (Calendar's date) or an index stays without a result."""
        from toolformer.call_format import parse_calls, render_call

        texts = []
        for line in self.prompt_template.split(INPUT_SLOT)[0].splitlines():
            if not line.startswith("Output:"):
                continue
            text = line[len("Output:") :].strip()
            pieces, last = [], 0
            for call in parse_calls(text, known_tools=[self.name]):
                result = call.result
                if result is None:
                    try:
                        result = self(call.input, CallContext())
                    except Exception:  # noqa: BLE001  (no result for this example: it stays without)
                        result = None
                pieces += [text[last : call.span[0]], render_call(call.tool, call.input, result)]
                last = call.span[1]
            texts.append("".join(pieces) + text[last:])
        return "".join(t + "\n\n" for t in texts)

    def __call__(self, input: str, context: CallContext) -> str:
        raise ToolError("internal", f"{type(self).__name__} does not implement __call__")


_REGISTRY: dict[str, type[Tool]] = {}


def register_tool(cls: type[Tool]) -> type[Tool]:
    """Class decorator: make a tool findable by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


@functools.cache  # scanning entry points costs ~30 ms; once per process is enough
def _load_builtin_and_plugins() -> None:
    importlib.import_module("tools.builtin")  # registers the paper's tools
    for ep in metadata.entry_points(group="toolformer.tools"):
        register_tool(ep.load())


def available_tools() -> list[str]:
    _load_builtin_and_plugins()
    return sorted(_REGISTRY)


def tool_class(spec: str) -> type[Tool]:
    """A tool class from its name (``Calculator``, case-insensitive) or ``module:Class``."""
    if ":" in spec:
        module, _, attr = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise KeyError(f"cannot load tool {spec!r}: {e}") from None
        if not (isinstance(cls, type) and issubclass(cls, Tool)):
            raise KeyError(f"{spec!r} is not a Tool subclass")
        _load_builtin_and_plugins()
        # Findable by name from now on, unless that name is taken: a `module:Class` spec must not
        # replace a built-in tool for the rest of the process.
        _REGISTRY.setdefault(cls.name, cls)
        return cls
    _load_builtin_and_plugins()
    by_lower = {k.lower(): v for k, v in _REGISTRY.items()}
    if spec.lower() not in by_lower:
        raise KeyError(f"unknown tool {spec!r}; available: {', '.join(sorted(_REGISTRY))}")
    return by_lower[spec.lower()]


def get_tool(spec: str, **config: Any) -> Tool:
    """An instance of the tool named ``spec``; ``config`` goes to its constructor."""
    return tool_class(spec)(**config)


INDEXED_TOOLS = frozenset({"wikisearch", "qa"})  # read the WikiSearch index given by --index


def resolve_tool(spec: str, index: str | None = None, flag: str = "--tools") -> tuple[type[Tool], dict[str, Any]]:
    """The class of ``spec`` (a name or ``module:Class``) and the configuration a command gives it:
    the search index for WikiSearch and QA (by the class's name, so a subclass gets it too).

    The one place where a command's flags become a tool's resources (``build_tools`` here, and
    ``augment``'s launcher, which must ship the configuration to its workers). An unknown tool or an
    indexed tool without an index raises :class:`~toolformer.errors.UserError` naming ``flag``.
    """
    from toolformer.errors import UserError

    try:
        cls = tool_class(spec)
    except KeyError as e:
        raise UserError(f"{flag}: {e.args[0]}") from None
    if cls.name.lower() not in INDEXED_TOOLS:
        return cls, {}
    if not index:
        raise UserError(f"{flag} {spec} needs --index DIR (a search index built by `toolformer index`)")
    return cls, {"index": index}


def build_tools(names: Sequence[str], index: str | None = None, flag: str = "--tools") -> dict[str, Tool]:
    """Instantiate tools by name or ``module:Class`` for a command; WikiSearch and QA get ``index``.

    Mistakes (an unknown name, an indexed tool without an index, a bad configuration) raise
    :class:`~toolformer.errors.UserError` naming ``flag``.
    """
    from toolformer.errors import UserError

    tools: dict[str, Tool] = {}
    for name in names:
        cls, config = resolve_tool(name, index, flag)
        try:
            tool = cls(**config)
        except (TypeError, ValueError, OSError) as e:
            raise UserError(f"cannot set up tool {name!r}: {e}") from None
        tools[tool.name] = tool
    return tools
