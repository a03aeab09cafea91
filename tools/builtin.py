"""The paper's tools. Importing this module registers them (``tools.base`` imports it on lookup)."""

from tools.calculator import Calculator
from tools.calendar_tool import Calendar
from tools.mt import MT
from tools.qa import QA
from tools.wikisearch import WikiSearch

__all__ = ["MT", "QA", "Calculator", "Calendar", "WikiSearch"]
