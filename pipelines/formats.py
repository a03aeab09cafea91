"""The file formats under ``pipelines/documents.py``: a byte range of a file (:class:`Split`), gzip
streamed chunk by chunk, Parquet files (whole, or one row group per split) and saved Hugging Face
datasets, each row a document or a dead letter."""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple

from toolformer.documents import ERROR, dead_letter, make_document

WHOLE, BYTES, ROW_GROUP = "whole", "bytes", "row_group"  # the kinds of Split


class Split(NamedTuple):
    """A part of one input that one worker reads (see the module docstring).

    ``kind`` ``WHOLE``: the file (or dataset directory) ``path``, read as :func:`read_records`
    reads one split. ``BYTES``: the lines that start in bytes ``[start, end)`` of a plain file.
    ``ROW_GROUP``: row group ``start`` of a Parquet file, of ``end`` rows, after ``first_row`` rows.
    """

    path: str
    kind: str = WHOLE
    start: int = 0
    end: int = 0
    first_row: int = 0


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


def _read_row_group(
    path: str, stream: IO[bytes], split: Split, text_field: str
) -> Iterator[tuple[str, dict]]:
    """The rows of one row group (``ParquetFile.read_row_group``), turned into documents a batch of
    rows at a time; a row group that cannot be read is one dead letter, the other groups are read."""
    import pyarrow.parquet as pq

    name = Path(path).name
    try:
        table = pq.ParquetFile(stream).read_row_group(split.start)
    except Exception as e:  # noqa: BLE001  (pyarrow raises several types for a corrupt file)
        rows = f"rows {split.first_row + 1}-{split.first_row + split.end}"
        detail = f"{name} row group {split.start} ({rows}): {e}"
        yield ERROR, dead_letter(None, "read", "invalid_parquet", detail)
        return
    n = split.first_row
    for batch in table.to_batches(max_chunksize=1024):
        for row in batch.to_pylist():
            n += 1
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
