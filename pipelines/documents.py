"""Reading input documents (JSONL, Parquet, text, a saved HF dataset) into plain records.

Plain functions, called by the pipeline's ``ReadDocs`` step (``toolformer augment``) and by tests.
A document is ``{"doc_id", "text", **metadata}``. Every record that cannot become a document
becomes a dead letter ``{"doc_id", "stage": "read", "reason", "detail"}`` naming its file and
line; it never stops the run.

Hostile files. Every file is read in chunks of ``CHUNK_BYTES`` (``.gz`` decompressed chunk by
chunk; the whole file is never held in memory), under two caps (``InputLimits``):

* ``max_file_bytes`` (default 4 GiB, ``$TOOLFORMER_MAX_INPUT_BYTES``): bytes read from one file
  after decompression (for a plain file, its size). A file that goes past it (a gzip bomb) is cut
  there: the lines before the cap are processed, the line in progress and everything after it
  are not read, and one dead letter ``input_too_large`` names the file and that line. A Parquet
  file is read whole, so one over the cap is refused whole (the same reason, no line).
* ``max_line_bytes`` (default 16 MiB, ``$TOOLFORMER_MAX_LINE_BYTES``): one line's bytes. A longer
  line is skipped without being held (its bytes are counted, not kept) and is one dead letter
  ``line_too_long``; the lines around it are processed.

A ``.gz`` file that is truncated (``truncated_gzip``) or corrupt (``corrupt_gzip``: not gzip, bad
deflate data, bad CRC) gives one dead letter naming the file and the line where decompression
stopped; the complete lines decompressed before are processed, the partial line is not. A bad CRC
is only seen at the end of a gzip member, after its lines were processed. Invalid UTF-8 is one
dead letter per line (latin-1 lines among UTF-8 lines: only those lines); a UTF-8 byte-order mark
at the start of a file is dropped. Read errors of the file system itself (``OSError``) are raised,
so the runner retries the bundle instead of losing the file.

Memory per file: one chunk, plus the line being assembled (at most ``max_line_bytes``), plus that
line decoded and parsed (for a 16 MiB JSON line, ~100 MB at most while it is parsed).

Splits (:func:`file_splits`, :func:`read_split`; the pipeline reads each split on its own worker).
A file no larger than ``split_bytes()`` (default 64 MiB, ``$TOOLFORMER_SPLIT_BYTES``) is one split,
read whole exactly as above. A larger plain (uncompressed) ``.jsonl``/``.json``/``.ndjson``/``.txt``
file is split into byte ranges ``[start, end)`` of that size, and a line belongs to the range that
holds its first byte: a range with ``start > 0`` skips to just after the first newline at or after
byte ``start - 1`` (none before ``end - 1``: the range holds no line start and reads nothing), then
reads whole lines, running past ``end`` to finish the last line it started. So every line is read
once, whatever the range size (a line longer than a range is read by the range it starts in and
skipped by the others). The caps are the file's, not the range's: ``max_line_bytes`` per line as
above, and ``max_file_bytes`` counts from the file's first byte (ranges start at most at the cap;
the range holding the line in progress at the cap gives the ``input_too_large`` dead letter). A
compressed file (``.gz``) is one split -- a gzip stream cannot be entered in the middle -- and so is
read by one worker (the launcher logs it, :func:`pipelines.inputs.split_inputs`). A Parquet file
above the split size with two or more row groups is one split per row group (``read_row_group``;
rows keep their numbers, from the footer's row counts); one above ``max_file_bytes`` is still
refused whole, without being read. A saved HF dataset directory is one split.

Positions. A range does not know how many lines come before it. Every line is named by its line
number where the reader knows it -- every line of a file read as one split, and the lines of a
split file's first range -- and otherwise by the byte offset of its first byte: dead letters say
``"<file> line <n>: ..."`` or ``"<file> at byte <offset>: ..."`` (``reading stopped at line <n>`` /
``at byte <offset>``), and a ``.txt`` line without an id is ``"<file>:<n>"`` or
``"<file>@<offset>"``. JSONL and Parquet ids come from the records (or their text), never from the
position, so they do not depend on the splits. Changing ``$TOOLFORMER_SPLIT_BYTES`` between a run
and its ``--resume`` changes the ids of the text lines past the first range of a split ``.txt``.
:func:`read_records` reads a whole file as the pipeline does -- through its splits, one after
another -- when it can find the file's size (a path, bytes, or a seekable stream), so it gives
exactly the pipeline's records (pipelines/totals.py relies on it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, NamedTuple

from pipelines.formats import (  # noqa: F401  (Split and its kinds: re-exported)
    BYTES,
    ROW_GROUP,
    WHOLE,
    Split,
    _gunzip,
    _read_hf_dataset,
    _read_parquet,
    _read_row_group,
)
from toolformer.documents import DOC, ERROR, MAX_DOC_CHARS, content_id, dead_letter, make_document  # noqa: F401
from toolformer.errors import UserError

MAX_FILE_BYTES = 4 << 30  # bytes read from one input file after decompression (gzip bombs)
MAX_LINE_BYTES = 16 << 20  # bytes of one input line (JSONL record or text line)
CHUNK_BYTES = 1 << 20  # bytes read (decompressed) at a time
SPLIT_BYTES = 64 << 20  # a plain text/JSONL file above this is read in ranges of this many bytes
MAX_FILE_BYTES_ENV = "TOOLFORMER_MAX_INPUT_BYTES"
MAX_LINE_BYTES_ENV = "TOOLFORMER_MAX_LINE_BYTES"
SPLIT_BYTES_ENV = "TOOLFORMER_SPLIT_BYTES"
FORMATS = (".parquet", ".jsonl", ".json", ".ndjson", ".txt")  # optionally .gz


class InputLimits(NamedTuple):
    """Caps on reading one input file (see the module docstring)."""

    max_file_bytes: int = MAX_FILE_BYTES
    max_line_bytes: int = MAX_LINE_BYTES


def _pick(value: int | None, env: str, default: int) -> int:
    if value is None:
        raw = os.environ.get(env, "").strip()
        if not raw:
            return default
        try:
            value = int(raw.replace("_", ""))
        except ValueError:
            raise UserError(f"${env}={raw!r}: expected a number of bytes, e.g. {default}") from None
    if value < 1:
        raise UserError(f"input cap {env}: must be at least 1 byte, not {value}")
    return value


def input_limits(max_file_bytes: int | None = None, max_line_bytes: int | None = None) -> InputLimits:
    """The caps: the arguments, else ``$TOOLFORMER_MAX_INPUT_BYTES`` / ``$TOOLFORMER_MAX_LINE_BYTES``,
    else the module's defaults. Resolved once by the launcher (``ParseFileFn``), so the workers
    get the launcher's values whatever their environment."""
    return InputLimits(
        _pick(max_file_bytes, MAX_FILE_BYTES_ENV, MAX_FILE_BYTES),
        _pick(max_line_bytes, MAX_LINE_BYTES_ENV, MAX_LINE_BYTES),
    )


def split_bytes(value: int | None = None) -> int:
    """The split size: ``value``, else ``$TOOLFORMER_SPLIT_BYTES``, else ``SPLIT_BYTES`` (64 MiB).
    Resolved once by the launcher (``SplitFileFn``), like the caps."""
    return _pick(value, SPLIT_BYTES_ENV, SPLIT_BYTES)


def file_splits(
    path: str,
    size: int,
    limits: InputLimits | None = None,
    split_size: int | None = None,
    open_file: Callable[[], IO[bytes]] | None = None,
) -> list[Split]:
    """The splits of the file ``path`` of ``size`` bytes (as stored: compressed for ``.gz``).

    ``open_file``: a context manager of the file's binary stream (default ``open(path, "rb")``),
    used only for a Parquet file's footer (its row groups). ``limits``, ``split_size``: default
    ``input_limits()``, ``split_bytes()``.
    """
    limits = limits or input_limits()
    split_size = split_size or split_bytes()
    stem = path.removesuffix(".gz")
    if path.endswith(".gz") or size <= split_size or not stem.endswith(FORMATS):
        return [Split(path)]
    if stem.endswith(".parquet"):
        if size > limits.max_file_bytes:
            return [Split(path)]  # refused whole, as a Parquet file is not cut
        groups = _row_groups(open_file or (lambda: open(path, "rb")))
        if groups is None or len(groups) < 2:  # unreadable (the whole read names the error), or one group
            return [Split(path)]
        first, splits = 0, []
        for index, rows in enumerate(groups):
            splits.append(Split(path, ROW_GROUP, index, rows, first))
            first += rows
        return splits
    span = min(size, limits.max_file_bytes + 1)  # lines starting past the cap are never read
    if span <= split_size:
        return [Split(path)]
    return [Split(path, BYTES, start, min(start + split_size, span)) for start in range(0, span, split_size)]


def _row_groups(open_file: Callable[[], IO[bytes]]) -> list[int] | None:
    """Rows per row group, from a Parquet file's footer; ``None`` if it cannot be read."""
    import pyarrow.parquet as pq

    try:
        with open_file() as stream:
            meta = pq.ParquetFile(stream).metadata
            return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    except Exception:  # noqa: BLE001  (pyarrow raises several types for a corrupt file)
        return None


def iter_lines(
    stream: IO[bytes], name: str, gz: bool, limits: InputLimits, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[int, bytes | None, dict | None]]:
    """``(n, line, None)`` for every line of ``stream`` (numbered from 1, without its newline) or
    ``(n, None, dead letter)`` for a line, or the rest of the file, that cannot be read.

    Reads ``chunk_bytes`` at a time (``gz``: decompressed), never the whole stream; see the module
    docstring for the caps and what each failure loses.
    """
    blocks = _gunzip(stream, chunk_bytes) if gz else iter(lambda: stream.read(chunk_bytes), b"")
    for n, _, line, bad in _lines(blocks, name, limits):
        yield n, line, bad


def _where(name: str, n: int | None, pos: int) -> tuple[str, str]:
    """A line's place: ``("<file> line <n>", "line <n>")``, or by byte offset where ``n`` is unknown."""
    return (f"{name} line {n}", f"line {n}") if n is not None else (f"{name} at byte {pos}", f"byte {pos}")


def _lines(
    blocks: Iterator[bytes], name: str, limits: InputLimits, pos: int = 0, end: int | None = None
) -> Iterator[tuple[int | None, int, bytes | None, dict | None]]:
    """``(n, offset, line, None)`` or ``(n, offset, None, dead letter)`` for the lines of ``blocks``,
    the file's bytes from byte ``pos`` (a line start), up to the last line that starts before
    ``end`` (``None``: the end of the file). ``n`` is the line number where known (``pos == 0``),
    else ``None``; ``offset`` the byte offset of the line's first byte (decompressed, for ``.gz``).
    """
    n = 1 if pos == 0 else None
    total = pos  # bytes of the file before this point count towards the file cap
    buf = bytearray()  # the line being assembled
    skipping = 0  # > 0: bytes of an over-long line seen so far (not kept)
    cap, max_line = limits.max_file_bytes, limits.max_line_bytes

    def too_long(n: int | None, pos: int, size: int) -> dict:
        where = _where(name, n, pos)[0]
        detail = f"{where}: {size:,} bytes, above the {max_line:,}-byte line cap"
        return dead_letter(None, "read", "line_too_long", detail)

    while True:
        where, at = _where(name, n, pos)
        try:
            block = next(blocks, b"")
        except EOFError:  # gzip: the compressed stream ended before its end marker
            yield n, pos, None, dead_letter(
                None,
                "read",
                "truncated_gzip",
                f"{where}: compressed file ends early (truncated); reading stopped at {at}",
            )
            return
        except zlib.error as e:
            detail = f"{where}: corrupt gzip data ({e}); reading stopped at {at}"
            yield n, pos, None, dead_letter(None, "read", "corrupt_gzip", detail)
            return
        if not block:
            break
        over = total + len(block) > cap
        if over:
            block = block[: cap - total]
        total += len(block)
        pieces = block.split(b"\n")
        for piece in pieces[:-1]:  # each ends a line
            size = skipping + len(buf) + len(piece)
            if skipping:
                yield n, pos, None, too_long(n, pos, size)
                skipping = 0
            elif size > max_line:
                yield n, pos, None, too_long(n, pos, size)
                buf = bytearray()
            else:
                line = bytes(buf) + piece if buf else piece
                buf = bytearray()
                yield n, pos, line, None
            pos += size + 1
            n = n + 1 if n is not None else None
            if end is not None and pos >= end:  # the next line starts in the next range
                return
        tail = pieces[-1]
        if skipping:
            skipping += len(tail)
        elif len(buf) + len(tail) > max_line:
            skipping = len(buf) + len(tail)
            buf = bytearray()  # release the memory of the partial line
        else:
            buf += tail
        if over:
            where, at = _where(name, n, pos)
            yield n, pos, None, dead_letter(
                None,
                "read",
                "input_too_large",
                f"{where}: more than {cap:,} bytes (decompressed), the file cap; reading stopped at {at}",
            )
            return
    if skipping:
        yield n, pos, None, too_long(n, pos, skipping)
    elif buf:
        yield n, pos, bytes(buf), None


def _decode(raw: bytes, n: int | None) -> str:
    text = raw.decode("utf-8")
    return text.removeprefix("\ufeff") if n == 1 else text


def _format_error(path: str) -> dict | None:
    if path.removesuffix(".gz").endswith(FORMATS):
        return None
    detail = f"{Path(path).name}: expected .jsonl, .json, .parquet or .txt (optionally .gz)"
    return dead_letter(None, "read", "unknown_format", detail)


def _size(stream: IO[bytes]) -> int | None:
    """The size of a seekable stream (left at its start), else ``None``."""
    seekable = getattr(stream, "seekable", None)
    if seekable is None or not seekable():
        return None
    size = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    return size


def read_records(
    path: str,
    data: bytes | IO[bytes] | None = None,
    text_field: str = "text",
    limits: InputLimits | None = None,
    split_size: int | None = None,
) -> Iterator[tuple[str, dict]]:
    """Every document or dead letter of one input file (or saved HF dataset directory).

    ``data``: the file's raw (still compressed) bytes or a binary stream of them, read in chunks;
    ``None`` opens ``path``. ``.jsonl``/``.json`` (optionally ``.gz``): one JSON object per line.
    ``.parquet``: one row per document. ``.txt`` (optionally ``.gz``): one document per non-empty
    line, id = file name and line (``name:n``, or ``name@offset`` past a split file's first range).
    A directory holding ``dataset_info.json``: a dataset saved by ``datasets.save_to_disk``.
    ``limits``: the caps (default ``input_limits()``). Where the file's size is known (a path, bytes,
    a seekable stream), its splits (``split_size``, default ``split_bytes()``) are read one after
    another, so the records are the pipeline's, positions included; a stream that cannot seek is
    read as one split.
    """
    if Path(path).is_dir():
        yield from _read_hf_dataset(path, text_field)
        return
    bad = _format_error(path)
    if bad is not None:
        yield ERROR, bad
        return
    if data is None:
        with open(path, "rb") as stream:
            yield from _read_splits(path, stream, text_field, limits, split_size)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        yield from _read_splits(path, io.BytesIO(data), text_field, limits, split_size)
    else:
        yield from _read_splits(path, data, text_field, limits, split_size)


def _read_splits(path, stream, text_field, limits, split_size) -> Iterator[tuple[str, dict]]:
    limits = limits or input_limits()
    size = _size(stream)
    if size is None:
        yield from _read_stream(path, stream, text_field, limits)
        return
    for split in file_splits(path, size, limits, split_size, lambda: contextlib.nullcontext(stream)):
        yield from read_split(split, stream, text_field, limits)


def read_split(
    split: Split,
    stream: IO[bytes] | None,
    text_field: str = "text",
    limits: InputLimits | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[tuple[str, dict]]:
    """Every document or dead letter of one split (see the module docstring for which lines are
    a range's and how they are named). ``stream``: the file's raw binary stream, seekable for a
    ``BYTES`` or ``ROW_GROUP`` split (read from the start for ``WHOLE``); ``None`` for a dataset
    directory. ``limits``: the file's caps (default ``input_limits()``)."""
    limits = limits or input_limits()
    path = split.path
    if split.kind == WHOLE:
        if Path(path).is_dir():
            yield from _read_hf_dataset(path, text_field)
        elif (bad := _format_error(path)) is not None:
            yield ERROR, bad
        elif stream is None:
            with open(path, "rb") as f:
                yield from _read_stream(path, f, text_field, limits)
        else:
            if getattr(stream, "seekable", lambda: False)():
                stream.seek(0)
            yield from _read_stream(path, stream, text_field, limits)
    elif split.kind == ROW_GROUP:
        yield from _read_row_group(path, stream, split, text_field)
    elif split.kind == BYTES:
        start = _first_line_start(stream, split.start, split.end, chunk_bytes)
        if start is None:  # no line starts in this range
            return
        stream.seek(start)
        blocks = iter(lambda: stream.read(chunk_bytes), b"")
        lines = _lines(blocks, Path(path).name, limits, start, split.end)
        yield from _line_records(lines, path, text_field)
    else:
        raise ValueError(f"unknown split kind {split.kind!r}")


def _first_line_start(stream: IO[bytes], start: int, end: int, chunk_bytes: int) -> int | None:
    """The offset of the first line that starts in ``[start, end)``: ``start`` if it is 0 or follows
    a newline, else just after the first newline at or after ``start - 1``; ``None`` if there is no
    newline in ``[start - 1, end - 1)``. Reads at most ``chunk_bytes`` at a time, keeps none."""
    if start == 0:
        return 0
    pos = start - 1
    stream.seek(pos)
    while pos < end - 1:
        block = stream.read(min(chunk_bytes, end - 1 - pos))
        if not block:
            return None
        i = block.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(block)
    return None


def _read_stream(
    path: str, stream: IO[bytes], text_field: str, limits: InputLimits
) -> Iterator[tuple[str, dict]]:
    name = Path(path).name
    stem = path.removesuffix(".gz")
    if stem.endswith(".parquet"):
        cap = limits.max_file_bytes
        size = None if path.endswith(".gz") else _size(stream)
        too_big = size is not None and size > cap  # refused without reading it
        data = b"" if too_big else stream.read(cap + 1)
        if too_big or len(data) > cap:
            yield ERROR, dead_letter(
                None,
                "read",
                "input_too_large",
                f"{name}: more than {limits.max_file_bytes:,} bytes, the file cap; "
                "a Parquet file is not cut, nothing of it read",
            )
            return
        yield from _read_parquet(path, data, text_field)
        return
    gz = path.endswith(".gz")
    blocks = _gunzip(stream, CHUNK_BYTES) if gz else iter(lambda: stream.read(CHUNK_BYTES), b"")
    yield from _line_records(_lines(blocks, name, limits), path, text_field)


def _line_records(lines, path: str, text_field: str) -> Iterator[tuple[str, dict]]:
    """Documents and dead letters of ``_lines``' lines: JSON objects, or text lines (``.txt``)."""
    name = Path(path).name
    is_text = path.removesuffix(".gz").endswith(".txt")
    for n, pos, raw, bad in lines:
        where = _where(name, n, pos)[0]
        if bad is not None:
            yield ERROR, bad
            continue
        if not is_text and not raw.strip():
            continue
        try:
            line = _decode(raw, n)
        except UnicodeDecodeError as e:
            yield ERROR, dead_letter(
                None, "read", "invalid_utf8", f"{where}: not UTF-8 ({e.reason} at byte {e.start})"
            )
            continue
        if is_text:
            line = line.rstrip("\r\n")
            if line.strip():
                doc_id = f"{name}:{n}" if n is not None else f"{name}@{pos}"
                yield make_document({"doc_id": doc_id, text_field: line}, where, text_field)
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            yield ERROR, dead_letter(None, "read", "invalid_json", f"{where}: {e}")
            continue
        yield make_document(record, where, text_field)
