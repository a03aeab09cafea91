"""Reading a run directory (``toolformer augment --output DIR``) wherever it is: a local folder or
any Beam file system URL (``gs://``, ``s3://``, ...), through ``apache_beam``'s ``FileSystems``.

The layout (written by ``pipelines/rundir.py``): ``texts-*.jsonl``, ``candidates-*.jsonl`` and
``errors-*.jsonl`` shards (optionally ``.gz``), ``stats.json``, ``run.json`` and, last,
``_SUCCESS``. ``report``, ``finetune --data`` and ``export`` read runs through here, so a run that
``augment`` wrote to an object store can be reported and trained on where it is.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from toolformer.errors import raise_if_storage_full

SHARD_KINDS = ("texts", "candidates", "errors")
SUCCESS = "_SUCCESS"
STATS = "stats.json"
SETTINGS = "run.json"
CARD = "README.md"
# The dataset card of a run: its YAML header names one configuration per shard kind, so that
# ``datasets.load_dataset(DIR, "candidates")`` (local, or hf:// / an object store through fsspec)
# reads the run's JSONL shards as a dataset, "texts" by default. JSONL, not the Parquet copies: one
# builder must read every configuration of a directory, and the dead letters have no Parquet copy.
DATASET_CARD = """---
configs:
- config_name: texts
  data_files: "texts-*.jsonl*"
  default: true
- config_name: candidates
  data_files: "candidates-*.jsonl*"
- config_name: errors
  data_files: "errors-*.jsonl*"
---
# A toolformer augment run

`texts`: each document with its kept calls inserted; `candidates`: every sampled call with its
losses and decision; `errors`: dead letters. `run.json` holds the settings, `stats.json` the counts.

    datasets.load_dataset("<this directory>", "candidates", split="train")
"""
RAW = CompressionTypes.UNCOMPRESSED  # never (de)compress by file name: we hash and copy bytes
# After a write that failed for lack of room (StorageFull): what a resume keeps and redoes.
RESUME_HINT = (
    "free space (or raise the file-size limit), then rerun with --resume: finished parts are kept, "
    "nothing half-written counts as done"
)


# --- File system helpers (any Beam file system) ------------------------------------------------


def join(base: str | Path, *names: str) -> str:
    return FileSystems.join(str(base), *names)


def is_local(path: str | Path) -> bool:
    """The launcher's own file system (no URL scheme): real folders, an atomic rename."""
    return FileSystems.get_scheme(str(path)) is None


def match(pattern: str, limit: int | None = None) -> list[str]:
    """Files matching ``pattern`` (``*`` stays inside one folder level, ``**`` crosses them)."""
    [result] = FileSystems.match([pattern], None if limit is None else [limit])
    return sorted(m.path for m in result.metadata_list)


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def has_files(folder: str | Path) -> bool:
    """Whether anything is stored under ``folder``; empty and missing are the same (on an object
    store a folder is a key prefix and exists only while it has objects)."""
    return bool(match(join(folder, "**"), limit=1))


def delete(paths: list[str]) -> None:
    if paths:
        FileSystems.delete(paths)


def delete_folder(folder: str) -> None:
    """Delete ``folder`` and everything in it (nothing happens if it is missing)."""
    if is_local(folder):  # a real folder, possibly empty: LocalFileSystem deletes it recursively
        if exists(folder):
            delete([folder])
    else:  # an object store: the objects under the prefix (the "folder" goes with them)
        delete(match(join(folder, "**")))


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=RAW) as f:
        return f.read()


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path).decode("utf-8"))


def write_bytes(path: str, data: bytes) -> None:
    """Write a file in place (not atomic on the local file system; see :func:`write_json`).
    A write that fails for lack of room raises :class:`~toolformer.errors.StorageFull` naming it."""
    try:
        with FileSystems.create(path, compression_type=RAW) as f:
            f.write(data)
    except Exception as e:
        raise_if_storage_full(e, path, RESUME_HINT)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON so that a reader sees the old file, the new one, or none, never a
    torn one.

    Local file system: write ``PATH.tmp``, then rename it over ``PATH`` (an atomic replace on
    POSIX); a kill mid-write leaves only the ``.tmp``, which :func:`prepare` deletes.
    Any other file system (object stores: gs://, s3://, ...): write ``PATH`` directly. An object
    store has no atomic rename (Beam's rename is copy + delete), but creating an object is atomic:
    the upload becomes visible, whole, only when it is closed, and a killed upload leaves nothing.
    (HDFS has neither guarantee, nor a rename onto an existing file; a torn marker there is
    unreadable JSON and its part is redone, as a missing one would be.)
    """
    path = str(path)
    body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")
    if is_local(path):
        tmp = path + ".tmp"
        write_bytes(tmp, body)
        FileSystems.rename([tmp], [path])
    else:
        write_bytes(path, body)


def mkdirs(folder: str) -> None:
    """Create ``folder`` if the file system has folders (a no-op on an object store)."""
    if not exists(folder):
        try:
            FileSystems.mkdirs(folder)
        except OSError:
            if not exists(folder):  # not merely created by someone else meanwhile
                raise


def sha256(path: str | Path) -> str:
    """The file's sha256, read in 1 MiB blocks (a shard may be larger than memory)."""
    h = hashlib.sha256()
    with FileSystems.open(str(path), compression_type=RAW) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def basename(path: str) -> str:
    return FileSystems.split(path)[1]



def is_remote(path: str) -> bool:
    """A URL of a Beam file system (``gs://b/run``), not a local path."""
    return not is_local(path)


def shards(run: str, kind: str) -> list[str]:
    """The ``kind`` (texts, candidates, errors) shards of ``run``, ``.jsonl`` then ``.jsonl.gz``, sorted."""
    found = []
    for suffix in (".jsonl", ".jsonl.gz"):
        [result] = FileSystems.match([join(run, f"{kind}-*{suffix}")])
        found += sorted(m.path for m in result.metadata_list)
    return found


def is_complete(run: str) -> bool:
    return exists(join(run, SUCCESS))


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


def json_lines(path: str) -> Iterator[tuple[int, dict | None, str | None]]:
    """``(line number, record, None)`` for every JSON-object line of a shard, ``(line number, None,
    problem)`` for a line that is not one ("invalid JSON (...)", "not a JSON object"); blank lines
    are skipped. The one reader of a run's shards (report, export, refilter, finetune --data): what
    a bad line costs is the caller's rule (the report skips and counts it, export and refilter stop
    naming it), the message is the same. A truncated ``.gz`` raises ``EOFError`` (or ``OSError``)
    after its last whole line."""
    for n, line in lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, None, f"invalid JSON ({e.msg})"
            continue
        if isinstance(record, dict):
            yield n, record, None
        else:
            yield n, None, "not a JSON object"


def relative(run: str, path: str) -> str:
    """``path`` as the name of a file of ``run`` (for messages)."""
    prefix = str(run).rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path
