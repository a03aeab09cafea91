"""Conditions, prompts and scoring dispatch of the runner (evaluation/runner.py)."""

import datetime as dt

from evaluation.datasets import Example
from evaluation.runner import conditions_for, model_labels, render_prompt, score


def test_zero_shot_prompts():
    assert render_prompt("math", "How many {apples}?") == "Question: How many {apples}?\nAnswer:"
    assert render_prompt("cloze", "Alan Turing works in the field of") == (
        "Please complete the following text so that it is factually correct: Alan Turing works in the field of")


def test_paper_prompts_app_c():
    assert render_prompt("math", "Tom has 3 apples. How many?", style="paper") == (
        "Tom has 3 apples. How many? The answer is")
    assert render_prompt("dates", "What day is it today?", style="paper") == (
        "Answer the following question: What day is it today?")
    with_tool = render_prompt("math", "Q?", one_shot=True, tool_names=["Calculator"], style="paper")
    assert with_tool == ("Tom had 35 apples and sold 12 of them. How many apples does he have left? The answer is"
                         " [Calculator(35 - 12) -> 23] 23\n\nQ? The answer is")


def test_solution_prompts():
    assert render_prompt("math", "Tom has 3 apples. How many?", style="solution") == "Tom has 3 apples. How many?\n"
    assert render_prompt("math", "Q?", one_shot=True, tool_names=["Calculator"], style="solution") == (
        "Tom had 35 apples and sold 12 of them. How many apples does he have left?\n"
        " [Calculator(35 - 12) -> 23] 23.\nThe answer is 23.\n\nQ?\n")
    math = Example("1", "q", ("9",), gold_number=9.0)
    assert score("math", math, " 3 * 3 = 9. The answer is 9.", "solution") == (9.0, True)
    assert score("math", math, " 3 * 3 = 9.", "solution") == (None, False)  # never says "The answer is"
    assert score("math", math, " 3 * 3 = 9.", "paper") == (3.0, False)


def test_one_shot_shows_the_call_only_to_conditions_with_that_tool():
    with_tool = render_prompt("math", "Q?", one_shot=True, tool_names=["Calculator", "Calendar"])
    assert with_tool == ("Question: Tom had 35 apples and sold 12 of them. How many apples does he have left?\n"
                         "Answer: [Calculator(35 - 12) -> 23] 23\n\nQuestion: Q?\nAnswer:")
    without = render_prompt("math", "Q?", one_shot=True, tool_names=[])
    assert without == ("Question: Tom had 35 apples and sold 12 of them. How many apples does he have left?\n"
                       "Answer: 23\n\nQuestion: Q?\nAnswer:")
    # The cloze example calls QA: without QA it is shown without its call.
    assert render_prompt("cloze", "X is in", one_shot=True, tool_names=["Calculator"]).startswith(
        "Please complete the following text so that it is factually correct: The Eiffel Tower is located in "
        "the city of Paris.\n\n")
    # Allowed WikiSearch and not QA, it sees the same fact found by a search; with both, QA's example.
    cloze = "Please complete the following text so that it is factually correct: "
    assert render_prompt("cloze", "X is in", one_shot=True, tool_names=["WikiSearch"]) == (
        cloze + "The Eiffel Tower is located in the city of [WikiSearch(Eiffel Tower) -> The Eiffel Tower is a "
        "wrought-iron lattice tower on the Champ de Mars in Paris, France.] Paris.\n\n" + cloze + "X is in")
    assert "[QA(Where is the Eiffel Tower?) -> Paris]" in render_prompt(
        "cloze", "X is in", one_shot=True, tool_names=["WikiSearch", "QA"])
    assert render_prompt("cloze", "X is in", one_shot=True, tool_names=[]) == render_prompt(
        "cloze", "X is in", one_shot=True, tool_names=["Calculator"])


def test_labels_and_conditions():
    assert model_labels(["smollm2-135m", "runs/ft/", "other/ft"]) == ["smollm2-135m", "ft", "ft#2"]
    names = [c.name for c in conditions_for(["smollm2-135m", "runs/ft"], True, "math")]
    assert names == ["smollm2-135m, no tools", "smollm2-135m + tools", "ft, no tools", "ft + tools"]
    assert [c.name for c in conditions_for(["a", "b"], False, "math")] == ["a, no tools", "b, no tools"]
    assert [c.use_tools for c in conditions_for(["a"], True, "perplexity")] == [False]


def test_score_dispatch():
    math = Example("1", "q", ("9 (apples)",), gold_number=9.0)
    assert score("math", math, " 9 apples") == (9.0, True)
    day = Example("2", "q", ("Monday",), kind="weekday", today=dt.date(2023, 1, 30))
    assert score("dates", day, " It is Monday.") == ("Monday", True)
    fact = Example("3", "q", ("logic",))
    assert score("cloze", fact, " logic.") == ("logic", True)


def test_open_domain_qa_prompts_and_scoring():
    assert render_prompt("qa", "who wrote he ain't heavy he's my brother lyrics", style="paper") == (
        "Answer the following question: who wrote he ain't heavy he's my brother lyrics?")
    assert render_prompt("qa", "what does jamaican people speak?", style="paper") == (
        "Answer the following question: what does jamaican people speak?")  # one question mark
    shown = render_prompt("qa", "Q?", one_shot=True, tool_names=["WikiSearch"], style="paper")
    assert shown.startswith("Answer the following question: Who designed the Eiffel Tower? [WikiSearch(Eiffel Tower) ->")
    assert shown.endswith("] Gustave Eiffel.\n\nAnswer the following question: Q?")
    assert render_prompt("qa", "Q?", one_shot=True, tool_names=["Calculator"], style="paper") == (
        "Answer the following question: Who designed the Eiffel Tower? Gustave Eiffel.\n\n"
        "Answer the following question: Q?")
    fact = Example("4", "q", ("Bobby Scott", "Bob Russell"))
    assert score("qa", fact, " The song was written by Bob Russell and Bobby Scott.") == (
        "the song was written by bob russell and bobby scott", True)
