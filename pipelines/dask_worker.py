"""What runs on the Dask workers for :mod:`pipelines.dask_runner`: one bundle through one ParDo.

Module-level state here lives in each worker process: the set-up DoFn instances kept between
bundles (a pool per step and run), the runs already torn down, the runs whose options and logging
are set, and the bundles running now (the runner's module doc says why: items 2, 3, 4, 6, 9 and 10,
and a worker lost mid-run). The functions are sent to the workers by reference, so this module
must stay importable there.
"""

from __future__ import annotations

import logging
import threading

from apache_beam.runners.common import Receiver

log = logging.getLogger("pipelines.dask_runner")  # the runner's logger, as before the split

NAMESPACE = "dask_runner"  # this runner's own counters (setups, bundles); never in stats.json


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
    worker configures logging for ``distributed`` only; the rest goes nowhere below WARNING).
    Set by a process's first bundle of each run (:func:`_run_bundle`), so a worker that joins or
    is restarted mid-run -- its nanny starts a new process after a crash -- prints them too."""
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
_options_set: set[str] = set()  # runs whose options and logging this process has set
_running: dict[str, int] = {}  # bundles of each run running in this process now


def _running_bundles(run_id: str) -> int:
    """On a worker: how many bundles of the run are running in this process (a failed run's
    cancelled tasks run on until their bundle ends; Dask cannot stop a running task)."""
    with _lock:
        return _running.get(run_id, 0)


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
    run_id = key[0]
    with _lock:
        _running[run_id] = _running.get(run_id, 0) + 1
    try:
        return _bundle(items, key, spec, sides)
    finally:
        with _lock:
            _running[run_id] -= 1
            if not _running[run_id]:
                del _running[run_id]


def _bundle(items, key, spec: bytes, sides) -> list:
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
    fn, args, kwargs, views, windowing, options, levels = step
    with _lock:
        first = run_id not in _options_set
        _options_set.add(run_id)
    if first:  # this process's first bundle of the run (a worker started mid-run too: a restarted one)
        FileSystems.set_options(options)
        _worker_logging(*levels)
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
