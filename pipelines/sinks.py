"""The pipeline's writers: JSONL and Parquet shards of texts, candidates and errors (``Write*``).

:class:`WriteRecords` writes ``<kind>-pNNNN-SSSSS-of-NNNNN`` shards through Beam's file sinks, whose
writers name the shard on a failed write for lack of room (:class:`_ShardWriter`);
:func:`parquet_schemas`, :func:`to_json` and :func:`_text_row` give the shards' format, shared
with ``refilter`` (pipelines/refilter.py).
"""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.io import iobase, parquetio, textio

from pipelines import rundir
from toolformer.errors import raise_if_storage_full


def to_json(record: dict) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


def _text_row(rec: dict) -> dict:
    meta = {k: v for k, v in rec.items() if k not in ("doc_id", "text", "calls")}
    return {"doc_id": rec["doc_id"], "text": rec["text"], "calls": rec["calls"], "metadata": to_json(meta)}


def parquet_schemas():
    import pyarrow as pa

    call = pa.struct(
        [("tool", pa.string()), ("input", pa.string()), ("result", pa.string()), ("position", pa.int64())]
    )
    texts = pa.schema(
        [("doc_id", pa.string()), ("text", pa.string()), ("calls", pa.list_(call)), ("metadata", pa.string())]
    )
    f64 = pa.float64()
    cands = pa.schema(
        [
            ("doc_id", pa.string()),
            ("tool", pa.string()),
            ("window_offset", pa.int64()),
            ("position", pa.int64()),
            ("token_position", pa.int64()),
            ("call", pa.string()),
            ("input", pa.string()),
            ("result", pa.string()),
            ("error", pa.string()),
            ("threshold", f64),
            ("loss_plus", f64),
            ("loss_minus", f64),
            ("loss_empty", f64),
            ("loss_no_result", f64),
            ("delta", f64),
            ("kept", pa.bool_()),
            ("grounded", pa.bool_()),
            ("dropped", pa.string()),
        ]
    )
    return texts, cands


class _ShardWriter(iobase.Writer):
    """A Beam file sink's writer whose failed writes for lack of room (disk full, file too large)
    raise :class:`~toolformer.errors.StorageFull` naming the shard being written. The shard is a
    temporary file of the runner's (``beam-temp-*``, renamed into place only once the whole step
    succeeds), and the part has no marker yet, so nothing of it counts as done."""

    def __init__(self, writer):
        self.writer = writer

    def _failed(self, e: Exception) -> None:
        path = getattr(self.writer, "temp_shard_path", None)
        raise_if_storage_full(e, path, rundir.RESUME_HINT)

    def write(self, value):
        try:
            self.writer.write(value)
        except Exception as e:
            self._failed(e)
            raise

    def at_capacity(self):
        return self.writer.at_capacity()

    def close(self):
        try:
            return self.writer.close()
        except Exception as e:
            self._failed(e)
            raise


class _NamedShards:
    """Mixin for a Beam file sink: its writers are :class:`_ShardWriter` (errors name the shard)."""

    def open_writer(self, init_result, uid):
        return _ShardWriter(super().open_writer(init_result, uid))


class _TextShards(_NamedShards, textio._TextSink):
    pass


class _ParquetShards(_NamedShards, parquetio._ParquetSink):
    pass


def _name_failed_writes(write, sink_class):
    """``write`` (WriteToText/WriteToParquet) with its sink's writers naming the shard on a failed
    write (:class:`_ShardWriter`). Beam builds the sink inside the transform, so its class is swapped
    for our subclass (same state, one more method); left as it is if a Beam version builds another."""
    sink = getattr(write, "_sink", None)
    if sink is not None and type(sink) is sink_class.__bases__[-1]:
        sink.__class__ = sink_class
    return write


class WriteRecords(beam.PTransform):
    """JSONL shards (and optionally Parquet copies) named ``<kind>-pNNNN-SSSSS-of-NNNNN``."""

    def __init__(self, out: str, kind: str, part: int, num_shards: int, schema=None, to_row=None):
        super().__init__()
        self.prefix = f"{out}/{kind}-{rundir.part_name(part)}"
        self.num_shards, self.schema, self.to_row = num_shards, schema, to_row

    def expand(self, pcoll):
        pcoll | "Jsonl" >> (
            beam.Map(to_json)
            | _name_failed_writes(
                beam.io.WriteToText(self.prefix, file_name_suffix=".jsonl", num_shards=self.num_shards),
                _TextShards,
            )
        )
        if self.schema is not None:
            rows = pcoll | "ToRow" >> beam.Map(self.to_row) if self.to_row else pcoll
            rows | "Parquet" >> _name_failed_writes(
                beam.io.WriteToParquet(
                    self.prefix, self.schema, file_name_suffix=".parquet", num_shards=self.num_shards
                ),
                _ParquetShards,
            )
