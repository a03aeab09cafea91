"""Run one evaluation task for several models, each with and without tools (the paper's protocol).

Zero-shot prompts, greedy decoding, a call may start whenever the call token is among the top 10
next tokens, at most one call per input (paper Section 4.2). Each condition's answer is scored on
``text_without_calls``: the call is not part of what the model says.

Conditions, in the paper's words: the base model without tools, the fine-tuned model without tools
("Toolformer (disabled)"), the fine-tuned model with tools, and the base model with tools. Pass the
base model first and the fine-tuned one second; every model runs both ways unless ``--no-tools``.

Run: ``toolformer evaluate --task math --data ../shared/data/mawps/tora/test.jsonl --limit 50
--model smollm2-135m runs/ft --output eval_out``
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from toolformer.call_format import parse_calls, strip_calls
from evaluation.datasets import Example
from toolformer.errors import UserError
from evaluation.dates import format_today
from evaluation.perplexity import perplexity
from evaluation.scoring import score_cloze, score_date, score_math, score_math_solution, score_qa
from tools.base import CallContext, Tool

# Zero-shot prompts, two styles (``--prompt-style``). "paper" (the default): the paper's own templates
# (App. C): math "{body} {question} The answer is" (our math sets hold body and question as one
# string), QA and dates "Answer the following question: {question}?" (scored as before; for QA the
# paper's rule is the answer within the first five words), LAMA's completion prompt. "qa": the
# plainest question/answer frame, this project's earlier default; the first line of the answer is
# scored (generation stops at a newline) in both.
PROMPT_STYLES = {
    "paper": {
        "math": "{question} The answer is",
        "dates": "Answer the following question: {question}?",
        "cloze": "Please complete the following text so that it is factually correct: {question}",
        "qa": "Answer the following question: {question}?",
    },
    "qa": {
        "math": "Question: {question}\nAnswer:",
        "dates": "Question: {question}\nAnswer:",
        "qa": "Question: {question}\nAnswer:",
        "cloze": "Please complete the following text so that it is factually correct: {question}",
    },
    # Beyond the paper: the question, then a newline, and the model writes a worked solution in the
    # form of its fine-tuning texts (GSM8K's: steps, then "The answer is n."), with up to
    # SOLUTION_MAX_CALLS calls, over several lines; scored on the number after the first "The answer
    # is" (evaluation.scoring.score_math_solution). For multi-step sets (GSM8K), where one call
    # before the first number cannot hold the answer. Math only.
    "solution": {
        "math": "{question}\n",
    },
}
SOLUTION_MAX_CALLS = 8
# A call starts only where " [" is the greedy token: with several calls allowed, the paper's top-10
# rule (made for one call per input) starts calls everywhere (measured on 4 GSM8K problems, the
# round-2 model: 24 calls, most mid-sentence, 0 right answers; greedy: 6 calls, each after "=", as
# in its fine-tuning texts).
SOLUTION_TOP_K_TRIGGER = 1
SOLUTION_MAX_NEW_TOKENS = 192
PROMPTS = PROMPT_STYLES["qa"]  # the earlier default (kept for callers that read it)
# `--one-shot`: one worked example before each prompt, for a "base model with tools (prompted)".
# A model never trained on calls rarely starts one zero-shot; one demonstration shows it the syntax.
# Conditions whose tools lack the demonstrated one see the same example with the call removed, so
# with and without tools differ only in the call. This differs from the paper, whose evaluation is
# zero-shot throughout (its base model never gets tools).
DEMONSTRATIONS = {
    "math": ("Tom had 35 apples and sold 12 of them. How many apples does he have left?",
             " [Calculator(35 - 12) -> 23] 23"),
    "dates": ("How many days are there until Christmas Day?",
              " [Calendar() -> Today is Monday, December 18, 2023.] 7"),
    "cloze": ("The Eiffel Tower is located in the city of", " [QA(Where is the Eiffel Tower?) -> Paris] Paris."),
    # the same fact through a search, for a model allowed WikiSearch and not QA (the search track)
    "cloze/WikiSearch": ("The Eiffel Tower is located in the city of",
                         " [WikiSearch(Eiffel Tower) -> The Eiffel Tower is a wrought-iron lattice tower on the"
                         " Champ de Mars in Paris, France.] Paris."),
    "qa": ("Who designed the Eiffel Tower?",
           " [WikiSearch(Eiffel Tower) -> The Eiffel Tower is a wrought-iron lattice tower in Paris, named after"
           " the engineer Gustave Eiffel, whose company designed and built it.] Gustave Eiffel."),
}
MAX_NEW_TOKENS = {"math": 40, "dates": 32, "cloze": 32, "qa": 96}  # room for one call and a short answer
# (qa: the injected WikiSearch result, up to ~60 tokens, counts against the budget)
TOP_K_TRIGGER = 10  # paper: start a call when the call token is among the top 10
MAX_CALLS = 1  # paper: at most one API call per input


@dataclasses.dataclass(frozen=True)
class Condition:
    """One column of the results table: a model, with or without its tools."""

    model: str  # what --model named
    label: str  # short name shown in tables
    use_tools: bool

    @property
    def name(self) -> str:
        return f"{self.label} + tools" if self.use_tools else f"{self.label}, no tools"


@dataclasses.dataclass
class ConditionResult:
    condition: str
    model: str
    tools: bool
    tool_names: list[str]
    n: int
    correct: int | None = None
    accuracy: float | None = None
    tool_call_share: float | None = None  # share of examples with at least one call to a tool of the condition
    calls_per_tool: dict[str, int] = dataclasses.field(default_factory=dict)  # the condition's tools only
    failed_calls: int = 0  # calls that ran and returned an error (rolled back by the generator)
    # calls naming a tool the condition does not have (rolled back, never run): name -> count
    unknown_tool_calls: dict[str, int] = dataclasses.field(default_factory=dict)
    perplexity: float | None = None
    nll: float | None = None
    tokens: int | None = None
    windows: int | None = None
    seconds: float = 0.0


def model_labels(specs: list[str]) -> list[str]:
    """Short, unique labels: the last path component of each spec (``runs/ft`` -> ``ft``)."""
    labels = []
    for spec in specs:
        base = Path(spec.rstrip("/")).name or spec
        label, k = base, 2
        while label in labels:
            label, k = f"{base}#{k}", k + 1
        labels.append(label)
    return labels


def conditions_for(specs: list[str], use_tools: bool, task: str) -> list[Condition]:
    """Each model without tools and, unless disabled, with tools (perplexity never uses tools)."""
    modes = [False, True] if use_tools and task != "perplexity" else [False]
    return [Condition(spec, label, mode) for spec, label in zip(specs, model_labels(specs)) for mode in modes]


def check_prompt_style(task: str, style: str) -> None:
    """One line naming the flags when ``style`` has no prompt for ``task``."""
    if task not in PROMPT_STYLES[style]:
        raise UserError(f"--prompt-style {style} has no prompt for --task {task} (it has: "
                        f"{', '.join(PROMPT_STYLES[style])})")


def render_prompt(task: str, question: str, one_shot: bool = False, tool_names: Collection[str] = (),
                  style: str = "qa") -> str:
    """The task's zero-shot prompt in ``style`` ("paper", "qa" or "solution"), optionally after one worked
    example (see DEMONSTRATIONS)."""
    check_prompt_style(task, style)
    template = PROMPT_STYLES[style][task]
    if template.endswith("{question}?"):
        question = question.rstrip().rstrip("?")  # the template brings its own question mark
    # str.replace, not str.format: questions may contain braces.
    prompt = template.replace("{question}", question)
    if not one_shot:
        return prompt
    demo_question, demo_answer = DEMONSTRATIONS[task]
    if not any(call.tool in tool_names for call in parse_calls(demo_answer)):
        # the task's example with another tool ("task/Tool") where that one is allowed, else without its call
        other = next((DEMONSTRATIONS[f"{task}/{t}"] for t in tool_names if f"{task}/{t}" in DEMONSTRATIONS), None)
        demo_question, demo_answer = other or (demo_question, strip_calls(demo_answer))
    if template.endswith("{question}?"):
        demo_question = demo_question.rstrip("?")
    if style == "solution":
        demo_answer += ".\nThe answer is 23."
    return template.replace("{question}", demo_question) + demo_answer + "\n\n" + prompt


def score(task: str, example: Example, answer: str, style: str = "paper") -> tuple[Any, bool]:
    """``(what was read from the answer, correct?)`` under the task's rule (and prompt style)."""
    if task == "math" and style == "solution":
        return score_math_solution(answer, example.gold_number)
    if task == "math":
        return score_math(answer, example.gold_number)
    if task == "dates":
        return score_date(answer, example.answers[0], example.kind)
    if task == "cloze":
        return score_cloze(answer, example.answers)
    if task == "qa":
        return score_qa(answer, example.answers)
    raise ValueError(f"task {task!r} has no scoring rule")


def _with_date(example: Example) -> str:
    # `--date-in-prompt`: the question states its "today" in the Calendar's own words. Off by default:
    # the paper's DATESET gain came from Calendar calls, so the date must not be given away.
    return f"{format_today(example.today)} {example.question}" if example.today else example.question


def make_generator(model, tokenizer, tools: Mapping[str, Tool], use_tools: bool, max_new_tokens: int,
                   style: str = "paper"):
    """The inline tool-calling generator (toolformer.generation), configured as the paper evaluates
    (``style="solution"``: several calls, over several lines)."""
    from toolformer.generation import GenerationConfig, ToolGenerator
    from tools.executor import ToolExecutor

    solution = style == "solution"
    config = GenerationConfig(max_new_tokens=max_new_tokens,
                              top_k_trigger=SOLUTION_TOP_K_TRIGGER if solution else TOP_K_TRIGGER,
                              max_calls=SOLUTION_MAX_CALLS if solution else MAX_CALLS,
                              use_tools=use_tools, stop_at_newline=not solution)
    try:
        return ToolGenerator(model, tokenizer, ToolExecutor(tools), config)
    except ValueError as e:  # e.g. a model trained with marker tokens
        raise UserError(str(e)) from None


def run_generation_condition(
    task: str,
    condition: Condition,
    model,
    tokenizer,
    examples: list[Example],
    tools: Mapping[str, Tool],
    predictions_file,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    today: dt.date | None = None,
    progress: bool = True,
    one_shot: bool = False,
    date_in_prompt: bool = False,
    prompt_style: str = "paper",
) -> ConditionResult:
    """Generate an answer for every example, score it, append each prediction to ``predictions_file``."""
    start = time.perf_counter()
    tools = tools if condition.use_tools else {}
    default_tokens = SOLUTION_MAX_NEW_TOKENS if prompt_style == "solution" else MAX_NEW_TOKENS[task]
    generator = make_generator(model, tokenizer, tools, condition.use_tools, max_new_tokens or default_tokens,
                               prompt_style)
    prompts = [render_prompt(task, _with_date(ex) if date_in_prompt else ex.question, one_shot, tools,
                             prompt_style) for ex in examples]
    # The dates task's "today" reaches the Calendar through the call context; other tasks use the
    # real date (or --today), as a deployed model would.
    contexts = [CallContext(date=ex.today or today, doc_id=ex.id) for ex in examples]
    outputs = generator.generate(prompts, contexts, batch_size=batch_size, progress=progress)
    if len(outputs) != len(examples):
        raise RuntimeError(f"the generator returned {len(outputs)} outputs for {len(examples)} prompts")
    correct, with_call, failed = 0, 0, 0
    per_tool: collections.Counter[str] = collections.Counter()
    unknown: collections.Counter[str] = collections.Counter()  # names the model invented (FB, Fauna)
    for ex, prompt, out in zip(examples, prompts, outputs):
        extracted, ok = score(task, ex, out.text_without_calls, prompt_style)
        correct += ok
        with_call += any(call.tool in tools for call in out.calls)
        for call in out.calls:
            if call.tool in tools:
                per_tool[call.tool] += 1
                failed += call.error is not None
            else:  # rolled back by the generator like a failed call, counted apart
                unknown[call.tool] += 1
        record = {
            "condition": condition.name, "model": condition.model, "tools": condition.use_tools,
            "id": ex.id, "prompt": prompt, "output": out.text, "answer": out.text_without_calls,
            "extracted": extracted, "gold": ex.gold_number if task == "math" else list(ex.answers),
            "correct": ok,
            "calls": [{"tool": c.tool, "input": c.input, "result": c.result, "error": c.error} for c in out.calls],
        }
        if ex.today:
            record["today"] = ex.today.isoformat()
        predictions_file.write(json.dumps(record, ensure_ascii=False) + "\n")
    predictions_file.flush()
    n = len(examples)
    return ConditionResult(
        condition=condition.name, model=condition.model, tools=condition.use_tools,
        tool_names=sorted(tools), n=n, correct=correct, accuracy=correct / n if n else 0.0,
        tool_call_share=with_call / n if n else 0.0, calls_per_tool=dict(sorted(per_tool.items())),
        failed_calls=failed, unknown_tool_calls=dict(sorted(unknown.items())),
        seconds=round(time.perf_counter() - start, 2))


def run_perplexity_condition(condition: Condition, model, tokenizer, text: str, window: int, stride: int,
                             max_windows: int | None, progress: bool = True) -> ConditionResult:
    start = time.perf_counter()
    result = perplexity(model, tokenizer, text, window=window, stride=stride, max_windows=max_windows,
                        progress=progress)
    return ConditionResult(
        condition=condition.name, model=condition.model, tools=False, tool_names=[], n=result.tokens,
        perplexity=result.perplexity, nll=result.nll, tokens=result.tokens, windows=result.windows,
        seconds=round(time.perf_counter() - start, 2))
