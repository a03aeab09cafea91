"""The demo's small evaluation sets: math word problems (``sample_math.jsonl``) and cloze items
(``sample_cloze.jsonl``, each answer checked to occur in a passage about its subject)."""

from __future__ import annotations

import random
from fractions import Fraction

from scripts.sample_data.common import NAMES, cap, rel
from scripts.sample_data.facts import (
    APPROXIMATE_BIRTH,
    COUNTRIES,
    ELEMENTS,
    INVENTIONS,
    LANDMARKS,
    PEOPLE,
    RIVERS,
)


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
