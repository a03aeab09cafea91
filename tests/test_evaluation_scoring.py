"""The paper's scoring rules (evaluation/scoring.py): first number, date answers, cloze."""

import pytest

from evaluation.scoring import (
    extract_date_answer,
    extract_first_number,
    parse_gold_number,
    score_cloze,
    score_date,
    score_math,
    score_math_solution,
    score_qa,
)


@pytest.mark.parametrize("text, expected", [
    ("The answer is 43.", 43.0),
    ("It costs $1,234.50 in total.", 1234.5),  # thousands separator and decimals
    ("12,000 people and 3 dogs", 12000.0),
    ("1,234,567", 1234567.0),
    ("3,4 and 5", 3.0),  # a list, not a thousands separator
    ("1,2345", 1.0),  # separators only in groups of three
    ("-3 degrees", -3.0),  # negative
    ("It fell to -0.5 today", -0.5),
    ("(\u22127)", -7.0),  # the Unicode minus sign
    ("COVID-19 cases: 5", 19.0),  # a hyphen inside a word is no sign
    ("10-5-2", 10.0),  # first number, a subtraction is no sign
    ("5kg of flour", 5.0),  # trailing unit
    ("29% passed", 29.0),
    ("the 3rd time", 3.0),
    (".5 of it", 0.5),
    ("It was 5. Then 6.", 5.0),  # a full stop is not a decimal point
    ("  \n 7 apples", 7.0),
    ("five apples", None),  # words are not numbers
    ("", None),
    ("- and -", None),
])
def test_extract_first_number(text, expected):
    assert extract_first_number(text) == expected


@pytest.mark.parametrize("gold, expected", [
    (43.0, 43.0), (7, 7.0), ("43", 43.0), ("1,350", 1350.0), ("9 (apples)", 9.0), ("0.5 (kg)", 0.5),
    ("$18", 18.0), ("-5", -5.0), ("12 %", 12.0), ("2 (m2)", 2.0),
    ("3:4", None), ("6 (kids); 2 (adults)", None), ("Tom", None), ("", None), (True, None),
    (float("nan"), None),
])
def test_parse_gold_number(gold, expected):
    assert parse_gold_number(gold) == expected


@pytest.mark.parametrize("output, gold, extracted, correct", [
    (" 43 seashells", 43.0, 43.0, True),
    (" She gave 43.0 of them", 43.0, 43.0, True),
    (" 1,350 people", 1350.0, 1350.0, True),
    (" 0.33", 1 / 3, 0.33, True),  # the calculator's two decimals
    (" 0.67", 2 / 3, 0.67, True),
    (" 0.66", 2 / 3, 0.66, False),
    (" 27 seashells were left, so 43", 43.0, 27.0, False),  # only the first number counts
    (" -4", -4.0, -4.0, True),
    (" 4", -4.0, 4.0, False),
    (" forty-three", 43.0, None, False),
])
def test_score_math(output, gold, extracted, correct):
    assert score_math(output, gold) == (extracted, correct)


@pytest.mark.parametrize("output, gold, extracted, correct", [
    (" 48/2 = 24 clips.\nThe answer is 72.", 72.0, 72.0, True),
    (" 48/2 = 24.\nthe answer is $1,200.50\nThe answer is 3.", 1200.5, 1200.5, True),  # the first one
    (" 48/2 = 24 clips, so 72 in all.", 72.0, None, False),  # no "The answer is": no answer
    (" The answer is twelve.", 12.0, None, False),
    (" The answer is -4.", -4.0, -4.0, True),
])
def test_score_math_solution(output, gold, extracted, correct):
    assert score_math_solution(output, gold) == (extracted, correct)


@pytest.mark.parametrize("output, kind, expected", [
    (" It was a monday.", "weekday", "Monday"),
    (" Sunday or Monday", "weekday", "Sunday"),
    (" In March.", "month", "March"),
    (" 2,021 days", "days", "2021"),
    (" the 5th", "day", "5"),
    (" 2019", "year", "2019"),
    (" no idea", "weekday", None),
    (" Mayday", "month", None),  # whole words only
    (" 2.5", "days", "2.5"),
])
def test_extract_date_answer(output, kind, expected):
    assert extract_date_answer(output, kind) == expected


def test_score_date_is_exact():
    assert score_date(" 12 days ago", "12", "days") == ("12", True)
    assert score_date(" 12.0", "12", "days") == ("12", True)
    assert score_date(" 13", "12", "days") == ("13", False)
    assert score_date(" Tuesday", "Monday", "weekday") == ("Tuesday", False)
    assert score_date(" It is july", "July", "month") == ("July", True)


@pytest.mark.parametrize("output, answers, correct", [
    (" logic and mathematics.", ("logic",), True),
    (" the field of Logic.", ("logic",), True),  # case and punctuation ignored
    (" one two three four logic", ("logic",), True),  # fifth word
    (" one two three four five logic", ("logic",), False),  # sixth word
    (" New York City", ("New York",), True),  # several words, in order
    (" York New", ("New York",), False),
    (" logical thinking", ("logic",), False),  # whole words
    (" Paris", ("London", "Paris"), True),  # any of several answers
    ("", ("Paris",), False),
])
def test_score_cloze(output, answers, correct):
    assert score_cloze(output, answers)[1] is correct


def test_score_cloze_reports_the_words_it_read():
    assert score_cloze(" The Eiffel Tower, in Paris, France!", ("paris",)) == ("the eiffel tower in paris", True)


@pytest.mark.parametrize("output, answers, correct", [
    (" " + " ".join(f"w{i}" for i in range(19)) + " Gustave Eiffel", ("Gustave Eiffel",), False),  # 20th and 21st
    (" " + " ".join(f"w{i}" for i in range(19)) + " Eiffel", ("Eiffel",), True),  # the 20th word
    (" It was designed by Gustave Eiffel's company.", ("gustave eiffel s",), True),
    (" December 1972, when Apollo 17 left.", ("14 December 1972 UTC", "December 1972"), True),
    (" In 1972.", ("December 1972",), False),
])
def test_score_qa_first_twenty_words(output, answers, correct):
    assert score_qa(output, answers)[1] is correct
