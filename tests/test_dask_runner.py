"""``toolformer augment --runner dask`` (pipelines/dask_runner.py) against the in-process runner.

One 2-worker ``distributed.LocalCluster`` (processes, one thread each) is shared by the module.
The scripted tiny model and stub tool of tests/test_pipeline.py run on the same input under both
runners: the texts, candidates (losses, keep decisions) and errors records and the stats.json
counts must be identical (timings aside). The stub tool's class-level call counter lives in each
worker process, so records are compared, not calls. Also: ``--dask-workers 2`` (a local cluster
started and closed by the run) over two parts, a resume on Dask of a run that died on the local
runner, the runner's fixes of Beam's DaskRunner on a small pipeline, and the flags.
"""

from __future__ import annotations

import json

import pytest

from tests.test_pipeline import (  # noqa: F401  (scripted_dir, reset_stub: fixtures used here)
    BAD_LINES,
    DOCS,
    MANY,
    StubCalc,
    read_kind,
    reset_stub,
    run,
    scripted_dir,
    settings,
    without_timings,
)

distributed = pytest.importorskip("distributed")

# Tiny models are latency-bound: extra threads only contend on a 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")
KINDS = ("texts", "candidates", "errors")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as local:
        yield local.scheduler_address


@pytest.fixture(scope="module")
def direct(scripted_dir, tmp_path_factory):
    """The input of tests/test_pipeline.py's base run (good, bad and routed-out documents) and
    its run on the in-process runner."""
    tmp = tmp_path_factory.mktemp("direct")
    inp = tmp / "docs.jsonl"
    inp.write_bytes(
        b"\n".join([json.dumps(d).encode() for d in DOCS] + BAD_LINES + [json.dumps(d).encode() for d in MANY])
        + b"\n"
    )
    stats = run(settings(scripted_dir, "threads=1"), [inp], tmp / "run")
    return {"input": inp, "out": tmp / "run", "stats": stats}


def dask_run(s, inputs, out, *extra, resume=False, dask_workers=None):
    from pipelines.augment import run_augment

    return run_augment(s, [str(i) for i in inputs], str(out), resume, ["--runner", "dask", *extra],
                       dask_workers=dask_workers)


def assert_same_run(a, b):
    for kind in KINDS:
        assert read_kind(a, kind) == read_kind(b, kind), kind
    assert without_timings(json.loads((a / "stats.json").read_text())) == without_timings(
        json.loads((b / "stats.json").read_text())
    )


def counters(result, namespace: str) -> dict[tuple[str, str], int]:
    from apache_beam.metrics.metric import MetricsFilter

    found = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
    return {(c.key.step, c.key.metric.name): c.committed for c in found}


def test_dask_cluster_gives_the_direct_runners_records_and_counts(scripted_dir, direct, cluster, tmp_path):
    from pipelines.dask_runner import NAMESPACE

    out = tmp_path / "run"
    result, stats = dask_run(settings(scripted_dir, "threads=1"), [direct["input"]], out,
                             "--dask_client_address", cluster)
    assert_same_run(out, direct["out"])
    assert without_timings(stats) == without_timings(direct["stats"])
    assert stats["tools"]["Calc"]["kept"] == 19 and stats["documents"]["docs_bad"] == len(BAD_LINES)
    assert set(stats["stage_seconds"]) >= {"route", "score_positions", "sample_calls", "execute", "filter"}
    assert (out / "_SUCCESS").exists()
    # The model is set up once per worker process and step, not per bundle.
    mine = counters(result, NAMESPACE)
    model_steps = {step for step, name in mine if "RunInference" in step and name == "bundles"}
    assert len(model_steps) == 2  # ScoreAndSample and Filter
    for step in model_steps:
        assert mine[(step, "bundles")] >= 3 and 1 <= mine.get((step, "setups"), 0) <= 2, step


def test_dask_workers_starts_a_local_cluster_for_all_parts(scripted_dir, direct, tmp_path):
    """--dask-workers 2 over two parts and --limit (a side input: Top's default) against the
    direct runner with the same settings; the cluster is closed at the end."""
    s = settings(scripted_dir, "threads=1", "parts=2", "limit=9")
    run(s, [direct["input"]], tmp_path / "direct")
    result, _ = dask_run(s, [direct["input"]], tmp_path / "dask", dask_workers=2)
    assert_same_run(tmp_path / "dask", tmp_path / "direct")
    assert sorted(p.name for p in (tmp_path / "dask" / ".parts").glob("*.done")) == ["p0000.done", "p0001.done"]
    assert result.client.status == "closed"


def test_resume_on_dask_replays_the_journal_of_a_run_that_died(scripted_dir, direct, cluster, tmp_path):
    """A run dies on the local runner after some units; ``--resume`` on Dask replays the journal
    (JournalFiles, JoinJournal, Resume, FinishResumed) and ends with the uninterrupted records."""
    s = settings(scripted_dir, "threads=1", "max_batch_tokens=64")
    out = tmp_path / "run"
    StubCalc.exit_after = 12
    with pytest.raises(SystemExit, match="simulated exit"):
        run(s, [direct["input"]], out)
    assert list((out / ".journal" / "p0000").glob("*.jsonl"))
    StubCalc.exit_after = None
    result, stats = dask_run(s, [direct["input"]], out, "--dask_client_address", cluster, resume=True)
    for kind in KINDS:
        assert read_kind(out, kind) == read_kind(direct["out"], kind), kind
    assert without_timings(stats) == without_timings(direct["stats"])
    done = json.loads((out / ".parts" / "p0000.done").read_text())["stats"]
    assert done["units_resumed"] >= 2
    assert done["units_resumed"] + done["units_journaled"] == stats["tools"]["Calc"]["windows"]


def _split_fn():
    """A DoFn with a tagged output, a counter and an output in finish_bundle."""
    import apache_beam as beam
    from apache_beam.transforms.window import GlobalWindows

    class Split(beam.DoFn):
        def process(self, x):
            beam.metrics.Metrics.counter("test", "seen").inc()
            yield beam.pvalue.TaggedOutput("odd", x) if x % 2 else x

        def finish_bundle(self):
            yield GlobalWindows.windowed_value("end")

    return Split()


def test_runner_fixes_beams_dask_runner_gaps(cluster, tmp_path):
    """Every sink runs, tagged outputs are routed, metrics are counted, finish_bundle outputs are
    kept and a side input is computed once (the upstream DoFn sees each element once); the file
    sinks' orphaned temporary folders are deleted (a recomputed InitializeWrite leaves one), and
    only theirs."""
    import apache_beam as beam

    from pipelines.augment import pipeline_options

    orphans = [tmp_path / f"beam-temp-even-{'a' * 32}", tmp_path / f"beam-temp-ends-{'b' * 32}"]
    others = [tmp_path / f"beam-temp-evens-{'c' * 32}", tmp_path / "beam-temp-even-notauuid"]
    for folder in orphans + others:
        folder.mkdir()
    (orphans[0] / "shard-of-a-lost-bundle").write_text("x")
    p = beam.Pipeline(options=pipeline_options(["--runner", "dask", "--dask_client_address", cluster]))
    split = p | beam.Create(list(range(10))) | beam.ParDo(_split_fn()).with_outputs("odd", main="even")
    odd_sum = split.odd | beam.CombineGlobally(sum)
    evens = split.even | beam.Filter(lambda x: x != "end")
    (evens | beam.Map(lambda x, s: f"{x}+{s}", beam.pvalue.AsSingleton(odd_sum))
     | "WriteEven" >> beam.io.WriteToText(str(tmp_path / "even"), num_shards=1))
    split.even | beam.Filter(lambda x: x == "end") | "WriteEnds" >> beam.io.WriteToText(str(tmp_path / "ends"))
    result = p.run()
    result.wait_until_finish()
    even = sorted((tmp_path / "even-00000-of-00001").read_text().split())
    assert even == [f"{x}+25" for x in (0, 2, 4, 6, 8)]
    ends = [line for f in tmp_path.glob("ends-*") for line in f.read_text().split()]
    bundles = sum(n for (step, name), n in counters(result, "dask_runner").items()
                  if name == "bundles" and step.startswith("ParDo(Split)"))
    assert ends == ["end"] * bundles and bundles >= 2
    assert counters(result, "test") == {("ParDo(Split)/ParDo(Split)", "seen"): 10}
    assert sorted(result.sink_prefixes) == [str(tmp_path / "ends"), str(tmp_path / "even")]
    assert sorted(f.name for f in tmp_path.glob("beam-temp-*")) == sorted(f.name for f in others)


def test_a_task_whose_workers_all_died_fails_in_one_line_naming_its_step():
    """Dask's KilledWorker (the task's workers died more often than allowed-failures) as one line."""
    from types import SimpleNamespace

    from distributed import KilledWorker

    from pipelines.dask_runner import KILLED_WORKER_EXIT, DaskResult

    result = DaskResult(None, None, "run", {"_run_bundle-abc": "Part/Execute"})
    worker = SimpleNamespace(address="tcp://127.0.0.1:1234")
    e = result._killed(KilledWorker(("_run_bundle-abc", 3), worker, 3))
    assert str(e) == (
        "dask: the worker process running step 'Part/Execute' died 4 times "
        "(the last: tcp://127.0.0.1:1234; killed, out of memory or crashed: see its log) and Dask reruns a task 3 time(s) "
        "(distributed.scheduler.allowed-failures); rerun with --resume: finished parts are kept and "
        "the part's journaled units are not redone")
    assert e.exit_code == KILLED_WORKER_EXIT == 5
    unnamed = result._killed(KilledWorker(("shuffle-xyz", 0), worker, 0))
    assert "running task ('shuffle-xyz', 0) died 1 time " in str(unnamed)


def test_flags(tmp_path):
    from apache_beam.options.pipeline_options import StandardOptions

    from pipelines import dask_runner
    from pipelines.augment import augment, pipeline_options
    from pipelines.totals import in_process
    from toolformer.errors import UserError

    for args in (["--runner", "dask"], ["--runner=dask"], ["--runner=DaskRunner"]):
        options = pipeline_options(args)
        assert options.view_as(StandardOptions).runner == dask_runner.RUNNER
        assert not in_process(options)  # the model runs on the workers: no launcher-side totals
    assert dask_runner.runner_class().__mro__[1].__module__ == "apache_beam.runners.dask.dask_runner"
    assert dask_runner.join_flag_values(["--dask_client_address", "h:1", "--x=2"]) == [
        "--dask_client_address=h:1", "--x=2"]
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(DOCS[0]) + "\n")
    with pytest.raises(UserError, match="--dask-workers needs --runner dask"):
        augment(input=[str(inp)], output=str(tmp_path / "o"), dask_workers=2)
    with pytest.raises(UserError, match="cannot go with --dask_client_address"):
        augment(input=[str(inp)], output=str(tmp_path / "o"), dask_workers=2,
                extra_args=["--runner", "dask", "--dask_client_address", "127.0.0.1:1"])
    assert not (tmp_path / "o").exists()


def test_what_the_runner_cannot_run_is_refused_before_it_starts(cluster, tmp_path):
    """Windows other than the global one and stateful DoFns: one line naming the step, nothing run."""
    import apache_beam as beam
    from apache_beam.transforms.userstate import BagStateSpec
    from apache_beam.transforms.window import FixedWindows

    from pipelines.augment import pipeline_options
    from toolformer.errors import UserError

    class Stateful(beam.DoFn):
        SEEN = BagStateSpec("seen", beam.coders.VarIntCoder())

        def process(self, kv, seen=beam.DoFn.StateParam(SEEN)):
            yield kv

    options = ["--runner", "dask", "--dask_client_address", cluster]
    p = beam.Pipeline(options=pipeline_options(options))
    _ = p | beam.Create([1, 2]) | "Windows" >> beam.WindowInto(FixedWindows(10)) | beam.Map(str)
    with pytest.raises(UserError, match="runs the global window only; Windows.* outputs FixedWindows"):
        p.run()
    p = beam.Pipeline(options=pipeline_options(options))
    _ = p | beam.Create([("a", 1)]) | "Keep" >> beam.ParDo(Stateful())
    with pytest.raises(UserError, match=r"runs no stateful or splittable DoFn \(Keep\)"):
        p.run()

