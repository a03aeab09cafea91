"""The Toolformer data-generation pipeline on Apache Beam, and the ``refilter`` command.

    toolformer augment --input 'data/*.jsonl' --output runs/r1 --tools calculator \\
        --override calculator.tau_s=0 --limit 20 [--resume] [any Beam pipeline option]
    python beam_runner.py --input ... --output ...          (the same flags)
    toolformer refilter runs/r1 runs/r1-tau1 --tau-f calculator=1.0

Steps (each a labelled transform; logic in pipelines/stages.py and toolformer/{sampling,filtering}):
ReadDocs -> SelectPart -> DedupeIds -> Route -> [JoinJournal -> Resume, on a resumed part] ->
ScoreAndSample (RunInference) -> CountSamples -> Execute -> Filter (RunInference) ->
CandidateRecords -> FinishUnit (counts, journals) -> JoinByDoc -> Merge -> Write*.

Resume. Each unit (document x tool x token window) is journaled by FinishUnit as soon as its
model work and tool calls are done, before the join by document (a barrier: nothing after it runs
until all model work is finished). ``--resume`` keeps an unfinished part's journal; the part's new
run joins the routed units with it, recomputes only the units not journaled, and replays the
journaled ones (records, dead letters, counts) through FinishUnit, so the records and stats.json
equal an uninterrupted run's.

Runners. The default is ``--runner=FnApiRunner`` (the DirectRunner first tries to download Prism);
it honours ``--direct_num_workers=N --direct_running_mode=multi_threading|multi_processing``
(multi-processing costs ~10 s of start-up). On a cluster pass the runner's own flags, e.g.
``--runner=FlinkRunner --flink_master=host:8081 --environment_type=LOOPBACK``,
``--runner=SparkRunner --spark_master_url=...`` or ``--runner=DataflowRunner --project=P
--region=R --temp_location=gs://B/tmp --sdk_container_image=IMAGE`` (an image with this package
installed). ``--runner dask --dask-workers N`` runs on a local Dask cluster started for the run,
``--runner dask --dask_client_address HOST:PORT`` on a running one (pipelines/dask_runner.py: a
Beam DaskRunner that runs this pipeline, and the upstream runner's gaps it works around).
The model reaches the workers by name: every worker calls ``load_model(--model)``, so
``--model`` must be a path or fetched name that exists on the workers (bake the fetched cache
into the worker image, or point --model at a shared file system); ``--override large_model=true``
loads one copy per machine shared by its worker processes.

Output. ``--output`` is a local path or any Beam file system URL the runner can write
(``gs://bucket/run``, ``s3://...``): the workers write the shards and the journal through Beam's
file sinks and file systems, and the launcher's run-directory bookkeeping (run.json, markers,
resume, stats.json, ``_SUCCESS``; pipelines/rundir.py) goes through the same ``FileSystems``, so
the launcher needs no access to the workers' disks. ``refilter`` reads and writes the same way.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio, iobase, parquetio, textio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import dask_runner, rundir
from pipelines.documents import DOC, InputLimits, input_limits, read_records
from pipelines.model_handler import AugmentModelHandler
from pipelines.settings import RunSettings, build_settings
from pipelines.totals import expected_units as totals_of
from pipelines.totals import in_process
from pipelines.stages import (
    DEAD,
    FINISHED,
    NAMESPACE,
    RESUMED,
    CandidateRecordsFn,
    CountSamplesFn,
    ExecuteFn,
    FinishUnitFn,
    MergeFn,
    ReadJournalFn,
    RouteFn,
    count,
    in_part,
    merge_document,
    record_seconds,
    resume_unit,
    unique_document,
    unit_key,
)
from toolformer.call_format import strip_calls
from toolformer.errors import UserError, raise_if_storage_full
from toolformer.filtering import keep_if_useful

log = logging.getLogger(__name__)


# --- Reading ----------------------------------------------------------------------------------


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


# --- Writing ----------------------------------------------------------------------------------


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


# --- The pipeline -----------------------------------------------------------------------------


def tool_setup(settings: RunSettings) -> dict[str, Any]:
    """Resolve ``--tools`` once on the launcher: names, prompt templates, per-tool settings."""
    from tools.base import resolve_tool

    specs, templates, takes_input, per_tool, config = {}, {}, {}, {}, {}
    for spec in settings.tools:
        cls, tool_config = resolve_tool(spec, settings.index)  # WikiSearch and QA get --index
        name = cls.name
        tool = cls(**tool_config)
        specs[name], config[name], takes_input[name] = spec, tool_config, cls.takes_input
        templates[name] = tool.prompt_template
        per_tool[name] = dict(settings.for_tool(spec).__dict__)
        # the examples the filter puts before each text with filter_context=prompt (results included)
        per_tool[name]["filter_examples"] = (
            tool.filter_examples() if per_tool[name]["filter_context"] == "prompt" else ""
        )
    return {
        "specs": specs,
        "templates": templates,
        "takes_input": takes_input,
        "settings": per_tool,
        "config": config,
    }


def build_pipeline(
    p: beam.Pipeline,
    inputs: tuple[list[str], list[str]],
    out: str,
    part: int,
    settings: RunSettings,
    tools: dict[str, Any],
    journal: list[str] | None = None,
    expected_units: int | None = None,
) -> None:
    """Add one part's run to ``p``; ``journal`` lists the part's journal files to replay (resume);
    ``expected_units``, where known (pipelines/totals.py), the units the model will sample."""
    files, dirs = inputs
    per_tool = tools["settings"]

    def handler(task: str) -> AugmentModelHandler:
        return AugmentModelHandler(
            task,
            settings.model,
            tools["templates"],
            per_tool,
            tools["takes_input"],
            settings.max_batch_tokens,
            settings.context_window,
            settings.large_model,
            threads=settings.threads,
            lazy_filter=settings.lazy_filter,
            expected_units=expected_units if task == "sample" else None,
        )

    read_files = (
        p
        | "InputPatterns" >> beam.Create(files)
        | "MatchFiles" >> fileio.MatchAll()
        | "OpenFiles" >> fileio.ReadMatches()
    )
    read_dirs = p | "InputDatasets" >> beam.Create(dirs)
    parsed = (
        (read_files, read_dirs)
        | "AllInputs" >> beam.Flatten()
        | "ReadDocs" >> beam.ParDo(ParseFileFn(settings.text_field)).with_outputs(DEAD, main="docs")
    )
    docs = parsed.docs
    if settings.limit is not None:
        docs = (
            docs
            | "Limit" >> beam.combiners.Top.Of(settings.limit, key=lambda d: d["doc_id"], reverse=True)
            | "Unlist" >> beam.FlatMap(lambda ds: ds)
        )
    docs = docs | "SelectPart" >> beam.ParDo(SelectPartFn(part, settings.parts, bad=False))
    bad = parsed[DEAD] | "SelectPartBad" >> beam.ParDo(SelectPartFn(part, settings.parts, bad=True))
    deduped = (
        docs
        | "KeyById" >> beam.Map(lambda d: (d["doc_id"], d))
        | "GroupById" >> beam.GroupByKey()
        | "DedupeIds" >> beam.FlatMap(unique_document).with_outputs(DEAD, main="docs")
    )
    docs = deduped.docs

    units = docs | "Route" >> beam.ParDo(
        RouteFn(
            tools["specs"],
            tools["config"],
            {n: s["window"] for n, s in per_tool.items()},
            settings.model,
            settings.seed,
        )
    )
    if journal:
        journaled = p | "JournalFiles" >> beam.Create(journal) | "ReadJournal" >> beam.ParDo(ReadJournalFn())
        joined = (
            {"units": units | "UnitsByKey" >> beam.Map(lambda u: (unit_key(u), u)), "journal": journaled}
            | "JoinJournal" >> beam.CoGroupByKey()
            | "Resume" >> beam.FlatMap(resume_unit).with_outputs(RESUMED, main="units")
        )
        units = joined.units
    sampled = (
        units
        | "ScoreAndSample" >> RunInference(handler("sample"))
        | "CountSamples" >> beam.ParDo(CountSamplesFn()).with_outputs(FINISHED, main="units")
    )
    executed = sampled.units | "Execute" >> beam.ParDo(
        ExecuteFn(
            tools["specs"], tools["config"], settings.tool_retries, {n: s["grounded"] for n, s in per_tool.items()}
        )
    )
    filtered = (
        executed
        | "Filter" >> RunInference(handler("filter"))
        | "CandidateRecords" >> beam.ParDo(CandidateRecordsFn({n: s["tau_f"] for n, s in per_tool.items()}))
    )
    # One FinishUnit per branch, no Flatten before it: a Flatten can end a fused stage (the local
    # runner then finishes all model work before journaling anything).
    journal_dir = rundir.journal_dir(out, part)
    branches = [("FinishUnit", filtered, journal_dir), ("FinishNoCandidates", sampled[FINISHED], journal_dir)]
    if journal:  # journaled units: counted and emitted again, not journaled again
        branches.append(("FinishResumed", joined[RESUMED], None))
    unit_records, unit_dead = [], []
    for label, pcoll, folder in branches:
        finished = pcoll | label >> beam.ParDo(FinishUnitFn(folder)).with_outputs(DEAD, main="records")
        unit_records.append(finished.records)
        unit_dead.append(finished[DEAD])
    records = unit_records | "AllRecords" >> beam.Flatten()
    texts = (
        {
            "docs": docs | "DocsById" >> beam.Map(lambda d: (d["doc_id"], d)),
            "records": records | "RecordsById" >> beam.Map(lambda r: (r["doc_id"], r)),
        }
        | "JoinByDoc" >> beam.CoGroupByKey()
        | "Merge" >> beam.ParDo(MergeFn())
    )
    errors = (bad, deduped[DEAD], *unit_dead) | "AllDeadLetters" >> beam.Flatten()

    texts_schema, cands_schema = parquet_schemas()
    texts | "WriteTexts" >> WriteRecords(out, "texts", part, settings.num_shards, texts_schema, _text_row)
    records | "WriteCandidates" >> WriteRecords(out, "candidates", part, settings.num_shards, cands_schema)
    errors | "WriteErrors" >> WriteRecords(out, "errors", part, settings.num_shards)


def metrics_of(result) -> dict[str, float]:
    """Counters and stage times (``time_ms:<stage>`` sums) of a finished pipeline."""
    from apache_beam.metrics.metric import MetricsFilter

    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    out: dict[str, float] = {}
    for c in found["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + value
    for d in found["distributions"]:
        value = d.committed if d.committed is not None else d.attempted
        out[d.key.metric.name] = out.get(d.key.metric.name, 0) + (value.sum if value else 0)
    return out


def summarise(flat: dict[str, float], tools: list[str], wall_s: float) -> dict[str, Any]:
    """stats.json: documents, per-tool counts (failures by reason), bad records and stage times."""
    per_tool = {}
    for tool in tools:
        get = lambda k, tool=tool: int(flat.get(f"{k}:{tool}", 0))
        prefix = f"tool_failures:{tool}:"
        failures = {k[len(prefix) :]: int(v) for k, v in sorted(flat.items()) if k.startswith(prefix)}
        per_tool[tool] = {
            k: get(k)
            for k in (
                "docs_routed",
                "windows",
                "positions",
                "samples",
                "unterminated",
                "unparsed",
                "duplicates",
                "candidates",
                "ungrounded",  # dropped before execution: the input is not written before the call
                "executed",
                "kept",
            )
        }
        per_tool[tool]["failures"] = failures
        per_tool[tool]["failed"] = sum(failures.values())
    return {
        "documents": {
            k: int(flat.get(k, 0))
            for k in (
                "docs_read",
                "docs_bad",
                "docs_truncated",
                "docs_duplicate_id",
                "texts_written",
                "texts_with_calls",
            )
        },
        "bad_records": {
            k.split(":", 1)[1]: int(v) for k, v in sorted(flat.items()) if k.startswith("bad_records:")
        },
        "tools": per_tool,
        "stage_seconds": {
            k.split(":", 1)[1]: round(v / 1000, 3)
            for k, v in sorted(flat.items())
            if k.startswith("time_ms:")
        },
        "wall_seconds": round(wall_s, 3),
    }


def check_failure_ratio(flat: dict[str, float], tools: list[str], settings: RunSettings, out: str) -> None:
    for tool in tools:
        executed = flat.get(f"executed:{tool}", 0)
        failed = sum(v for k, v in flat.items() if k.startswith(f"tool_failures:{tool}:"))
        if (
            executed >= settings.min_calls_for_ratio
            and executed
            and failed / executed > settings.max_failure_ratio
        ):
            raise UserError(
                f"tool {tool} failed {int(failed)} of {int(executed)} calls ({failed / executed:.0%}), "
                f"above max_failure_ratio {settings.max_failure_ratio:.0%}; see {out}/errors-*.jsonl",
                exit_code=3,
            )


def pipeline_options(extra_args: list[str] | None, save_main_session: bool = False) -> PipelineOptions:
    args = dask_runner.runner_args(list(extra_args or []))  # --runner dask: pipelines/dask_runner.py
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append("--runner=FnApiRunner")  # the DirectRunner would first try to download Prism
    options = PipelineOptions(args)
    options.view_as(beam.options.pipeline_options.SetupOptions).save_main_session = save_main_session
    return options


def output_dir(path: str, what: str = "--output") -> str:
    """``path`` as a run directory: a local path normalised, a URL checked against the installed
    Beam file systems and without a trailing ``/`` (names are joined to it with ``/``)."""
    from apache_beam.io.filesystems import FileSystems

    scheme = FileSystems.get_scheme(path)
    if scheme is None:
        return os.path.normpath(path)
    try:
        FileSystems.get_filesystem(path)
    except ValueError:
        raise UserError(
            f"{what} {path}: no Beam file system for {scheme}:// is installed "
            "(gs:// needs this package's gcp extra, apache-beam[gcp]; s3:// needs apache-beam[aws])"
        ) from None
    except OSError as e:  # installed, but it could not start
        raise UserError(f"{what} {path}: {e}") from None
    stripped = path.rstrip("/")
    return path if stripped.endswith(":") else stripped


def run_augment(
    settings: RunSettings,
    inputs: list[str],
    output: str,
    resume: bool = False,
    extra_args: list[str] | None = None,
    save_main_session: bool = False,
    dask_workers: int | None = None,
):
    """Run every part still to do, then write stats.json and _SUCCESS. Returns (result, stats).
    ``dask_workers``: with ``--runner dask``, the processes of the local cluster started for the run."""
    if not inputs:
        raise UserError("--input is required (one or more globs, files or saved dataset directories)")
    if not output:
        raise UserError("--output is required (the run directory)")
    dask_runner.check_flags(extra_args or [], dask_workers)
    from apache_beam.io.filesystems import FileSystems

    out = output_dir(output)
    # The launcher's own file system calls (rundir) get the pipeline's options too (e.g. s3 keys).
    FileSystems.set_options(pipeline_options(extra_args, save_main_session))
    split = split_inputs(inputs)
    tools = tool_setup(settings)
    # One writer per run directory: a second augment on it is refused; a crashed one's lock is taken over.
    with rundir.lock(out, "augment"), dask_runner.cluster(  # a local Dask cluster for all parts, where asked
        extra_args or [], dask_workers, needed=not rundir.exists(rundir.join(out, rundir.SUCCESS))
    ) as extra_args:
        return _run_parts(settings, split, out, tools, resume, extra_args, save_main_session)


def _run_parts(settings, split, out, tools, resume, extra_args, save_main_session):
    """run_augment under the run directory's lock: the parts still to do, stats.json, _SUCCESS."""
    todo = rundir.prepare(out, settings.to_json(), resume, settings.parts)
    result = None
    journals = {part: rundir.journal_files(out, part) for part in todo}
    # The progress lines' totals, where the model runs in this process (elsewhere a worker cannot be told).
    totals = {}
    if todo and in_process(pipeline_options(extra_args)):
        try:
            totals = totals_of(split, settings, tools, journals)
        except Exception as e:  # noqa: BLE001 - only the progress lines' totals are lost; the pipeline meets
            # the same document (a tool's heuristic that raises, say) where its errors are handled and counted.
            log.warning("progress without totals: counting the units failed (%s: %s)", type(e).__name__, e)
    for part in todo:
        t0 = time.perf_counter()
        p = beam.Pipeline(options=pipeline_options(extra_args, save_main_session))
        journal = journals[part]
        if journal:
            log.info("part %d: replaying %d journal file(s) of an interrupted run", part, len(journal))
        build_pipeline(p, split, out, part, settings, tools, journal, totals.get(part))
        result = p.run()
        result.wait_until_finish()
        flat = metrics_of(result)
        flat["wall_ms"] = (time.perf_counter() - t0) * 1000
        check_failure_ratio(flat, list(tools["specs"]), settings, out)
        rundir.mark_done(out, part, flat)
        rundir.drop_journal(out, part)
    if rundir.exists(rundir.join(out, rundir.SUCCESS)):
        return result, rundir.read_json(rundir.join(out, "stats.json"))
    total: dict[str, float] = {}
    for stats in rundir.part_stats(out, settings.parts):
        for k, v in stats.items():
            total[k] = total.get(k, 0) + v
    check_failure_ratio(total, list(tools["specs"]), settings, out)
    stats = summarise(total, list(tools["specs"]), total.get("wall_ms", 0) / 1000)
    rundir.finish(out, stats)
    return result, stats


def augment(
    input: list[str] | None = None,
    output: str | None = None,
    model: str | None = None,
    tools: str | None = None,
    index: str | None = None,
    limit: int | None = None,
    seed: int | None = None,
    resume: bool = False,
    text_field: str | None = None,
    parts: int | None = None,
    context_window: int | None = None,
    config: str | None = None,
    override: list[str] | None = None,
    dask_workers: int | None = None,
    extra_args: list[str] | None = None,
) -> int:
    """Add useful API calls to documents (sample, execute, filter, merge) on Apache Beam.

    Args:
        input: one or more globs of .jsonl/.json/.parquet/.txt files (optionally .gz) or saved HF
            dataset directories.
        output: the run directory (refused if it holds a run, unless --resume): a local path or
            any Beam file system URL, e.g. gs://bucket/run (the launcher writes there too).
        model: model name, directory or .gguf (default smollm2-135m; must exist on every worker).
        tools: comma-separated tool names or module:Class specs (default calculator).
        index: WikiSearch index directory.
        limit: process at most this many documents (the smallest ids).
        seed: sampling seed (default 0); records depend only on it, not on order or workers.
        resume: continue an interrupted run in --output (skips finished parts, and inside an
            unfinished part the units -- document x tool x token window -- already journaled).
        text_field: the input field holding the text (default text).
        parts: split the documents into this many resumable parts (default 1).
        context_window: cut the filter's left context to this many tokens (speed; not the paper).
        config: JSON file of settings ({"tools": {"calculator": {"tau_s": 0}}, "seed": 1, ...}).
        override: settings as name=value or tool.name=value (e.g. calculator.k=5 max_failure_ratio=0.8).
        dask_workers: with --runner dask, start a local Dask cluster of this many worker processes
            for the run (without it, --dask_client_address HOST:PORT joins a running cluster).
    """
    settings = build_settings(
        config,
        override,
        model=model,
        tools=tuple(tools.split(",")) if tools else None,
        index=index,
        limit=limit,
        seed=seed,
        text_field=text_field,
        parts=parts,
        context_window=context_window,
    )
    extra_args = dask_runner.join_flag_values(extra_args or [])  # `--runner dask` as `--runner=dask`
    bad = [a for a in extra_args if not a.startswith("-")]
    if bad:
        raise UserError(f"unexpected argument {bad[0]!r} (flags take the form --name=value)")
    logging.getLogger("toolformer.progress").setLevel(logging.INFO)  # units done, every 15 s
    _, stats = run_augment(settings, input or [], output or "", resume, extra_args, dask_workers=dask_workers)
    print(json.dumps(stats, indent=2))
    return 0


augment.passthrough = True


# --- Refilter ---------------------------------------------------------------------------------


def _read_jsonl(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        lines = rundir.read_bytes(path).split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        for n, line in enumerate(lines, start=1):
            try:
                rows.append(json.loads(line.decode("utf-8")))
            except ValueError as e:
                raise UserError(f"{path} line {n}: {e}") from None
    return rows


def _parquet_bytes(table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def check_settled(cands: list[dict], new_tau: dict[str, float], src: str) -> None:
    """Refuse a tau_f that candidates settled by lazy filtering cannot answer.

    Such a candidate (no error, ``loss_no_result`` null) holds L- = L(eps), an upper bound of the
    true L-, so its delta is an upper bound too: it stays rejected under any tau_f above that bound,
    and below it the true L- would be needed.
    """
    for tool, tau in sorted(new_tau.items()):
        bounds = [
            c["delta"]
            for c in cands
            if c["tool"] == tool and c["error"] is None and c["loss_no_result"] is None
        ]
        if bounds and max(bounds) >= tau:
            raise UserError(
                f"--tau-f {tool}={tau}: {src} was filtered lazily (lazy_filter) and {len(bounds)} {tool} "
                f"candidates hold only an upper bound of L-; tau_f must be above {max(bounds):.6f}, "
                "or rerun augment without lazy_filter"
            )


def apply_grounding(cands: list[dict], texts: dict[str, str], rules: dict[str, bool], src: str) -> None:
    """``refilter --grounded TOOL=true|false``: switch the no-answers-from-the-future rule per tool.

    true: a candidate whose input is not written before it (judged on its document's text before the
    call, :meth:`tools.base.Tool.grounded`) is ``dropped`` and not kept; false: dropped candidates come
    back -- possible only where their losses were computed (a run made without the rule)."""
    from tools.base import tool_class

    for tool, required in sorted(rules.items()):
        mine = [c for c in cands if c["tool"] == tool]
        if not required:
            lost = [c for c in mine if c.get("dropped") == "ungrounded" and c.get("loss_plus") is None]
            if lost:
                raise UserError(f"--grounded {tool}=false: {src} dropped {len(lost)} {tool} candidates before the "
                                "filter, so they have no losses; rerun augment with TOOL.grounded=false")
            for c in mine:
                c["dropped"] = None
            continue
        try:
            checker = tool_class(tool).__new__(tool_class(tool))  # the rule needs no tool resources
        except KeyError as e:
            raise UserError(f"--grounded: {e.args[0]}") from None
        for c in mine:
            c["grounded"] = bool(checker.grounded(c["input"], texts.get(c["doc_id"], "")[: c["position"]]))
            if not c["grounded"]:
                c["dropped"], c["kept"] = "ungrounded", False


def refilter(run: str, output: str, tau_f: list[str] | None = None, grounded: list[str] | None = None) -> int:
    """Apply new tau_f thresholds to a finished run's candidates, without recomputing anything.

    Args:
        run: a finished augment run directory (holds _SUCCESS); a local path or a Beam file system
            URL, as for augment --output.
        output: a new directory for the re-filtered texts, candidates, stats.json and _SUCCESS
            (a local path or a Beam file system URL).
        tau_f: new thresholds as TOOL=VALUE (tool names as in the candidates, e.g. Calculator=1.0);
            tools not named keep their threshold.
        grounded: TOOL=true|false: require (or not) that a call's input is written before it (the
            Calculator's numbers, MT's text); false needs a run whose candidates were all filtered.
    """
    import pyarrow as pa

    src, out = output_dir(run, "RUN"), output_dir(output, "OUTPUT")
    if not rundir.exists(rundir.join(src, rundir.SUCCESS)):
        raise UserError(f"{src} is not a finished augment run (no {rundir.SUCCESS})")
    if rundir.is_local(out) and os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--output {out} exists and is not a directory")
    if rundir.has_files(out):
        raise UserError(f"--output {out} already exists and is not empty; choose a new directory")
    new_tau: dict[str, float] = {}
    for item in tau_f or []:
        tool, sep, value = item.partition("=")
        try:
            new_tau[tool] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise UserError(f"--tau-f {item!r}: expected TOOL=NUMBER, e.g. Calculator=1.0")
    cands = _read_jsonl(rundir.match(rundir.join(src, "candidates-*.jsonl")))
    texts = _read_jsonl(rundir.match(rundir.join(src, "texts-*.jsonl")))
    unknown = set(new_tau) - {c["tool"] for c in cands}
    if unknown:
        raise UserError(f"--tau-f names tools with no candidates in {src}: {', '.join(sorted(unknown))}")
    check_settled(cands, new_tau, src)
    rules: dict[str, bool] = {}
    for item in grounded or []:
        tool, sep, value = item.partition("=")
        if not sep or value.lower() not in ("true", "false"):
            raise UserError(f"--grounded {item!r}: expected TOOL=true or TOOL=false, e.g. Calculator=true")
        rules[tool] = value.lower() == "true"
    by_doc: dict[str, list[dict]] = {}
    for c in cands:
        if c["tool"] in new_tau or c["tool"] in rules:
            c["threshold"] = new_tau.get(c["tool"], c["threshold"])
            c["kept"] = c["error"] is None and c.get("loss_plus") is not None and keep_if_useful(
                c["loss_plus"], c["loss_minus"], c["threshold"])
    if rules:
        apply_grounding(cands, {t["doc_id"]: strip_calls(t["text"]) for t in texts}, rules, src)
    for c in cands:
        by_doc.setdefault(c["doc_id"], []).append(c)
    new_texts = []
    for t in texts:
        doc = {k: v for k, v in t.items() if k != "calls"}
        doc["text"] = strip_calls(t["text"])  # the inserted calls come out; the document is neutralised
        new_texts.append(merge_document(doc, by_doc.get(t["doc_id"], [])))
    rundir.mkdirs(out)
    texts_schema, cands_schema = parquet_schemas()
    for kind, rows, schema, to_row in (
        ("texts", new_texts, texts_schema, _text_row),
        ("candidates", cands, cands_schema, lambda r: r),
    ):
        name = f"{kind}-p0000-00000-of-00001"
        rundir.write_bytes(
            rundir.join(out, f"{name}.jsonl"), "".join(to_json(r) + "\n" for r in rows).encode("utf-8")
        )
        table = pa.Table.from_pylist([to_row(r) for r in rows], schema=schema)
        rundir.write_bytes(rundir.join(out, f"{name}.parquet"), _parquet_bytes(table))
    kept: dict[str, int] = {}
    for c in cands:
        kept[c["tool"]] = kept.get(c["tool"], 0) + int(c["kept"])
    stats = {
        "source": src,
        "tau_f": new_tau,
        "kept": kept,
        "texts_written": len(new_texts),
        "texts_with_calls": sum(bool(t["calls"]) for t in new_texts),
    }
    rundir.finish(out, stats)
    print(json.dumps(stats, indent=2))
    return 0
