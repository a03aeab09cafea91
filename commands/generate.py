"""``toolformer generate``: complete prompts with a Toolformer model, its API calls run inline
(:class:`toolformer.generation.ToolGenerator` with the tools named on the command line)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json as jsonlib
import sys
from collections.abc import Sequence

from toolformer.call_format import strip_calls
from toolformer.errors import UserError
from toolformer.generation import GenerationConfig, ToolGenerator
from tools.base import CallContext, Tool
from tools.executor import ToolExecutor

DEFAULT_TOOLS = ("Calculator", "Calendar")


def build_tools(names: Sequence[str] | None = None, index: str | None = None) -> dict[str, Tool]:
    """Instantiate tools by name (``tools.base.build_tools``); WikiSearch is added when ``index`` is given."""
    from tools.base import build_tools as _build

    if names is None:
        names = list(DEFAULT_TOOLS) + (["WikiSearch"] if index else [])
    return _build(names, index)


def generate_command(prompt: list[str], model: str = "smollm2-135m", max_new_tokens: int = 64,
                     top_k_trigger: int = 10, max_calls: int = 1, no_tools: bool = False,
                     show_calls: bool = True, hide_calls: bool = False, date: str | None = None,
                     index: str | None = None, tools: str | None = None, json: bool = False,
                     batch_size: int = 8, stop_at_newline: bool = False, device: str | None = None,
                     dtype: str | None = None) -> int:
    """Complete prompts with a Toolformer model, running its API calls inline as it writes them.

    Args:
        prompt: one or more prompts to complete.
        model: a fetched model name, a model directory (e.g. a fine-tuned run), a .gguf file or a Hub id.
        max_new_tokens: tokens to generate per prompt.
        top_k_trigger: start a call when " [" is among the top-k next tokens (paper: 10; 1 = plain greedy).
        max_calls: call attempts per prompt (paper: 1).
        no_tools: never start a call (the paper's "Toolformer (disabled)").
        show_calls: print the calls and their results inline.
        hide_calls: print the text with the calls removed (same as --no-show-calls).
        date: the date the Calendar tool answers with, YYYY-MM-DD (default: today).
        index: WikiSearch index directory (built by `toolformer index`); enables WikiSearch.
        tools: comma-separated tool names or module:Class specs (default: Calculator,Calendar, plus
            WikiSearch with --index).
        json: print one JSON object per prompt: prompt, text, text_without_calls, calls, num_tokens.
        batch_size: prompts decoded together.
        stop_at_newline: end each completion at its first newline.
        device: cuda, cpu or mps (default: the best available).
        dtype: float32, bfloat16 or float16 (default: bf16 on CUDA, fp32 elsewhere).
    """
    from toolformer.models import load_model

    try:
        when = dt.date.fromisoformat(date) if date else dt.date.today()
    except ValueError:
        raise UserError(f"--date must be YYYY-MM-DD, got {date!r}") from None
    names = [n.strip() for n in tools.split(",") if n.strip()] if tools else None
    if tools is not None and not names:
        raise UserError("--tools names no tool; use --no-tools to disable calls")
    try:
        config = GenerationConfig(max_new_tokens=max_new_tokens, top_k_trigger=top_k_trigger,
                                  max_calls=max_calls, use_tools=not no_tools,
                                  stop_at_newline=stop_at_newline)
    except ValueError as e:
        raise UserError(str(e)) from None
    if any(not p for p in prompt):
        raise UserError("a prompt is empty")
    tool_map = {} if no_tools else build_tools(names, index)
    lm, tok = load_model(model, device=device, dtype=dtype)
    try:
        generator = ToolGenerator(lm, tok, ToolExecutor(tool_map), config)
    except ValueError as e:
        raise UserError(str(e)) from None
    context = CallContext(date=when)
    show = show_calls and not hide_calls
    if not json and len(prompt) == 1:  # one prompt: stream it as it is written
        sys.stdout.write(prompt[0])
        for piece in generator.stream(prompt[0], context):
            sys.stdout.write(piece if show else strip_calls(piece))
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    for out in generator.generate(prompt, context, batch_size=batch_size):
        if json:
            print(jsonlib.dumps({"prompt": out.prompt, "text": out.text,
                                 "text_without_calls": out.text_without_calls,
                                 "calls": [dataclasses.asdict(c) for c in out.calls],
                                 "num_tokens": out.num_tokens}, ensure_ascii=False))
        else:
            print(out.prompt + (out.text if show else out.text_without_calls))
    return 0
