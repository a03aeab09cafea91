"""The paper's scoring rules: first number for math, exact answers for dates, first words for cloze and QA.

All rules read the model's answer *without* its API calls (``GenerationOutput.text_without_calls``):
the paper scores what the model says, and a call's input or result is not part of the answer.

Run the tests: ``python -m pytest -q tests/test_evaluation_scoring.py``.
"""

from __future__ import annotations

import math
import re
import string

# A number as people write it in answers: "-3", "1,234.5", "$18", ".5", "29%", "5kg", "3rd".
# * Thousands separators only in groups of exactly three digits, so "3,4" is the list "3, 4".
# * A minus sign counts only where it cannot be a hyphen or a subtraction: "-5" and "(-5" are
#   negative, "COVID-19" and "10-5" are not ("10-5" gives 10, its first number, anyway).
# * Trailing units and suffixes are simply not part of the match ("5kg" -> 5, "3rd" -> 3).
# Numbers written as words ("five") are not numbers here: the paper's rule is "the first number".
_NUMBER = re.compile(
    r"(?:(?<![A-Za-z0-9_])[-\u2212])?"  # optional sign, not a hyphen inside a word
    r"(?<![0-9])"  # never start in the middle of a number
    r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)?"  # integer part, with or without thousands separators
    r"(?:\.\d+)?"  # decimals
)

# Absolute tolerance of a numeric match: the Calculator rounds its results to two decimals, so a
# model that copies "0.33" for a gold 1/3 (0.333333 in MAWPS) is right.
NUMBER_TOLERANCE = 0.005 + 1e-9

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
_WEEKDAY = re.compile(r"\b(" + "|".join(WEEKDAYS) + r")\b", re.IGNORECASE)
_MONTH = re.compile(r"\b(" + "|".join(MONTHS) + r")\b", re.IGNORECASE)


def extract_first_number(text: str) -> float | None:
    """The first number written in ``text``, or None.

    >>> extract_first_number("It costs $1,234.50 in total.")
    1234.5
    """
    for m in _NUMBER.finditer(text):
        token = m.group(0)
        digits = token.lstrip("-\u2212")
        if not any(c.isdigit() for c in digits):
            continue  # an empty match or a lone sign
        value = float(digits.replace(",", ""))
        return -value if token[0] in "-\u2212" else value
    return None


_UNIT_IN_PARENS = re.compile(r"\s*\([^()]*\)\s*$")
_GOLD = re.compile(r"\s*\$?\s*(" + _NUMBER.pattern + r")\s*%?\s*")


def parse_gold_number(text: str | float) -> float | None:
    """A gold answer as a number: ``43.0``, ``"43"``, ``"1,350"``, ``"9 (apples)"``; None if not one.

    ASDiv writes its unit in parentheses ("9 (apples)"); answers that are not one number
    ("3:4", "6 (kids); 2 (adults)", "Tom") give None and the loaders skip them.
    """
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text) if math.isfinite(text) else None
    m = _GOLD.fullmatch(_UNIT_IN_PARENS.sub("", text))
    return extract_first_number(m.group(1)) if m else None


def numbers_match(predicted: float | None, gold: float) -> bool:
    return predicted is not None and abs(predicted - gold) <= NUMBER_TOLERANCE


def score_math(output: str, gold: float) -> tuple[float | None, bool]:
    """The paper's rule: the first number in the output against the gold answer."""
    predicted = extract_first_number(output)
    return predicted, numbers_match(predicted, gold)


_ANSWER_IS = re.compile(r"the answer is", re.IGNORECASE)


def score_math_solution(output: str, gold: float) -> tuple[float | None, bool]:
    """A worked solution (``--prompt-style solution``): the first number after the first "The
    answer is" against the gold answer; a solution that never says it is wrong (None)."""
    m = _ANSWER_IS.search(output)
    predicted = extract_first_number(output[m.end():]) if m else None
    return predicted, numbers_match(predicted, gold)


def extract_date_answer(output: str, kind: str) -> str | None:
    """The answer of a date question as a canonical string.

    ``kind`` is ``weekday`` (first weekday name, capitalised), ``month`` (first month name) or a
    numeric kind (``days``, ``day``, ``year``: the first number, written as an integer).
    """
    if kind == "weekday":
        m = _WEEKDAY.search(output)
        return m.group(1).capitalize() if m else None
    if kind == "month":
        m = _MONTH.search(output)
        return m.group(1).capitalize() if m else None
    value = extract_first_number(output)
    if value is None:
        return None
    return str(int(value)) if value == int(value) else repr(value)


def score_date(output: str, gold: str, kind: str) -> tuple[str | None, bool]:
    """Exact match of the first answer of the right kind (a weekday, a month, or a number)."""
    predicted = extract_date_answer(output, kind)
    return predicted, predicted == gold


_PUNCT = str.maketrans({c: " " for c in string.punctuation + "\u2019\u201c\u201d"})

# LAMA (App. C.1 of the paper): correct if the answer is among the first five predicted words.
CLOZE_WORDS = 5


def normalize_words(text: str) -> list[str]:
    """Lower-cased words without punctuation ("Paris," -> "paris")."""
    return text.lower().translate(_PUNCT).split()


# Open-domain QA (App. C.3 of the paper): correct if an answer is within the first twenty words.
QA_WORDS = 20


def score_qa(output: str, answers: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """The paper's QA rule: one gold answer (all its words, in order) within the first 20 words."""
    return score_cloze(output, answers, QA_WORDS)


def score_cloze(output: str, answers: tuple[str, ...] | list[str], n_words: int = CLOZE_WORDS
                ) -> tuple[str, bool]:
    """Correct if one answer (all its words, in order) lies within the first ``n_words`` words."""
    words = normalize_words(output)[:n_words]
    shown = " ".join(words)
    for answer in answers:
        target = normalize_words(answer)
        if not target:
            continue
        k = len(target)
        if any(words[i:i + k] == target for i in range(len(words) - k + 1)):
            return shown, True
    return shown, False
