"""Document heuristics: which documents each tool sees during data generation (paper, section 4).

The pipeline calls ``tool.accepts(document, doc_rng(doc_id, seed, tool.name))``. The random
generator is seeded from a stable hash of the document id (BLAKE2b), never Python's ``hash()``,
which differs per process: a document gets the same decision on every worker and every rerun.

* Calculator (the paper, App. A.1): (i) three numbers within a window of about 100 tokens where one
  follows from two others by + - × ÷, or (ii) "=", "equals", "equal to", "total of" or "average of"
  followed by a number, or (iii) at least three numbers -- documents that only meet (iii) are kept at
  random, 1 % of them. The window is counted in words (``CALCULATOR_WINDOW_WORDS`` = 75, about 100
  GPT-J tokens), so it does not depend on the model's tokenizer.
* Calendar: documents whose date is known (a ``date`` field or a date in the ``url``).
* WikiSearch, QA: every document.
* MT: documents with a run of at least ``MT_MIN_FOREIGN_WORDS`` words written in a non-Latin
  script or with non-ASCII letters. The paper used a fastText language-ID classifier; we use
  this character heuristic to avoid another model download.
"""

from __future__ import annotations

import itertools
import random
import re
from fractions import Fraction

# re-exported: what a document is (its id, date and random generator) is the core's
from toolformer.documents import date_from_url, doc_rng, document_date, stable_seed  # noqa: F401

CALCULATOR_RANDOM_SHARE = 0.01
CALCULATOR_WINDOW_WORDS = 75  # the paper's 100-token window, at ~1.33 GPT-J tokens per English word
MAX_NUMBERS = 60  # the arithmetic check is quadratic in the numbers of a document
MT_MIN_FOREIGN_WORDS = 3

_NUMBER = re.compile(r"(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")
_FOREIGN_WORD = re.compile(r"\S*[^\x00-\x7f\W\d_]\S*")


def numbers_in(text: str) -> list[Fraction]:
    """The numbers written in ``text`` (``1,280`` and ``3.5`` included), in order."""
    return [Fraction(m.group(0).replace(",", "")) for m in _NUMBER.finditer(text)]


# Grounding (no answers from the future): numbers as text writes them, ".5" and "1,200" included.
_TEXT_NUMBER = re.compile(r"(?<![\d.])(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d+)?|(?<![\d.])\.\d+")
_EXPR_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?|\.\d+")
NUMBER_WORDS = {
    w: Fraction(v)
    for v, ws in {
        1: "one a an", 2: "two half twice double both pair", 3: "three triple third thrice", 4: "four quarter",
        5: "five", 6: "six", 7: "seven week weekly", 8: "eight", 9: "nine", 10: "ten", 11: "eleven",
        12: "twelve dozen months", 13: "thirteen", 14: "fourteen", 15: "fifteen", 16: "sixteen",
        17: "seventeen", 18: "eighteen", 19: "nineteen", 20: "twenty", 24: "hours", 30: "thirty",
        40: "forty", 50: "fifty", 60: "sixty minutes", 100: "hundred percent %",
    }.items()
    for w in ws.split()
}
_WORD = re.compile(r"[a-z]+|%")


def text_numbers(text: str) -> set[Fraction]:
    """The values a text states: its numerals (``1,200``, ``3.5``, ``.5``) and the number words
    of :data:`NUMBER_WORDS` (``half`` -> 2, ``dozen`` -> 12, ``%``/``percent`` -> 100)."""
    values = {Fraction(m.group(0).replace(",", "")) for m in _TEXT_NUMBER.finditer(text)}
    values |= {NUMBER_WORDS[w] for w in _WORD.findall(text.lower()) if w in NUMBER_WORDS}
    return values


def numbers_grounded(expression: str, text_before: str) -> bool:
    """Whether every number of a Calculator expression is stated in ``text_before`` (by value:
    1,200 = 1200, 0.5 = .5 = 0.50; number words count, see :func:`text_numbers`). An expression
    without a number is not grounded (there is nothing it was computed from)."""
    wanted = {Fraction(m.group(0).replace(",", "")) for m in _EXPR_NUMBER.finditer(expression)}
    return bool(wanted) and wanted <= text_numbers(text_before)


def has_arithmetic_relation(numbers: list[Fraction]) -> bool:
    """Whether some number equals a + b, a - b, a × b or a / b of two others (distinct positions).

    A quotient also counts when it matches after rounding to 2 decimals or as a percentage
    (``400 / 1400`` -> ``0.29`` or ``29``), the way text writes it. Operands 0 and 1 are skipped
    where they make the relation trivial (``x × 1 = x``).
    """
    nums = numbers[:MAX_NUMBERS]
    positions: dict[Fraction, list[int]] = {}
    for i, v in enumerate(nums):
        positions.setdefault(v, []).append(i)

    def present(value: Fraction, *exclude: int) -> bool:
        return any(p not in exclude for p in positions.get(value, ()))

    for (i, a), (j, b) in itertools.permutations(enumerate(nums), 2):
        if a != 0 and b != 0 and (present(a + b, i, j) or present(a - b, i, j)):
            return True
        if a not in (0, 1) and b not in (0, 1) and present(a * b, i, j):
            return True
        if b not in (0, 1) and a != 0:
            q = a / b
            rounded = Fraction(round(q * 100), 100)
            if present(q, i, j) or (q < 1 and (present(rounded, i, j) or present(rounded * 100, i, j))):
                return True
    return False


_EQUALS_NUMBER = re.compile(r"(?:=|\bequals?\b|\bequal to\b|\btotal of\b|\baverage of\b)\s*[$€£]?\s*[-−]?\.?\d",
                            re.IGNORECASE)
_WORD_START = re.compile(r"\S+")


def numbers_with_words(text: str) -> list[tuple[Fraction, int]]:
    """Each number of ``text`` (as :func:`text_numbers` reads them: lists like ``1,2,3`` are three
    numbers) with the index of the word it is in."""
    starts = [m.start() for m in _WORD_START.finditer(text)]
    out, w = [], 0
    for m in _TEXT_NUMBER.finditer(text):
        while w + 1 < len(starts) and starts[w + 1] <= m.start():
            w += 1
        out.append((Fraction(m.group(0).replace(",", "")), w))
    return out


def related_within(numbers: list[tuple[Fraction, int]], window: int = CALCULATOR_WINDOW_WORDS) -> bool:
    """Rule (i): some three numbers no more than ``window`` words apart, one + - × ÷ of the others."""
    nums = numbers[:MAX_NUMBERS]
    for s in range(len(nums)):
        inside = [v for v, w in nums[s:] if w - nums[s][1] <= window]
        if len(inside) >= 3 and has_arithmetic_relation(inside):
            return True
        if s + len(inside) >= len(nums):  # this window reaches the last number: later ones are inside it
            break
    return False


def calculator_accepts(text: str, rng: random.Random, random_share: float = CALCULATOR_RANDOM_SHARE) -> bool:
    """The paper's Calculator heuristic, rules (i)-(iii) (see the module docstring)."""
    numbers = numbers_with_words(text)
    if len(numbers) >= 3 and related_within(numbers):
        return True
    if _EQUALS_NUMBER.search(text):
        return True
    # (iii): the random draw is made for every document with three numbers, so the decision for one
    # document does not depend on the others.
    return len(numbers) >= 3 and rng.random() < random_share


def has_foreign_text(text: str, min_words: int = MT_MIN_FOREIGN_WORDS) -> bool:
    """Whether ``text`` has ``min_words`` consecutive words containing non-ASCII letters."""
    run = 0
    for word in text.split():
        if _FOREIGN_WORD.fullmatch(word):
            run += 1
            if run >= min_words:
                return True
        else:
            run = 0
    return False
