"""The DATESET-like generator (evaluation/dates.py): holidays, arithmetic, determinism."""

import datetime as dt
import random

import pytest

from evaluation import dates
from evaluation.scoring import score_date

D = dt.date


def test_us_federal_holidays_2023():
    assert dates.us_federal_holidays(2023) == {
        "New Year's Day": D(2023, 1, 1), "Martin Luther King Jr. Day": D(2023, 1, 16),
        "Washington's Birthday": D(2023, 2, 20), "Memorial Day": D(2023, 5, 29), "Juneteenth": D(2023, 6, 19),
        "Independence Day": D(2023, 7, 4), "Labor Day": D(2023, 9, 4), "Columbus Day": D(2023, 10, 9),
        "Veterans Day": D(2023, 11, 11), "Thanksgiving Day": D(2023, 11, 23), "Christmas Day": D(2023, 12, 25)}


def test_holidays_2020_have_no_juneteenth_and_floating_days_move():
    h = dates.us_federal_holidays(2020)
    assert "Juneteenth" not in h
    assert (h["Memorial Day"], h["Thanksgiving Day"], h["Labor Day"]) == (D(2020, 5, 25), D(2020, 11, 26),
                                                                            D(2020, 9, 7))
    assert dates.us_federal_holidays(2021)["Memorial Day"] == D(2021, 5, 31)  # last Monday is the 31st


@pytest.mark.parametrize("start, n, unit, expected", [
    (D(2021, 3, 31), -1, "months", D(2021, 2, 28)),  # clamped to the end of February
    (D(2024, 3, 31), -1, "months", D(2024, 2, 29)),  # leap year
    (D(2024, 2, 29), 1, "years", D(2025, 2, 28)),
    (D(2023, 12, 30), 3, "days", D(2024, 1, 2)),
    (D(2023, 1, 1), -2, "weeks", D(2022, 12, 18)),
])
def test_shift(start, n, unit, expected):
    assert dates.shift(start, n, unit) == expected


def test_formatting():
    assert dates.format_date(D(2021, 3, 3)) == "March 3, 2021"
    assert dates.format_today(D(2023, 1, 30)) == "Today is Monday, January 30, 2023."


def test_templates_give_exact_answers():
    today = D(2023, 1, 30)  # a Monday
    rng = random.Random(1)
    q = dates.attribute_relative(today, rng)
    # Recompute the answer from the question's own wording.
    offset = next(v for k, v in sorted(dates.RELATIVE_DAYS.items(), key=lambda kv: -len(kv[0]))
                  if q.question.endswith(f"it {k}?"))
    attribute = next(a for a in dates.ATTRIBUTES if q.question.startswith(f"What {a} "))
    assert q.answer == dates.attribute_of(today + dt.timedelta(days=offset), attribute)
    q = dates._days_between(today, D(2023, 12, 25), "Christmas Day", "holiday_days")
    assert (q.question, q.answer, q.kind) == ("How many days are there until Christmas Day?", "329", "days")
    q = dates._days_between(today, D(2023, 1, 1), "New Year's Day", "holiday_days")
    assert (q.question, q.answer) == ("How many days ago was New Year's Day?", "29")
    assert dates._days_between(today, today, "today", "x") is None


def test_generated_answers_agree_with_the_questions():
    """Every generated question of the fixed families is re-derived independently."""
    for q in dates.generate_dateset(num_queries=300, num_today_dates=30, seed=3):
        if q.template == "weekday_of_date":
            text = q.question.split(" it on ")[1].rstrip("?")
            target = dt.datetime.strptime(text, "%B %d, %Y").date()
            assert q.answer == target.strftime("%A") and q.kind == "weekday"
        elif q.template == "days_to_date":
            name = q.question.removeprefix("How many days ago was ").removeprefix(
                "How many days are there until ").rstrip("?")
            target = dt.datetime.strptime(name, "%B %d, %Y").date()
            assert int(q.answer) == abs((target - q.today).days) > 0
        elif q.template in ("attribute_ago", "attribute_in"):
            words = q.question.rstrip("?").split()
            n, unit = (int(words[-3]), words[-2]) if q.template == "attribute_ago" else (int(words[-2]), words[-1])
            sign = -1 if q.template == "attribute_ago" else 1
            attribute = next(a for a in dates.ATTRIBUTES if q.question.startswith(f"What {a} "))
            assert q.answer == dates.attribute_of(dates.shift(q.today, sign * n, unit), attribute)
        assert score_date(" " + q.answer, q.answer, q.kind) == (q.answer, True)


def test_generator_is_seeded_and_sized():
    a = dates.generate_dateset(num_queries=95, num_today_dates=10, seed=7)
    b = dates.generate_dateset(num_queries=95, num_today_dates=10, seed=7)
    c = dates.generate_dateset(num_queries=95, num_today_dates=10, seed=8)
    assert a == b and a != c
    assert len(a) == 95
    per_day = sorted(sum(q.today == t for q in a) for t in {q.today for q in a})
    assert per_day == [9] * 5 + [10] * 5  # 95 over 10 dates, remainder spread
    assert all(dates.FIRST_YEAR <= q.today.year <= dates.LAST_YEAR for q in a)
    assert len({(q.today, q.question) for q in a}) == 95  # no repeats per date
    assert {q.template for q in dates.generate_dateset(500, 50, seed=0)} == {
        "days_to_date", "attribute_ago", "attribute_in", "weekday_of_date", "attribute_relative",
        "holiday_days", "holiday_attribute"}


def test_paper_sized_set():
    queries = dates.generate_dateset()
    assert len(queries) == 9400 and len({q.today for q in queries}) <= 500
