"""The pipeline's input steps: cut matched files into splits (``SplitFiles``), spread the splits
over the workers (``SpreadSplits``), parse each split (``ReadDocs``), keep one part's documents
(``SelectPart``), and check ``--input`` on the launcher (:func:`split_inputs`).

Used by ``build_pipeline`` and ``run_augment`` in pipelines/augment.py; the splits and the parsing
themselves are in pipelines/documents.py (``file_splits``, ``read_split``; its docstring says which
lines a split holds and how its records are named). Only plain ParDos and a GroupByKey, no
splittable DoFn or ``beam.io.Read`` source: every runner runs them, the Dask runner of
pipelines/dask_runner.py included. A large plain JSONL/text file is read by as many workers as
it has splits (64 MiB each by default), each in chunks; a ``.gz`` file is one split.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes

from pipelines.documents import (
    DOC,
    InputLimits,
    Split,
    file_splits,
    input_limits,
    read_records,
    read_split,
    split_bytes,
)
from pipelines.stages import DEAD, count, in_part, record_seconds
from toolformer.errors import UserError

log = logging.getLogger(__name__)


class SplitFileFn(beam.DoFn):
    """The splits (``pipelines.documents.Split``) of each matched file (``FileMetadata``).

    ``limits``, ``split_size``: default ``input_limits()``, ``split_bytes()``, resolved here on the
    launcher so every worker cuts and reads with the launcher's values. Only a Parquet file above
    the split size is opened (its footer, for the row groups); the other files are cut by size.
    """

    def __init__(self, limits: InputLimits | None = None, split_size: int | None = None):
        self.limits = limits or input_limits()
        self.split_size = split_size or split_bytes()

    def process(self, meta):
        from apache_beam.io.filesystems import FileSystems

        path = meta.path

        def open_file():
            return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)

        yield from file_splits(path, meta.size_in_bytes, self.limits, self.split_size, open_file)


def dataset_split(path):
    """A saved dataset directory as its one split."""
    return Split(path)


def _by_split(split):
    return f"{split[0]}\x00{split[1]}\x00{split[2]}", split


def _ungroup(item):
    return item[1]


class SpreadSplits(beam.PTransform):
    """The splits, spread over the workers: a GroupByKey on each split (its path, kind, start).

    Not ``beam.Reshuffle``: the Dask runner runs a Reshuffle as the identity, which would keep all
    the splits of one input file in the file's one partition (one worker); every runner, Dask's
    included, repartitions at a GroupByKey. Splits matched twice (two patterns, one file) stay two.
    """

    def expand(self, splits):
        return (
            splits
            | "KeyBySplit" >> beam.Map(_by_split)
            | "GroupBySplit" >> beam.GroupByKey()
            | "Ungroup" >> beam.FlatMap(_ungroup)
        )


class ParseFileFn(beam.DoFn):
    """Documents and dead letters of one split (``pipelines.documents.Split``: a byte range of a
    plain file, a Parquet row group, or a whole file or saved dataset directory); also takes a
    dataset directory's path or a ``fileio.ReadableFile`` (a whole file), as before splits.

    A split is streamed in chunks (``.gz`` decompressed by read_records, chunk by chunk) under
    ``limits`` (pipelines/documents.py: bytes per file after decompression, bytes per line;
    default ``input_limits()``, resolved here in the launcher so every worker uses the same caps).
    """

    def __init__(self, text_field: str, limits: InputLimits | None = None):
        self.text_field = text_field
        self.limits = limits or input_limits()

    def process(self, item):
        t0 = time.perf_counter()
        if isinstance(item, str):  # a dataset directory
            yield from self._emit(read_records(item, None, self.text_field, self.limits))
        elif isinstance(item, tuple):  # a Split
            split = Split(*item)
            if Path(split.path).is_dir():
                yield from self._emit(read_split(split, None, self.text_field, self.limits))
            else:
                from apache_beam.io.filesystems import FileSystems

                with FileSystems.open(split.path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
                    yield from self._emit(read_split(split, stream, self.text_field, self.limits))
        else:  # the raw (still compressed) stream, never read whole
            with item.open(compression_type=CompressionTypes.UNCOMPRESSED) as stream:
                yield from self._emit(read_records(item.metadata.path, stream, self.text_field, self.limits))
        record_seconds("read", time.perf_counter() - t0)

    @staticmethod
    def _emit(records):
        for kind, record in records:
            yield record if kind == DOC else beam.pvalue.TaggedOutput(DEAD, record)


class SelectPartFn(beam.DoFn):
    """Keep this part's documents (and bad records), counting them once across parts."""

    def __init__(self, part: int, parts: int, bad: bool):
        self.part, self.parts, self.bad = part, parts, bad

    def process(self, record):
        key = record["detail"] if self.bad else record["doc_id"]
        if in_part(key, self.part, self.parts):
            if self.bad:
                count("docs_bad")
                count(f"bad_records:{record['reason']}")
            else:
                count("docs_read")
                count("docs_truncated", bool(record.get("truncated")))
            yield record


def split_inputs(patterns: list[str]) -> tuple[list[str], list[str]]:
    """(file patterns, saved-dataset directories); a pattern that matches nothing is an error."""
    from apache_beam.io.filesystems import FileSystems

    files, dirs, compressed = [], [], []
    split_size = split_bytes()
    for pattern in patterns:
        if Path(pattern).is_dir():
            if (
                not (Path(pattern) / "dataset_info.json").is_file()
                and not (Path(pattern) / "state.json").is_file()
            ):
                raise UserError(f"--input {pattern} is a directory but not a saved HF dataset; pass a glob")
            dirs.append(pattern)
            continue
        matched = FileSystems.match([pattern])[0].metadata_list
        if not matched:
            raise UserError(f"--input {pattern} matches no files")
        compressed += [m for m in matched if m.path.endswith(".gz") and m.size_in_bytes > split_size]
        files.append(pattern)
    if compressed:  # once per run, on the launcher
        big = max(compressed, key=lambda m: m.size_in_bytes)
        log.warning(
            "%d compressed input file(s) above the %s-byte split size (the largest: %s, %.1f MB) are each "
            "read whole by one worker: a gzip stream cannot be split; decompress them to read them in "
            "splits", len(compressed), f"{split_size:,}", Path(big.path).name, big.size_in_bytes / 1e6)
    return files, dirs
