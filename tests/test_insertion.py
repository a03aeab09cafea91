"""x* = x_1..x_{i-1}, e(c, r), x_i..x_n: exact strings, positions, and the round trip."""

import pytest

from toolformer.call_format import parse_calls, strip_calls
from toolformer.insertion import char_position, insert_calls

TEXT = "Out of 1400 participants, 400 (or 29%) passed the test."


def test_insert_one_call_before_its_position():
    call = {"tool": "Calculator", "input": "400 / 1400", "result": "0.29", "position": TEXT.index(" 29%")}
    out = insert_calls(TEXT, [call])
    assert out == "Out of 1400 participants, 400 (or [Calculator(400 / 1400) -> 0.29] 29%) passed the test."
    assert strip_calls(out) == TEXT
    (parsed,) = parse_calls(out)
    assert (parsed.tool, parsed.input, parsed.result) == ("Calculator", "400 / 1400", "0.29")


def test_insert_several_calls_in_position_order():
    calls = [
        {"tool": "Calculator", "input": "1400 - 400", "result": "1000", "position": TEXT.index(" passed")},
        {"tool": "Calendar", "input": "", "result": "Today is Monday, January 30, 2023.", "position": 0},
        {"tool": "Calculator", "input": "400 / 1400", "result": "0.29", "position": TEXT.index(" 29%")},
    ]
    out = insert_calls(TEXT, calls)
    assert out == (
        " [Calendar() -> Today is Monday, January 30, 2023.]Out of 1400 participants, 400 (or "
        "[Calculator(400 / 1400) -> 0.29] 29%) [Calculator(1400 - 400) -> 1000] passed the test."
    )
    assert strip_calls(out) == TEXT


def test_call_without_result_and_bad_position():
    assert insert_calls("a b", [{"tool": "T", "input": "x", "result": None, "position": 1}]) == "a [T(x)] b"
    with pytest.raises(ValueError, match="outside a text of 3 characters"):
        insert_calls("a b", [{"tool": "T", "input": "x", "result": "1", "position": 4}])


def test_char_position_maps_tokens_of_space_plus_text():
    # " 400 (or 29%)" tokenised SmolLM2-style: "Ġ", "4", "0", "0", "Ġ(", "or", "Ġ", "2", "9", "%)"
    text = "400 (or 29%)"
    offsets = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 6), (6, 8), (8, 9), (9, 10), (10, 11), (11, 13)]
    assert char_position(offsets, 0, text) == 0
    assert char_position(offsets, 4, text) == 3  # before " (": the token brings its space
    assert char_position(offsets, 6, text) == 7  # before the lone space token
    assert char_position(offsets, 7, text) == 7  # before "2": moved before its space
    assert char_position(offsets, 9, text) == 10  # before "%)": no space to move over
