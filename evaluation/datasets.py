"""Evaluation sets read from local files in their published formats.

Math word problems: SVAMP (JSON list of ``ID``/``Body``/``Question``/``Equation``/``Answer``/``Type``),
ASDiv (``ASDiv.xml``, ``Problem`` elements with ``Body``/``Question``/``Answer`` like ``9 (apples)``),
MAWPS (the original JSON with ``sQuestion``/``lSolutions``, and the common JSONL ``{"input",
"target"}``), GSM8K (JSONL ``question``/``answer`` ending in ``#### n``) and any JSONL with named
question and answer fields. Fact cloze: LAMA-style JSONL (``prefix``/``obj_label``/``mask_is_final``
as in ``lama_cloze_all.jsonl.gz``, or LAMA's raw ``masked_sentences``/``obj_label``). Dates: the
JSONL written from :mod:`evaluation.dates` (``question``/``answer``/``kind``/``today``). Open-domain
questions (``--task qa``, the paper's Table 5): NQ-open JSONL (``question``, ``answer``: a list) and
WebQuestions (a JSON list of ``qText``/``answers``, or the original ``utterance``/``targetValue``).
Perplexity: plain text, or JSONL with a ``text`` field. ``.gz`` files are read transparently.

A malformed file or record (invalid JSON or XML, a missing field) raises :class:`UserError` naming
the file and the record: a silently shortened test set would change the accuracy. Records that are
well formed but outside the task's protocol (a gold answer that is not one number, a cloze mask that
is not at the end) are skipped and listed in ``LoadedData.skipped``.

Used by ``toolformer evaluate --task math --data PATH [--format auto|svamp|asdiv|mawps|gsm8k|jsonl]``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolformer.errors import UserError
from evaluation.scoring import parse_gold_number

MATH_FORMATS = ("svamp", "asdiv", "mawps", "gsm8k", "jsonl")
FORMATS_BY_TASK = {
    "math": MATH_FORMATS,
    "cloze": ("lama", "jsonl"),
    "dates": ("dates",),
    "qa": ("jsonl", "webquestions"),
    "perplexity": ("text", "jsonl"),
}
ALL_FORMATS = ("auto", "svamp", "asdiv", "mawps", "gsm8k", "jsonl", "lama", "dates", "webquestions", "text")


@dataclasses.dataclass(frozen=True)
class Example:
    """One evaluation item. ``question`` goes into the task's prompt template."""

    id: str
    question: str
    answers: tuple[str, ...]  # gold answers as written in the data
    gold_number: float | None = None  # math: the gold answer as a number
    kind: str | None = None  # dates: the kind of answer (see scoring.extract_date_answer)
    today: dt.date | None = None  # dates: the "today" the question is about
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class LoadedData:
    path: str
    format: str
    examples: list[Example]
    skipped: list[str]  # "record 12: answer '3:4' is not a single number"


def _open_text(path: Path):
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line; a bad line raises a UserError naming it."""
    with _open_text(path) as f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}: record {n}: invalid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(record, dict):
                    raise UserError(f"{path}: record {n}: expected a JSON object, got {type(record).__name__}")
                yield n, record
        except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as e:
            raise UserError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def read_json_list(path: Path) -> list[dict]:
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of problems, got {type(data).__name__}")
    for n, record in enumerate(data, 1):
        if not isinstance(record, dict):
            raise UserError(f"{path}: record {n}: expected a JSON object, got {type(record).__name__}")
    return data


def _field(record: dict, name: str, path: Path, where: str, types: tuple[type, ...] = (str,)) -> Any:
    if name not in record:
        raise UserError(f"{path}: {where}: missing field {name!r} (has: {', '.join(sorted(record)) or 'none'})")
    value = record[name]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise UserError(f"{path}: {where}: field {name!r} should be "
                        f"{' or '.join(t.__name__ for t in types)}, got {type(value).__name__}")
    return value


def _math_example(ex_id: str, question: str, gold: Any, where: str, skipped: list[str],
                  meta: dict | None = None) -> Example | None:
    number = parse_gold_number(gold)
    if number is None:
        skipped.append(f"{where}: answer {str(gold)[:40]!r} is not a single number")
        return None
    return Example(ex_id, " ".join(question.split()), (str(gold),), gold_number=number, meta=meta or {})


def load_svamp(path: Path) -> LoadedData:
    examples, skipped = [], []
    for n, rec in enumerate(read_json_list(path), 1):
        where = f"record {n}"
        body = _field(rec, "Body", path, where)
        question = _field(rec, "Question", path, where)
        answer = _field(rec, "Answer", path, where, (int, float, str))
        ex = _math_example(str(rec.get("ID", n)), f"{body.strip()} {question.strip()}", answer, where, skipped,
                           {"type": rec.get("Type")})
        if ex:
            examples.append(ex)
    return LoadedData(str(path), "svamp", examples, skipped)


def load_asdiv(path: Path) -> LoadedData:
    try:
        with _open_text(path) as f:
            root = ET.parse(f).getroot()
    except ET.ParseError as e:
        raise UserError(f"{path}: invalid XML ({e})") from None
    problems = list(root.iter("Problem"))
    if not problems:
        raise UserError(f"{path}: no <Problem> elements (is this ASDiv.xml?)")
    examples, skipped = [], []
    for n, problem in enumerate(problems, 1):
        pid = problem.get("ID", str(n))
        where = f"Problem {n} (ID={pid})"
        parts = {}
        for tag in ("Body", "Question", "Answer"):
            element = problem.find(tag)
            if element is None or element.text is None:
                raise UserError(f"{path}: {where}: missing <{tag}>")
            parts[tag] = element.text.strip()
        solution_type = problem.findtext("Solution-Type")
        ex = _math_example(pid, f"{parts['Body']} {parts['Question']}", parts["Answer"], where, skipped,
                           {"type": solution_type.strip() if solution_type else None})
        if ex:
            examples.append(ex)
    return LoadedData(str(path), "asdiv", examples, skipped)


def load_mawps(path: Path) -> LoadedData:
    """The original MAWPS JSON (``sQuestion``, ``lSolutions``) or the JSONL ``{"input", "target"}``."""
    examples, skipped = [], []
    if _is_jsonl(path):
        for n, rec in iter_jsonl(path):
            where = f"record {n}"
            question = _field(rec, "input", path, where)
            target = _field(rec, "target", path, where, (int, float, str))
            ex = _math_example(str(rec.get("idx", n)), question, target, where, skipped, {"type": rec.get("type")})
            if ex:
                examples.append(ex)
        return LoadedData(str(path), "mawps", examples, skipped)
    for n, rec in enumerate(read_json_list(path), 1):
        where = f"record {n}"
        question = _field(rec, "sQuestion", path, where)
        solutions = _field(rec, "lSolutions", path, where, (list,))
        if len(solutions) != 1:
            # Equation systems have one solution per unknown; "the" answer is not defined.
            skipped.append(f"{where}: {len(solutions)} solutions, expected one")
            continue
        ex = _math_example(str(rec.get("iIndex", n)), question, solutions[0], where, skipped)
        if ex:
            examples.append(ex)
    return LoadedData(str(path), "mawps", examples, skipped)


def load_gsm8k(path: Path) -> LoadedData:
    examples, skipped = [], []
    for n, rec in iter_jsonl(path):
        where = f"record {n}"
        question = _field(rec, "question", path, where)
        answer = _field(rec, "answer", path, where)
        if "####" not in answer:
            raise UserError(f"{path}: {where}: answer has no final '#### n' line")
        final = answer.rsplit("####", 1)[1].strip()
        ex = _math_example(str(rec.get("id", n)), question, final, where, skipped)
        if ex:
            examples.append(ex)
    return LoadedData(str(path), "gsm8k", examples, skipped)


def load_jsonl(path: Path, task: str, question_field: str = "question", answer_field: str = "answer"
               ) -> LoadedData:
    """Any JSONL with a question field and an answer field (a number, a string or a list of strings)."""
    examples, skipped = [], []
    for n, rec in iter_jsonl(path):
        where = f"record {n}"
        question = _field(rec, question_field, path, where)
        answer = _field(rec, answer_field, path, where, (int, float, str, list))
        ex_id = str(rec.get("id", n))
        if task == "math":
            ex = _math_example(ex_id, question, answer, where, skipped)
            if ex:
                examples.append(ex)
            continue
        answers = tuple(str(a) for a in answer) if isinstance(answer, list) else (str(answer),)
        if not answers or not all(a.strip() for a in answers):
            raise UserError(f"{path}: {where}: field {answer_field!r} has an empty answer")
        examples.append(Example(ex_id, question.strip(), answers))
    return LoadedData(str(path), "jsonl", examples, skipped)


MASK = "[MASK]"


def load_lama(path: Path, final_mask_only: bool = True) -> LoadedData:
    """LAMA-style cloze items; ``question`` is the text before the mask.

    The paper keeps only items whose mask is the final token (a trailing " ." allowed), since a
    left-to-right model cannot see text after the mask: ``final_mask_only`` does the same.
    """
    examples, skipped = [], []
    for n, rec in iter_jsonl(path):
        where = f"record {n}"
        label = _field(rec, "obj_label", path, where)
        meta = {k: rec[k] for k in ("subset", "relation", "sub_label") if k in rec}
        if "prefix" in rec:
            prefix = _field(rec, "prefix", path, where)
            final = _field(rec, "mask_is_final", path, where, (bool,)) if "mask_is_final" in rec else True
        else:
            sentences = _field(rec, "masked_sentences", path, where, (list,))
            if not sentences or not isinstance(sentences[0], str):
                raise UserError(f"{path}: {where}: masked_sentences must hold at least one sentence")
            if sentences[0].count(MASK) != 1:  # LAMA's SQuAD has a few ("[MASK]ians ... [MASK].")
                skipped.append(f"{where}: {sentences[0].count(MASK)} masks, expected one")
                continue
            prefix, suffix = sentences[0].split(MASK)
            final = suffix.strip() in ("", ".")
        if final_mask_only and not final:
            skipped.append(f"{where}: the mask is not the final token")
            continue
        if not prefix.strip():
            skipped.append(f"{where}: nothing before the mask")
            continue
        examples.append(Example(str(rec.get("id", n)), prefix.strip(), (label,), meta=meta))
    return LoadedData(str(path), "lama", examples, skipped)


def load_dates(path: Path) -> LoadedData:
    """Date questions saved as JSONL ``{"question", "answer", "kind", "today": "YYYY-MM-DD"}``."""
    examples = []
    for n, rec in iter_jsonl(path):
        where = f"record {n}"
        question = _field(rec, "question", path, where)
        answer = _field(rec, "answer", path, where)
        kind = _field(rec, "kind", path, where)
        try:
            today = dt.date.fromisoformat(_field(rec, "today", path, where))
        except ValueError:
            raise UserError(f"{path}: {where}: field 'today' is not a YYYY-MM-DD date") from None
        examples.append(Example(str(rec.get("id", n)), question, (answer,), kind=kind, today=today,
                                meta={"template": rec.get("template")}))
    return LoadedData(str(path), "dates", examples, [])


_WQ_DESCRIPTION = re.compile(r'\(description (?:"((?:[^"\\]|\\.)*)"|([^()"]+))\)')


def load_webquestions(path: Path) -> LoadedData:
    """WebQuestions: a JSON list of ``{"qId", "qText", "answers": [...]}`` (the common re-release) or of
    the original ``{"utterance", "targetValue": "(list (description X) ...)"}``."""
    examples = []
    for n, rec in enumerate(read_json_list(path), 1):
        where = f"record {n}"
        if "qText" in rec:
            question = _field(rec, "qText", path, where)
            answers = _field(rec, "answers", path, where, (list,))
        else:
            question = _field(rec, "utterance", path, where)
            target = _field(rec, "targetValue", path, where)
            # the original's quoted descriptions escape their quotes: (description "The \"Big\" One")
            answers = [a.replace('\\"', '"') or b for a, b in _WQ_DESCRIPTION.findall(target)]
        answers = tuple(str(a).strip() for a in answers)
        if not answers or not all(answers):
            raise UserError(f"{path}: {where}: no answers (or an empty one)")
        examples.append(Example(str(rec.get("qId", n)), question.strip(), answers))
    return LoadedData(str(path), "webquestions", examples, [])


def _first_record(path: Path) -> dict:
    if _is_jsonl(path):
        for _, rec in iter_jsonl(path):
            return rec
        raise UserError(f"{path}: the file has no records")
    data = read_json_list(path)
    if not data:
        raise UserError(f"{path}: the file has no records")
    return data[0]


def detect_format(path: str | Path, task: str) -> str:
    """Guess a file's format from its name and its first record's fields."""
    path = Path(path)
    name = path.name.lower()
    if task == "perplexity":
        return "jsonl" if _is_jsonl(path) else "text"
    if name.endswith((".xml", ".xml.gz")):
        return "asdiv"
    if not name.endswith((".json", ".json.gz", ".jsonl", ".jsonl.gz")):
        raise UserError(f"cannot detect the format of {path} from its name; pass --format")
    keys = set(_first_record(path))
    if {"Body", "Question", "Answer"} <= keys:
        return "svamp"
    if {"sQuestion", "lSolutions"} <= keys or {"input", "target"} <= keys:
        return "mawps"
    if {"obj_label"} <= keys and ({"prefix"} <= keys or {"masked_sentences"} <= keys):
        return "lama"
    if {"qText", "answers"} <= keys or {"utterance", "targetValue"} <= keys:
        return "webquestions"
    if {"question", "answer", "kind", "today"} <= keys:
        return "dates"
    if {"question", "answer"} <= keys and _is_jsonl(path):
        first = _first_record(path)
        return "gsm8k" if isinstance(first["answer"], str) and "####" in first["answer"] else "jsonl"
    if _is_jsonl(path):
        return "jsonl"  # named fields come from --question-field/--answer-field
    raise UserError(f"cannot detect the format of {path} (first record has fields "
                    f"{', '.join(sorted(keys))}); pass --format")


def load_examples(path: str | Path, task: str, format: str = "auto", question_field: str = "question",
                  answer_field: str = "answer") -> LoadedData:
    """Read an evaluation set for ``task`` (math, cloze, dates or qa) in ``format`` (or detect it)."""
    path = Path(path)
    fmt = detect_format(path, task) if format == "auto" else format
    if fmt not in FORMATS_BY_TASK[task]:
        raise UserError(f"--format {fmt} does not fit --task {task} (use one of "
                        f"{', '.join(FORMATS_BY_TASK[task])}) for {path}")
    if fmt == "jsonl":
        return load_jsonl(path, task, question_field, answer_field)
    loader = {"svamp": load_svamp, "asdiv": load_asdiv, "mawps": load_mawps, "gsm8k": load_gsm8k,
              "lama": load_lama, "dates": load_dates, "webquestions": load_webquestions}[fmt]
    return loader(path)


def load_text(path: str | Path, format: str = "auto", text_field: str = "text") -> str:
    """Held-out text for perplexity: a plain text file, or JSONL documents joined by blank lines."""
    path = Path(path)
    fmt = detect_format(path, "perplexity") if format == "auto" else format
    if fmt not in FORMATS_BY_TASK["perplexity"]:
        raise UserError(f"--format {fmt} does not fit --task perplexity (use text or jsonl) for {path}")
    if fmt == "jsonl":
        return "\n\n".join(_field(rec, text_field, path, f"record {n}") for n, rec in iter_jsonl(path))
    with _open_text(path) as f:
        try:
            return f.read()
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e})") from None
