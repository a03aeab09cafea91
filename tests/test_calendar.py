"""Calendar: date formatting, document dates from fields and URLs, its heuristic; stable seeding.

Run: python -m pytest -q tests/test_calendar.py
"""

from __future__ import annotations

import datetime as dt
import locale
import subprocess
import sys

import pytest

from tools.base import CallContext, ToolError
from tools.calendar_tool import Calendar, document_date, format_date
from tools.heuristics import date_from_url, doc_rng, stable_seed


@pytest.mark.parametrize(
    "date, expected",
    [
        (dt.date(2023, 1, 30), "Today is Monday, January 30, 2023."),
        (dt.date(2024, 2, 29), "Today is Thursday, February 29, 2024."),
        (dt.date(1999, 12, 31), "Today is Friday, December 31, 1999."),
        (dt.date(2026, 7, 4), "Today is Saturday, July 4, 2026."),
    ],
)
def test_format_date(date, expected):
    assert format_date(date) == expected


def test_format_ignores_locale():
    try:
        locale.setlocale(locale.LC_TIME, "de_DE.UTF-8")
    except locale.Error:
        pytest.skip("no German locale installed")
    try:
        assert format_date(dt.date(2023, 1, 30)) == "Today is Monday, January 30, 2023."
    finally:
        locale.setlocale(locale.LC_TIME, "C")


def test_tool_uses_context_date_then_configured_today_then_today():
    assert Calendar()("", CallContext(date=dt.date(2023, 1, 30))) == "Today is Monday, January 30, 2023."
    assert Calendar(today="2020-03-01")("", CallContext()) == "Today is Sunday, March 1, 2020."
    assert Calendar(today="2020-03-01")("", CallContext(date=dt.date(2023, 1, 30))).endswith(
        "January 30, 2023."
    )
    assert Calendar()("", CallContext()) == format_date(dt.date.today())
    assert Calendar.takes_input is False


@pytest.mark.parametrize("bad", ["tomorrow", "x" * 1_000_000, "]", "->", "__import__('os')"])
def test_tool_rejects_input(bad):
    with pytest.raises(ToolError) as info:
        Calendar()(bad, CallContext(date=dt.date(2023, 1, 30)))
    assert info.value.reason == "parse"


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://news.example.com/2023/01/30/some-story", dt.date(2023, 1, 30)),
        ("https://example.org/blog/2019-7-4-fireworks.html", dt.date(2019, 7, 4)),
        ("http://x.com/archive/2021/2/28/", dt.date(2021, 2, 28)),
        ("http://x.com/2021/02/30/not-a-day/2020/01/02/", dt.date(2020, 1, 2)),  # first valid date wins
        ("http://x.com/2021/13/01/", None),
        ("http://x.com/12023/01/30/", None),
        ("http://x.com/2023/01-30/", None),  # mixed separators
        ("http://x.com/page?id=20230130", None),
        ("", None),
    ],
)
def test_date_from_url(url, expected):
    assert date_from_url(url) == expected


@pytest.mark.parametrize(
    "doc, expected",
    [
        ({"date": "2023-01-30"}, dt.date(2023, 1, 30)),
        ({"date": "2023-01-30T12:34:56Z"}, dt.date(2023, 1, 30)),
        ({"date": dt.date(2022, 5, 6)}, dt.date(2022, 5, 6)),
        ({"date": dt.datetime(2022, 5, 6, 7, 8)}, dt.date(2022, 5, 6)),
        ({"date": "not a date", "url": "https://a.b/2020/10/11/x"}, dt.date(2020, 10, 11)),
        ({"url": "https://a.b/2020/10/11/x"}, dt.date(2020, 10, 11)),
        ({"date": "", "url": "https://a.b/about"}, None),
        ({"text": "Written on 2020-10-11."}, None),  # dates in the text are not the document's date
        ({"date": 20230130}, None),
    ],
)
def test_document_date(doc, expected):
    assert document_date(doc) == expected


def test_heuristic_accepts_documents_with_a_known_date():
    rng = doc_rng("d", 0, "Calendar")
    assert Calendar().accepts({"text": "x", "url": "https://a.b/2023/01/30/y"}, rng)
    assert not Calendar().accepts({"text": "x", "url": "https://a.b/y"}, rng)


def test_stable_seed_is_the_same_in_another_process():
    code = "from tools.heuristics import stable_seed; print(stable_seed(0, 'Calculator', 'doc-1'))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    ).stdout.strip()
    assert int(other) == stable_seed(0, "Calculator", "doc-1")
    assert stable_seed(0, "Calculator", "doc-1") != stable_seed(1, "Calculator", "doc-1")
    assert [doc_rng("doc-1", 0, "QA").random() for _ in range(2)] == [doc_rng("doc-1", 0, "QA").random()] * 2
