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

Layout: the flags and the local cluster (the launcher's side) are in :mod:`pipelines.dask_cluster`,
what runs on the workers (bundles, set-up DoFn pools, worker logging) in
:mod:`pipelines.dask_worker`; their public names are importable from this module as well.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import apache_beam as beam
from apache_beam.pipeline import PipelineVisitor, PTransformOverride
from apache_beam.runners.runner import PipelineResult, PipelineState

from pipelines.dask_cluster import (
    ALIASES,
    INSTALL_HINT,
    RUNNER,
    check_flags,
    cluster,
    is_dask,
    join_flag_values,
    runner_args,
)
from pipelines.dask_worker import (
    _LOGGERS,
    NAMESPACE,
    _concat,
    _grouped,
    _key_of,
    _metrics_only,
    _release_run,
    _run_bundle,
    _select,
    _worker_logging,
)
from toolformer.errors import UserError

__all__ = [
    "ALIASES", "INSTALL_HINT", "NAMESPACE", "RUNNER", "DaskResult", "check_flags", "cluster", "is_dask",
    "join_flag_values", "runner_args", "runner_class",
]  # fmt: skip (and DaskRunner, made on first use: module __getattr__ below)

log = logging.getLogger(__name__)


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

