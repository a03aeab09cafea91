"""No answers from the future, word-start positions, and the filter's examples (the departures from
the paper for a small model with a digit-by-digit tokenizer; see README)."""

from fractions import Fraction
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.model_handler import AugmentModel, token_classes
from pipelines.stages import execute_candidates, execute_counts, ground_candidates
from tools.calculator import Calculator
from tools.executor import ToolExecutor
from tools.heuristics import numbers_grounded, text_numbers
from tools.mt import MT


@pytest.mark.parametrize(
    "expr, before, ok",
    [
        ("48 / 2", "Natalia sold 48/2", True),
        ("48 / 2", "Natalia sold 48/", False),  # the 2 comes later
        ("555 - 315", "sold 315 on Saturday,", False),  # 555 is the answer written after the call
        ("1200 * 0.5", "Of the 1,200 members, .5 of them", True),
        ("1,200 + 0.50", "1200 and 0.5", True),
        ("48 / 2", "sold 48 clips, then half as many", True),  # number words: half = 2
        ("12 * 3", "a dozen eggs, 3 times", True),
        ("25 / 100 * 80", "25% of 80", True),  # % reads as 100
        ("7 + 7", "", False),
        ("()", "anything 1 2 3", False),  # no number: nothing it was computed from
    ],
)
def test_numbers_grounded(expr, before, ok):
    assert numbers_grounded(expr, before) is ok


def test_text_numbers_reads_separators_and_decimals():
    assert text_numbers("1,280 and 3.5, .25 then 7,5") == {Fraction(1280), Fraction(7, 2), Fraction(1, 4), Fraction(7), Fraction(5)}


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=4), st.text(alphabet="abc ,.", max_size=20))
def test_an_expression_of_numbers_in_the_text_is_grounded(nums, filler):
    before = filler + " " + " and ".join(f"{n:,}" for n in nums) + " ."
    assert numbers_grounded(" + ".join(map(str, nums)), before)


def test_mt_grounded_only_on_text_written_before():
    mt = MT.__new__(MT)
    assert mt.grounded("la  maison bleue", "Elle dit: la maison\nbleue, puis")
    assert not mt.grounded("la maison bleue", "Elle dit: la maison")


def test_ungrounded_calls_are_recorded_not_executed_and_counted():
    calc = Calculator(isolate=False)
    text = "She sold 315 rolls, 555 in total."
    unit = {"doc_id": "d", "tool": "Calculator", "offset": 100, "date": None, "text": text,
            "candidates": [{"position": 100 + 9, "input": "555 - 315", "call": "[Calculator(555 - 315)]"},
                           {"position": 100 + 20, "input": "315 + 240", "call": "x"},
                           {"position": 100 + 20, "input": "315 * 1", "call": "y"}]}
    grounded = ground_candidates(unit, calc, required=True)
    assert [(c["grounded"], c["dropped"]) for c in grounded["candidates"]] == [
        (False, "ungrounded"), (False, "ungrounded"), (False, "ungrounded")]  # "1" is not written: " a" is not before
    unit["candidates"][2]["input"] = "315 + 315"
    grounded = ground_candidates(unit, calc, required=True)
    assert grounded["candidates"][2]["dropped"] is None
    executed, dead = execute_candidates(grounded, ToolExecutor({"Calculator": calc}))
    assert [(c["result"], c["error"]) for c in executed["candidates"]] == [(None, None), (None, None), ("630", None)]
    assert dead == []
    assert execute_counts(executed) == {"executed:Calculator": 1, "ungrounded:Calculator": 2}
    # not required: recorded, all executed
    loose = ground_candidates(unit, calc, required=False)
    assert [c["dropped"] for c in loose["candidates"]] == [None, None, None]


class FakeTokenizer:
    pieces = [" He", " sold", " ", "5", "5", "\n", "N", "ata", " [", "\n\n", "  "]

    def __len__(self):
        return len(self.pieces)

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


def test_word_start_positions_never_split_a_number_or_a_word():
    space, line, blank = token_classes(FakeTokenizer())
    assert space == {0, 1, 2, 8, 10} and line == {5, 9} and blank == {2, 5, 9, 10}
    handler = SimpleNamespace(space_start=space, line_end=line)
    ids = [0, 1, 2, 3, 4, 5, 6, 7]  # " He sold 55\nNata"
    ok = AugmentModel.word_starts(handler, ids).tolist()
    assert ok == [True, True, True, False, False, False, True, False]


def test_filter_examples_carry_the_calculators_results():
    examples = Calculator(isolate=False).filter_examples()
    assert examples.startswith(
        "The bakery sold 240 rolls on Friday and 315 on Saturday, [Calculator(240 + 315) -> 555] 555 in total.\n\n")
    assert "[Calculator(300 / 1200) -> 0.25] 25%" in examples
    assert examples.count("\n\n") == 6 and "Input:" not in examples
