"""Documents to augment (``sample_docs.jsonl``): arithmetic-rich, date-dependent and factual
paragraphs, each with a URL and, when dated, its date (in a ``date`` field or in the URL path)."""

from __future__ import annotations

import datetime as dt
import random
import re
from fractions import Fraction

from scripts.sample_data.common import (
    MONTHS,
    NAMES,
    TEAMS,
    TOWNS,
    WEEKDAYS,
    Relation,
    cap,
    check_relations,
    money,
    num,
    ordinal,
    rel,
    words,
)
from scripts.sample_data.facts import (
    APPROXIMATE_BIRTH,
    COUNTRIES,
    ELEMENTS,
    INVENTIONS,
    LANDMARKS,
    MOUNTAINS,
    PEOPLE,
    PLANETS,
    RIVERS,
)

FIRST_DATE, LAST_DATE = dt.date(2019, 1, 1), dt.date(2026, 12, 31)


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
