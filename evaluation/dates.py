"""A DATESET-like set of date questions, generated from templates around random "today" dates.

The paper's DATESET (Schick et al. 2023, Section 4.2.5) was never released. It had 9,400 queries
built from templates like the ones below over 500 random "current dates". We rebuild it:

* "How many days ago was {past date}?" / "How many days are there until {future date}?"
* "What {day of the week, day of the month, month, year} was it N {days, weeks, months, years} ago?"
* "What {...} will it be in N {days, weeks, months, years}?"
* "What day of the week {is, was} it on {date}?"
* "What {...} {is, was} it {the day before yesterday, yesterday, today, tomorrow, the day after tomorrow}?"
* the same for this year's US federal holidays ("How many days are there until Labor Day?",
  "What day of the week is Thanksgiving Day this year?").

Answers are exact strings: a number of days, a weekday name, a day of the month, a month name or a
year. Month and year arithmetic clamps to the end of the month (``dateutil.relativedelta``: one
month before March 31 is February 28 or 29). Holidays are on their legal date, not the "observed"
weekday a Friday or Monday off may move them to.

Generate and save a set: ``toolformer evaluate --task dates --seed 0 --limit 100 --output DIR``
(the generated questions are in ``DIR/predictions.jsonl``), or in Python::

    from evaluation.dates import generate_dateset
    queries = generate_dateset(num_queries=9400, num_today_dates=500, seed=0)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

from dateutil.relativedelta import relativedelta

from evaluation.scoring import MONTHS, WEEKDAYS

# The paper's sizes.
NUM_QUERIES = 9400
NUM_TODAY_DATES = 500
# "Today" is drawn uniformly from these years (the paper does not say which range it used).
FIRST_YEAR, LAST_YEAR = 2000, 2030

ATTRIBUTES = {  # what is asked -> the kind of answer (how scoring.extract_date_answer reads it)
    "day of the week": "weekday",
    "day of the month": "day",
    "month": "month",
    "year": "year",
}
RELATIVE_DAYS = {
    "the day before yesterday": -2,
    "yesterday": -1,
    "today": 0,
    "tomorrow": 1,
    "the day after tomorrow": 2,
}
UNITS = ("days", "weeks", "months", "years")


@dataclasses.dataclass(frozen=True)
class DateQuery:
    question: str
    answer: str  # exact expected answer: "12", "Monday", "March", "2024"
    kind: str  # "days", "weekday", "day", "month" or "year"
    today: dt.date
    template: str  # which template family produced it


def format_date(d: dt.date) -> str:
    """"March 3, 2021" (no leading zero, no locale dependence)."""
    return f"{MONTHS[d.month - 1]} {d.day}, {d.year}"


def format_today(d: dt.date) -> str:
    """The sentence the Calendar tool returns ("Today is Monday, January 30, 2023.")."""
    return f"Today is {WEEKDAYS[d.weekday()]}, {format_date(d)}."


def attribute_of(d: dt.date, attribute: str) -> str:
    if attribute == "day of the week":
        return WEEKDAYS[d.weekday()]
    if attribute == "day of the month":
        return str(d.day)
    if attribute == "month":
        return MONTHS[d.month - 1]
    if attribute == "year":
        return str(d.year)
    raise ValueError(f"unknown attribute {attribute!r}")


def shift(d: dt.date, n: int, unit: str) -> dt.date:
    """``d`` moved by ``n`` days/weeks/months/years (months and years clamp to the month's end)."""
    return d + relativedelta(**{unit: n})


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> dt.date:
    """The n-th (1-based; -1 = last) given weekday (0 = Monday) of a month."""
    if n > 0:
        first = dt.date(year, month, 1)
        return first + dt.timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    last = dt.date(year, month, 1) + relativedelta(months=1, days=-1)
    return last - dt.timedelta(days=(last.weekday() - weekday) % 7)


def us_federal_holidays(year: int) -> dict[str, dt.date]:
    """The US federal holidays of ``year`` (5 U.S.C. 6103) on their legal dates.

    Juneteenth became a federal holiday in 2021 and is listed from that year on.
    """
    mon, thu = 0, 3
    holidays = {
        "New Year's Day": dt.date(year, 1, 1),
        "Martin Luther King Jr. Day": _nth_weekday(year, 1, mon, 3),
        "Washington's Birthday": _nth_weekday(year, 2, mon, 3),
        "Memorial Day": _nth_weekday(year, 5, mon, -1),
        "Juneteenth": dt.date(year, 6, 19),
        "Independence Day": dt.date(year, 7, 4),
        "Labor Day": _nth_weekday(year, 9, mon, 1),
        "Columbus Day": _nth_weekday(year, 10, mon, 2),
        "Veterans Day": dt.date(year, 11, 11),
        "Thanksgiving Day": _nth_weekday(year, 11, thu, 4),
        "Christmas Day": dt.date(year, 12, 25),
    }
    if year < 2021:
        del holidays["Juneteenth"]
    return holidays


def _tense(delta_days: int) -> str:
    return "was" if delta_days < 0 else "is"


def _days_between(today: dt.date, target: dt.date, name: str, template: str) -> DateQuery | None:
    delta = (target - today).days
    if delta == 0:
        return None  # "how many days until today" has no sensible wording
    if delta < 0:
        return DateQuery(f"How many days ago was {name}?", str(-delta), "days", today, template)
    return DateQuery(f"How many days are there until {name}?", str(delta), "days", today, template)


# Template families, each a function (today, rng) -> DateQuery | None (None: draw again).

def days_to_date(today: dt.date, rng: random.Random) -> DateQuery | None:
    target = today + dt.timedelta(days=rng.choice([-1, 1]) * rng.randint(1, 1000))
    return _days_between(today, target, format_date(target), "days_to_date")


def attribute_shifted(today: dt.date, rng: random.Random) -> DateQuery | None:
    attribute = rng.choice(list(ATTRIBUTES))
    unit = rng.choice(UNITS)
    n = rng.randint(2, {"days": 60, "weeks": 20, "months": 24, "years": 20}[unit])
    if rng.random() < 0.5:
        question = f"What {attribute} was it {n} {unit} ago?"
        target = shift(today, -n, unit)
        family = "attribute_ago"
    else:
        question = f"What {attribute} will it be in {n} {unit}?"
        target = shift(today, n, unit)
        family = "attribute_in"
    return DateQuery(question, attribute_of(target, attribute), ATTRIBUTES[attribute], today, family)


def weekday_of_date(today: dt.date, rng: random.Random) -> DateQuery | None:
    target = today + dt.timedelta(days=rng.randint(-1000, 1000))
    verb = _tense((target - today).days)
    return DateQuery(f"What day of the week {verb} it on {format_date(target)}?",
                     WEEKDAYS[target.weekday()], "weekday", today, "weekday_of_date")


def attribute_relative(today: dt.date, rng: random.Random) -> DateQuery | None:
    attribute = rng.choice(list(ATTRIBUTES))
    phrase, offset = rng.choice(list(RELATIVE_DAYS.items()))
    target = today + dt.timedelta(days=offset)
    return DateQuery(f"What {attribute} {_tense(offset)} it {phrase}?", attribute_of(target, attribute),
                     ATTRIBUTES[attribute], today, "attribute_relative")


def holiday(today: dt.date, rng: random.Random) -> DateQuery | None:
    name, date = rng.choice(list(us_federal_holidays(today.year).items()))
    delta = (date - today).days
    choice = rng.randrange(3)
    if choice == 0:
        return _days_between(today, date, name, "holiday_days")
    attribute = "day of the week" if choice == 1 else "day of the month"
    return DateQuery(f"What {attribute} {_tense(delta)} {name} this year?", attribute_of(date, attribute),
                     ATTRIBUTES[attribute], today, "holiday_attribute")


TEMPLATE_FAMILIES = (days_to_date, attribute_shifted, weekday_of_date, attribute_relative, holiday)


def random_today(rng: random.Random, first_year: int = FIRST_YEAR, last_year: int = LAST_YEAR) -> dt.date:
    start, end = dt.date(first_year, 1, 1), dt.date(last_year, 12, 31)
    return start + dt.timedelta(days=rng.randint(0, (end - start).days))


def generate_dateset(num_queries: int = NUM_QUERIES, num_today_dates: int = NUM_TODAY_DATES, seed: int = 0,
                     first_year: int = FIRST_YEAR, last_year: int = LAST_YEAR) -> list[DateQuery]:
    """``num_queries`` questions spread evenly over ``num_today_dates`` random "today" dates.

    Same arguments, same list (a private ``random.Random(seed)``). Template families are drawn
    uniformly; a question is never repeated for the same "today".
    """
    if num_queries < 1 or num_today_dates < 1:
        raise ValueError("num_queries and num_today_dates must be positive")
    rng = random.Random(seed)
    todays = [random_today(rng, first_year, last_year) for _ in range(num_today_dates)]
    queries: list[DateQuery] = []
    for i, today in enumerate(todays):
        # Spread the remainder over the first dates so the total is exactly num_queries.
        quota = num_queries // num_today_dates + (1 if i < num_queries % num_today_dates else 0)
        seen: set[str] = set()
        attempts = 0
        while quota > 0 and attempts < 100 * quota:
            attempts += 1
            query = rng.choice(TEMPLATE_FAMILIES)(today, rng)
            if query is None or query.question in seen:
                continue
            seen.add(query.question)
            queries.append(query)
            quota -= 1
        if quota > 0:
            raise ValueError(f"could not draw {num_queries // num_today_dates} distinct questions for one date; "
                             "use more today dates")
    return queries
