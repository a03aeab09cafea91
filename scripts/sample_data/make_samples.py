"""Generate the bundled sample data deterministically from ``facts.py`` and templates.

    python -m scripts.sample_data.make_samples            # rewrite the four sample_*.jsonl files
    python -m scripts.sample_data.make_samples --check    # fail if the committed files are out of date

Every arithmetic statement in a document or a math problem is produced together with the
relation it states (``a op b = c``) and checked with exact fractions before anything is
written; every cloze answer is checked to occur in a passage about its subject.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from toolformer.data import DATA_DIR
from scripts.sample_data.facts import (
    APPROXIMATE_BIRTH,
    COUNTRIES,
    ELEMENT_CLASS,
    ELEMENTS,
    INVENTIONS,
    LAKES,
    LANDMARKS,
    MOUNTAINS,
    PEOPLE,
    PLANETS,
    RIVERS,
)

SEED = 20230209  # the Toolformer paper's arXiv date; any fixed value keeps the files stable
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FIRST_DATE, LAST_DATE = dt.date(2019, 1, 1), dt.date(2026, 12, 31)

TOWNS = ["Millbrook", "Ashford", "Riverton", "Kingsbury", "Oakdale", "Westfield", "Brookhaven", "Fairview",
         "Lakeside", "Hollowell", "Stonebridge", "Elmstead", "Greystone", "Marlow Vale", "Northcliff",
         "Pinecrest", "Redhill", "Southport Bay", "Thornbury", "Willowmere"]
NAMES = ["Amara", "Ben", "Carla", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemi",
         "Luis", "Mei", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Samir", "Tomas", "Uma", "Viktor",
         "Wen", "Yusuf", "Zoe"]
TEAMS = ["the Harbour Hawks", "the Valley Rovers", "the City Comets", "the River Otters", "the Hill Foxes",
         "the North Stars", "the Old Town Lions", "the Park Wanderers"]


# ---------------------------------------------------------------------------------------------
# Small helpers


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


# ---------------------------------------------------------------------------------------------
# Passages for the WikiSearch index


def _years(born: int, died: int | None, name: str) -> str:
    start = f"c. {born}" if name in APPROXIMATE_BIRTH else str(born)
    return f"{start}–{died}" if died else f"born {born}"


def country_passages(rng: random.Random) -> list[dict]:
    out = []
    regions: dict[str, list[tuple[str, str]]] = {}
    for name, capital, region, languages, currency, note in COUNTRIES:
        many = " and " in languages or "," in languages
        sights = [lm[0] for lm in LANDMARKS if lm[1].endswith(cap(name).removeprefix("The "))]
        text = rng.choice([
            f"{cap(name)} is a country in {region}. Its capital is {capital}. The official "
            f"language{'s are' if many else ' is'} {languages}, and the currency is {currency}. {note}",
            f"{cap(name)} is a sovereign state in {region} whose capital city is {capital}. "
            f"{'Its official languages are' if many else 'Its official language is'} {languages}; prices "
            f"are given in {currency}. {note}",
        ])
        if sights:
            text += f" Well-known sights in the country include {_join(sights)}."
        neighbours = [c[0] for c in COUNTRIES if c[2] == region and c[0] != name][:4]
        if neighbours:
            text += f" Other countries of {region} described here include {_join(neighbours)}."
        out.append({"title": cap(name), "text": text})
        seat = ("The government, however, sits in The Hague." if capital == "Amsterdam"
                else f"As the capital, {capital} is the seat of the national government.")
        city_sights = [lm for lm in LANDMARKS if lm[1].startswith(capital + ",")]
        text = rng.choice([
            f"{capital} is the capital city of {name}, a country in {region}. {seat} People in {capital} "
            f"pay with {currency}, and the official language{'s are' if many else ' is'} {languages}.",
            f"{capital} is the capital of {name}. {seat} The city lies in {region}; "
            f"{'the official languages are' if many else 'the official language is'} {languages} and the "
            f"currency is {currency}.",
        ])
        for lm in city_sights:
            text += f" {cap(lm[0])}, which {lm[2]}, stands in {capital}."
        others = [c[1] for c in COUNTRIES if c[2] == region and c[1] != capital][:4]
        if others:
            text += f" Other capital cities of {region} include {_join(others)}."
        if not city_sights:
            text += f" Like the rest of {name}, the city uses {currency} for everyday payments."
        out.append({"title": capital, "text": text})
        regions.setdefault(region, []).append((name, capital))
    for region, members in regions.items():
        if len(members) < 2:
            continue
        listed = "; ".join(f"{n} (capital: {c})" for n, c in members)
        languages = sorted({lang for c in COUNTRIES if c[2] == region
                            for lang in re.split(r", | and ", c[3])})
        text = f"This list gives the countries of {region} covered here, each with its capital: {listed}."
        text += f" Official languages in these countries include {_join(languages)}."
        if any(c == "Amsterdam" for _, c in members):
            text += " In the Netherlands the parliament and government sit in The Hague, not in the capital."
        text += " Each country has its own article with its official languages and currency."
        out.append({"title": f"Countries of {region}", "text": text})
    return out


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# How articles refer to a person after the first mention.
SHORT_NAMES = {"Leonardo da Vinci": "Leonardo", "Ludwig van Beethoven": "Beethoven",
               "Vincent van Gogh": "Van Gogh", "Antonie van Leeuwenhoek": "Van Leeuwenhoek",
               "Miguel de Cervantes": "Cervantes", "Galileo Galilei": "Galileo",
               "Johann Sebastian Bach": "Bach", "Michelangelo": "Michelangelo"}


def short(name: str) -> str:
    return SHORT_NAMES.get(name, name.split()[-1])


def people_passages(rng: random.Random) -> list[dict]:
    out = []
    events = _events()
    for name, born, died, place, role, known, year, note in PEOPLE:
        life, who = _years(born, died, name), short(name)
        born_text = f"around {born}" if name in APPROXIMATE_BIRTH else f"in {born}"
        peers = [f"{p[0]} (born {p[1]})" for p in PEOPLE if p[0] != name and abs(p[1] - born) <= 10][:3]
        is_was = "was" if died else "is"
        text = rng.choice([
            f"{name} ({life}) {is_was} {a_an(role)} born in {place}. {who} is best known for {known}. {note}",
            f"{name} ({life}) {is_was} {a_an(role)}, best known for {known}. {who} was born {born_text} in "
            f"{place}. {note}",
        ])
        if died:
            text += f" {who} died in {died}, at about {died - born} years of age."
        if peers:
            text += f" Other figures of the same generation include {_join(peers)}."
        out.append({"title": name, "text": text})
        if year is not None:
            text = (f"In {year}, {name} achieved what {who} is best remembered for: {known}. At the time "
                    f"{who} "
                    f"was about {year - born} years old, having been born {born_text} in {place}. {note}")
            same_year = [e for e in events.get(year, []) if not e.startswith(name)]
            if same_year:
                text += f" In the same year, {_join(same_year)}."
            else:
                text += f" {who} was {a_an(role)}; a separate article describes {who}'s life."
            out.append({"title": f"{name} ({year})", "text": text})
    births: dict[str, list[str]] = {}
    for name, born, _, place, role, *_ in PEOPLE:
        births.setdefault(place, []).append(f"{name} (born {born}), {a_an(role)}")
    for place, names in sorted(births.items()):
        if len(names) >= 2:
            out.append({"title": f"People born in {place}",
                        "text": f"Notable people born in {place} include {'; '.join(names)}. Each of them is "
                                f"described in a separate article, which gives {place} as the birthplace and "
                                f"explains what the person is best known for."})
    return out


def thing_passages(rng: random.Random) -> list[dict]:
    out = []
    for thing, inventor, year, note in INVENTIONS:
        text = rng.choice([
            f"{cap(thing)} was invented by {inventor} in {year}. {note}",
            f"{inventor} is credited with inventing {thing}, in {year}. {note}",
        ])
        text += (f" Histories of technology list {thing} among the inventions of {_century(year)}, "
                 f"with {inventor} as its inventor.")
        out.append({"title": cap(thing), "text": text})
    for name, where, when, _, builder, note in LANDMARKS:
        text = rng.choice([
            f"{cap(name)} is a landmark in {where}. It {when}; it was the work of {builder}. {note}",
            f"{cap(name)}, in {where}, {when}. Its design is credited to {builder}. {note}",
        ])
        text += f" Today {name} is one of the most visited sights of {where.split(', ')[-1]}."
        out.append({"title": cap(name), "text": text})
    for name, height, chain, where, note in MOUNTAINS:
        part = f"part of the {chain}" if chain else "a free-standing volcano"
        text = (f"{cap(name)} is a mountain in {where}, {part}. Its summit is {num(height)} metres "
                f"({num(round(height * 3.28084))} feet) above sea level. {note} Climbers usually plan "
                f"several days to acclimatise before attempting peaks of this height."
                if height > 4000 else
                f"{cap(name)} is a mountain in {where}, {part}. Its summit is {num(height)} metres "
                f"({num(round(height * 3.28084))} feet) above sea level. {note} Marked paths lead to the top "
                f"in good weather.")
        out.append({"title": cap(name), "text": text})
    for name, length, mouth, where, note in RIVERS:
        text = (f"{cap(name)} is a river in {where}. It is about {num(length)} kilometres long and flows "
                "into "
                f"{mouth}. {note} Its basin supports farming, fishing and river transport, and several "
                f"cities grew up along its banks.")
        out.append({"title": cap(name), "text": text})
    for name, symbol, number, note in ELEMENTS:
        family, state = ELEMENT_CLASS[name]
        text = (f"{cap(name)} is a chemical element with the symbol {symbol} and atomic number {number}, "
                f"which means each of its atoms has {number} proton{'s' if number > 1 else ''} in the "
                f"nucleus. It is {a_an(family)} and is a {state} at room "
                f"temperature. {note} In the periodic table it is listed as element number {number}.")
        out.append({"title": cap(name), "text": text})
    for name, position, note in PLANETS:
        nth = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"][position - 1]
        text = (f"{name} is the {nth} "
                f"planet from the Sun in the solar system. {note} Like the other planets, {name} moves "
                "around "
                "the Sun in a nearly circular orbit, and it can be studied with telescopes and space "
                "probes.")
        out.append({"title": name, "text": text})
    for name, where, fact, note in LAKES:
        text = (f"{cap(name)} is a lake in {where}. {fact}. {note} The lake and its shores are home to "
                f"plants and animals found nowhere else, and they attract many visitors every year.")
        out.append({"title": cap(name), "text": text})
    return out


def _century(year: int) -> str:
    return f"the {ordinal((year - 1) // 100 + 1)} century"


def _events() -> dict[int, list[str]]:
    """What happened in each year, from the people, inventions and landmarks above."""
    events: dict[int, list[str]] = {}
    for name, _, _, _, _, known, year, _ in PEOPLE:
        if year is not None:
            events.setdefault(year, []).append(f"{name} was noted for {known}")
    for thing, inventor, year, _ in INVENTIONS:
        events.setdefault(year, []).append(f"{inventor} invented {thing}")
    for name, where, when, year, _, _ in LANDMARKS:
        if year is not None and year > 1000:
            events.setdefault(year, []).append(f"{name} in {where} {when.removesuffix(f' in {year}')}")
    return events


def decade_passages() -> list[dict]:
    decades: dict[int, list[str]] = {}
    for year, happened in sorted(_events().items()):
        decades.setdefault(year // 10 * 10, []).extend(f"in {year}, {e}" for e in happened)
    out = []
    for decade, happened in sorted(decades.items()):
        if len(happened) >= 2:
            out.append({"title": f"The {decade}s in science and engineering",
                        "text": f"Events of the {decade}s in science, invention and building: "
                                + "; ".join(happened) + ". Each event is described in more detail in the "
                                "article about the person, invention or building."})
    return out


def make_passages(rng: random.Random) -> list[dict]:
    passages = country_passages(rng) + people_passages(rng) + thing_passages(rng) + decade_passages()
    return [{"id": f"p{i:04d}", **p} for i, p in enumerate(passages, 1)]


# ---------------------------------------------------------------------------------------------
# Documents: arithmetic-rich, date-dependent and factual paragraphs


def arithmetic_doc(rng: random.Random, kind: int) -> tuple[str, list[Relation]]:
    town, name = rng.choice(TOWNS), rng.choice(NAMES)
    if kind == 0:  # share of a whole, as a percentage
        total = rng.choice([200, 400, 500, 800, 1200, 1400, 1600, 2000, 2500])
        part = rng.randrange(total // 10, total * 9 // 10)
        pct = round(Fraction(part * 100, total))
        what = rng.choice(["passed the driving test", "finished the marathon", "completed the course",
                           "voted in the local election", "renewed their membership"])
        text = (f"Out of {num(total)} participants in {town}, {num(part)} {what}, or {pct}%. Organisers said "
                f"the figure was {rng.choice(['higher', 'a little lower'])} than last year and that they "
                f"would publish a full breakdown next month.")
        return text, [rel(part, "/", total, pct, 0, True)]
    if kind == 1:  # unit price times quantity
        price = Fraction(rng.randrange(150, 4000, 25), 100)
        qty = rng.randrange(12, 300)
        item = rng.choice(["notebooks", "loaves of bread", "bicycle lights", "tickets", "umbrellas",
                           "plants"])
        text = (f"The corner shop in {town} sold {qty} {item} at {money(price)} each on Saturday, taking "
                f"{money(price * qty)} in total. The owner, {name}, said the weather had helped and that "
                f"she would order more stock for the following week.")
        return text, [rel(price, "*", qty, price * qty)]
    if kind == 2:  # population growth
        y1 = rng.randrange(1990, 2012)
        y2 = y1 + rng.choice([5, 10, 12, 15])
        a = rng.randrange(4000, 90000)
        b = a + rng.randrange(300, a // 3)
        text = (f"The population of {town} grew from {num(a)} in {y1} to {num(b)} in {y2}, an increase of "
                f"{num(b - a)} people. Most of the newcomers settled in the new districts to the "
                f"{rng.choice(['north', 'east', 'south', 'west'])} of the old centre.")
        return text, [rel(b, "-", a, b - a)]
    if kind == 3:  # match score
        t1, t2 = rng.sample(TEAMS, 2)
        x, y = rng.randrange(2, 7), rng.randrange(0, 2)
        text = (f"{cap(t1)} beat {t2} {x}-{y} on Sunday. With {x + y} goals in total, it was the "
                f"highest-scoring match of the season so far, and {name} scored twice for the winners.")
        return text, [rel(x, "+", y, x + y)]
    if kind == 4:  # discount
        was = rng.choice([40, 60, 80, 120, 150, 200, 250, 300, 450, 600])
        pct = rng.choice([10, 15, 20, 25, 30, 40, 50])
        now = Fraction(was * (100 - pct), 100)
        item = rng.choice(["winter coat", "desk chair", "rice cooker", "pair of hiking boots", "tent"])
        text = (f"In the sale, the {item} was reduced from {money(was)} to {money(now)}, a saving of "
                f"{money(was - now)}, or {pct}% off. The offer runs until the end of the month while stocks "
                "last.")
        return text, [rel(was, "-", now, was - now), rel(was - now, "/", was, pct, None, True)]
    if kind == 5:  # recipe scaling
        n = rng.choice([2, 4, 6])
        m = n * rng.choice([2, 3, 5])
        grams = rng.choice([150, 200, 250, 300, 350])
        text = (f"The recipe for {n} people uses {grams} grams of flour. To bake for the {m} guests at the "
                f"{town} community hall, {name} made it {m // n} times over and needed {num(grams * m // n)} "
                f"grams.")
        return text, [rel(m, "/", n, m // n), rel(grams, "*", m // n, grams * m // n)]
    if kind == 6:  # speed
        hours = rng.choice([2, 3, 4, 5, 6])
        speed = rng.randrange(60, 160, 5)
        text = (f"The regional train covered the {num(speed * hours)} km from {town} to "
                f"{rng.choice([t for t in TOWNS if t != town])} in {hours} hours, an average speed of "
                f"{speed} "
                f"km/h. Passengers on the new line save almost an hour compared with the old route.")
        return text, [rel(speed * hours, "/", hours, speed)]
    if kind == 7:  # equal split of a budget
        k = rng.choice([4, 5, 6, 8, 10, 12])
        each = rng.randrange(200, 5000, 50)
        text = (f"The sports club's budget of {money(each * k)} was split equally among its {k} teams, "
                "giving "
                f"each team {money(each)} for equipment and travel this year.")
        return text, [rel(each * k, "/", k, each)]
    if kind == 8:  # temperature range
        lo = rng.randrange(-12, 10)
        hi = lo + rng.randrange(6, 18)
        text = (f"Temperatures in {town} ranged from {lo} °C at dawn to {hi} °C in the afternoon, a "
                "difference "
                f"of {hi - lo} degrees. Forecasters expect a similar pattern for the rest of the week.")
        # A negative temperature is written with a minus sign the number pattern does not carry.
        return text, [rel(hi, "-", lo, hi - lo)] if lo >= 0 else [rel(hi - lo, "-", hi, -lo)]
    if kind == 9:  # two months added
        a, b = rng.randrange(800, 4000), rng.randrange(800, 4000)
        m1 = rng.randrange(0, 11)
        text = (f"The {town} library lent {num(a)} books in {MONTHS[m1]} and {num(b)} in {MONTHS[m1 + 1]}, "
                f"{num(a + b)} in total. The children's section accounted for about a third of the loans.")
        return text, [rel(a, "+", b, a + b)]
    if kind == 10:  # weekly pay
        hours = rng.choice([12, 16, 20, 25, 30, 35, 38, 40])
        wage = Fraction(rng.randrange(1100, 3200, 25), 100)
        text = (f"{name} works {hours} hours a week at the {town} garden centre and is paid {money(wage)} an "
                f"hour, which comes to {money(wage * hours)} a week before tax.")
        return text, [rel(wage, "*", hours, wage * hours)]
    if kind == 11:  # fundraising share of a goal
        goal = rng.choice([5000, 8000, 10000, 12000, 20000, 25000, 40000])
        pct = rng.randrange(15, 96)
        raised = goal * pct // 100
        text = (f"Volunteers in {town} have raised {money(raised)} of their {money(goal)} goal for the new "
                f"playground, or {pct}%. The appeal closes at the end of the summer.")
        return text, [rel(raised, "/", goal, pct, 0, True)]
    if kind == 12:  # area
        length, width = rng.randrange(6, 40), rng.randrange(4, 25)
        text = (f"The community garden is a rectangle {length} metres long and {width} metres wide, an area "
                "of "
                f"{num(length * width)} square metres, and the council has offered to fence it this spring.")
        return text, [rel(length, "*", width, length * width)]
    if kind == 13:  # survey count from a percentage
        n = rng.choice([200, 300, 400, 500, 600, 800, 1000, 1500])
        pct = rng.randrange(8, 60)
        k = Fraction(n * pct, 100)
        if k.denominator != 1:
            n, k = 1000, Fraction(10 * pct)
        text = (f"Of the {num(n)} people surveyed in {town}, {pct}% ({num(k)}) said they cycle to work at "
                "least "
                f"once a week, up from last year's survey.")
        return text, [rel(k, "/", n, pct, None, True)]
    if kind == 14:  # harvest per field
        fields = rng.randrange(3, 12)
        per = rng.randrange(8, 60)
        text = (f"The {town} orchard harvested {num(per * fields)} tonnes of apples from its {fields} fields "
                "this "
                f"autumn, or {per} tonnes per field, according to the farm's manager, {name}.")
        return text, [rel(per * fields, "/", fields, per)]
    if kind == 15:  # election margin
        a = rng.randrange(3000, 20000)
        b = a - rng.randrange(50, 2500)
        text = (f"In the mayoral election in {town}, {name} received {num(a)} votes and the runner-up "
                f"{num(b)}, a "
                f"margin of {num(a - b)} votes. Turnout was higher than at the previous election.")
        return text, [rel(a, "-", b, a - b)]
    if kind == 16:  # tickets for a group
        adults, children = rng.randrange(2, 30), rng.randrange(2, 40)
        pa, pc = rng.choice([12, 15, 18, 20, 24]), rng.choice([5, 6, 8, 10])
        text = (f"A school group of {adults} adults and {children} children visited the {town} museum. Adult "
                f"tickets cost {money(pa)} and children's tickets {money(pc)}, so the group paid "
                f"{money(adults * pa)} for the adults and {money(children * pc)} for the children, "
                f"{money(adults * pa + children * pc)} altogether.")
        return text, [rel(adults, "*", pa, adults * pa), rel(children, "*", pc, children * pc),
                      rel(adults * pa, "+", children * pc, adults * pa + children * pc)]
    raise ValueError(kind)


ARITHMETIC_KINDS = 17

# A closing sentence for short documents (no numbers: the arithmetic heuristic must see only the
# template's own numbers). ``{town}`` and ``{name}`` are filled from the document's own choices.
CLOSERS = {
    "arithmetic": [
        "The figures were first reported in the {town} Gazette this week.",
        "Readers with questions about the figures can contact the newsroom by email.",
        "More local news appears in the weekend edition of the paper.",
        "The full details are available from the {town} town hall on request.",
        "Several readers wrote in to ask how the figures compare with neighbouring towns.",
    ],
    "date": [
        "Updates will be posted on the notice board outside the {town} town hall.",
        "Readers with questions can contact the newsroom by email.",
        "The {town} Gazette will report on how it went in next week's edition.",
        "More local events are listed in the weekend edition of the paper.",
    ],
    "fact": [
        "The {town} Gazette will run a longer feature on the topic next week.",
        "Readers who want to know more can find books on the subject at the {town} library.",
        "The story was sent in by a reader from {town}.",
        "More stories like this one appear in the weekend edition of the paper.",
    ],
}


def lengthen(rng: random.Random, kind: str, text: str, min_words: int = 38) -> str:
    """Add one closing sentence to a short document, so documents read like real paragraphs."""
    if words(text) >= min_words:
        return text
    closer = rng.choice(CLOSERS[kind])
    return f"{text} {closer.format(town=rng.choice(TOWNS))}"


def date_doc(rng: random.Random, d: dt.date) -> tuple[str, int]:
    """A paragraph whose wording depends on its own date ``d`` (weekday, year, days left, ...)."""
    kind = rng.randrange(10)
    town, name = rng.choice(TOWNS), rng.choice(NAMES)
    weekday, month = WEEKDAYS[d.weekday()], MONTHS[d.month - 1]
    if kind == 0:
        n = rng.randrange(5, 150)
        place = rng.choice(["museum", "city library", "botanical garden", "concert hall", "railway station"])
        text = (f"Today the {town} {place} marks the {ordinal(n)} anniversary of its opening in "
                f"{d.year - n}. "
                f"Entry is free all day, and a small exhibition tells the story of the building.")
    elif kind == 1:
        text = (f"This {weekday}, {month} {d.day}, the farmers' market on {town}'s main square opens at 8 "
                "a.m. "
                f"Around forty stalls will sell vegetables, cheese and bread until early afternoon.")
    elif kind == 2:
        k = rng.randrange(3, 40)
        start = d + dt.timedelta(days=k)
        text = (f"The {town} summer festival starts in {k} days, on {WEEKDAYS[start.weekday()]}, "
                f"{MONTHS[start.month - 1]} {start.day}. Tickets for the opening concert are already on "
                "sale.")
    elif kind == 3:
        left = (dt.date(d.year, 12, 31) - d).days
        text = (f"With {left} days left in {d.year}, the {town} reading challenge has passed its target: "
                f"members have read more books this year than in any year since the challenge began.")
    elif kind == 4:
        person, year = rng.choice([(p[0], p[6]) for p in PEOPLE if p[6] is not None and p[6] < d.year])
        known = next(p[5] for p in PEOPLE if p[0] == person)
        text = (f"This year marks {d.year - year} years since {person} became known for {known} in {year}. "
                f"Our science page looks back at what happened then and why it still matters today.")
    elif kind == 5:
        end = dt.date(d.year + (d.month == 12), d.month % 12 + 1, 1) - dt.timedelta(days=1)
        left = "today" if end == d else f"{(end - d).days} day{'s' if (end - d).days > 1 else ''} from today"
        text = (f"Registration for the {town} half marathon closes on {month} {end.day}, {left}. About 2,000 "
                f"runners have signed up so far.")
    elif kind == 6:
        late = rng.choice(["Thursday", "Friday"])
        open_late = "so the museum stays open until 9 p.m. tonight" if weekday == late else \
            f"and the museum closes at 5 p.m. as usual; late opening is on {late}s"
        text = (f"Today is {weekday}, {open_late}. The new gallery of maps from the {town} archive is on the "
                f"second floor.")
    elif kind == 7:
        prev = MONTHS[(d.month - 2) % 12]
        text = (f"Last month, in {prev}, the {town} council approved a new cycle path. Work starts this "
                f"{month}, and the first section should be finished before the end of {d.year}.")
    elif kind == 8:
        thing, inventor, year = rng.choice([(t, i, y) for t, i, y, _ in INVENTIONS])
        text = (f"It is {d.year - year} years this {month} since {inventor} invented {thing} in {year}. "
                f"{name}, a teacher in {town}, is using the anniversary for a week of classroom projects.")
    else:
        week_start = d - dt.timedelta(days=d.weekday())
        text = (f"This week, the week of {MONTHS[week_start.month - 1]} {week_start.day}, the {town} pool is "
                f"closed for cleaning. It reopens next {WEEKDAYS[0]} with longer opening hours.")
    return text, kind


def fact_doc(rng: random.Random) -> tuple[str, list[Relation]]:
    kind = rng.randrange(9)
    name, town = rng.choice(NAMES), rng.choice(TOWNS)
    if kind == 0:
        country, capital, *_ = rng.choice(COUNTRIES)
        return (f"Our tour group arrived in {capital}, the capital of {country}, on the second day. {name}, "
                f"the guide, took us to the old market first and then to a small museum near the river."), []
    if kind == 1:
        person, born, _, place, role, known, *_ = rng.choice(PEOPLE)
        born_text = f"around {born}" if person in APPROXIMATE_BIRTH else f"in {born}"
        return (f"The {role} {person} was born {born_text} in {place}. The {town} school named its new "
                f"wing after {person}, who is best known for {known}."), []
    if kind == 2:
        lm, where, when, *_ = rng.choice(LANDMARKS)
        return (f"{cap(lm)} {when}. {name} visited {lm} in {where} last spring and said the view alone "
                f"was worth the long queue at the entrance."), []
    if kind == 3:
        (m1, h1, *_), (m2, h2, *_) = sorted(rng.sample(MOUNTAINS, 2), key=lambda m: -m[1])
        return (f"{cap(m1)} rises to {num(h1)} metres, while {m2} reaches {num(h2)} metres, so {m1} is "
                f"{num(h1 - h2)} metres higher. The {town} climbing club has photographs of both in its "
                f"clubhouse."), [rel(h1, "-", h2, h1 - h2)]
    if kind == 4:
        river, length, mouth, where, _ = rng.choice(RIVERS)
        return (f"{cap(river)} flows for about {num(length)} kilometres through {where} before it reaches "
                f"{mouth}. {name} spent three weeks travelling along it by boat and by train."), []
    if kind == 5:
        element, symbol, number, _ = rng.choice(ELEMENTS)
        return (f"In today's chemistry lesson the class learned that {element} has the symbol {symbol} and "
                f"atomic number {number}. {name} made a poster about where {element} is found and how it is "
                f"used."), []
    if kind == 6:
        thing, inventor, year, _ = rng.choice(INVENTIONS)
        return (f"{cap(thing)} was invented by {inventor} in {year}. A replica is on display at the {town} "
                f"museum of technology, next to a short film about how it works."), []
    if kind == 7:
        country, capital, region, languages, currency, _ = rng.choice(COUNTRIES)
        return (f"Travellers to {country} should bring some {currency.removeprefix('the ')}: the currency is "
                f"{currency}, and in {capital} small shops often do not take cards. {name} recommends "
                f"learning a few words of {languages.split(' and ')[0].split(',')[0]} before the trip."), []
    planet, position, note = rng.choice(PLANETS)
    return (f"At the {town} observatory open night, {name} pointed the telescope at {planet}, the "
            f"{ordinal(position)} planet from the Sun. {note}"), []


def _slug(text: str) -> str:
    return "-".join(re.findall(r"[a-z0-9]+", text.lower())[:6])


def with_metadata(rng: random.Random, doc_id: str, kind: str, text: str, d: dt.date, dated: bool) -> dict:
    """Add a URL and, for dated documents, the date: in a ``date`` field or in the URL path."""
    site = rng.choice(["news.example.org", "www.example.com", "local.example.net", "blog.example.org"])
    record = {"doc_id": doc_id, "kind": kind, "text": text}
    if dated and rng.random() < 0.5:
        record["url"] = f"https://{site}/{d.year}/{d.month:02d}/{d.day:02d}/{_slug(text)}"
    else:
        record["url"] = f"https://{site}/{rng.choice(['stories', 'articles', 'posts'])}/{_slug(text)}"
        if dated:
            record["date"] = d.isoformat()
    return record


def random_date(rng: random.Random) -> dt.date:
    return FIRST_DATE + dt.timedelta(days=rng.randrange((LAST_DATE - FIRST_DATE).days + 1))


def make_docs(rng: random.Random, n_arithmetic: int = 150, n_dates: int = 90, n_facts: int = 110
              ) -> list[dict]:
    docs = []
    for i in range(n_arithmetic):
        text, relations = arithmetic_doc(rng, i % ARITHMETIC_KINDS)
        check_relations(text, relations)
        text = lengthen(rng, "arithmetic", text)
        check_relations(text, relations)
        docs.append(("arithmetic", text, rng.random() < 0.6))
    for _ in range(n_dates):
        d = random_date(rng)
        text, _ = date_doc(rng, d)
        docs.append(("date", lengthen(rng, "date", text), d))
    for _ in range(n_facts):
        text, relations = fact_doc(rng)
        if relations:
            check_relations(text, relations)
        docs.append(("fact", lengthen(rng, "fact", text), rng.random() < 0.5))
    rng.shuffle(docs)
    out, seen = [], set()
    for kind, text, dated in docs:
        if text in seen:
            continue  # templates can repeat for small fact tables; keep documents unique
        seen.add(text)
        d = dated if isinstance(dated, dt.date) else random_date(rng)
        out.append(with_metadata(rng, f"doc-{len(out) + 1:04d}", kind, text, d, dated is not False))
    return out


# ---------------------------------------------------------------------------------------------
# Math word problems and cloze items for the demo's small evaluation


def make_math(rng: random.Random, n: int = 60) -> list[dict]:
    problems = []
    for i in range(n):
        kind = i % 10
        name, other = rng.sample(NAMES, 2)
        if kind == 0:
            a, b = rng.randrange(20, 90), rng.randrange(5, 19)
            q = f"{name} baked {a} rolls and sold {b} of them. How many rolls are left?"
            ans, r = a - b, rel(a, "-", b, a - b)
        elif kind == 1:
            a, b = rng.randrange(120, 900), rng.randrange(120, 900)
            q = f"A school has {a} girls and {b} boys. How many pupils does the school have?"
            ans, r = a + b, rel(a, "+", b, a + b)
        elif kind == 2:
            a, b = rng.randrange(3, 13), rng.randrange(12, 49)
            q = f"{name} buys {a} boxes of pencils with {b} pencils in each box. How many pencils is that?"
            ans, r = a * b, rel(a, "*", b, a * b)
        elif kind == 3:
            k, each = rng.randrange(3, 10), rng.randrange(6, 30)
            q = (f"{name} shares {k * each} stickers equally among {k} friends. How many stickers does each "
                 "friend get?")
            ans, r = each, rel(k * each, "/", k, each)
        elif kind == 4:
            price, qty, paid = rng.randrange(2, 9), rng.randrange(2, 6), 50
            q = (f"{name} buys {qty} books that cost ${price} each and pays with a $50 note. How much change "
                 f"does {name} get?")
            ans, r = paid - price * qty, rel(paid, "-", price * qty, paid - price * qty)
        elif kind == 5:
            speed, hours = rng.randrange(40, 95, 5), rng.randrange(2, 7)
            q = f"A bus travels at {speed} km per hour for {hours} hours. How many kilometres does it travel?"
            ans, r = speed * hours, rel(speed, "*", hours, speed * hours)
        elif kind == 6:
            total, pct = rng.choice([40, 60, 80, 120, 200, 250]), rng.choice([10, 20, 25, 50, 75])
            q = f"A jacket costs ${total}. In a sale it is {pct}% off. How many dollars do you save?"
            ans, r = Fraction(total * pct, 100), rel(total * pct, "/", 100, Fraction(total * pct, 100))
        elif kind == 7:
            a, b, c = (rng.randrange(60, 100) for _ in range(3))
            while (a + b + c) % 3:
                c += 1
            q = f"{name} scored {a}, {b} and {c} in three tests. What is the average score?"
            ans, r = (a + b + c) // 3, rel(a + b + c, "/", 3, (a + b + c) // 3)
        elif kind == 8:
            a, b, c = rng.randrange(10, 40), rng.randrange(10, 40), rng.randrange(5, 20)
            q = (f"{name} had {a} marbles and won {b} more. Then {name} gave {c} marbles to {other}. How "
                 "many "
                 f"marbles does {name} have now?")
            ans, r = a + b - c, rel(a + b, "-", c, a + b - c)
        else:
            rows, per, extra = rng.randrange(4, 12), rng.randrange(6, 15), rng.randrange(2, 10)
            q = (f"A hall has {rows} rows of {per} chairs, and {extra} more chairs are placed at the back. "
                 "How "
                 "many chairs are there in total?")
            ans, r = rows * per + extra, rel(rows * per, "+", extra, rows * per + extra)
        if not r.holds() or Fraction(ans) != r.c:
            raise AssertionError(f"wrong answer {ans} for {q!r}")
        ans = Fraction(ans)
        problems.append({"id": f"math-{i + 1:03d}", "question": q,
                         "answer": int(ans) if ans.denominator == 1 else float(ans)})
    return problems


def make_cloze(rng: random.Random, passages: list[dict]) -> list[dict]:
    items: list[tuple[str, str, str]] = []  # (subject, sentence with [MASK] last, answer)
    for country, capital, *_ in rng.sample(COUNTRIES, 16):
        items.append((country, f"The capital of {country} is [MASK].", capital))
    for element, symbol, *_ in rng.sample([e for e in ELEMENTS if len(e[1]) == 2], 8):
        items.append((element, f"The chemical symbol of {element} is [MASK].", symbol))
    for person, _, _, place, *_ in rng.sample([p for p in PEOPLE if "," not in p[3]], 10):
        items.append((person, f"{person} was born in [MASK].", place))
    for thing, inventor, *_ in rng.sample(INVENTIONS, 8):
        items.append((thing, f"{cap(thing)} was invented by [MASK].", inventor))
    for person, born, *_ in rng.sample([p for p in PEOPLE if p[0] not in APPROXIMATE_BIRTH], 6):
        items.append((person, f"{person} was born in the year [MASK].", str(born)))
    for river, _, mouth, *_ in rng.sample(RIVERS, 6):
        items.append((river, f"{cap(river)} flows into [MASK].", mouth.removeprefix("the ")))
    for lm, where, *_ in rng.sample([lm for lm in LANDMARKS if "," in lm[1]], 6):
        verb = "are" if lm.endswith("Towers") else "is"
        items.append((lm, f"{cap(lm)} {verb} in the city of [MASK].", where.split(",")[0]))
    out = []
    for i, (subject, sentence, answer) in enumerate(items, 1):
        if not any(subject.lower() in p["text"].lower() and answer in p["text"] for p in passages):
            raise AssertionError(f"no passage about {subject!r} contains the answer {answer!r}")
        prefix = sentence.split("[MASK]")[0].rstrip()
        out.append({"id": f"cloze-{i:03d}", "masked_sentence": sentence, "question": prefix,
                    "answer": answer})
    return out


# ---------------------------------------------------------------------------------------------


def generate() -> dict[str, list[dict]]:
    """All four files' records; the same on every run (one seeded generator per file)."""
    passages = make_passages(random.Random(SEED))
    return {
        "sample_passages.jsonl": passages,
        "sample_docs.jsonl": make_docs(random.Random(SEED + 1)),
        "sample_math.jsonl": make_math(random.Random(SEED + 2)),
        "sample_cloze.jsonl": make_cloze(random.Random(SEED + 3), passages),
    }


def render(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files differ from a fresh "
                                                             "generation")
    parser.add_argument("--output", type=Path, default=DATA_DIR, help="directory to write to")
    args = parser.parse_args(argv)
    stale = []
    for name, records in generate().items():
        path = args.output / name
        text = render(records)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        path.write_text(text, encoding="utf-8")
        print(f"{path}: {len(records)} records, {len(text.encode()):,} bytes")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python -m scripts.sample_data.make_samples)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
