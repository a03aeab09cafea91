"""Reading a run directory (``toolformer augment --output DIR``) wherever it is: a local folder or
any Beam file system URL (``gs://``, ``s3://``, ...), through ``apache_beam``'s ``FileSystems``.

The layout (written by ``pipelines/rundir.py``): ``texts-*.jsonl``, ``candidates-*.jsonl`` and
``errors-*.jsonl`` shards (optionally ``.gz``), ``stats.json``, ``run.json`` and, last,
``_SUCCESS``. ``report``, ``finetune --data`` and ``export`` read runs through here, so a run that
``augment`` wrote to an object store can be reported and trained on where it is.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

SHARD_KINDS = ("texts", "candidates", "errors")
SUCCESS = "_SUCCESS"
STATS = "stats.json"
SETTINGS = "run.json"


def is_remote(path: str) -> bool:
    """A URL of a Beam file system (``gs://b/run``), not a local path."""
    return FileSystems.get_scheme(str(path)) is not None


def join(run: str, name: str) -> str:
    return FileSystems.join(str(run), name)


def exists(path: str) -> bool:
    return FileSystems.exists(str(path))


def shards(run: str, kind: str) -> list[str]:
    """The ``kind`` (texts, candidates, errors) shards of ``run``, ``.jsonl`` then ``.jsonl.gz``, sorted."""
    found = []
    for suffix in (".jsonl", ".jsonl.gz"):
        [result] = FileSystems.match([join(run, f"{kind}-*{suffix}")])
        found += sorted(m.path for m in result.metadata_list)
    return found


def is_complete(run: str) -> bool:
    return exists(join(run, SUCCESS))


def read_bytes(path: str) -> bytes:
    """The file's bytes as stored (never decompressed by its name)."""
    with FileSystems.open(str(path), compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path).decode("utf-8"))


def lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file, streamed (``.gz`` decompressed); bytes that are not
    UTF-8 become U+FFFD, so one bad byte costs its line's JSON, not the file."""
    with FileSystems.open(str(path), compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        # Python's gzip, not Beam's decompression: a truncated .gz raises EOFError here, where
        # Beam's CompressedFile just ends (and a shard cut at a line end would pass as whole).
        f = gzip.GzipFile(fileobj=raw, mode="rb") if str(path).endswith(".gz") else raw
        n = 0
        while line := f.readline():
            n += 1
            yield n, line.decode("utf-8", errors="replace")


def relative(run: str, path: str) -> str:
    """``path`` as the name of a file of ``run`` (for messages)."""
    prefix = str(run).rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path
