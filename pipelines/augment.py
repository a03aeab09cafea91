"""The Toolformer data-generation pipeline on Apache Beam (``toolformer augment``).

    toolformer augment --input 'data/*.jsonl' --output runs/r1 --tools calculator \\
        --override calculator.tau_s=0 --limit 20 [--resume] [any Beam pipeline option]
    python beam_runner.py --input ... --output ...          (the same flags)
    toolformer refilter runs/r1 runs/r1-tau1 --tau-f calculator=1.0     (pipelines/refilter.py)

Steps (each a labelled transform; logic in pipelines/stages.py and toolformer/{sampling,filtering};
reading in pipelines/inputs.py, writing in pipelines/sinks.py, stats.json in pipelines/stats.py):
SplitFiles -> SpreadSplits -> ReadDocs -> SelectPart -> DedupeIds -> Route -> [JoinJournal -> Resume, on a resumed part] ->
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
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import dask_runner, rundir
from pipelines.inputs import ParseFileFn, SelectPartFn, SplitFileFn, SpreadSplits, dataset_split, split_inputs
from pipelines.model_handler import AugmentModelHandler
from toolformer.augment import model_plan
from pipelines.refilter import check_settled, refilter  # re-exported (see __all__)
from pipelines.settings import RunSettings, build_settings
from pipelines.sinks import WriteRecords, _text_row, parquet_schemas
from pipelines.stats import check_failure_ratio, metrics_of, summarise
from pipelines.totals import expected_units as totals_of
from pipelines.totals import in_process
from pipelines.stages import (
    DEAD,
    FINISHED,
    RESUMED,
    CandidateRecordsFn,
    CountSamplesFn,
    ExecuteFn,
    FinishUnitFn,
    MergeFn,
    ReadJournalFn,
    RouteFn,
    resume_unit,
    unique_document,
    unit_key,
)
from toolformer.errors import UserError

log = logging.getLogger(__name__)

# The commands and the pipeline, and the names other code imports from here that now live in the
# steps' modules: split_inputs, ParseFileFn (pipelines/inputs.py), refilter, check_settled
# (pipelines/refilter.py).
__all__ = [
    "ParseFileFn",
    "augment",
    "build_pipeline",
    "check_settled",
    "output_dir",
    "pipeline_options",
    "refilter",
    "run_augment",
    "split_inputs",
    "tool_setup",
]


# --- The pipeline -----------------------------------------------------------------------------


def tool_setup(settings: RunSettings) -> dict[str, Any]:
    """Resolve ``--tools`` once on the launcher: each tool's spec and configuration (what a worker
    builds it from) and the :class:`~toolformer.augment_model.ModelPlan` (prompt templates,
    per-tool settings) the model stages load from; ``settings``: the per-tool settings by name."""
    from tools.base import resolve_tool

    specs, config, tools = {}, {}, {}
    for spec in settings.tools:
        cls, tool_config = resolve_tool(spec, settings.index)  # WikiSearch and QA get --index
        specs[cls.name], config[cls.name], tools[cls.name] = spec, tool_config, cls(**tool_config)
    plan = model_plan(tools, settings, specs)
    return {"specs": specs, "config": config, "plan": plan, "settings": dict(plan.tool_settings)}


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
            tools["plan"],
            settings.large_model,
            threads=settings.threads,
            expected_units=expected_units if task == "sample" else None,
        )

    # Input in splits (pipelines/inputs.py): each matched file as byte ranges, row groups or whole,
    # spread over the workers, each split read by one worker.

    read_files = (
        p
        | "InputPatterns" >> beam.Create(files)
        | "MatchFiles" >> fileio.MatchAll()
        | "SplitFiles" >> beam.ParDo(SplitFileFn())
    )
    read_dirs = p | "InputDatasets" >> beam.Create(dirs) | "DatasetSplits" >> beam.Map(dataset_split)
    parsed = (
        (read_files, read_dirs)
        | "AllInputs" >> beam.Flatten()
        | "SpreadSplits" >> SpreadSplits()
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
