"""The pipeline's input steps: parse matched files and saved datasets (``ReadDocs``), keep one
part's documents (``SelectPart``), and check ``--input`` on the launcher (:func:`split_inputs`).

Used by ``build_pipeline`` and ``run_augment`` in pipelines/augment.py; the parsing itself is in
pipelines/documents.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes

from pipelines.documents import DOC, InputLimits, input_limits, read_records
from pipelines.stages import DEAD, count, in_part, record_seconds
from toolformer.errors import UserError


class ParseFileFn(beam.DoFn):
    """Documents and dead letters of one matched file (or saved dataset directory).

    A file is streamed in chunks (``.gz`` decompressed by read_records, chunk by chunk) under
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

    files, dirs = [], []
    for pattern in patterns:
        if Path(pattern).is_dir():
            if (
                not (Path(pattern) / "dataset_info.json").is_file()
                and not (Path(pattern) / "state.json").is_file()
            ):
                raise UserError(f"--input {pattern} is a directory but not a saved HF dataset; pass a glob")
            dirs.append(pattern)
            continue
        if not FileSystems.match([pattern])[0].metadata_list:
            raise UserError(f"--input {pattern} matches no files")
        files.append(pattern)
    return files, dirs
