"""The Calendar tool: no input; returns the date as ``Today is Monday, January 30, 2023.``

Run one call:  ``toolformer call '[Calendar()]' --date 2023-01-30``  (without ``--date``: today).

During data generation the date is the document's own date (``CallContext.date``, set by the
pipeline from :func:`document_date`: a ``date`` field, or a date in the document's URL); at
inference it is today or a date the caller gives. The module is not called ``calendar.py`` so that
it can never shadow the standard library's ``calendar`` (which ``http.cookiejar`` imports).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Mapping
from typing import Any

from tools.base import CallContext, Tool, ToolError, register_tool
from tools.heuristics import document_date

__all__ = ["Calendar", "document_date", "format_date"]

# Spelled out instead of strftime("%A"/"%B"), which follows the process locale.
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def format_date(date: dt.date) -> str:
    return f"Today is {_WEEKDAYS[date.weekday()]}, {_MONTHS[date.month - 1]} {date.day}, {date.year}."


@register_tool
class Calendar(Tool):
    """The paper's calendar. ``today`` fixes the inference date when the context has none."""

    name = "Calendar"
    takes_input = False

    def __init__(self, today: dt.date | str | None = None):
        self.today = dt.date.fromisoformat(today) if isinstance(today, str) else today

    def __call__(self, input: str, context: CallContext) -> str:
        if input.strip():
            raise ToolError("parse", "Calendar takes no input: write [Calendar()]")
        return format_date(context.date or self.today or dt.date.today())

    def accepts(self, document: Mapping[str, Any], rng: random.Random) -> bool:
        return document_date(document) is not None
