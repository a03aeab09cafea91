"""The ``toolformer call`` and ``toolformer index`` commands.

    toolformer call '[Calculator(18 + 12 * 3)]'                  # prints 54
    echo '[Calendar()]' | toolformer call - --date 2023-01-30     # Today is Monday, January 30, 2023.
    toolformer index --input 'corpus/*.jsonl.gz' --output runs/wiki-index --filter split=store
    toolformer call '[WikiSearch(Brown Act)]' --index runs/wiki-index

Exit status of ``call``: 0 with the result on stdout; 1 when the tool fails (one line on stderr:
the tool, the reason and the message); 2 when the text is not exactly one well-formed call or a
flag is wrong.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from toolformer.call_format import CallSyntaxError, parse_call
from toolformer.errors import UserError
from tools.base import CallContext, available_tools, get_tool, tool_class
from tools.executor import ToolExecutor

log = logging.getLogger(__name__)


def _parse_date(date: str | None, flag: str = "--date") -> dt.date | None:
    if date is None:
        return None
    try:
        return dt.date.fromisoformat(date)
    except ValueError:
        raise UserError(f"{flag} must be a date like 2023-01-30, got {date!r}") from None


def call(
    call_text: str,
    date: str | None = None,
    index: str | None = None,
    model: str | None = None,
    mt_model: str | None = None,
    tools: list[str] | None = None,
    isolate: bool = True,
) -> int:
    """Execute one call written in the inline format and print its result.

    Args:
        call_text: the call, e.g. '[Calculator(18 + 12 * 3)]'; '-' reads it from standard input.
        date: the date the call is made on (YYYY-MM-DD; Calendar). Default: today.
        index: WikiSearch index directory built by `toolformer index` (WikiSearch and QA).
        model: language model that reads QA answers (a fetched name, a directory or a .gguf file).
        mt_model: local translation model directory for MT.
        tools: extra tools to make available, as module:Class.
        isolate: run the Calculator in a separate worker process with CPU and memory limits.
    """
    text = sys.stdin.read() if call_text == "-" else call_text
    try:
        for spec in tools or []:
            tool_class(spec)
    except KeyError as e:
        raise UserError(str(e.args[0])) from None
    known = available_tools()
    no_input = [name for name in known if not tool_class(name).takes_input]
    try:
        parsed = parse_call(text, known_tools=known, no_input_tools=no_input)
    except CallSyntaxError as e:
        hint = f" (available tools: {', '.join(known)})" if "unknown_tool" in str(e) else ""
        raise UserError(f"not a well-formed call: {e}{hint}") from None
    if parsed.tool in ("WikiSearch", "QA") and index is None:
        raise UserError(f"{parsed.tool} needs --index DIR (build one with `toolformer index`)")
    config = {
        "Calculator": {"isolate": isolate},
        "WikiSearch": {"index": index},
        "QA": {"index": index, "model": model},
        "MT": {"model_dir": mt_model},
    }.get(parsed.tool, {})
    context = CallContext(date=_parse_date(date) or dt.date.today())
    outcome = ToolExecutor({parsed.tool: get_tool(parsed.tool, **config)}).execute(
        parsed.tool, parsed.input, context
    )
    if not outcome.ok:
        print(f"toolformer call: {parsed.tool} failed ({outcome.error}): {outcome.message}", file=sys.stderr)
        return 1
    print(outcome.result)
    return 0


def index(
    input: str | None = None,
    output: str | None = None,
    text_field: str = "text",
    id_field: str = "id",
    title_field: str = "title",
    filter: str | None = None,
    overwrite: bool = False,
) -> int:
    """Build the WikiSearch BM25 index from passage files.

    Args:
        input: glob of passage files: .jsonl[.gz], .parquet, .txt (a passage per line) or a saved
            HF dataset directory.
        output: directory to write the index to.
        text_field: record field with the passage text.
        id_field: record field with the passage id (records without one get their number).
        title_field: record field with the title (indexed with the text; optional).
        filter: keep only records whose FIELD equals VALUE, e.g. split=store.
        overwrite: replace an existing index at --output.
    """
    from tools.wikisearch import InputError, build_index, parse_filter, read_passages

    if not input or not output:
        raise UserError("both --input GLOB and --output DIR are required")
    out = Path(output)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists (pass --overwrite to replace it)")
    # Build next to the target and rename at the end: an interrupted build never looks finished.
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    problems: list[str] = []
    start = time.perf_counter()
    try:
        passages = read_passages(input, text_field, id_field, title_field, parse_filter(filter), problems)
        build_index(passages, tmp, source=input)
    except InputError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(str(e)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    from tools.wikisearch import BM25Index

    meta = BM25Index(out).meta
    print(
        f"indexed {meta['passages']} passages ({meta['terms']} terms) in {time.perf_counter() - start:.1f} s "
        f"-> {out}; skipped {len(problems)} bad records"
    )
    return 0
