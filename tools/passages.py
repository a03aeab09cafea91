"""WikiSearch corpora: the :class:`Passage` record and the readers that turn corpus files into passages.

Inputs (``read_passages``): JSONL (optionally ``.gz``), Parquet, text files (one passage per
non-empty line) or a directory written by ``datasets.Dataset.save_to_disk``; field names are
configurable and records can be filtered by ``FIELD=VALUE``. The index built from them is
:mod:`tools.bm25_index`; the tool that queries it is :mod:`tools.wikisearch`.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("tools.wikisearch")  # the name these warnings have always been logged under


@dataclasses.dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str


class InputError(ValueError):
    """A corpus file or record that cannot be read (the message names the file and record)."""


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _records(path: Path) -> Iterator[tuple[str, Mapping[str, Any] | None, str]]:
    """(location, record or None if unreadable, problem) for every record of one input."""
    name = path.name.lower()
    if path.is_dir():
        import datasets

        data = datasets.load_from_disk(str(path))
        splits = data.values() if isinstance(data, datasets.DatasetDict) else [data]
        for split in splits:
            for i, row in enumerate(split):
                yield f"{path}[{i}]", row, ""
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        n = 0
        for batch in pq.ParquetFile(path).iter_batches():
            for row in batch.to_pylist():
                yield f"{path}[{n}]", row, ""
                n += 1
    elif name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")):
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    yield f"{path}:{lineno}", None, f"invalid JSON ({e})"
                    continue
                if not isinstance(row, dict):
                    yield f"{path}:{lineno}", None, "not a JSON object"
                    continue
                yield f"{path}:{lineno}", row, ""
    elif name.endswith((".txt", ".txt.gz")):
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path}:{lineno}", {"id": f"{path.name}:{lineno}", "text": line.strip()}, ""
    else:
        raise InputError(
            f"{path}: unknown input format (use .jsonl[.gz], .parquet, .txt or a dataset directory)"
        )


def parse_filter(spec: str | None) -> tuple[str, str] | None:
    if not spec:
        return None
    field, sep, value = spec.partition("=")
    if not sep or not field:
        raise InputError(f"--filter must be FIELD=VALUE, got {spec!r}")
    return field, value


def read_passages(
    pattern: str,
    text_field: str = "text",
    id_field: str = "id",
    title_field: str = "title",
    where: tuple[str, str] | None = None,
    problems: list[str] | None = None,
) -> Iterator[Passage]:
    """Passages from every file matching ``pattern`` (sorted). Records that cannot be used are
    skipped; a one-line description of each is appended to ``problems`` (and logged)."""
    paths = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
    paths = [p for p in paths if Path(p).exists()]
    if not paths:
        raise InputError(f"no input matches {pattern!r}")
    n = 0
    for p in paths:
        for location, row, problem in _records(Path(p)):
            if row is not None and where is not None and str(row.get(where[0])) != where[1]:
                continue
            if row is not None and not isinstance(row.get(text_field), str):
                problem = f"no string field {text_field!r}"
            elif row is not None and not row[text_field].strip():
                problem = f"empty field {text_field!r}"
            if problem:
                log.warning("skipping %s: %s", location, problem)
                if problems is not None:
                    problems.append(f"{location}: {problem}")
                continue
            pid = row.get(id_field)
            title = row.get(title_field)
            yield Passage(
                str(pid) if pid is not None else str(n),
                str(title) if title is not None else "",
                row[text_field],
            )
            n += 1

