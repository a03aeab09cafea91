"""Shared by the sample-data generators: the invented towns, names and teams, number and date
wording, and the arithmetic relations a text states (checked with exact fractions)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from fractions import Fraction

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

TOWNS = ["Millbrook", "Ashford", "Riverton", "Kingsbury", "Oakdale", "Westfield", "Brookhaven", "Fairview",
         "Lakeside", "Hollowell", "Stonebridge", "Elmstead", "Greystone", "Marlow Vale", "Northcliff",
         "Pinecrest", "Redhill", "Southport Bay", "Thornbury", "Willowmere"]
NAMES = ["Amara", "Ben", "Carla", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi",
         "Luis", "Mei", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Samir", "Tomas", "Uma", "Viktor",
         "Wen", "Yusuf", "Zoe"]
TEAMS = ["the Harbour Hawks", "the Valley Rovers", "the City Comets", "the River Otters", "the Hill Foxes",
         "the North Stars", "the Old Town Lions", "the Park Wanderers"]


def num(n: int | Fraction | float) -> str:
    """A number as text writes it: thousands separated by commas, at most two decimals."""
    value = Fraction(n)
    if value.denominator == 1:
        return f"{int(value):,}"
    text = f"{float(value):,.2f}".rstrip("0").rstrip(".")
    return text


def money(n: int | Fraction) -> str:
    value = Fraction(n)
    return f"${int(value):,}" if value.denominator == 1 else f"${float(value):,.2f}"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def a_an(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def cap(text: str) -> str:
    return text[0].upper() + text[1:]


def long_date(d: dt.date) -> str:
    return f"{MONTHS[d.month - 1]} {d.day}, {d.year}"


def words(text: str) -> int:
    return len(text.split())


OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


@dataclass(frozen=True)
class Relation:
    """``a op b = c`` as a text states it; ``places`` is the rounding the text applies to c."""

    a: Fraction
    op: str
    b: Fraction
    c: Fraction
    places: int | None = None  # None: exact
    percent: bool = False  # c is written as a percentage of a / b

    def holds(self) -> bool:
        value = OPS[self.op](self.a, self.b) * (100 if self.percent else 1)
        if self.places is None:
            return value == self.c
        return round(value, self.places) == self.c


def rel(a, op, b, c, places=None, percent=False) -> Relation:
    return Relation(Fraction(a), op, Fraction(b), Fraction(c), places, percent)


def check_relations(text: str, relations: list[Relation]) -> None:
    """Each relation must hold and each of its numbers must be written in the text."""
    if not relations:
        raise AssertionError(f"no relation recorded for {text!r}")
    written = {Fraction(m.replace(",", "")) for m in re.findall(r"\d[\d,]*(?:\.\d+)?", text)}
    for r in relations:
        if not r.holds():
            raise AssertionError(f"wrong arithmetic {r} in {text!r}")
        for value in (r.a, r.b, r.c):
            if abs(value) not in written:
                raise AssertionError(f"number {value} of {r} not written in {text!r}")
