"""Reading input documents (JSONL, Parquet, text, a saved HF dataset) into plain records.

Plain functions, called by the pipeline's ``ReadDocs`` step (``toolformer augment``) and by tests.
A document is ``{"doc_id", "text", **metadata}``. Every record that cannot become a document
becomes a dead letter ``{"doc_id", "stage": "read", "reason", "detail"}`` naming its file and
line; it never stops the run.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolformer.call_format import neutralize

MAX_DOC_CHARS = 100_000  # longer texts are truncated (counted in docs_truncated); windows do the rest
DOC = "doc"
ERROR = "error"


def dead_letter(doc_id: str | None, stage: str, reason: str, detail: str) -> dict[str, Any]:
    return {"doc_id": doc_id, "stage": stage, "reason": reason, "detail": detail[:500]}


def content_id(text: str) -> str:
    return "sha1-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def make_document(record: Any, where: str, text_field: str = "text") -> tuple[str, dict[str, Any]]:
    """``(DOC, document)`` or ``(ERROR, dead letter)`` for one input record found at ``where``.

    The id is the record's ``doc_id`` or ``id`` field, else a hash of its text (stable across
    runs and machines). The text is neutralised (``[``, ``]``, arrows replaced) so a document can
    never contain or fake a call; positions in the outputs refer to the neutralised text.
    """
    if not isinstance(record, dict):
        return ERROR, dead_letter(None, "read", "not_an_object", f"{where}: expected a JSON object")
    given_id = record.get("doc_id", record.get("id"))
    doc_id = str(given_id) if given_id is not None else None
    text = record.get(text_field)
    if text is None:
        return ERROR, dead_letter(doc_id, "read", "missing_text", f"{where}: no {text_field!r} field")
    if not isinstance(text, str):
        return ERROR, dead_letter(
            doc_id, "read", "text_not_a_string", f"{where}: {text_field!r} is {type(text).__name__}"
        )
    if not text.strip():
        return ERROR, dead_letter(doc_id, "read", "empty_text", f"{where}: {text_field!r} is empty")
    if "\x00" in text:
        return ERROR, dead_letter(doc_id, "read", "nul_bytes", f"{where}: text contains NUL bytes")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return ERROR, dead_letter(doc_id, "read", "invalid_unicode", f"{where}: lone surrogates in text")
    truncated = len(text) > MAX_DOC_CHARS
    text = neutralize(text[:MAX_DOC_CHARS])
    meta = {k: _plain(v) for k, v in record.items() if k not in (text_field, "doc_id", "text", "calls")}
    doc = {**meta, "doc_id": doc_id or content_id(text), "text": text}
    if truncated:
        doc["truncated"] = True
    return DOC, doc


def _plain(value: Any) -> Any:
    """Metadata as JSON-ready values (Parquet gives dates and numpy types)."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def _lines(path: str, data: bytes) -> Iterator[tuple[int, bytes]]:
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    yield from enumerate(io.BytesIO(data), start=1)


def read_records(
    path: str, data: bytes | None = None, text_field: str = "text"
) -> Iterator[tuple[str, dict]]:
    """Every document or dead letter of one input file (or saved HF dataset directory).

    ``.jsonl``/``.json`` (optionally ``.gz``): one JSON object per line. ``.parquet``: one row per
    document. ``.txt`` (optionally ``.gz``): one document per non-empty line, id = file name and
    line. A directory holding ``dataset_info.json``: a dataset saved by ``datasets.save_to_disk``.
    """
    name = Path(path).name
    if Path(path).is_dir():
        yield from _read_hf_dataset(path, text_field)
        return
    if data is None:
        data = Path(path).read_bytes()
    stem = path.removesuffix(".gz")
    if stem.endswith(".parquet"):
        yield from _read_parquet(path, data, text_field)
    elif stem.endswith((".jsonl", ".json", ".ndjson")):
        for n, raw in _lines(path, data):
            where = f"{name} line {n}"
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield ERROR, dead_letter(None, "read", "invalid_utf8", f"{where}: not UTF-8")
                continue
            except ValueError as e:
                yield ERROR, dead_letter(None, "read", "invalid_json", f"{where}: {e}")
                continue
            yield make_document(record, where, text_field)
    elif stem.endswith(".txt"):
        for n, raw in _lines(path, data):
            where = f"{name} line {n}"
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                yield ERROR, dead_letter(None, "read", "invalid_utf8", f"{where}: not UTF-8")
                continue
            if line.strip():
                yield make_document({"doc_id": f"{name}:{n}", text_field: line}, where, text_field)
    else:
        yield (
            ERROR,
            dead_letter(
                None,
                "read",
                "unknown_format",
                f"{name}: expected .jsonl, .json, .parquet or .txt (optionally .gz)",
            ),
        )


def _read_parquet(path: str, data: bytes, text_field: str) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    name = Path(path).name
    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001  (pyarrow raises several types for a corrupt file)
        yield ERROR, dead_letter(None, "read", "invalid_parquet", f"{name}: {e}")
        return
    for n, row in enumerate(table.to_pylist(), start=1):
        yield make_document(row, f"{name} row {n}", text_field)


def _read_hf_dataset(path: str, text_field: str) -> Iterator[tuple[str, dict]]:
    import datasets

    name = Path(path).name
    try:
        ds = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError) as e:
        yield ERROR, dead_letter(None, "read", "invalid_dataset", f"{name}: {e}")
        return
    if isinstance(ds, datasets.DatasetDict):
        yield (
            ERROR,
            dead_letter(
                None,
                "read",
                "dataset_dict",
                f"{name} holds several splits ({', '.join(ds)}); pass one split's directory",
            ),
        )
        return
    for n, row in enumerate(ds, start=1):
        yield make_document(row, f"{name} row {n}", text_field)
