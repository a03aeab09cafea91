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
   (``toolformer.progress``) reach each worker's stderr at the launcher's level: set by each
   process's first bundle of a run, so a worker started mid-run (a crashed one's replacement) too.
11. A result lost with its worker is recomputed (Dask's lineage), and Beam's file sink is not
   idempotent under that: a recomputed ``InitializeWrite`` makes a second ``beam-temp-*`` folder
   and the sink's finalize deletes only the one it was given, so the first stays (empty, or with
   the shards of bundles whose outputs were lost too). Here, once the run succeeded, the
   temporary folders left next to the pipeline's file sinks are deleted.

Still not supported, refused when the pipeline is translated (none is used by ``augment``):
windowing other than the global window (values travel without timestamps or windows), stateful
and splittable DoFns, timers, ``beam.io.Read`` sources and any other primitive transform.
Bundle finalizers are not called. Resume: a bundle is one Dask task that finishes each step over
its whole partition before the next one starts, so the unit journal (FinishUnit) is written per
partition (when its model work is done), not unit by unit as the in-process runner streams it; a
resumed part redoes the partitions that had not reached FinishUnit. More partitions
(``--dask_npartitions``) journal in smaller steps but give the model smaller batches.

A worker lost mid-run (killed, out of memory, crashed): its nanny starts a new worker process, and
the scheduler reruns the tasks that were running on it -- each up to
``distributed.scheduler.allowed-failures`` times (default 3), counted per task -- and recomputes the
results it held that are still needed, on the live workers. A bundle is one task whose outputs and
metrics are its result (item 3), so a rerun bundle replaces what it would have given and nothing is
counted twice; the rerun's side effects are a second journal of its units (the reader keeps one),
a second temporary shard (in the sink's temporary folder, deleted with it) and, where a sink's
initialisation was recomputed, an orphaned temporary folder (item 11). A task whose workers all died
(more than the allowed failures: a bundle that kills its worker every time, say) fails the run with
one line naming the Beam step and ``--resume`` (:class:`~toolformer.errors.UserError`, exit status
5), not Dask's ``KilledWorker``; the part is then resumed from its journal. A failed run returns once
none of its bundles still runs on the cluster (Dask cannot stop a running task: a cancelled one
runs to its end), so none journals or writes after the launcher has moved on (to a ``--resume`` on
the same cluster, say); it waits at most ``STRAGGLERS_WAIT_S``. Known gaps: a worker that
was fetching a result from the dead one waits up to ``distributed.comm.timeouts.connect`` (30 s by
default) before the scheduler has it recomputed; and if a sink's initialisation is recomputed after
some of its bundles wrote into the first folder (their outputs held by a live worker) while others
rerun into the second, Beam's finalize looks for the shards in one folder only and fails the run
(``BeamIOError``: src and dst files do not exist) -- ``--resume`` then redoes the part.

Layout: the flags and the local cluster (the launcher's side) are in :mod:`pipelines.dask_cluster`,
what runs on the workers (bundles, set-up DoFn pools, worker logging) in
:mod:`pipelines.dask_worker`; their public names are importable from this module as well.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import time
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
    _running_bundles,
    _select,
)
from toolformer.errors import UserError

__all__ = [
    "ALIASES", "INSTALL_HINT", "NAMESPACE", "RUNNER", "DaskResult", "check_flags", "cluster", "is_dask",
    "join_flag_values", "runner_args", "runner_class",
]  # fmt: skip (and DaskRunner, made on first use: module __getattr__ below)

log = logging.getLogger(__name__)

KILLED_WORKER_EXIT = 5  # the CLI's exit status when workers died more often than Dask retries a task
STRAGGLERS_WAIT_S = 120.0  # how long a failed run waits for its bundles still running to end


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
        run_id = uuid.uuid4().hex
        translator = _Translator(run_id, npartitions, partition_size, options)
        pipeline.visit(translator)
        # Unoptimised: one task per step and bundle, none fused or re-keyed (see the module doc, 5).
        future = client.compute(translator.result(), optimize_graph=False)
    except BaseException:
        client.close()
        raise
    return DaskResult(client, future, run_id, translator.steps, translator.sink_prefixes)


class DaskResult(PipelineResult):
    """A running pipeline: ``wait_until_finish`` gathers the bundles' metrics (raising a step's
    error as the step raised it), tears down the run's DoFns on the workers and closes the client.
    ``steps`` maps the name of each dask collection the translation made to its Beam step;
    ``sink_prefixes`` are the file sinks' prefixes (their orphaned temporary folders are deleted
    once the run succeeded: see the module doc, 11)."""

    def __init__(self, client, future, run_id: str, steps: dict[str, str] | None = None,
                 sink_prefixes: frozenset[str] = frozenset()):
        super().__init__(PipelineState.RUNNING)
        from apache_beam.runners.direct.direct_metrics import DirectMetrics

        self.client, self.future, self.run_id = client, future, run_id
        self.steps, self.sink_prefixes = steps or {}, sink_prefixes
        self._metrics = DirectMetrics()

    def wait_until_finish(self, duration=None):
        if self._state != PipelineState.RUNNING:
            return self._state
        from distributed import KilledWorker

        try:
            bundles = self.future.result(timeout=None if duration is None else duration / 1000)
            for b in bundles:
                self._metrics.commit_logical(None, b.updates)
                self._metrics.commit_physical(None, b.updates)
            self._state = PipelineState.DONE
            try:
                _delete_orphaned_temp_folders(self.sink_prefixes)
            except Exception as e:  # noqa: BLE001 - the run's output is complete; only litter is left
                log.warning("dask: could not delete the file sinks' orphaned temporary folders: %s", e)
        except KilledWorker as e:
            self._state = PipelineState.FAILED
            raise self._killed(e) from e
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            self._close()
        return self._state

    def _killed(self, e) -> UserError:
        """Dask's KilledWorker (every worker that ran a task died while running it: more than
        ``distributed.scheduler.allowed-failures`` of them) as one line naming the Beam step."""
        key = e.task[0] if isinstance(e.task, tuple) else e.task
        step = self.steps.get(key)
        what = f"step {step!r}" if step else f"task {e.task!r}"
        n = e.allowed_failures + 1
        return UserError(
            f"dask: the worker process running {what} died {n} time{'s' * (n > 1)} (the last: "
            f"{e.last_worker.address}; killed, out of memory or crashed: see its log) and Dask reruns a task "
            f"{e.allowed_failures} time(s) (distributed.scheduler.allowed-failures); rerun with --resume: "
            "finished parts are kept and the part's journaled units are not redone",
            exit_code=KILLED_WORKER_EXIT,
        )

    def _close(self):
        try:
            self.client.cancel(self.future)
            # A failed run's bundles still running go on until they end (Dask cannot stop a running
            # task): wait for them, so that none journals or writes after the run has returned.
            deadline = time.monotonic() + STRAGGLERS_WAIT_S
            while (running := sum(self.client.run(_running_bundles, self.run_id).values())) and (
                    time.monotonic() < deadline):
                log.info("dask: waiting for %d bundle(s) of the stopped run still running", running)
                time.sleep(1.0)
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


_TEMP_FOLDER = re.compile(r"beam-temp-(?P<last>.*)-[0-9a-f]{32}")  # FileBasedSink._create_temp_dir's


def _delete_orphaned_temp_folders(prefixes) -> None:
    """Delete the temporary folders (``beam-temp-<name>-<uuid1>``) left next to these file sink
    prefixes. Once the sinks have finalized, any left are orphans: of a sink initialisation that
    was recomputed because its result was lost with a worker (the finalize deletes only the folder
    it was given), or of an earlier run killed mid-write."""
    from apache_beam.io.filesystems import FileSystems

    from toolformer.runs import delete, delete_folder, is_local, match

    for prefix in sorted(prefixes):
        base, last = FileSystems.split(prefix)
        if not last:
            continue
        if is_local(prefix):  # real folders, maybe empty: FileSystems lists only files
            names = [e.name for e in os.scandir(base) if e.is_dir()] if os.path.isdir(base) else []
            folders = [FileSystems.join(base, n) for n in names if _orphan_of(n, last)]
            for folder in folders:
                delete_folder(folder)
        else:  # an object store: the objects under those prefixes
            pattern = FileSystems.join(base, f"beam-temp-{glob.escape(last)}-*")
            files = [f for f in match(f"{pattern}/**")
                     if _orphan_of(f[len(base):].lstrip("/").split("/")[0], last)]
            folders = sorted({FileSystems.split(f)[0] for f in files})
            delete(files)
        if folders:
            log.info("dask: deleted %d orphaned temporary folder(s) of %s", len(folders), prefix)


def _orphan_of(name: str, last: str) -> bool:
    m = _TEMP_FOLDER.fullmatch(name)
    return m is not None and m["last"] == last


def _sink_prefixes(transform) -> set[str]:
    """The path prefixes of the Beam file sinks among a ParDo's arguments (and its DoFn's
    ``sink``): Beam's ``WriteImpl`` passes its sink to InitializeWrite, PreFinalize, FinalizeWrite."""
    from apache_beam.io.filebasedsink import FileBasedSink

    found = set()
    for a in [*transform.args, *transform.kwargs.values(), getattr(transform.fn, "sink", None)]:
        if isinstance(a, FileBasedSink) and a.file_path_prefix.is_accessible():
            found.add(a.file_path_prefix.get())
    return found


class _Translator(PipelineVisitor):
    """Each primitive transform as ``dask.bag`` operations; ``bags`` maps PCollections to bags."""

    def __init__(self, run_id: str, npartitions: int, partition_size: int | None, options):
        from apache_beam.internal import pickler

        self.run_id, self.npartitions, self.partition_size = run_id, npartitions, partition_size
        self.options = pickler.dumps(options)
        self.levels = (_LOGGERS, logging.getLogger(_LOGGERS[0]).getEffectiveLevel())
        self.bags: dict[Any, Any] = {}
        self.bundle_metrics: list[Any] = []
        self.steps: dict[str, str] = {}  # each dask collection's name: its Beam step (for errors)
        self.sink_prefixes: set[str] = set()  # the file sinks' path prefixes

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
        self.steps.setdefault(bag.name, node.full_label)
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
        self.sink_prefixes |= _sink_prefixes(t)
        views = [(type(si), si._view_options()) for si in t.side_inputs]
        spec = pickler.dumps((t.fn, t.args, t.kwargs, views, main.windowing, self.options, self.levels))
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
            self.steps[self.bags[pcoll].name] = node.full_label
        self.bundle_metrics.append(raw.map_partitions(_metrics_only))
        self.steps[raw.name] = self.steps[self.bundle_metrics[-1].name] = node.full_label

