"""The Calculator tool: + - × ÷ with parentheses over exact fractions, safe by construction.

Run one call:  ``toolformer call '[Calculator(18 + 12 * 3)]'``  prints ``54``.

Every expression the model writes is untrusted. This module never uses ``eval``, ``compile``,
``ast.parse`` or ``sympify``: a hand-written tokenizer and recursive-descent parser build a tiny
tree of allow-listed nodes (numbers, unary minus/plus, ``+ - * / **``) which is evaluated with
:class:`fractions.Fraction`, so ``10-5-2`` is ``3`` and ``0.1 + 0.2`` is exactly ``0.3``. Caps on
length, tokens, nesting depth, digits per number, magnitude, fraction size and exponent are checked
*before* each operation, so no input can hang or allocate much. The tool runs
:func:`evaluate` in an :class:`~tools.isolation.IsolatedFunction` worker (CPU and memory limits,
killed on timeout) as a second layer.

Accepted text (each rule is tested in tests/test_calculator.py):

* One pair of matching quotes around the whole input is stripped (``"5 + 3"`` -> ``8``).
* ``×`` and ``x``/``X`` mean ``*`` when they stand between two operands (``3 x 4``; not ``0x1``);
  ``÷`` means ``/``; the minus sign ``−`` (U+2212) means ``-``.
* Numbers are ASCII: ``12``, ``3.5``, ``.5``, thousands separators ``1,280`` (groups of exactly
  three digits). Any other character - other scripts' digits (``١٢٣``), full-width digits,
  superscripts, ``½``, NBSP or zero-width spaces, ``_``, ``e`` notation, names such as ``nan``,
  ``sqrt`` or ``__import__`` - is rejected with reason ``parse``. (We reject instead of applying
  NFKC because NFKC turns ``2²`` into ``22``.)
* ``**`` is a power with an integer exponent of at most 64 in size (beyond the paper's four
  operations; kept because models write it, bounded like everything else).
* A lone number (``42``, ``-3``, ``(7)``) is rejected: there is nothing to compute, and returning
  the input would teach the model a useless call.

Result: rounded once, at the end, to 2 decimals with ROUND_HALF_UP on the exact value
(``0.125`` -> ``0.13``, ``-0.125`` -> ``-0.13``; Python's ``round`` would give ``0.12``), trailing
zeros dropped, integers without ``.0``, never ``-0``. Errors are :class:`ToolError` with reason
``parse``, ``limit`` or ``div0``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from tools import heuristics
from tools.base import CallContext, Tool, ToolError, register_tool
from tools.isolation import IsolatedFunction

MAX_CHARS = 256  # raw input length, checked before anything else
MAX_TOKENS = 128
MAX_DEPTH = 32  # parentheses plus unary signs plus powers
MAX_DIGITS = 15  # per number literal, separators excluded
MAX_MAGNITUDE = 10**18  # of every intermediate value and of the result
MAX_BITS = 1024  # numerator and denominator of every intermediate fraction
MAX_EXPONENT = 64

_NUMBER = re.compile(r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+")
_ALLOWED = frozenset("0123456789.,+-*/() \txX")
_TRANSLATE = str.maketrans({"×": "*", "÷": "/", "−": "-"})
_QUOTES = ('"', "'")


def _parse_error(message: str) -> ToolError:
    return ToolError("parse", message)


def _limit_error(message: str) -> ToolError:
    return ToolError("limit", message)


def tokenize(text: str) -> list[tuple[str, Any]]:
    """Tokens ``("num", Fraction)``, ``("op", "+")`` ..., ``("(", None)``, ``(")", None)``."""
    for ch in text:
        if ch not in _ALLOWED:
            raise _parse_error(f"unsupported character {ch!r} (U+{ord(ch):04X})")
    tokens: list[tuple[str, Any]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t":
            i += 1
            continue
        m = _NUMBER.match(text, i)
        if m:
            literal = m.group(0)
            after = text[m.end()] if m.end() < n else ""
            if after and (after.isdigit() or after in ".,"):
                raise _parse_error(f"malformed number near {text[i : m.end() + 1]!r}")
            digits = literal.replace(",", "").replace(".", "")
            if len(digits.lstrip("0")) > MAX_DIGITS:
                raise _limit_error(f"number {literal[:20]!r}... has more than {MAX_DIGITS} digits")
            tokens.append(("num", Fraction(literal.replace(",", ""))))
            i = m.end()
        elif ch in "xX":
            prev_is_operand = bool(tokens) and tokens[-1][0] in ("num", ")")
            rest = text[i + 1 :].lstrip(" \t")
            if not prev_is_operand or not rest or not (rest[0].isdigit() or rest[0] in ".("):
                raise _parse_error("'x' is a multiplication sign only between two operands")
            if text[i - 1] == "0" and tokens[-1] == ("num", 0) and (i < 2 or not text[i - 2].isdigit()):
                raise _parse_error("hexadecimal numbers are not supported")
            tokens.append(("op", "*"))
            i += 1
        elif ch == "*" and text.startswith("**", i):
            tokens.append(("op", "**"))
            i += 2
        elif ch in "+-*/":
            tokens.append(("op", ch))
            i += 1
        elif ch in "()":
            tokens.append((ch, None))
            i += 1
        else:  # a "," or "." that does not belong to a number
            raise _parse_error(f"unexpected {ch!r} at position {i}")
        if len(tokens) > MAX_TOKENS:
            raise _limit_error(f"more than {MAX_TOKENS} tokens")
    return tokens


class _Parser:
    """Recursive descent over the token list. Tree nodes are tuples: ("num", Fraction),
    ("neg", node), ("pos", node) and (op, left, right) for op in + - * / **."""

    def __init__(self, tokens: list[tuple[str, Any]]):
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def parse(self) -> tuple:
        if not self.tokens:
            raise _parse_error("empty expression")
        node = self.expr()
        if self.i != len(self.tokens):
            raise _parse_error(f"unexpected {self._describe(self.peek())} after a complete expression")
        return node

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _limit_error(f"nesting deeper than {MAX_DEPTH}")

    def expr(self) -> tuple:
        node = self.term()
        while (tok := self.peek()) is not None and tok[0] == "op" and tok[1] in ("+", "-"):
            self.i += 1
            node = (tok[1], node, self.term())  # left-associative: 10-5-2 == (10-5)-2
        return node

    def term(self) -> tuple:
        node = self.unary()
        while (tok := self.peek()) is not None and tok[0] == "op" and tok[1] in ("*", "/"):
            self.i += 1
            node = (tok[1], node, self.unary())
        return node

    def unary(self) -> tuple:
        tok = self.peek()
        if tok is not None and tok[0] == "op" and tok[1] in ("+", "-"):
            self.i += 1
            self._enter()
            node = ("neg" if tok[1] == "-" else "pos", self.unary())
            self.depth -= 1
            return node
        return self.power()

    def power(self) -> tuple:
        base = self.atom()
        tok = self.peek()
        if tok == ("op", "**"):
            self.i += 1
            self._enter()
            node = ("**", base, self.unary())  # right-associative, and -2**2 == -(2**2), as in Python
            self.depth -= 1
            return node
        return base

    def atom(self) -> tuple:
        tok = self.peek()
        if tok is None:
            raise _parse_error("expression ends early")
        if tok[0] == "num":
            self.i += 1
            return tok
        if tok[0] == "(":
            self.i += 1
            self._enter()
            node = self.expr()
            if self.peek() != (")", None):
                raise _parse_error("unbalanced parentheses")
            self.i += 1
            self.depth -= 1
            return node
        raise _parse_error(f"unexpected {self._describe(tok)}")

    @staticmethod
    def _describe(tok: tuple[str, Any] | None) -> str:
        if tok is None:
            return "end of expression"
        return repr(str(tok[1])) if tok[0] in ("num", "op") else repr(tok[0])


def _checked(value: Fraction) -> Fraction:
    if abs(value) > MAX_MAGNITUDE:
        raise _limit_error(f"a value exceeds {MAX_MAGNITUDE:.0e}")
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise _limit_error("a fraction became too large")
    return value


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise _parse_error("only integer exponents are supported")
    e = exponent.numerator
    if abs(e) > MAX_EXPONENT:
        raise _limit_error(f"exponent {e} is larger than {MAX_EXPONENT}")
    if base == 0 and e < 0:
        raise ToolError("div0", "zero to a negative power")
    # Estimate the size before computing: |e| times the bits of the larger part.
    if abs(e) * max(base.numerator.bit_length(), base.denominator.bit_length()) > MAX_BITS:
        raise _limit_error("the power is too large")
    return base**e


def _eval(node: tuple) -> Fraction:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "neg":
        return -_eval(node[1])
    if kind == "pos":
        return _eval(node[1])
    left, right = _eval(node[1]), _eval(node[2])
    if kind == "+":
        return _checked(left + right)
    if kind == "-":
        return _checked(left - right)
    if kind == "*":
        return _checked(left * right)
    if kind == "/":
        if right == 0:
            raise ToolError("div0", "division by zero")
        return _checked(left / right)
    if kind == "**":
        return _checked(_power(left, right))
    raise ToolError("internal", f"unknown node {kind!r}")  # unreachable: the parser makes no others


def _has_operation(node: tuple) -> bool:
    if node[0] == "num":
        return False
    if node[0] in ("neg", "pos"):
        return _has_operation(node[1])
    return True


def format_result(value: Fraction) -> str:
    """Round half-up (away from zero) to 2 decimals; ``5``, ``0.5``, ``0.29``; never ``-0``."""
    cents = (abs(value) * 100 + Fraction(1, 2)).__floor__()
    if cents == 0:
        return "0"
    sign = "-" if value < 0 else ""
    whole, frac = divmod(cents, 100)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:02d}".rstrip("0")


def evaluate(expression: str) -> str:
    """The Calculator's result for ``expression`` as text, or :class:`ToolError`."""
    if len(expression) > MAX_CHARS:
        raise _limit_error(f"expression longer than {MAX_CHARS} characters")
    text = expression.strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] == text[0]:
        text = text[1:-1].strip()
    tree = _Parser(tokenize(text.translate(_TRANSLATE))).parse()
    if not _has_operation(tree):
        raise _parse_error("nothing to compute: a lone number")
    return format_result(_checked(_eval(tree)))


@register_tool
class Calculator(Tool):
    """The paper's calculator. ``isolate`` runs each call in a killable worker process."""

    name = "Calculator"

    def __init__(
        self,
        isolate: bool = True,
        timeout_s: float = 1.0,
        memory_mb: int = 256,
        random_share: float = heuristics.CALCULATOR_RANDOM_SHARE,
    ):
        self.isolate = isolate
        self.random_share = random_share
        self._worker = (
            IsolatedFunction("tools.calculator:evaluate", timeout_s, memory_mb) if isolate else None
        )

    def __call__(self, input: str, context: CallContext) -> str:
        if self._worker is None:
            return evaluate(input)
        if len(input) > MAX_CHARS:  # the worker would say the same; spare the pipe a megabyte
            raise _limit_error(f"expression longer than {MAX_CHARS} characters")
        return self._worker(input)

    def accepts(self, document: Mapping[str, Any], rng: random.Random) -> bool:
        return heuristics.calculator_accepts(str(document.get("text", "")), rng, self.random_share)

    def grounded(self, input: str, text_before: str) -> bool:
        """Every number of the expression is written in the text before the call (1,200 = 1200,
        0.5 = .5 = 0.50); an expression without numbers is not grounded."""
        return heuristics.numbers_grounded(input, text_before)
