"""Export a finished augment run for other tools: ``toolformer export RUN --format trl|text|hf --output DIR``.

``RUN`` is a finished ``toolformer augment`` (or ``refilter``) run directory, a local path or any Beam
file system URL (its ``texts-*.jsonl`` shards are read through :mod:`toolformer.runs`; ``_SUCCESS``
must be there). ``DIR`` is a new (or empty) local directory; it is written next to it under a
temporary name and renamed into place at the end, so a failed export leaves nothing behind.

Formats
-------

``text``: ``DIR/data.jsonl``, one ``{"text": ...}`` per document: the text with its calls inline,
``[Calculator(400 / 1400) -> 0.29]``, as ``toolformer finetune`` trains on it.

``hf``: a ``datasets`` directory (``Dataset.save_to_disk``) with typed features::

    text     string                 the text with its calls inline
    doc_id   string                 the document's id in the run
    calls    list of {tool: string, input: string, result: string, position: int64}

``position`` is the call's character offset in the *original* document (the text with its calls
removed, :func:`toolformer.call_format.strip_calls`), as in the run's own ``calls`` field; the
call is inserted there with one leading space. ``DIR/README.md`` is a dataset card: the source run,
the model and settings (from the run's ``run.json``), the kept calls per tool and the licence of
the input (``--license``). To publish: upload the card first, then the data (``push_to_hub`` keeps
an existing card and adds its ``dataset_info`` to it)::

    huggingface_hub.create_repo(REPO, repo_type="dataset", exist_ok=True)
    huggingface_hub.upload_file(path_or_fileobj="DIR/README.md", path_in_repo="README.md",
                                repo_id=REPO, repo_type="dataset")
    datasets.load_from_disk("DIR").push_to_hub(REPO)

``toolformer finetune --data DIR`` reads such a directory (its ``text`` column).

``trl``: a ``datasets`` directory for TRL's ``SFTTrainer`` as is (conversational language
modelling with tools), plus the same rows as plain JSON in ``DIR/data.jsonl``. Columns:
``messages`` (a list of chat messages), ``tools`` (JSON-schema function descriptions, the chat
template ``tools=`` argument; TRL passes the column on) and ``doc_id``. Both ``messages`` and
``tools`` are stored as ``List(Json())``, so each message reads back exactly as written (no
``None``-valued keys that a chat template would see as present).

How a document maps onto turns. Toolformer's texts are plain language modelling: the model writes
the document and calls a tool where the call helps, mid-sentence. So the whole document is the
assistant's, and there is no user turn (nothing in the data is a prompt)::

    "Out of 1400 participants, 400 (or [Calculator(400 / 1400) -> 0.29] 29%) passed the test."

    {"role": "assistant", "content": "Out of 1400 participants, 400 (or",
     "tool_calls": [{"id": "call_0", "type": "function",
                     "function": {"name": "Calculator", "arguments": {"expression": "400 / 1400"}}}]}
    {"role": "tool", "tool_call_id": "call_0", "name": "Calculator", "content": "0.29"}
    {"role": "assistant", "content": " 29%) passed the test."}

* The text before a call is the content of an assistant turn that holds the call in
  ``tool_calls`` (the one space the call was inserted with is not part of it); the result is the
  next ``tool`` turn; the next assistant turn continues the text right after the call, its leading
  space kept. Each further call repeats the pattern, one call per assistant turn (calls are
  sequential in the text: the second is written after the first result).
* Concatenating the assistant contents gives back the original document exactly
  (``strip_calls(text)``); a call at the very start gives an empty first content, a call at the end
  an empty last assistant turn (the model learns to end the document after the result).
* A document without calls is a single assistant turn.
* ``arguments`` is the tool's one input under its parameter name: ``Calculator(expression)``,
  ``WikiSearch(query)``, ``QA(question)``, ``MT(text)``, ``Calendar()`` (no arguments); a tool of
  another name gets one string parameter ``input``.
* ``tools`` lists, on every row, every tool that has a call anywhere in the export: the model may
  call any of them at any point (in Toolformer it decides where a call helps), so a row without
  calls still shows the tools it chose not to use.
* A call without a result (never in a run's texts) cannot become a call/response pair and is left
  out of ``trl`` rows (its text is removed, as ``strip_calls`` does); ``text`` and ``hf`` keep
  the text verbatim.

The chat template decides how these turns are rendered; it needs tool support (``tool_calls`` in
assistant turns, ``tool`` turns) and must accept a conversation that starts with an assistant turn
(templates that enforce user/assistant alternation do not). ``--only-with-calls`` keeps only the
documents that hold at least one call (all formats).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolformer import runs
from toolformer.call_format import DEFAULT_FORMAT, EMPTY_INPUT, OK, iter_calls
from toolformer.errors import UserError

FORMATS = ("trl", "text", "hf")
DEFAULT_LICENSE = "unknown — set --license"
JSONL_NAME = "data.jsonl"
CARD_NAME = "README.md"

# name -> (description, [(parameter, description)]): the JSON-schema function descriptions of ``trl``.
TOOL_SCHEMAS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "Calculator": ("Evaluate an arithmetic expression (+, -, *, / and parentheses) and return its value.",
                   [("expression", "the arithmetic expression, e.g. 400 / 1400")]),
    "WikiSearch": ("Search a Wikipedia-like passage corpus (BM25) and return the best passage.",
                   [("query", "the search terms")]),
    "Calendar": ("Return today's date, e.g. 'Today is Monday, January 30, 2023.'", []),
    "QA": ("Answer a factual question in a few words.", [("question", "the question")]),
    "MT": ("Translate a phrase into English.", [("text", "the phrase to translate")]),
}
GENERIC_PARAMETER = ("input", "the tool's input")


def tool_parameters(tool: str) -> list[tuple[str, str]]:
    return TOOL_SCHEMAS[tool][1] if tool in TOOL_SCHEMAS else [GENERIC_PARAMETER]


def tool_schema(tool: str) -> dict[str, Any]:
    """The JSON-schema function description of ``tool`` (chat-template ``tools=`` style)."""
    description = TOOL_SCHEMAS[tool][0] if tool in TOOL_SCHEMAS else f"The {tool} tool."
    params = tool_parameters(tool)
    return {"type": "function", "function": {
        "name": tool, "description": description,
        "parameters": {"type": "object",
                       "properties": {p: {"type": "string", "description": d} for p, d in params},
                       "required": [p for p, _ in params]}}}


def call_arguments(tool: str, input: str) -> dict[str, str]:
    """The call's input under the tool's parameter name (``{}`` for a tool without parameters)."""
    params = tool_parameters(tool)
    if not params:
        return {GENERIC_PARAMETER[0]: input} if input else {}
    return {params[0][0]: input}


# --- Parsing a run's text ----------------------------------------------------------------------


@dataclass
class Call:
    tool: str
    input: str
    result: str | None
    position: int  # character offset in the original document (the text without its calls)


@dataclass
class Document:
    """One text record of the run, split at its calls: ``pieces[i]`` is the original text before
    ``calls[i]`` (``len(pieces) == len(calls) + 1``)."""

    text: str
    doc_id: str | None
    pieces: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    @property
    def n_calls(self) -> int:
        return sum(c.result is not None for c in self.calls)


def split_document(text: str, doc_id: str | None = None) -> Document:
    """Split ``text`` at its well-formed calls (the same calls :func:`strip_calls` removes)."""
    doc = Document(text, doc_id)
    last, original = 0, 0
    for call in iter_calls(text, DEFAULT_FORMAT):
        if call.status not in (OK, EMPTY_INPUT):
            continue
        start, end = call.span
        if start > 0 and text[start - 1] == " ":
            start -= 1  # the space the call was inserted with
        piece = text[last:start]
        original += len(piece)
        doc.pieces.append(piece)
        doc.calls.append(Call(call.tool, call.input, call.result, original))
        last = end
    doc.pieces.append(text[last:])
    return doc


def trl_messages(doc: Document) -> list[dict[str, Any]]:
    """The document as chat turns (see the module docstring)."""
    messages: list[dict[str, Any]] = []
    content = ""
    for piece, call in zip(doc.pieces, doc.calls):
        content += piece
        if call.result is None:  # no response to pair it with: left out, its text goes on
            continue
        call_id = f"call_{len(messages) // 2}"
        messages.append({"role": "assistant", "content": content, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": call.tool, "arguments": call_arguments(call.tool, call.input)}}]})
        messages.append({"role": "tool", "tool_call_id": call_id, "name": call.tool, "content": call.result})
        content = ""
    messages.append({"role": "assistant", "content": content + doc.pieces[-1]})
    return messages


# --- Reading the run ---------------------------------------------------------------------------


@dataclass
class Run:
    path: str
    documents: list[Document]
    settings: dict | None  # run.json (a refiltered run has none)
    stats: dict | None


def _json_lines(path: str) -> Iterator[dict]:
    """The text records of one texts shard; a bad line stops the export, naming it."""
    try:
        for n, row, problem in runs.json_lines(path):
            if problem is None and not isinstance(row.get("text"), str):
                problem = "not a text record (no string field 'text')"
            if problem is not None:
                raise UserError(f"{path} line {n}: {problem}")
            yield row
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz shard
        raise UserError(f"{path}: {e}") from None


def read_run(run: str) -> Run:
    """The documents of a finished run, in shard order (a :class:`UserError` if it is not one)."""
    if not runs.is_remote(run) and not os.path.isdir(run):
        raise UserError(f"RUN {run}: no such directory")
    try:
        finished = runs.is_complete(run)
    except ValueError as e:  # a URL scheme without an installed Beam file system
        raise UserError(f"RUN {run}: {e}") from None
    if not finished:
        raise UserError(f"RUN {run} is not a finished augment run (no {runs.SUCCESS})")
    shards = runs.shards(run, "texts")
    if not shards:
        raise UserError(f"RUN {run} has no texts-*.jsonl shards; is it an augment run directory?")
    documents = []
    for path in sorted(shards):
        for row in _json_lines(path):
            doc_id = row.get("doc_id")
            documents.append(split_document(row["text"], None if doc_id is None else str(doc_id)))
    meta = {}
    for name in ("run.json", "stats.json"):
        path = runs.join(run, name)
        try:
            meta[name] = runs.read_json(path) if runs.exists(path) else None
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot read it ({e})") from None
    return Run(run, documents, meta["run.json"], meta["stats.json"])


# --- Writing -----------------------------------------------------------------------------------


def hf_features():
    from datasets import Features, List, Value

    return Features({
        "text": Value("string"),
        "doc_id": Value("string"),
        "calls": List({"tool": Value("string"), "input": Value("string"), "result": Value("string"),
                       "position": Value("int64")}),
    })


def trl_features():
    from datasets import Features, Json, List, Value

    return Features({"messages": List(Json()), "tools": List(Json()), "doc_id": Value("string")})


def hf_rows(documents: list[Document]) -> list[dict]:
    return [{"text": d.text, "doc_id": d.doc_id,
             "calls": [{"tool": c.tool, "input": c.input, "result": c.result, "position": c.position}
                       for c in d.calls]}
            for d in documents]


def used_tools(documents: list[Document]) -> list[str]:
    """Tools with a call (with result) in ``documents``: the known ones in a fixed order, then others."""
    seen = {c.tool for d in documents for c in d.calls if c.result is not None}
    return [t for t in TOOL_SCHEMAS if t in seen] + sorted(seen - set(TOOL_SCHEMAS))


def trl_rows(documents: list[Document]) -> list[dict]:
    tools = [tool_schema(t) for t in used_tools(documents)]
    return [{"messages": trl_messages(d), "tools": tools, "doc_id": d.doc_id} for d in documents]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _save(rows: list[dict], features, out: Path) -> None:
    import datasets

    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a clean screen: the export prints its own summary
    try:
        datasets.Dataset.from_list(rows, features=features).save_to_disk(str(out))
    finally:
        if bars:
            datasets.enable_progress_bars()


def kept_calls(documents: list[Document]) -> dict[str, int]:
    counts = Counter(c.tool for d in documents for c in d.calls if c.result is not None)
    return {t: counts[t] for t in used_tools(documents)}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "n>10M"


def dataset_card(run: Run, documents: list[Document], license: str, only_with_calls: bool) -> str:
    """The ``hf`` export's README.md: metadata for the Hub, then what the data is and where it came from."""
    settings, kept = run.settings, kept_calls(documents)
    licence_id = "unknown" if license == DEFAULT_LICENSE else license
    name = os.path.basename(run.path.rstrip("/")) or run.path
    lines = [
        "---",
        f"license: {json.dumps(licence_id, ensure_ascii=False)}",
        f"pretty_name: {json.dumps(f'Toolformer-augmented texts ({name})', ensure_ascii=False)}",
        "task_categories:", "- text-generation",
        "tags:", "- toolformer", "- tool-use",
        "size_categories:", f"- {_size_category(len(documents))}",
        "---", "",
        f"# Toolformer-augmented texts ({name})", "",
        "Documents with the API calls that a language model sampled into them and that made the text after "
        "them easier to predict (Toolformer, Schick et al. 2023, arXiv:2302.04761), written inline as "
        "`[Tool(input) -> result]`.", "",
        "## Source", "",
        f"- run: `{run.path}`",
    ]
    if settings is not None:
        lines += [f"- model: `{settings.get('model')}`",
                  f"- tools: {', '.join(settings.get('tools') or []) or '(none)'}",
                  f"- seed: {settings.get('seed')}"]
    elif run.stats and run.stats.get("source"):
        lines += [f"- re-filtered from `{run.stats['source']}` with tau_f "
                  f"{json.dumps(run.stats.get('tau_f', {}), sort_keys=True)} (no run.json of its own)"]
    else:
        lines += ["- settings: not recorded (the run has no run.json)"]
    lines += [f"- documents: {len(documents)}, {sum(bool(d.n_calls) for d in documents)} with at least one call"
              + (" (only documents with calls were exported)" if only_with_calls else ""), ""]
    lines += ["## Kept calls per tool", "", "| tool | calls |", "|---|---:|"]
    lines += [f"| {tool} | {n} |" for tool, n in kept.items()] or ["| (none) | 0 |"]
    lines += [f"| total | {sum(kept.values())} |", ""]
    if settings is not None:
        lines += ["## Settings (run.json)", "", "```json", json.dumps(settings, indent=2, sort_keys=True), "```", ""]
    lines += [
        "## Licence", "",
        f"Licence of the input documents: **{license}**. These texts are those documents with tool calls "
        "and tool results inserted; the input's licence applies to them.", "",
        "## Fields", "",
        "- `text`: the document with its calls inline, `[Tool(input) -> result]`",
        "- `doc_id`: the document's id in the run",
        "- `calls`: the calls as data: `tool`, `input`, `result` and `position`, the character offset in the "
        "original document (the text without its calls) where the call was inserted with one leading space", "",
        "Load it with `datasets.load_from_disk(DIR)`; `toolformer finetune --data DIR` trains on it.", "",
    ]
    return "\n".join(lines)


def _check_output(output: str) -> Path:
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.get_scheme(output) is not None:
        raise UserError(f"--output {output}: must be a local directory")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {output} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--output {output} already exists and is not empty; choose a new directory")
    return out


def export(run: str, format: str | None = None, output: str | None = None, license: str = DEFAULT_LICENSE,
           only_with_calls: bool = False) -> int:
    """Export a finished augment run for other tools: TRL's SFTTrainer, plain text or a Hugging Face dataset.

    Args:
        run: a finished augment (or refilter) run directory (holds _SUCCESS); a local path or a Beam
            file system URL.
        format: trl (chat messages with tool calls and tool turns, for TRL's SFTTrainer), text
            (data.jsonl, one {"text": ...} per line) or hf (a datasets directory with typed
            text/doc_id/calls and a dataset card README.md).
        output: a new or empty local directory for the export.
        license: licence of the input documents, for the hf dataset card (e.g. cc-by-sa-4.0).
        only_with_calls: export only the documents that hold at least one call.
    """
    if format not in FORMATS:
        given = "missing" if format is None else repr(format)
        raise UserError(f"--format {given}: choose one of {', '.join(FORMATS)}")
    if not output:
        raise UserError("--output DIR is required")
    out = _check_output(output)
    src = read_run(run.rstrip("/") if "://" in run else os.path.normpath(run))
    documents = [d for d in src.documents if d.n_calls] if only_with_calls else src.documents
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{uuid.uuid4().hex[:12]}"  # renamed to DIR when complete
    tmp.mkdir()
    try:
        if format == "text":
            _write_jsonl(tmp / JSONL_NAME, [{"text": d.text} for d in documents])
        elif format == "hf":
            _save(hf_rows(documents), hf_features(), tmp)
            (tmp / CARD_NAME).write_text(dataset_card(src, documents, license, only_with_calls), encoding="utf-8")
        else:
            rows = trl_rows(documents)
            _save(rows, trl_features(), tmp)
            _write_jsonl(tmp / JSONL_NAME, rows)
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = {"format": format, "output": str(out), "documents": len(documents),
               "documents_with_calls": sum(bool(d.n_calls) for d in documents), "calls": kept_calls(documents)}
    print(json.dumps(summary, ensure_ascii=False))
    return 0
