"""Beam pipelines on a Dask cluster: ``toolformer augment --runner dask``.

    toolformer augment ... --runner dask --dask-workers 2              # a local cluster for the run
    toolformer augment ... --runner dask --dask_client_address HOST:8786   # join a running one

``--runner dask`` (or ``DaskRunner``) selects :class:`DaskRunner` below, a subclass of Beam's own
``apache_beam.runners.dask.dask_runner.DaskRunner`` (experimental in Beam 2.77) that keeps its
options (:class:`~apache_beam.runners.dask.dask_runner.DaskOptions`: ``--dask_client_address``,
``--dask_scheduler_file``, ``--dask_connection_timeout``, ``--dask_client_name``,
``--dask_npartitions``...) and its approach (each Beam step becomes a ``dask.bag`` operation, a
bundle is a bag partition) but translates the pipeline itself, because the upstream translation
does not run this pipeline correctly. ``--dask-workers N`` (augment's flag, not a Beam option)
starts a ``distributed.LocalCluster(n_workers=N, threads_per_worker=1, processes=True)`` once for
the whole run -- every part's pipeline joins it -- and closes it at the end (:func:`cluster`);
``--runner dask`` with neither flag starts one worker per CPU.

What Beam's DaskRunner lacks (Beam 2.77.0 with dask/distributed 2026.8.0; none of it is a version
clash -- the two import and run together -- these are gaps of the upstream runner), and what this
module does instead (each could go upstream as it is written here):

1. Only the last step is computed: ``run_pipeline`` computes the bag of the last transform
   visited, so of three sinks (texts, candidates, errors) two never run. Here every step's
   bundles are computed: all ParDo outputs feed one final collection (the bundles' metrics,
   item 3), so nothing is left out and each task runs once.
2. Tagged outputs are not routed: a consumer of ``parsed[DEAD]`` receives the producer's whole
   bag, main outputs included. Here a ParDo's bundle keeps ``(tag, value)`` pairs and each output
   PCollection is the selection of its tag.
3. No metrics: ``DaskRunnerResult.metrics()`` raises ``NotImplementedError``, and no
   ``MetricsContainer`` is installed on the workers, so ``Metrics.counter(...).inc()`` is a no-op.
   stats.json is built from Beam metrics, so here each bundle runs under a ``MetricsContainer``
   and returns its cumulative updates with its outputs; the launcher merges them into a
   ``DirectMetrics`` (``result.metrics()``). The counts are data, not side effects: a task that
   Dask reruns (a lost worker) replaces its updates instead of adding to them.
4. Outputs of ``finish_bundle`` are lost (the bundle's results are read before
   ``finish_bundle`` runs) -- ``BatchElements``, and so ``RunInference``, emits its last batch
   there. Here Beam's ``DoFnRunner`` runs the bundle and every output is kept.
5. Side inputs are recomputed: each access iterates the side input's bag inside the task, which
   reruns everything upstream of it (for a file sink: the whole pipeline, model included, and
   ``initialize_write`` again -- a new temporary directory each time). Here a side input is one
   ``dask.bag`` reduction, an input of the consuming tasks: computed once, shared. It is passed
   as a ``Delayed`` (``to_delayed(optimize_graph=False)``): a dask collection passed to
   ``map_partitions`` is re-keyed by dask (``ProhibitReuse``), which also computes everything
   upstream of it twice; the graph is computed unoptimised, so no task is re-keyed or fused.
6. ``setup``/``teardown`` run around every bundle, so ``RunInference`` would load the model per
   bundle. Here set-up DoFn instances are kept per worker process (a pool per step and run, one
   instance per thread at a time): the model is loaded once per worker process and step, and the
   instances are torn down when the run ends (``Client.run`` on every worker).
7. GroupByKey keeps the input's partition count (1 for a single input file: one worker does
   everything) and, without a distributed scheduler, uses a disk shuffle local to one machine.
   Here every GroupByKey repartitions to ``--dask_npartitions`` (default: twice the cluster's
   worker threads) and shuffles through the task graph (``shuffle="tasks"``, hashing keys with
   ``dask.base.tokenize``: the same in every process, unlike ``hash()`` of a ``str``).
8. The Dask client is never closed. Here it is closed when the run ends.
9. Workers do not get the pipeline options for Beam's file systems (``FileSystems.set_options``;
   s3 credentials, say). Here each worker process sets them once per run.
10. (Not Beam's, Dask's: a worker configures logging for ``distributed`` only.) The progress lines
   (``toolformer.progress``) reach each worker's stderr at the launcher's level.

Still not supported, refused when the pipeline is translated (none is used by ``augment``):
windowing other than the global window (values travel without timestamps or windows), stateful
and splittable DoFns, timers, ``beam.io.Read`` sources and any other primitive transform.
Bundle finalizers are not called. Resume: a bundle is one Dask task that finishes each step over
its whole partition before the next one starts, so the unit journal (FinishUnit) is written per
partition (when its model work is done), not unit by unit as the in-process runner streams it; a
resumed part redoes the partitions that had not reached FinishUnit. More partitions
(``--dask_npartitions``) journal in smaller steps but give the model smaller batches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.pipeline import PipelineVisitor, PTransformOverride
from apache_beam.runners.common import Receiver
from apache_beam.runners.runner import PipelineResult, PipelineState

from toolformer.errors import UserError

log = logging.getLogger(__name__)

RUNNER = "pipelines.dask_runner.DaskRunner"  # what --runner dask / DaskRunner becomes
ALIASES = ("dask", "daskrunner", "apache_beam.runners.dask.dask_runner.daskrunner")
NAMESPACE = "dask_runner"  # this runner's own counters (setups, bundles); never in stats.json
INSTALL_HINT = "the Dask runner needs dask and distributed: pip install 'dask[distributed]>=2024.4.2'"


# --- Flags (the launcher's side) --------------------------------------------------------------


def join_flag_values(args: list[str]) -> list[str]:
    """``--name value`` as ``--name=value`` (a value is a token not starting with ``-`` right
    after a flag without ``=``), so ``--runner dask`` and ``--dask_client_address HOST:PORT``
    read as their ``=`` forms do."""
    out: list[str] = []
    for a in args:
        if out and not a.startswith("-") and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={a}"
        else:
            out.append(a)
    return out


def runner_args(args: list[str]) -> list[str]:
    """``args`` with ``--runner dask`` (or ``DaskRunner``) naming :class:`DaskRunner`."""
    out = []
    for a in join_flag_values(args):
        name, sep, value = a.partition("=")
        if name == "--runner" and sep and value.lower() in ALIASES:
            a = f"--runner={RUNNER}"
        out.append(a)
    return out


def is_dask(args: list[str]) -> bool:
    return f"--runner={RUNNER}" in runner_args(args)


def _has_cluster(args: list[str]) -> bool:
    names = {a.partition("=")[0] for a in join_flag_values(args)}
    return bool(names & {"--dask_client_address", "--dask_scheduler_file"})


def check_flags(args: list[str], workers: int | None) -> None:
    """Refuse what cannot work, before anything runs: ``--dask-workers`` without ``--runner
    dask`` or beside a cluster address; the Dask runner without dask installed."""
    if workers is not None and workers < 1:
        raise UserError(f"--dask-workers {workers}: must be at least 1")
    if not is_dask(args):
        if workers is not None:
            raise UserError("--dask-workers needs --runner dask")
        return
    if workers is not None and _has_cluster(args):
        raise UserError("--dask-workers starts a local cluster; it cannot go with --dask_client_address "
                        "or --dask_scheduler_file (which join a running one)")
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UserError(INSTALL_HINT) from None


@contextlib.contextmanager
def cluster(args: list[str], workers: int | None, needed: bool = True) -> Iterator[list[str]]:
    """The pipeline arguments for the run: where the Dask runner has no cluster to join, a
    ``LocalCluster`` of ``workers`` processes (default: one per CPU) of one thread each is started
    for the whole run (every part joins it) and closed after; the arguments then name it."""
    if not needed or not is_dask(args) or _has_cluster(args):
        yield list(args)
        return
    import distributed

    n = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    with distributed.LocalCluster(
        n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as local:
        log.info("dask: local cluster of %d worker processes at %s (%.1f s to start)",
                 n, local.scheduler_address, time.perf_counter() - t0)
        yield [*args, f"--dask_client_address={local.scheduler_address}"]


# --- The runner -------------------------------------------------------------------------------


def _overrides() -> list[PTransformOverride]:
    """Composites replaced by the primitives translated here (those of Beam's Dask runner, except
    GroupByKey: one primitive, not ReifyWindows + GroupByKeyOnly + GroupAlsoByWindow)."""
    from apache_beam.runners.dask import overrides as o

    def override(cls, make):
        class Override(PTransformOverride):
            def matches(self, applied):
                return applied.transform.__class__ == cls

            def get_replacement_transform_for_applied_ptransform(self, applied):
                return make(applied.transform)

        return Override()

    return [
        override(beam.Create, lambda t: o._Create(t.values)),
        override(beam.Reshuffle, lambda t: o._Reshuffle()),
        override(beam.io.Read, lambda t: o._Read(t.source)),
        override(beam.GroupByKey, lambda t: o._GroupByKeyOnly()),
        override(beam.Flatten, lambda t: o._Flatten()),
    ]


_runner_class = None


def __getattr__(name: str):
    """``DaskRunner`` is made on first use (Beam looks the ``--runner`` class up by name), so that
    this module -- its flag helpers, used by every augment run -- imports without dask installed."""
    if name == "DaskRunner":
        return runner_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def runner_class():
    """The runner: a subclass of Beam's DaskRunner (its options, its bag-per-step approach) with
    the pipeline translated here (see the module doc for what differs)."""
    global _runner_class
    if _runner_class is None:
        from apache_beam.runners.dask.dask_runner import DaskRunner as BeamDaskRunner

        class DaskRunner(BeamDaskRunner):
            __module__ = __name__
            __doc__ = runner_class.__doc__
            run_pipeline = _run_pipeline

        _runner_class = DaskRunner
    return _runner_class


def _run_pipeline(self, pipeline, options):
    import distributed
    from apache_beam.runners.dask.dask_runner import DaskOptions

    dask_options = options.view_as(DaskOptions).get_all_options(drop_default=True, current_only=True)
    npartitions = dask_options.pop("npartitions", None)
    partition_size = dask_options.pop("partition_size", None)
    client = distributed.Client(**dask_options)
    try:
        if not npartitions:
            npartitions = 2 * max(1, sum(client.nthreads().values()))
        pipeline.replace_all(_overrides())
        client.run(_worker_logging, _LOGGERS, logging.getLogger(_LOGGERS[0]).getEffectiveLevel())
        run_id = uuid.uuid4().hex
        translator = _Translator(run_id, npartitions, partition_size, options)
        pipeline.visit(translator)
        # Unoptimised: one task per step and bundle, none fused or re-keyed (see the module doc, 5).
        future = client.compute(translator.result(), optimize_graph=False)
    except BaseException:
        client.close()
        raise
    return DaskResult(client, future, run_id)


class DaskResult(PipelineResult):
    """A running pipeline: ``wait_until_finish`` gathers the bundles' metrics (raising a step's
    error as the step raised it), tears down the run's DoFns on the workers and closes the client."""

    def __init__(self, client, future, run_id: str):
        super().__init__(PipelineState.RUNNING)
        from apache_beam.runners.direct.direct_metrics import DirectMetrics

        self.client, self.future, self.run_id = client, future, run_id
        self._metrics = DirectMetrics()

    def wait_until_finish(self, duration=None):
        if self._state != PipelineState.RUNNING:
            return self._state
        try:
            bundles = self.future.result(timeout=None if duration is None else duration / 1000)
            for b in bundles:
                self._metrics.commit_logical(None, b.updates)
                self._metrics.commit_physical(None, b.updates)
            self._state = PipelineState.DONE
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            self._close()
        return self._state

    def _close(self):
        try:
            self.client.cancel(self.future)
            self.client.run(_release_run, self.run_id)
        except Exception as e:  # noqa: BLE001 - a worker gone: nothing of the run is left on it
            log.debug("dask: releasing run %s: %s", self.run_id, e)
        finally:
            self.client.close()

    def cancel(self):
        self._state = PipelineState.CANCELLED
        self._close()
        return self._state

    def metrics(self):
        return self._metrics


class _Translator(PipelineVisitor):
    """Each primitive transform as ``dask.bag`` operations; ``bags`` maps PCollections to bags."""

    def __init__(self, run_id: str, npartitions: int, partition_size: int | None, options):
        from apache_beam.internal import pickler

        self.run_id, self.npartitions, self.partition_size = run_id, npartitions, partition_size
        self.options = pickler.dumps(options)
        self.bags: dict[Any, Any] = {}
        self.bundle_metrics: list[Any] = []

    def result(self):
        import dask.bag as db

        if not self.bundle_metrics:
            return db.from_sequence([], npartitions=1)
        return db.concat(self.bundle_metrics)

    def visit_transform(self, node) -> None:
        from apache_beam.runners.dask import overrides as o

        t = node.transform
        if isinstance(t, beam.ParDo):
            return self._pardo(node)
        if isinstance(t, o._Create):
            return self._set(node, self._create(list(t.values)))
        if isinstance(t, o._Flatten):
            return self._set(node, self._flatten([self.bags[p] for p in node.main_inputs.values()]))
        if isinstance(t, o._GroupByKeyOnly):
            return self._set(node, self._group_by_key(self._input(node)))
        if isinstance(t, o._Reshuffle):
            return self._set(node, self._input(node))
        raise UserError(
            f"the Dask runner cannot run {type(t).__name__} ({node.full_label}); it runs ParDo, "
            "Create, Flatten, GroupByKey and Reshuffle (see pipelines/dask_runner.py)"
        )

    # -- helpers

    def _input(self, node):
        [pcoll] = node.main_inputs.values()
        return self.bags[pcoll]

    def _set(self, node, bag) -> None:
        for pcoll in node.outputs.values():
            self._check_windowing(node, pcoll)
            self.bags[pcoll] = bag

    @staticmethod
    def _check_windowing(node, pcoll) -> None:
        from apache_beam.transforms.window import GlobalWindows

        if not isinstance(pcoll.windowing.windowfn, GlobalWindows):
            raise UserError(
                f"the Dask runner runs the global window only; {node.full_label} outputs "
                f"{type(pcoll.windowing.windowfn).__name__}"
            )

    def _create(self, values: list):
        import dask.bag as db

        if not values:
            return db.from_sequence([], npartitions=1)
        if self.partition_size:
            return db.from_sequence(values, partition_size=self.partition_size)
        return db.from_sequence(values, npartitions=min(len(values), self.npartitions))

    def _flatten(self, bags: list):
        import dask.bag as db

        return db.concat(bags) if bags else db.from_sequence([], npartitions=1)

    def _group_by_key(self, bag):
        if bag.npartitions != self.npartitions:
            bag = bag.repartition(npartitions=self.npartitions)
        return bag.groupby(_key_of, shuffle="tasks").map(_grouped)

    def _pardo(self, node) -> None:
        from apache_beam.internal import pickler
        from apache_beam.runners.common import DoFnSignature
        from apache_beam.transforms.userstate import is_stateful_dofn

        t = node.transform
        if is_stateful_dofn(t.fn) or DoFnSignature(t.fn).is_splittable_dofn():
            raise UserError(
                f"the Dask runner runs no stateful or splittable DoFn ({node.full_label})")
        [main] = node.main_inputs.values()
        views = [(type(si), si._view_options()) for si in t.side_inputs]
        spec = pickler.dumps((t.fn, t.args, t.kwargs, views, main.windowing, self.options))
        # Each side input once, as a Delayed: a dask collection among map_partitions' arguments
        # would be re-keyed (dask's ProhibitReuse), and everything upstream of it computed twice.
        sides = [
            self.bags[si.pvalue].reduction(list, _concat, split_every=False).to_delayed(optimize_graph=False)
            for si in t.side_inputs
        ]
        key = (self.run_id, node.full_label)
        raw = self.bags[main].map_partitions(_run_bundle, key, spec, *sides)
        for tag, pcoll in node.outputs.items():
            self._check_windowing(node, pcoll)
            self.bags[pcoll] = raw.map_partitions(_select, tag)
        self.bundle_metrics.append(raw.map_partitions(_metrics_only))


# --- On the workers ---------------------------------------------------------------------------


class _BundleMetrics:
    """The cumulative metric updates of one bundle (one task), among its outputs."""

    def __init__(self, updates):
        self.updates = updates


def _key_of(kv):
    return kv[0]


def _grouped(keyed):
    key, kvs = keyed
    return key, [v for _, v in kvs]


def _concat(lists):
    return [x for part in lists for x in part]


def _select(part, tag):
    return [x[1] for x in part if not isinstance(x, _BundleMetrics) and x[0] == tag]


def _metrics_only(part):
    return [x for x in part if isinstance(x, _BundleMetrics)]


_LOGGERS = ("toolformer.progress",)  # the launcher's level for these reaches the workers' logs


def _worker_logging(names: tuple[str, ...], level: int) -> None:
    """On a worker: these loggers at the launcher's level, printed to the worker's stderr (a Dask
    worker configures logging for ``distributed`` only; the rest goes nowhere below WARNING)."""
    for name in names:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
            logger.propagate = False


_lock = threading.Lock()
_idle: dict[tuple[str, str], list[tuple]] = {}  # set-up steps (DoFn first) not in a bundle now
_released: set[str] = set()  # runs torn down (a straggling bundle's instance is torn down too)
_options_set: set[str] = set()


def _release_run(run_id: str) -> int:
    """On a worker, at the end of a run: tear down the run's idle DoFn instances."""
    with _lock:
        _released.add(run_id)
        _options_set.discard(run_id)
        fns = [step[0] for key in [k for k in _idle if k[0] == run_id] for step in _idle.pop(key)]
    for fn in fns:
        _teardown(fn)
    return len(fns)


def _teardown(fn) -> None:
    try:
        fn.teardown()
    except Exception as e:  # noqa: BLE001 - Beam's teardown is best effort too
        log.warning("dask: teardown of %s failed: %s", type(fn).__name__, e)


class _Receiver(Receiver):
    def __init__(self, tag, out: list):
        super().__init__()
        self.tag, self.out = tag, out

    def receive(self, windowed_value):
        self.out.append((self.tag, windowed_value.value))


class _Receivers(dict):
    def __init__(self, out: list):
        super().__init__()
        self.out = out

    def __missing__(self, tag):
        r = self[tag] = _Receiver(tag, self.out)
        return r


def _run_bundle(items, key, spec: bytes, *sides) -> list:
    """One bundle (a bag partition) through one ParDo: outputs as ``(tag, value)``, then the
    bundle's metrics. The DoFn instance is a set-up one of this process when one is idle."""
    from apache_beam.internal import pickler
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.metrics.execution import MetricsContainer
    from apache_beam.metrics.metricbase import MetricName
    from apache_beam.runners.common import DoFnRunner, DoFnState
    from apache_beam.runners.worker import statesampler
    from apache_beam.transforms.sideinputs import SideInputMap
    from apache_beam.transforms.window import GlobalWindows
    from apache_beam.utils import counters

    run_id, label = key
    with _lock:
        pool = _idle.get(key)
        cached = pool.pop() if pool else None
    fresh = cached is None
    # an instance of its own for each thread: a fresh copy of the step, or an idle set-up one
    step = pickler.loads(spec) if fresh else cached
    fn, args, kwargs, views, windowing, options = step
    with _lock:
        first = run_id not in _options_set
        _options_set.add(run_id)
    if first:
        FileSystems.set_options(options)
    out: list = []
    side_maps = [
        SideInputMap(view, opts, [GlobalWindows.windowed_value(v) for v in values])
        for (view, opts), values in zip(views, sides)
    ]
    container = MetricsContainer(label)
    sampler = statesampler.StateSampler(label, counters.CounterFactory())
    before = statesampler.get_current_tracker()
    statesampler.set_current_tracker(sampler)
    runner = None
    try:
        with sampler.scoped_state(label, "process", metrics_container=container):
            runner = DoFnRunner(
                fn, args, kwargs, side_maps, windowing, tagged_receivers=_Receivers(out),
                step_name=label, state=DoFnState(counters.CounterFactory()),
            )
            if fresh:
                runner.setup()
                container.get_counter(MetricName(NAMESPACE, "setups")).inc()
            container.get_counter(MetricName(NAMESPACE, "bundles")).inc()
            runner.start()
            for item in items:
                runner.process(GlobalWindows.windowed_value(item))
            runner.finish()
    except BaseException:
        # A failed bundle's instance is not reused (Beam tears it down as well).
        if runner is not None:
            _teardown(fn)
        raise
    finally:
        statesampler.set_current_tracker(before)
    with _lock:
        done = run_id in _released
        if not done:
            _idle.setdefault(key, []).append(step)
    if done:
        _teardown(fn)
    out.append(_BundleMetrics(container.get_cumulative()))
    return out
