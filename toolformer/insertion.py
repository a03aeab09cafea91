"""Writing kept calls into their text (paper section 2): x* = x_1..x_{i-1}, e(c, r), x_i..x_n.

Positions are character offsets in the original text. Each call is inserted with one leading
space (`` [Calculator(400 / 1400) -> 0.29]``), the paper's `` <API>``; the text itself is never
changed, so :func:`toolformer.call_format.strip_calls` gives the original back. Used by the
pipeline's merge step (``toolformer augment``) and by ``toolformer refilter``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from toolformer.call_format import DEFAULT_FORMAT, CallFormat, render_call


def char_position(text_offsets: list[tuple[int, int]], i: int, text: str) -> int:
    """The character offset in ``text`` where a call before token i goes.

    ``text_offsets`` are the tokenizer's offsets for " " + text. A token that begins with its
    space (" 29") starts one character before its word in ``text``; SmolLM2 also has lone-space
    tokens before digits (" ", "2", "9"): a call before "2" goes before that space, so the text
    reads "or [Calculator(...) -> 0.29] 29%" and not "or  [...]29%".
    """
    pos = max(0, text_offsets[i][0] - 1)
    while pos > 0 and text[pos - 1] == " " and (pos == len(text) or text[pos] != " "):
        pos -= 1
    return pos


def insert_calls(text: str, calls: Iterable[Mapping], fmt: CallFormat = DEFAULT_FORMAT) -> str:
    """``text`` with each call ``{"tool", "input", "result", "position"}`` inserted before its position.

    Calls at the same position keep their given order. Positions outside the text are an error.
    """
    pieces, last = [], 0
    for call in sorted(calls, key=lambda c: c["position"]):
        pos = call["position"]
        if not 0 <= pos <= len(text):
            raise ValueError(f"call position {pos} outside a text of {len(text)} characters")
        pieces.append(text[last:pos])
        pieces.append(" " + render_call(call["tool"], call["input"], call.get("result"), fmt))
        last = pos
    pieces.append(text[last:])
    return "".join(pieces)
