"""Passages for the WikiSearch index (``sample_passages.jsonl``): countries and capitals, people,
inventions, landmarks, mountains, rivers, elements, planets, lakes and decades, from ``facts.py``."""

from __future__ import annotations

import random
import re

from scripts.sample_data.common import a_an, cap, num, ordinal
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
