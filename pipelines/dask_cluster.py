"""The launcher's side of ``--runner dask``: reading the flags and starting a local cluster.

``--runner dask`` (or ``DaskRunner``) names :class:`pipelines.dask_runner.DaskRunner`;
``--dask-workers N`` (augment's flag) starts a ``distributed.LocalCluster`` for the whole run
(:func:`cluster`). Nothing here needs dask to import: every augment run uses these helpers.
The runner is :mod:`pipelines.dask_runner`, which re-exports the public names of this module.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
from collections.abc import Iterator

from toolformer.errors import UserError

log = logging.getLogger("pipelines.dask_runner")  # the runner's logger, as before the split

RUNNER = "pipelines.dask_runner.DaskRunner"  # what --runner dask / DaskRunner becomes
ALIASES = ("dask", "daskrunner", "apache_beam.runners.dask.dask_runner.daskrunner")
INSTALL_HINT = "the Dask runner needs dask and distributed: pip install 'dask[distributed]>=2024.4.2'"


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
        importlib.import_module("distributed")  # installed? (imported, as the runner will)
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
