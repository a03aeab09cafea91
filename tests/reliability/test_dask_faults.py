"""Faults on the cluster (issue 15 item 3): a Dask worker process SIGKILLed mid-run.

The test holds a 2-worker ``distributed.LocalCluster`` (processes, one thread each) and runs
``augment --runner dask --dask_client_address`` on it in this process, over 30 documents of the
scripted tiny model and a stub tool that takes 0.1 s a call; a thread waits until some units are
journaled (the run is past its first partitions, others are still in the model or the tool), then
SIGKILLs the process of a worker that is running a bundle. Its nanny starts a new worker, the
scheduler reruns the tasks that were running there and recomputes the results the dead worker held,
and the run completes: the texts, candidates and errors records and the stats.json counts equal an
uninterrupted direct-runner run's (no count is doubled by the rerun bundles: a bundle's metrics are
part of its result, and a result is kept once), no temporary folder or journal is left. Slow: with
``distributed.scheduler.allowed-failures = 0`` the first death fails the run (one line naming the
step and ``--resume``, exit status 5); ``--resume`` on the same cluster replays the units journaled
before the failure and completes it with the same records.

    python -m pytest -q -s tests/reliability/test_dask_faults.py
    python -m pytest -q -s -m slow tests/reliability/test_dask_faults.py
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.reliability.pipeline_tools import RecordingCalc, documents, read_kind, settings, write_jsonl

distributed = pytest.importorskip("distributed")

# Tiny models are latency-bound: extra threads only contend on a 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")

SLOW_SPEC = "tests.reliability.test_dask_faults:SlowCalc"
CALLS_LOG = "DASK_FAULTS_CALLS_LOG"  # a worker's SlowCalc appends a line per call to this file
KINDS = ("texts", "candidates", "errors")
DOCUMENTS = 30


class SlowCalc(RecordingCalc):
    """RecordingCalc that takes ``delay_s`` per call (the run lasts long enough to kill a worker
    in it) and, where ``DASK_FAULTS_CALLS_LOG`` names a file, appends a line per call to it (the
    calls of every worker process, the killed one's and the reruns' included)."""

    delay_s = 0.1

    def __call__(self, input, context):
        if context.doc_id is not None:
            time.sleep(type(self).delay_s)
            log = os.environ.get(CALLS_LOG)
            if log:
                with open(log, "a") as f:
                    f.write(f"{os.getpid()} {context.doc_id}\n")
        return super().__call__(input, context)


def without_timings(stats: dict) -> dict:
    from tests.test_pipeline import without_timings as strip

    return strip(stats)


@pytest.fixture(scope="module")
def reference(scripted_dir, tmp_path_factory) -> dict:
    """``DOCUMENTS`` documents on the in-process runner, the tool without its delay."""
    tmp = tmp_path_factory.mktemp("reference")
    inp = write_jsonl(tmp / "docs.jsonl", documents(DOCUMENTS, seed=5))
    SlowCalc.delay_s, RecordingCalc.inputs = 0.0, []
    try:
        stats = run(settings(scripted_dir, SLOW_SPEC, "threads=1"), inp, tmp / "run")
    finally:
        SlowCalc.delay_s = 0.1
    return {"input": inp, "out": tmp / "run", "stats": stats, "calls": len(RecordingCalc.inputs)}


def run(s, inp: Path, out: Path, *extra: str, resume: bool = False):
    from pipelines.augment import run_augment

    return run_augment(s, [str(inp)], str(out), resume, list(extra))[1]


@pytest.fixture
def calls_log(tmp_path, monkeypatch) -> Path:
    log = tmp_path / "calls.log"
    monkeypatch.setenv(CALLS_LOG, str(log))  # before the cluster starts: its workers inherit it
    return log


# A worker that was fetching a result from the killed one retries the connection this long before
# the scheduler has it recomputed (Dask's default: 30 s).
FAST_RECONNECT = {"distributed.comm.timeouts.connect": "10s"}


def local_cluster(**config):
    import dask

    with dask.config.set(config):  # read by the scheduler as it starts
        return distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")


def journaled(out: Path) -> int:
    from pipelines.rundir import journal_files
    from pipelines.stages import parse_journal

    return len({tuple(e["key"]) for f in journal_files(out, 0)
                for e in parse_journal(Path(f).read_bytes())[0]})


class Killer(threading.Thread):
    """SIGKILLs, once ``out`` has journaled units (the run is past its first partitions), the
    process of a worker that is running a bundle."""

    def __init__(self, address: str, out: Path, calls_log: Path):
        super().__init__(daemon=True)
        self.address, self.out, self.calls_log = address, out, calls_log
        self.killed: dict = {}
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self):
        try:
            with distributed.Client(self.address, timeout=30) as client:
                while not self.stop.is_set():
                    if (self.out / ".journal").is_dir() and journaled(self.out) >= 1:
                        busy = sorted(w for w, keys in client.processing().items()
                                      if any("_run_bundle" in str(k) for k in keys))
                        if busy:
                            pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
                            os.kill(pid, signal.SIGKILL)
                            self.killed = {"pid": pid, "units_journaled": journaled(self.out),
                                           "calls": len(calls(self.calls_log))}
                            return
                    time.sleep(0.05)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def units(out: Path) -> dict:
    return json.loads((out / ".parts" / "p0000.done").read_text())["stats"]


def leftovers(out: Path) -> list[str]:
    """Temporary files of a killed run: Beam's temp folders, our atomic-write temps."""
    return sorted(str(p.relative_to(out)) for pattern in ("beam-temp-*", "**/*.tmp", "**/.*.tmp*")
                  for p in out.glob(pattern))


def assert_same_run(out: Path, reference: dict) -> None:
    for kind in KINDS:
        assert read_kind(out, kind) == read_kind(reference["out"], kind), kind
    ids = [t["doc_id"] for t in read_kind(out, "texts")]
    assert len(ids) == len(set(ids))  # no duplicates
    stats = json.loads((out / "stats.json").read_text())
    assert without_timings(stats) == without_timings(reference["stats"])
    assert leftovers(out) == [] and not (out / ".journal").exists()


def dask_args(cluster) -> list[str]:
    return ["--runner", "dask", "--dask_client_address", cluster.scheduler_address]


def test_worker_sigkilled_mid_run_the_run_completes_with_the_uninterrupted_records(
        scripted_dir, reference, calls_log, tmp_path):
    """Dask reruns the killed worker's task (and recomputes the results it held) on the live
    worker and on the one its nanny starts: the run completes and no count is doubled."""
    out = tmp_path / "run"
    s = settings(scripted_dir, SLOW_SPEC, "threads=1")
    with local_cluster(**FAST_RECONNECT) as cluster:
        killer = Killer(cluster.scheduler_address, out, calls_log)
        killer.start()
        t0 = time.monotonic()
        try:
            stats = run(s, reference["input"], out, *dask_args(cluster))
        finally:
            killer.stop.set()
            killer.join()
        wall = time.monotonic() - t0
        with distributed.Client(cluster.scheduler_address) as client:
            client.wait_for_workers(2, timeout=120)  # the killed one's replacement
            pids = set(client.run(os.getpid).values())
    assert killer.error is None and killer.killed, "no worker was killed mid-run"
    made = calls(calls_log)
    figures = {"documents": DOCUMENTS, "units": int(units(reference["out"])["units_journaled"]),
               "units_journaled_at_kill": killer.killed["units_journaled"],
               "tool_calls": {"reference": reference["calls"], "before_kill": killer.killed["calls"],
                              "all_workers": len(made)},
               "wall_s": round(wall, 1)}
    print("FIGURES dask_worker_kill", json.dumps(figures))
    assert killer.killed["pid"] not in pids and len(pids) == 2  # the nanny started a new worker
    assert killer.killed["units_journaled"] < figures["units"]  # killed mid-run
    assert len(made) >= reference["calls"]  # every call made (the killed worker's lost ones again)
    assert_same_run(out, reference)
    assert without_timings(stats) == without_timings(reference["stats"])
    assert units(out)["units_journaled"] == figures["units"]  # counted once, reruns or not


@pytest.mark.slow
def test_worker_sigkilled_with_no_retries_fails_in_one_line_and_resume_completes(
        scripted_dir, reference, calls_log, tmp_path):
    """``distributed.scheduler.allowed-failures = 0``: the first death fails the run (one line
    naming the step, exit status 5); ``--resume`` on the same cluster replays the journal."""
    from pipelines.dask_runner import KILLED_WORKER_EXIT
    from toolformer.errors import UserError

    out = tmp_path / "run"
    s = settings(scripted_dir, SLOW_SPEC, "threads=1")
    with local_cluster(**FAST_RECONNECT, **{"distributed.scheduler.allowed-failures": 0}) as cluster:
        killer = Killer(cluster.scheduler_address, out, calls_log)
        killer.start()
        try:
            with pytest.raises(UserError) as failed:
                run(s, reference["input"], out, *dask_args(cluster))
        finally:
            killer.stop.set()
            killer.join()
        assert killer.error is None and killer.killed, "no worker was killed mid-run"
        message = str(failed.value)
        assert "\n" not in message and failed.value.exit_code == KILLED_WORKER_EXIT
        assert "worker process running step '" in message and "--resume" in message, message
        assert not (out / "_SUCCESS").exists() and not (out / ".parts" / "p0000.done").exists()
        left = journaled(out)
        assert left >= killer.killed["units_journaled"] >= 1
        before = len(calls(calls_log))
        stats = run(s, reference["input"], out, *dask_args(cluster), resume=True)
    done = units(out)
    figures = {"documents": DOCUMENTS, "units": int(units(reference["out"])["units_journaled"]),
               "units_journaled_at_kill": killer.killed["units_journaled"],
               "units_journaled_at_failure": left, "units_resumed": int(done["units_resumed"]),
               "tool_calls": {"reference": reference["calls"], "failed_run": before,
                              "resume": len(calls(calls_log)) - before},
               "error": message}
    print("FIGURES dask_worker_kill_no_retries", json.dumps(figures))
    assert done["units_resumed"] == left
    assert done["units_resumed"] + done["units_journaled"] == figures["units"]
    assert_same_run(out, reference)
    assert without_timings(stats) == without_timings(reference["stats"])
