"""The inline API-call syntax shared by sampling, filtering, training data and decoding.

The paper writes a call as ``<API> Tool(input) → result </API>``. Like the paper's own
implementation we spell the three markers with ordinary text so the vocabulary need not change:

    [Calculator(400 / 1400) -> 0.29]      a call with its result
    [Calculator(400 / 1400)]              a call without a result
    [Calendar()]                          a tool that takes no input

The markers are configurable (:class:`CallFormat`); ``→`` is accepted as an arrow when parsing.

Parsing rules (documented, tested; every "[" that is not a well-formed call is reported, never
executed, and the text is never changed by parsing):

* A call starts at ``[`` followed directly by a tool name (``[A-Za-z_][A-Za-z0-9_]*``) and ``(``.
  Any other ``[`` (a citation ``[1]``, a bare ``[]``) is plain text and is not reported.
* The input runs to the matching ``)``; parentheses inside it must balance
  (``[Calculator((2+3)*4)]`` is one call with input ``(2+3)*4``).
* Inside the input, ``[`` gives status ``nested`` (the outer call is rejected; scanning resumes at
  the inner ``[``, so an inner well-formed call *is* reported as a call of its own); ``]`` or an
  arrow gives ``malformed``; a newline or end of text before ``)`` gives ``unterminated``.
* After ``)``: optional spaces, then ``]`` (a call without result) or an arrow, the result, ``]``.
  The result may not contain ``[``, an arrow or a newline (``malformed``); a missing ``]`` gives
  ``unterminated`` (the result so far is kept: this is how decoding sees an open call).
* With ``known_tools`` given, other names get ``unknown_tool`` (names are case-sensitive).
  An empty input to a tool that takes one (everything but ``no_input_tools``) gives ``empty_input``.
* Inputs longer than ``max_input_chars`` and results longer than ``max_result_chars`` give
  ``too_long``. Together with stopping at every ``[`` this keeps parsing linear in the text length.

Tool results and document text that contain the markers are neutralised by :func:`neutralize`
before they meet the format (``[``→``(``, ``]``→``)``, arrows→``=>``), so a result can never open or
close a call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Iterator

ARROW_ALTERNATIVES = ("→",)

OK = "ok"
NESTED = "nested"
MALFORMED = "malformed"
UNTERMINATED = "unterminated"
UNKNOWN_TOOL = "unknown_tool"
EMPTY_INPUT = "empty_input"
TOO_LONG = "too_long"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class CallFormat:
    """The three markers. ``start`` opens a call, ``arrow`` separates the result, ``end`` closes.

    When a call is inserted into text it is preceded by one space (the paper's `` [``): the
    space belongs to the inserted span, so the text around it is unchanged.
    """

    start: str = "["
    end: str = "]"
    arrow: str = "->"
    accepted_arrows: tuple[str, ...] = ARROW_ALTERNATIVES
    special: re.Pattern = field(init=False, repr=False, compare=False)
    max_input_chars: int = 400
    max_result_chars: int = 400

    def __post_init__(self) -> None:
        if not self.start or not self.end or not self.arrow:
            raise ValueError("call markers must be non-empty")
        if len({self.start, self.end, self.arrow}) != 3:
            raise ValueError("call markers must differ from each other")
        # Characters/markers that end or structure an input or result: the scanner jumps to
        # them with one regex search instead of walking character by character.
        alts = sorted({self.start, self.end, *self.arrows, "(", ")", "\n"}, key=len, reverse=True)
        object.__setattr__(self, "special", re.compile("|".join(re.escape(a) for a in alts)))

    @property
    def arrows(self) -> tuple[str, ...]:
        return (self.arrow,) + tuple(a for a in self.accepted_arrows if a != self.arrow)


DEFAULT_FORMAT = CallFormat()


@dataclass(frozen=True, slots=True)
class ParsedCall:
    """One call found in a text. ``span`` is ``(start, end)`` in characters, ``text[start:end]``
    being the call from its opening marker to its closing marker (or to where parsing stopped)."""

    tool: str
    input: str
    result: str | None
    span: tuple[int, int]
    status: str = OK

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def has_result(self) -> bool:
        return self.result is not None


def render_call(tool: str, input: str, result: str | None = None, fmt: CallFormat = DEFAULT_FORMAT) -> str:
    """``[Tool(input)]`` or ``[Tool(input) -> result]`` (no leading space)."""
    body = f"{fmt.start}{tool}({input})"
    if result is None:
        return body + fmt.end
    return f"{body} {fmt.arrow} {result}{fmt.end}"


def render_open_call(tool: str, input: str, fmt: CallFormat = DEFAULT_FORMAT) -> str:
    """``[Tool(input) ->``: what the model has written when decoding stops to run the tool."""
    return f"{fmt.start}{tool}({input}) {fmt.arrow}"


def neutralize(text: str, fmt: CallFormat = DEFAULT_FORMAT) -> str:
    """Make ``text`` unable to open, close or split a call (for tool results and documents).

    ``[``→``(``, ``]``→``)``, every arrow → ``=>``. Applied to every tool result before insertion
    and to input documents before sampling, so text can never be executed as a call.
    """
    for arrow in fmt.arrows:
        text = text.replace(arrow, "=>")
    return text.replace(fmt.start, "(").replace(fmt.end, ")")


def contains_markers(text: str, fmt: CallFormat = DEFAULT_FORMAT) -> bool:
    return fmt.start in text or fmt.end in text or any(a in text for a in fmt.arrows)


def _starts_arrow(text: str, i: int, fmt: CallFormat) -> str | None:
    for arrow in fmt.arrows:
        if text.startswith(arrow, i):
            return arrow
    return None


def _parse_at(text: str, i: int, fmt: CallFormat) -> tuple[ParsedCall | None, int]:
    """Parse a call whose opening marker starts at ``i``. Returns (call or None, resume index)."""
    n = len(text)
    name_start = i + len(fmt.start)
    m = _NAME.match(text, name_start, min(n, name_start + 100))
    if m is None or m.end() >= n or text[m.end()] != "(":
        return None, name_start  # not a call: plain text
    tool = m.group(0)
    j = m.end() + 1
    arg_start = j
    depth = 0
    limit = arg_start + fmt.max_input_chars
    special = fmt.special
    while True:
        s = special.search(text, j, min(n, limit + 1))
        if s is None:
            j = min(n, limit)
            if j >= n:
                return ParsedCall(tool, text[arg_start:j], None, (i, j), UNTERMINATED), j
            return ParsedCall(tool, text[arg_start:j], None, (i, j), TOO_LONG), j
        j = s.start()
        tok = s.group(0)
        if j >= limit:
            return ParsedCall(tool, text[arg_start:j], None, (i, j), TOO_LONG), j
        if tok == "\n":
            return ParsedCall(tool, text[arg_start:j], None, (i, j), UNTERMINATED), j
        if tok == fmt.start:
            return ParsedCall(tool, text[arg_start:j], None, (i, j), NESTED), j
        if tok == fmt.end or tok in fmt.arrows:
            return ParsedCall(tool, text[arg_start:j], None, (i, j + 1), MALFORMED), j + 1
        if tok == "(":
            depth += 1
        elif tok == ")":
            if depth == 0:
                break
            depth -= 1
        j += 1
    arg = text[arg_start:j]
    j += 1  # past ")"
    k = j
    while k < n and text[k] == " ":
        k += 1
    if text.startswith(fmt.end, k):
        end = k + len(fmt.end)
        return ParsedCall(tool, arg, None, (i, end)), end
    arrow = _starts_arrow(text, k, fmt) if k < n else None
    if arrow is None:
        status = UNTERMINATED if k >= n else MALFORMED
        return ParsedCall(tool, arg, None, (i, k), status), max(k, j)
    r = k + len(arrow)
    if r < n and text[r] == " ":
        r += 1
    res_start = r
    limit = res_start + fmt.max_result_chars
    s = special.search(text, r, min(n, limit + 1))
    while s is not None and s.group(0) in "()":
        s = special.search(text, s.end(), min(n, limit + 1))
    if s is None:
        r = min(n, limit)
        status = UNTERMINATED if r >= n else TOO_LONG
        return ParsedCall(tool, arg, text[res_start:r], (i, r), status), max(r, res_start)
    r = s.start()
    tok = s.group(0)
    if r >= limit:
        return ParsedCall(tool, arg, text[res_start:r], (i, r), TOO_LONG), r
    if tok == "\n":
        return ParsedCall(tool, arg, text[res_start:r], (i, r), UNTERMINATED), max(r, res_start)
    if tok == fmt.end:
        result = text[res_start:r]
        if result.endswith(" "):
            result = result[:-1]
        end = r + len(fmt.end)
        return ParsedCall(tool, arg, result, (i, end)), end
    return ParsedCall(tool, arg, text[res_start:r], (i, r), MALFORMED), r


def iter_calls(
    text: str,
    fmt: CallFormat = DEFAULT_FORMAT,
    known_tools: Collection[str] | None = None,
    no_input_tools: Collection[str] = ("Calendar",),
) -> Iterator[ParsedCall]:
    """Yield every call (and every rejected call attempt) in ``text``, left to right."""
    i = text.find(fmt.start)
    while i != -1:
        call, resume = _parse_at(text, i, fmt)
        if call is not None:
            if call.ok:
                if known_tools is not None and call.tool not in known_tools:
                    call = ParsedCall(call.tool, call.input, call.result, call.span, UNKNOWN_TOOL)
                elif not call.input.strip() and call.tool not in no_input_tools:
                    call = ParsedCall(call.tool, call.input, call.result, call.span, EMPTY_INPUT)
            yield call
        i = text.find(fmt.start, max(resume, i + 1))


def parse_calls(
    text: str,
    fmt: CallFormat = DEFAULT_FORMAT,
    known_tools: Collection[str] | None = None,
    no_input_tools: Collection[str] = ("Calendar",),
) -> list[ParsedCall]:
    """Every call attempt in ``text`` with its span, parts and status (see the module docstring)."""
    return list(iter_calls(text, fmt, known_tools, no_input_tools))


def parse_call(text: str, fmt: CallFormat = DEFAULT_FORMAT, **kwargs) -> ParsedCall:
    """Parse a text that should hold exactly one call (leading/trailing whitespace allowed).

    Raises :class:`CallSyntaxError` if it does not.
    """
    stripped = text.strip()
    calls = parse_calls(stripped, fmt, **kwargs)
    if not calls:
        raise CallSyntaxError(f"no call found in {stripped[:80]!r}")
    call = calls[0]
    if not call.ok:
        raise CallSyntaxError(f"call is {call.status}: {stripped[:80]!r}")
    if len(calls) > 1 or call.span != (0, len(stripped)):
        raise CallSyntaxError(f"expected exactly one call, got extra text in {stripped[:80]!r}")
    return call


class CallSyntaxError(ValueError):
    """A text that had to be a single well-formed call was not."""


def strip_calls(text: str, fmt: CallFormat = DEFAULT_FORMAT) -> str:
    """Remove every well-formed call (and the single space before it) from ``text``."""
    out, last = [], 0
    for call in iter_calls(text, fmt, no_input_tools=()):
        if call.status not in (OK, EMPTY_INPUT):
            continue
        start, end = call.span
        if start > 0 and text[start - 1] == " ":
            start -= 1
        out.append(text[last:start])
        last = end
    out.append(text[last:])
    return "".join(out)


FORMAT_FILE = "call_format.json"  # written beside the tokenizer by `finetune --marker-tokens`


def load_call_format(directory: str | Path) -> CallFormat:
    """The call format a model directory was trained with (the default when it has no file)."""
    path = Path(directory, FORMAT_FILE)
    if not path.is_file():
        return DEFAULT_FORMAT
    spec = json.loads(path.read_text(encoding="utf-8"))
    return CallFormat(start=spec["start"], end=spec["end"], arrow=spec["arrow"], accepted_arrows=())
