"""Incremental detokenization: the text of each new token of a growing id sequence, in constant work.

Decoding the whole sequence again after every token (as ``transformers.TextStreamer`` does within a
line) costs time quadratic in its length. :class:`IncrementalText` decodes only a short window instead,
as text-generation-inference and vLLM do: ``decode(ids[prefix:read])`` is the text already shown of
the last few tokens, ``decode(ids[prefix:])`` the same with the new tokens; the new text is the part
of the second past the first. Decoding a window (not a single token) keeps what a token's text depends
on its left neighbour for (SentencePiece's leading space, a multi-byte character split over tokens);
a window whose text ends in an incomplete character (``"\\ufffd"``) waits for the next token.

For byte-level BPE (GPT-2, SmolLM2, Llama 3) the pieces add up to ``decode(ids)`` exactly: both window
ends only ever move to a position where the text so far ends in a complete character.

Tokens can be taken back (a rolled-back call): :meth:`IncrementalText.rollback` restores the state
from before they were pushed and returns the text that had been shown for them.
"""

from __future__ import annotations

from collections.abc import Callable

# After this many tokens without a complete character the window's text is shown anyway (a model
# writing invalid bytes must not make every step decode a longer window).
MAX_PENDING = 16


class IncrementalText:
    """The text of a growing sequence of ids, piece by piece. ``decode(ids) -> str`` decodes a list.

    ``decoded_tokens`` counts the ids decoded so far (the work done: about 3 per pushed token).
    """

    def __init__(self, decode: Callable[[list[int]], str]):
        self._decode = decode
        self.ids: list[int] = []
        self.prefix = 0  # window start: the text of ids[prefix:read] has been shown
        self.read = 0  # ids[read:] have not been shown yet (an incomplete character)
        self.pieces: list[str] = []  # the text shown by each push
        self._marks: list[tuple[int, int, int, int]] = []  # (len(ids), prefix, read, len(pieces)) per push
        self._shown: str | None = ""  # the text of ids[prefix:read], once decoded
        self.decoded_tokens = 0

    def text(self, ids: list[int]) -> str:
        self.decoded_tokens += len(ids)
        return self._decode(ids)

    def push(self, ids: list[int]) -> str:
        """Append ``ids``; return the text they complete ("" while a character is incomplete)."""
        self._marks.append((len(self.ids), self.prefix, self.read, len(self.pieces)))
        self.ids.extend(ids)
        if self._shown is None:
            self._shown = self.text(self.ids[self.prefix:self.read])
        shown, new = self._shown, self.text(self.ids[self.prefix:])
        piece = ""
        complete = len(new) > len(shown) and not new.endswith("\ufffd")
        if complete or len(self.ids) - self.read >= MAX_PENDING:
            piece = new[len(shown):]
            self.prefix, self.read, self._shown = self.read, len(self.ids), None
        self.pieces.append(piece)
        return piece

    def rollback(self, n: int) -> str:
        """Take back the last ``n`` ids (the ids of whole pushes); return the text shown for them."""
        target = len(self.ids) - n
        while self._marks and self._marks[-1][0] > target:
            self._marks.pop()
        if not self._marks or self._marks[-1][0] != target:
            raise ValueError(f"rollback of {n} ids does not end at a push boundary")
        length, self.prefix, self.read, pieces = self._marks.pop()
        del self.ids[length:]
        self._shown = None
        taken = "".join(self.pieces[pieces:])
        del self.pieces[pieces:]
        return taken
