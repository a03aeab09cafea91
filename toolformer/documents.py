"""A document as the method sees it: ``{"doc_id", "text", **metadata}``, made from one input record
(:func:`make_document`), with a date where the record gives one (:func:`document_date`, for the
Calendar) and a random generator of its own (:func:`doc_rng`, for the tools' heuristics).

Dead letters (:func:`dead_letter`) are the record of what could not be used: ``{"doc_id", "stage",
"reason", "detail"}``. The pipeline's file readers (``pipelines/documents.py``) and
:func:`toolformer.augment.augment_texts` make documents and dead letters with these same functions,
so both give a record the same id and the same text.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re
from collections.abc import Iterable, Mapping
from typing import Any

from toolformer.call_format import neutralize

MAX_DOC_CHARS = 100_000  # longer texts are truncated (counted in docs_truncated); windows do the rest
DOC = "doc"
ERROR = "error"
_DATE_IN_URL = re.compile(r"(?<!\d)((?:19|20)\d{2})([/-])(\d{1,2})\2(\d{1,2})(?!\d)")


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


def unique_documents(docs: Iterable[dict[str, Any]], limit: int | None = None) -> tuple[dict[str, dict], list[dict]]:
    """The pipeline's ``Limit`` and ``DedupeIds``, in one process: with ``limit``, the documents with
    the smallest ids (duplicates included: the limit comes first); then one document per id, the
    one with the smallest text. Returns them by id (in id order) and the others, as dropped."""
    docs = sorted(docs, key=lambda d: (d["doc_id"], d["text"]))
    if limit is not None:
        docs = docs[:limit]
    unique: dict[str, dict] = {}
    dropped = []
    for doc in docs:
        if doc["doc_id"] in unique:
            dropped.append(doc)
        else:
            unique[doc["doc_id"]] = doc
    return unique, dropped


def stable_seed(*parts: Any) -> int:
    """A 64-bit seed from ``parts`` that is the same in every process and on every machine."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def doc_rng(doc_id: str, seed: int = 0, salt: str = "") -> random.Random:
    """The random generator for one document (and one tool, via ``salt``)."""
    return random.Random(stable_seed(seed, salt, doc_id))


def date_from_url(url: str) -> dt.date | None:
    """A date written in a URL path: ``/2023/01/30/`` or ``2023-01-30``."""
    for m in _DATE_IN_URL.finditer(url):
        try:
            return dt.date(int(m.group(1)), int(m.group(3)), int(m.group(4)))
        except ValueError:
            continue
    return None


def document_date(document: Mapping[str, Any]) -> dt.date | None:
    """The document's date: its ``date`` field (ISO date or datetime), else a date in its ``url``."""
    value = document.get("date")
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            return dt.datetime.fromisoformat(text).date()
        except ValueError:
            pass
        found = date_from_url(text)
        if found is not None:
            return found
    url = document.get("url")
    if isinstance(url, str):
        return date_from_url(url)
    return None
