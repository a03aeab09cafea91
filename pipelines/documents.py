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
"""

from __future__ import annotations

import io
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple

from toolformer.documents import DOC, ERROR, MAX_DOC_CHARS, content_id, dead_letter, make_document  # noqa: F401
from toolformer.errors import UserError

MAX_FILE_BYTES = 4 << 30  # bytes read from one input file after decompression (gzip bombs)
MAX_LINE_BYTES = 16 << 20  # bytes of one input line (JSONL record or text line)
CHUNK_BYTES = 1 << 20  # bytes read (decompressed) at a time
MAX_FILE_BYTES_ENV = "TOOLFORMER_MAX_INPUT_BYTES"
MAX_LINE_BYTES_ENV = "TOOLFORMER_MAX_LINE_BYTES"


class InputLimits(NamedTuple):
    """Caps on reading one input file (see the module docstring)."""

    max_file_bytes: int = MAX_FILE_BYTES
    max_line_bytes: int = MAX_LINE_BYTES


def input_limits(max_file_bytes: int | None = None, max_line_bytes: int | None = None) -> InputLimits:
    """The caps: the arguments, else ``$TOOLFORMER_MAX_INPUT_BYTES`` / ``$TOOLFORMER_MAX_LINE_BYTES``,
    else the module's defaults. Resolved once by the launcher (``ParseFileFn``), so the workers
    get the launcher's values whatever their environment."""

    def pick(value: int | None, env: str, default: int) -> int:
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

    return InputLimits(
        pick(max_file_bytes, MAX_FILE_BYTES_ENV, MAX_FILE_BYTES),
        pick(max_line_bytes, MAX_LINE_BYTES_ENV, MAX_LINE_BYTES),
    )


def iter_lines(
    stream: IO[bytes], name: str, gz: bool, limits: InputLimits, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[int, bytes | None, dict | None]]:
    """``(n, line, None)`` for every line of ``stream`` (numbered from 1, without its newline) or
    ``(n, None, dead letter)`` for a line, or the rest of the file, that cannot be read.

    Reads ``chunk_bytes`` at a time (``gz``: decompressed), never the whole stream; see the module
    docstring for the caps and what each failure loses.
    """
    blocks = _gunzip(stream, chunk_bytes) if gz else iter(lambda: stream.read(chunk_bytes), b"")
    n, total = 1, 0
    buf = bytearray()  # the line being assembled
    skipping = 0  # > 0: bytes of an over-long line seen so far (not kept)
    cap, max_line = limits.max_file_bytes, limits.max_line_bytes

    def too_long(n: int, size: int) -> dict:
        detail = f"{name} line {n}: {size:,} bytes, above the {max_line:,}-byte line cap"
        return dead_letter(None, "read", "line_too_long", detail)

    while True:
        try:
            block = next(blocks, b"")
        except EOFError:  # gzip: the compressed stream ended before its end marker
            yield n, None, dead_letter(
                None,
                "read",
                "truncated_gzip",
                f"{name} line {n}: compressed file ends early (truncated); reading stopped at line {n}",
            )
            return
        except zlib.error as e:
            detail = f"{name} line {n}: corrupt gzip data ({e}); reading stopped at line {n}"
            yield n, None, dead_letter(None, "read", "corrupt_gzip", detail)
            return
        if not block:
            break
        over = total + len(block) > cap
        if over:
            block = block[: cap - total]
        total += len(block)
        pieces = block.split(b"\n")
        for piece in pieces[:-1]:  # each ends a line
            if skipping:
                yield n, None, too_long(n, skipping + len(piece))
                skipping = 0
            elif len(buf) + len(piece) > max_line:
                yield n, None, too_long(n, len(buf) + len(piece))
                buf = bytearray()
            else:
                line = bytes(buf) + piece if buf else piece
                buf = bytearray()
                yield n, line, None
            n += 1
        tail = pieces[-1]
        if skipping:
            skipping += len(tail)
        elif len(buf) + len(tail) > max_line:
            skipping = len(buf) + len(tail)
            buf = bytearray()  # release the memory of the partial line
        else:
            buf += tail
        if over:
            yield n, None, dead_letter(
                None,
                "read",
                "input_too_large",
                f"{name} line {n}: more than {cap:,} bytes (decompressed), the file cap; "
                f"reading stopped at line {n}",
            )
            return
    if skipping:
        yield n, None, too_long(n, skipping)
    elif buf:
        yield n, bytes(buf), None


def _gunzip(stream: IO[bytes], chunk_bytes: int, read_bytes: int = 1 << 16) -> Iterator[bytes]:
    """The decompressed bytes of a gzip stream (members one after another, zero padding between
    or after them ignored, as ``gzip`` does), at most ``chunk_bytes`` at a time whatever the ratio.

    Unlike ``gzip.GzipFile.read`` (its buffered reader drops what it gathered in the failing call),
    every byte that decompresses before a failure is yielded first. Raises ``EOFError`` when the
    stream ends inside a member (truncated), ``zlib.error`` for data that is not gzip, bad deflate
    data or a bad CRC / length trailer."""
    d = zlib.decompressobj(wbits=31)
    pending, fed = b"", False  # compressed bytes not yet given to d; whether d has had any
    while True:
        if not pending:
            pending = stream.read(read_bytes)
            if not pending:
                if fed and not d.eof:
                    raise EOFError("compressed file ended before the end-of-stream marker was reached")
                return
        if d.eof:  # the member before is complete: padding, or the next member
            pending = pending.lstrip(b"\0")
            if not pending:
                continue
            d, fed = zlib.decompressobj(wbits=31), False
        saved = d.copy()
        try:
            out = d.decompress(pending, chunk_bytes)
        except zlib.error:
            # zlib drops the failing call's output: redo it a byte at a time to yield all of it
            # that came before the bad byte (for a bad CRC, everything), then fail.
            for i in range(len(pending)):
                out = saved.decompress(pending[i : i + 1])  # <= 1,032 bytes out per byte in
                if out:
                    yield out
            raise
        fed = True
        pending = d.unused_data if d.eof else d.unconsumed_tail
        if out:
            yield out


def _decode(raw: bytes, n: int) -> str:
    text = raw.decode("utf-8")
    return text.removeprefix("\ufeff") if n == 1 else text


def read_records(
    path: str,
    data: bytes | IO[bytes] | None = None,
    text_field: str = "text",
    limits: InputLimits | None = None,
) -> Iterator[tuple[str, dict]]:
    """Every document or dead letter of one input file (or saved HF dataset directory).

    ``data``: the file's raw (still compressed) bytes or a binary stream of them, read in chunks;
    ``None`` opens ``path``. ``.jsonl``/``.json`` (optionally ``.gz``): one JSON object per line.
    ``.parquet``: one row per document. ``.txt`` (optionally ``.gz``): one document per non-empty
    line, id = file name and line. A directory holding ``dataset_info.json``: a dataset saved by
    ``datasets.save_to_disk``. ``limits``: the caps (default ``input_limits()``).
    """
    name = Path(path).name
    if Path(path).is_dir():
        yield from _read_hf_dataset(path, text_field)
        return
    limits = limits or input_limits()
    stem = path.removesuffix(".gz")
    if not stem.endswith((".parquet", ".jsonl", ".json", ".ndjson", ".txt")):
        yield (
            ERROR,
            dead_letter(
                None,
                "read",
                "unknown_format",
                f"{name}: expected .jsonl, .json, .parquet or .txt (optionally .gz)",
            ),
        )
        return
    if data is None:
        with open(path, "rb") as stream:
            yield from _read_stream(path, stream, text_field, limits)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        yield from _read_stream(path, io.BytesIO(data), text_field, limits)
    else:
        yield from _read_stream(path, data, text_field, limits)


def _read_stream(
    path: str, stream: IO[bytes], text_field: str, limits: InputLimits
) -> Iterator[tuple[str, dict]]:
    name = Path(path).name
    stem = path.removesuffix(".gz")
    if stem.endswith(".parquet"):
        data = stream.read(limits.max_file_bytes + 1)
        if len(data) > limits.max_file_bytes:
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
    is_text = stem.endswith(".txt")
    for n, raw, bad in iter_lines(stream, name, path.endswith(".gz"), limits):
        where = f"{name} line {n}"
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
                yield make_document({"doc_id": f"{name}:{n}", text_field: line}, where, text_field)
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            yield ERROR, dead_letter(None, "read", "invalid_json", f"{where}: {e}")
            continue
        yield make_document(record, where, text_field)


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
