"""Tests of the bundled sample data (toolformer/data/) and its generator.

python -m pytest -q tests/test_sample_data.py
"""

from __future__ import annotations

import datetime as dt
import json
import re
from fractions import Fraction

import pytest

from toolformer.data import DATA_DIR, SAMPLE_FILES, sample_path
from scripts.sample_data.make_samples import check_relations, generate, main, rel, render
from tools.heuristics import document_date, has_arithmetic_relation, numbers_in

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _read(name: str) -> list[dict]:
    return [json.loads(line) for line in sample_path(name).read_text(encoding="utf-8").splitlines()]


def test_committed_files_match_the_generator(capsys):
    assert main(["--check"]) == 0
    records = generate()
    for name in SAMPLE_FILES:
        assert (DATA_DIR / name).read_text(encoding="utf-8") == render(records[name])


def test_sizes_and_counts():
    total = sum(p.stat().st_size for p in DATA_DIR.iterdir() if p.is_file())
    assert total < 1_000_000
    docs, passages = _read("sample_docs.jsonl"), _read("sample_passages.jsonl")
    assert 300 <= len(docs) <= 400 and 300 <= len(passages) <= 600
    assert 55 <= len(_read("sample_math.jsonl")) <= 65 and 55 <= len(_read("sample_cloze.jsonl")) <= 65
    assert len({d["doc_id"] for d in docs}) == len(docs) and len({p["id"] for p in passages}) == len(passages)
    assert len({d["text"] for d in docs}) == len(docs)
    for d in docs:
        assert 25 <= len(d["text"].split()) <= 120, d
        assert d["url"].startswith("https://") and d["kind"] in ("arithmetic", "date", "fact")
    for p in passages:
        assert 30 <= len(p["text"].split()) <= 120 and p["title"], p


def test_every_arithmetic_document_passes_the_calculator_heuristic():
    arithmetic = [d for d in _read("sample_docs.jsonl") if d["kind"] == "arithmetic"]
    assert len(arithmetic) == 150
    assert all(has_arithmetic_relation(numbers_in(d["text"])) for d in arithmetic)


def test_dates_in_metadata_and_in_urls():
    docs = _read("sample_docs.jsonl")
    in_field = [d for d in docs if "date" in d]
    in_url = [d for d in docs if re.search(r"/\d{4}/\d{2}/\d{2}/", d["url"])]
    undated = [d for d in docs if d not in in_field and d not in in_url]
    assert in_field and in_url and undated
    assert not [d for d in in_field if d in in_url]
    for d in docs:
        assert (document_date(d) is not None) == (d not in undated), d
    assert all(document_date(d) is not None for d in docs if d["kind"] == "date")


def test_date_documents_agree_with_their_own_date():
    checked = 0
    for d in _read("sample_docs.jsonl"):
        if d["kind"] != "date":
            continue
        day = document_date(d)
        text = d["text"]
        if m := re.search(r"This (\w+day), (\w+) (\d+),", text):
            assert (m.group(1), m.group(3)) == (WEEKDAYS[day.weekday()], str(day.day)), text
            checked += 1
        if m := re.search(r"Today is (\w+day)", text):
            assert m.group(1) == WEEKDAYS[day.weekday()], text
            checked += 1
        if m := re.search(r"marks the (\d+)\w\w anniversary of its opening in (\d+)", text):
            assert int(m.group(1)) + int(m.group(2)) == day.year, text
            checked += 1
        if m := re.search(r"With (\d+) days left in (\d+)", text):
            assert int(m.group(1)) == (dt.date(day.year, 12, 31) - day).days and int(m.group(2)) == day.year
            checked += 1
    assert checked >= 20


MATH_RULES = [  # (pattern over the question, answer from its numbers)
    (r"baked (\d+) rolls and sold (\d+)", lambda a, b: a - b),
    (r"has (\d+) girls and (\d+) boys", lambda a, b: a + b),
    (r"buys (\d+) boxes of pencils with (\d+) pencils", lambda a, b: a * b),
    (r"shares (\d+) stickers equally among (\d+) friends", lambda a, b: a / b),
    (r"buys (\d+) books that cost \$(\d+) each and pays with a \$(\d+) note", lambda a, b, c: c - a * b),
    (r"travels at (\d+) km per hour for (\d+) hours", lambda a, b: a * b),
    (r"costs \$(\d+)\. In a sale it is (\d+)% off", lambda a, b: a * b / 100),
    (r"scored (\d+), (\d+) and (\d+) in three tests", lambda a, b, c: (a + b + c) / 3),
    (r"had (\d+) marbles and won (\d+) more\. Then \w+ gave (\d+)", lambda a, b, c: a + b - c),
    (r"has (\d+) rows of (\d+) chairs, and (\d+) more", lambda a, b, c: a * b + c),
]


def test_math_answers_recomputed_from_the_questions():
    problems = _read("sample_math.jsonl")
    for p in problems:
        matches = [(m, fn) for pattern, fn in MATH_RULES if (m := re.search(pattern, p["question"]))]
        assert len(matches) == 1, p
        m, fn = matches[0]
        assert p["answer"] == fn(*(int(g) for g in m.groups())), p
    assert len({p["question"] for p in problems}) == len(problems)


def test_cloze_answers_are_in_the_passages():
    passages = " ".join(p["text"] for p in _read("sample_passages.jsonl"))
    for item in _read("sample_cloze.jsonl"):
        assert item["masked_sentence"].endswith("[MASK].")
        assert item["question"] == item["masked_sentence"][: -len("[MASK].")].rstrip()
        assert item["answer"] in passages, item


def test_relation_check_catches_wrong_arithmetic():
    check_relations("Out of 1,400 people, 400 passed, or 29%.", [rel(400, "/", 1400, 29, 0, True)])
    with pytest.raises(AssertionError, match="wrong arithmetic"):
        check_relations("Out of 1,400 people, 400 passed, or 30%.", [rel(400, "/", 1400, 30, 0, True)])
    with pytest.raises(AssertionError, match="not written"):
        check_relations("A total of 12.", [rel(5, "+", 7, 12)])
    assert rel(Fraction(71, 4), "*", 40, 710).holds()
