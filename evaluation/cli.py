"""``toolformer evaluate``: does the model with tools beat itself without them?

Examples::

    # base model on 50 MAWPS problems, without and with tools
    toolformer evaluate --task math --data ../shared/data/mawps/tora/test.jsonl --limit 50 --output out/mawps
    # base and fine-tuned side by side: four conditions (each model with and without tools)
    toolformer evaluate --task math --data ASDiv.xml --model smollm2-135m runs/ft --output out/asdiv
    # generated DATESET-like questions; LAMA cloze; perplexity with tools disabled
    toolformer evaluate --task dates --limit 200 --output out/dates
    toolformer evaluate --task cloze --data ../shared/data/lama/lama_cloze_all.jsonl.gz --limit 200
    # open-domain questions (NQ-open JSONL, WebQuestions JSON) with WikiSearch over a BM25 index
    toolformer evaluate --task qa --data ../shared/data/nq_open/NQ-open.dev.jsonl --index runs/wiki-index --limit 200
    toolformer evaluate --task perplexity --data ../shared/data/wikitext/wiki.test.raw --limit 20

Prints the table; ``--output DIR`` also gets ``results.json``, ``results.md``, ``predictions.jsonl``
(every prompt, output, extracted answer and call) and ``accuracy.png``.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import time
from pathlib import Path
from typing import Literal

from toolformer.errors import UserError
from evaluation import dates as dates_mod
from evaluation import runner
from evaluation.datasets import Example, LoadedData, detect_format, load_examples, load_text
from evaluation.report import markdown_table, write_outputs

# Tools each task may call by default. The paper lets the model use every tool on every task but
# disables WikiSearch for LAMA (it would find the cloze sentences' sources); QA and WikiSearch need
# an index (--index) and join only when one is given. MT needs its own model and is opt-in.
DEFAULT_TOOLS = {
    "math": ("Calculator", "Calendar", "WikiSearch", "QA"),
    "dates": ("Calculator", "Calendar", "WikiSearch", "QA"),
    "cloze": ("Calculator", "Calendar", "QA"),
    # Open-domain QA (Table 5): the paper disables the QA tool, which would answer the question itself.
    "qa": ("Calculator", "Calendar", "WikiSearch"),
}
INDEXED_TOOLS = ("WikiSearch", "QA")
SHOWN_SKIPS = 5  # skipped-record reasons listed in results.json


def build_tools(task: str, names: list[str] | None, index: str | None) -> dict:
    """The task's tools, instantiated (WikiSearch and QA read ``index``)."""
    from tools.base import build_tools as _build

    if names is None:
        names = [n for n in DEFAULT_TOOLS[task] if index or n not in INDEXED_TOOLS]
    return _build(names, index, flag="--tool-names")


def _dates_examples(num_queries: int, num_dates: int, seed: int, limit: int | None) -> LoadedData:
    # --limit N generates N questions (over at most N "today" dates) instead of cutting the full set,
    # whose first questions would all share a handful of dates.
    n = min(num_queries, limit) if limit else num_queries
    queries = dates_mod.generate_dateset(n, min(num_dates, n), seed)
    examples = [Example(f"dates-{i}", q.question, (q.answer,), kind=q.kind, today=q.today,
                        meta={"template": q.template}) for i, q in enumerate(queries)]
    return LoadedData("", "generated", examples, [])


def evaluate(
    task: Literal["math", "dates", "cloze", "qa", "perplexity"] = "math",
    model: list[str] | None = None,
    data: str | None = None,
    format: Literal["auto", "svamp", "asdiv", "mawps", "gsm8k", "jsonl", "lama", "dates", "webquestions", "text"] = "auto",
    tools: bool = True,
    limit: int | None = None,
    output: str | None = None,
    question_field: str = "question",
    answer_field: str = "answer",
    tool_names: list[str] | None = None,
    index: str | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    num_queries: int = dates_mod.NUM_QUERIES,
    num_dates: int = dates_mod.NUM_TODAY_DATES,
    today: str | None = None,
    window: int = 1024,
    stride: int = 512,
    device: str | None = None,
    dtype: str | None = None,
    one_shot: bool = False,
    date_in_prompt: bool = False,
    prompt_style: Literal["paper", "qa", "solution"] = "paper",
    progress: bool = True,
) -> int:
    """Evaluate models zero-shot with and without tools (paper protocol) and print a table.

    Args:
        task: math (first number vs. gold), dates (generated DATESET-like questions, exact answers),
            cloze (LAMA: answer within the first five words), qa (NQ-open, WebQuestions: an answer within
            the first 20 words) or perplexity (plain text, tools disabled).
        model: one or more models (fetched name, model directory, .gguf): base first, then fine-tuned;
            each runs without and with tools. Default: smollm2-135m.
        data: the data file (not needed for dates, which are generated unless a saved JSONL is given).
        format: the data file's format; auto detects it from the name and the first record.
        tools: also run every model with tools (--no-tools: only without).
        limit: evaluate only the first N examples (perplexity: N windows; dates: generate N questions).
        output: directory for results.json, results.md, predictions.jsonl and accuracy.png.
        question_field: question field of a generic JSONL file (--format jsonl).
        answer_field: answer field of a generic JSONL file (a number, a string or a list of strings).
        tool_names: tools to offer (default: Calculator and Calendar, plus WikiSearch and QA with --index;
            no WikiSearch for cloze and no QA for qa, as in the paper).
        index: search index directory for WikiSearch and QA.
        max_new_tokens: tokens to generate per example (default: math 40, dates 32, cloze 32, qa 96; math with
            --prompt-style solution 192).
        batch_size: prompts decoded together.
        seed: seed of the generated date questions.
        num_queries: date questions to generate (paper: 9,400).
        num_dates: random "today" dates they are spread over (paper: 500).
        today: the date the Calendar answers with on math and cloze, YYYY-MM-DD (default: today).
        window: perplexity: tokens per window (capped at the model's context).
        stride: perplexity: tokens between window starts.
        device: cuda, cpu or mps (default: the best available).
        dtype: float32, bfloat16 or float16 (default: bf16 on CUDA, fp32 elsewhere).
        one_shot: put one worked example that calls a tool before every prompt (the "prompted" base
            model with tools; conditions without that tool see the example without its call).
        prompt_style: paper (the paper's templates, App. C: math "... The answer is", dates "Answer the
            following question: ...?"), qa ("Question: ...\nAnswer:", this project's earlier default) or
            solution (math only, beyond the paper: the question and a newline; the model writes a worked
            solution with up to 8 calls, each started only where " [" is the greedy token, scored on the
            number after "The answer is"; 192 tokens).
        date_in_prompt: dates: start each question with its "today" ("Today is Monday, January 30,
            2023. How many days ...?"); by default only the Calendar tool knows it.
        progress: show progress bars.
    """
    from toolformer.models import DEFAULT_MODEL, load_model

    specs = model or [DEFAULT_MODEL]
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if task != "dates" and not data:
        raise UserError(f"--task {task} needs --data PATH")
    if task != "perplexity":  # before minutes of model loading
        runner.check_prompt_style(task, prompt_style)
    try:
        calendar_date = dt.date.fromisoformat(today) if today else dt.date.today()
    except ValueError:
        raise UserError(f"--today must be YYYY-MM-DD, got {today!r}") from None
    if task == "perplexity" and not (window >= 2 and 1 <= stride):
        raise UserError(f"--window must be at least 2 and --stride at least 1, got {window} and {stride}")
    out_dir = Path(output) if output else None
    if out_dir is not None and ((out_dir / "results.json").exists() or (out_dir / "predictions.jsonl").exists()):
        raise UserError(f"--output {out_dir} already holds an evaluation; choose a new directory")

    # Data first: a bad file should fail before minutes of model loading.
    text, loaded = None, None
    if task == "perplexity":
        text = load_text(data, format)
        if not text.strip():
            raise UserError(f"{data}: no text to score")
    elif task == "dates" and not data:
        loaded = _dates_examples(num_queries, num_dates, seed, limit)
    else:
        loaded = load_examples(data, task, format, question_field, answer_field)
        if limit:
            loaded.examples = loaded.examples[:limit]
        if not loaded.examples:
            raise UserError(f"{data}: no usable examples" + (f" ({loaded.skipped[0]})" if loaded.skipped else ""))
    tool_map = build_tools(task, tool_names, index) if tools and task != "perplexity" else {}
    if tools and task != "perplexity" and not tool_map:
        raise UserError("--tool-names names no tool; use --no-tools to evaluate without tools")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    settings = {
        "data": str(data) if data else None,
        "format": loaded.format if loaded else (detect_format(data, task) if format == "auto" else format),
        "limit": limit,
        "n_examples": len(loaded.examples) if loaded else None,
        "skipped": len(loaded.skipped) if loaded else 0,
        "skipped_examples": loaded.skipped[:SHOWN_SKIPS] if loaded else [],
        "models": specs,
        "tools": sorted(tool_map),
        "prompt": runner.PROMPT_STYLES[prompt_style].get(task),
        "prompt_style": prompt_style,
        "one_shot": one_shot,
        "date_in_prompt": date_in_prompt,
        "max_new_tokens": max_new_tokens or (runner.SOLUTION_MAX_NEW_TOKENS if prompt_style == "solution"
                                             else runner.MAX_NEW_TOKENS.get(task)),
        "top_k_trigger": runner.TOP_K_TRIGGER,
        "max_calls": runner.MAX_CALLS,
        "calendar_date": calendar_date.isoformat() if task != "dates" else "per question",
    }
    if task == "dates" and not data:
        settings.update(seed=seed, num_queries=settings["n_examples"], num_dates=min(num_dates, settings["n_examples"]))
    if task == "perplexity":
        settings.update(window=window, stride=stride)

    results = []
    # Perplexity has no predictions to inspect: only its table and plot are written.
    predictions_path = out_dir / "predictions.jsonl" if out_dir and task != "perplexity" else os.devnull
    started = time.perf_counter()
    with open(predictions_path, "w", encoding="utf-8") as predictions:
        all_conditions = runner.conditions_for(specs, tools, task)
        for spec, label in zip(specs, runner.model_labels(specs)):
            conditions = [c for c in all_conditions if c.label == label]
            lm, tok = load_model(spec, device=device, dtype=dtype)
            for condition in conditions:
                if task == "perplexity":
                    result = runner.run_perplexity_condition(condition, lm, tok, text, window, stride, limit,
                                                             progress)
                else:
                    result = runner.run_generation_condition(
                        task, condition, lm, tok, loaded.examples, tool_map, predictions,
                        max_new_tokens=max_new_tokens, batch_size=batch_size, today=calendar_date,
                        progress=progress, one_shot=one_shot,
                        date_in_prompt=date_in_prompt, prompt_style=prompt_style)
                results.append(result)
            del lm, tok
            gc.collect()
    settings["seconds"] = round(time.perf_counter() - started, 1)

    table = markdown_table(task, results)
    print(table)
    if loaded and loaded.skipped:
        print(f"({len(loaded.skipped)} records skipped, e.g. {loaded.skipped[0]})")
    if out_dir is not None:
        write_outputs(out_dir, task, results, settings)
        written = ["results.json", "results.md"] + (["predictions.jsonl"] if task != "perplexity" else [])
        print(f"wrote {', '.join(str(out_dir / name) for name in written + ['accuracy.png'])}")
    return 0
