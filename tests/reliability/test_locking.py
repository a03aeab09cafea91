"""One writer per run directory (issue 18): ``DIR/.lock`` (toolformer/locking.py ``DirectoryLock``).

* Two real ``toolformer augment`` processes on one directory: the second is refused with one line
  naming the first's pid while the first is held mid-run by a gate; the directory is untouched by
  the second. The first is then SIGKILLed and leaves its lock behind; ``--resume`` takes it over
  (a log line says so) and completes with the uninterrupted run's records; no lock file remains.
* Real processes racing for one lock never hold it at the same time; a lock of a live pid, or of
  another host with a fresh heartbeat, is refused; a dead pid, a zombie's or an old heartbeat is
  taken over. ``finetune`` takes the same lock on its output directory.

    python -m pytest -q -s tests/reliability/test_locking.py
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolformer import locking
from tests.reliability.conftest import REPO, subprocess_env
from tests.reliability.pipeline_tools import KILL_AT_CALL, RecordingCalc, documents, overrides, read_kind
from tests.reliability.pipeline_tools import settings as tool_settings
from tests.reliability.pipeline_tools import write_jsonl
from toolformer.errors import UserError

GATED = "tests.reliability.test_locking:GatedCalc"
GATE = "LOCKING_TEST_GATE"  # a folder: the tool writes "started" there, then waits for "go"


class GatedCalc(RecordingCalc):
    """RecordingCalc that, with ``LOCKING_TEST_GATE`` set, holds its first call until the test
    writes ``GATE/go`` (at most 120 s): a run that is certainly in progress, holding its lock."""

    def __call__(self, input, context):
        gate = os.environ.get(GATE)
        if gate and not os.path.exists(os.path.join(gate, "started")):
            Path(gate, "started").write_text(str(os.getpid()))
            deadline = time.monotonic() + 120
            while not os.path.exists(os.path.join(gate, "go")) and time.monotonic() < deadline:
                time.sleep(0.05)
        return super().__call__(input, context)


@pytest.fixture(scope="module")
def reference(scripted_dir, tmp_path_factory) -> dict:
    from pipelines.augment import run_augment

    tmp = tmp_path_factory.mktemp("lock-ref")
    inp = write_jsonl(tmp / "docs.jsonl", documents(6))
    out = tmp / "run"
    run_augment(tool_settings(scripted_dir, GATED), [str(inp)], str(out), False, [])
    return {"input": inp, "out": out}


def augment_cmd(inp: Path, out: Path, model: Path, resume: bool = False) -> list[str]:
    return [
        sys.executable, "-m", "commands.cli", "augment", "--input", str(inp), "--output", str(out),
        "--model", str(model), "--tools", GATED,
        "--override", *overrides(GATED),
    ] + (["--resume"] if resume else [])  # fmt: skip


def same_records(out: Path, ref: Path) -> None:
    for kind in ("texts", "candidates", "errors"):
        assert read_kind(out, kind) == read_kind(ref, kind), kind


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def wait_for(cond, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert proc is None or proc.poll() is None, f"{what}: the process ended ({proc.returncode})"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow  # ~25 s on the loaded 2-core box: two augment processes and a resume
def test_second_augment_is_refused_and_a_killed_runs_lock_is_taken_over(
    scripted_dir, reference, tmp_path, caplog
):
    """The first run (a real process) is held mid-run by the gate; a second real process on the
    same directory is refused and changes nothing; the first is then SIGKILLed, holding its lock,
    and ``--resume`` takes the stale lock over and completes with the uninterrupted run's records."""
    from pipelines.augment import run_augment

    out, gate, log = tmp_path / "run", tmp_path / "gate", tmp_path / "first.log"
    gate.mkdir()
    env = {**subprocess_env(), GATE: str(gate)}
    first = subprocess.Popen(
        augment_cmd(reference["input"], out, scripted_dir), env=env, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip
    try:
        wait_for(lambda: (gate / "started").exists(), 120, "the first run's first tool call", first)
        holder = json.loads((out / ".lock").read_text())
        assert holder["pid"] == first.pid and holder["command"] == "augment"
        before = snapshot(out)
        t0 = time.monotonic()
        second = subprocess.run(
            augment_cmd(reference["input"], out, scripted_dir, resume=True), env=subprocess_env(),
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        refused_s = time.monotonic() - t0
        assert second.returncode == 2, second.stderr[-2000:]
        lines = [ln for ln in second.stderr.splitlines() if ln.startswith("toolformer augment: error:")]
        assert len(lines) == 1 and f"in use by augment pid {first.pid}" in lines[0], second.stderr[-2000:]
        assert "Traceback" not in second.stderr
        assert snapshot(out) == before  # the refused run wrote, deleted and truncated nothing
        assert first.poll() is None  # still running, still holding the lock
    finally:
        first.kill()  # a crash mid-run: its lock file stays behind
    assert first.wait(timeout=60) == -signal.SIGKILL
    stale = json.loads((out / ".lock").read_text())
    assert stale["pid"] == first.pid and not locking.pid_alive(first.pid, stale["start_ticks"])
    with caplog.at_level(logging.WARNING, logger="toolformer.locking"):
        run_augment(tool_settings(scripted_dir, GATED), [str(reference["input"])], str(out), True, [])
    taken = [r.getMessage() for r in caplog.records if "taking over the lock" in r.getMessage()]
    assert len(taken) == 1 and f"pid {first.pid}" in taken[0] and "that process is gone" in taken[0]
    same_records(out, reference["out"])
    assert not (out / ".lock").exists()
    print("FIGURES lock_refusal", json.dumps({"refused_after_s": round(refused_s, 1), "line": lines[0]}))
    print("FIGURES lock_takeover", json.dumps({"log_line": taken[0]}))


HOLDER = """
import os, signal, sys, time
from toolformer import locking
locking.lock(sys.argv[1], "augment").acquire()
open(sys.argv[2], "w").write("held")
while not os.path.exists(sys.argv[3]):
    time.sleep(0.02)
os.kill(os.getpid(), signal.SIGKILL)  # dies holding the lock
"""


def test_augment_refused_while_a_process_holds_the_lock_then_takes_over_once_it_died(
    tiny_model_dir, tmp_path, capsys, caplog
):
    """Fast: a real process holds DIR's lock; ``toolformer augment`` (in this process) is refused
    with one line and touches nothing; the holder is SIGKILLed; the lock is then taken over."""
    from commands.cli import main

    out, held, die, script = tmp_path / "run", tmp_path / "held", tmp_path / "die", tmp_path / "hold.py"
    script.write_text(HOLDER)
    inp = write_jsonl(tmp_path / "docs.jsonl", documents(3))
    holder = subprocess.Popen(
        [sys.executable, str(script), str(out), str(held), str(die)], env=subprocess_env(), cwd=REPO
    )
    try:
        wait_for(held.exists, 60, "the holder", holder)
        before = snapshot(out)
        argv = ["augment", "--input", str(inp), "--output", str(out), "--model", str(tiny_model_dir)]
        argv.append("--resume")
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        rec = json.loads((out / ".lock").read_text())
        assert err == [f"toolformer augment: error: {out} is in use by augment pid {holder.pid} on host "
                       f"{rec['host']} since {rec['started']} (lock {out}/.lock); wait for it "
                       "to finish, or delete the lock file if that process is gone"]  # fmt: skip
        assert snapshot(out) == before
    finally:
        die.write_text("")
    assert holder.wait(timeout=60) == -signal.SIGKILL
    with caplog.at_level(logging.WARNING, logger="toolformer.locking"):
        with locking.lock(out):
            assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    taken = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert len(taken) == 1 and f"augment pid {holder.pid} on host" in taken[0], taken
    assert taken[0].endswith("that process is gone") and not (out / ".lock").exists()


RACER = """
import os, sys, time
from toolformer import locking
from toolformer.errors import UserError
folder, journal, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
while not os.path.exists(journal + ".go"):  # all racers start together
    time.sleep(0.01)
got = refused = 0
for _ in range(n):
    try:
        lock = locking.lock(folder, "race").acquire()
    except UserError:
        refused += 1
        time.sleep(0.003)
        continue
    got += 1
    with open(journal, "a") as f:
        f.write(f"enter {os.getpid()}\\n"); f.flush()
        time.sleep(0.01)
        f.write(f"exit {os.getpid()}\\n"); f.flush()
    lock.release()
print(got, refused)
"""


RACERS = 4


def test_racing_processes_never_hold_the_lock_together(tmp_path):
    folder, journal, start = tmp_path / "run", tmp_path / "journal.txt", tmp_path / "racer.py"
    start.write_text(RACER)
    procs = [
        subprocess.Popen([sys.executable, str(start), str(folder), str(journal), "100"], env=subprocess_env(),
                         cwd=REPO, stdout=subprocess.PIPE, text=True)
        for _ in range(RACERS)
    ]  # fmt: skip
    time.sleep(0.5)
    Path(str(journal) + ".go").write_text("")
    results = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    got = sum(int(r[0]) for r in results)
    refused = sum(int(r[1]) for r in results)
    lines = journal.read_text().splitlines() if journal.exists() else []
    assert len(lines) == 2 * got and got > 0
    for enter, leave in zip(lines[::2], lines[1::2]):  # strictly alternating, same holder
        assert enter.startswith("enter ") and leave == "exit " + enter.split()[1]
    assert not (folder / ".lock").exists()
    figures = {"processes": RACERS, "attempts": 100 * RACERS, "held": got, "refused": refused, "overlaps": 0}
    print("FIGURES lock_race", json.dumps(figures))


def write_lock(folder: Path, **rec) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    path.write_text(json.dumps({"command": "augment", "started": "then", **rec}))
    return path


def test_lock_records_a_live_pid_are_refused_and_dead_ones_taken_over(tmp_path, monkeypatch):
    import socket

    host = socket.gethostname()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # A live pid on this host (its flock is free: e.g. a file system without flock): refused.
        ticks = locking._proc_start_ticks(sleeper.pid)
        write_lock(tmp_path / "a", pid=sleeper.pid, host=host, start_ticks=ticks)
        with pytest.raises(UserError, match=f"in use by augment pid {sleeper.pid} on host {host}"):
            locking.lock(tmp_path / "a").acquire()
        # The same pid recorded with another start time: a reused pid, so the holder is gone.
        write_lock(tmp_path / "b", pid=sleeper.pid, host=host, start_ticks=1)
        locking.lock(tmp_path / "b").acquire().release()
    finally:
        sleeper.kill()
    # A zombie (killed, not reaped yet) is gone too.
    wait_for(lambda: locking._proc_start_ticks(sleeper.pid) == -1, 10, "the zombie")
    write_lock(tmp_path / "c", pid=sleeper.pid, host=host)
    locking.lock(tmp_path / "c").acquire().release()
    sleeper.wait()
    # Another host: the heartbeat (mtime) decides.
    fresh = write_lock(tmp_path / "d", pid=1, host="elsewhere")
    with pytest.raises(UserError, match="on host elsewhere"):
        locking.lock(tmp_path / "d").acquire()
    old = time.time() - locking.STALE_AFTER_S - 5
    os.utime(fresh, (old, old))
    held = locking.lock(tmp_path / "d").acquire()
    assert json.loads(fresh.read_text())["pid"] == os.getpid()
    with pytest.raises(UserError, match=f"pid {os.getpid()}"):  # a second holder in this process too
        locking.lock(tmp_path / "d").acquire()
    held.release()
    assert not fresh.exists()
    # An unreadable (torn) lock file whose flock is free is taken over after a short wait.
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / ".lock").write_bytes(b'{"pid": 12')
    locking.lock(tmp_path / "e").acquire().release()
    # A run directory that the lock created and that stays empty is removed with the lock.
    locking.lock(tmp_path / "f").acquire().release()
    assert not (tmp_path / "f").exists()


def test_finetune_takes_the_same_lock(tmp_path):
    from finetune.train import FinetuneConfig, run_finetune

    out = tmp_path / "ft"
    with locking.lock(out, "finetune"):
        with pytest.raises(UserError, match=f"in use by finetune pid {os.getpid()}"):
            run_finetune(FinetuneConfig(data=[str(tmp_path / "none.jsonl")], output=str(out)))
    # Released: the same call now gets past the lock to its data check (one line naming the file).
    with pytest.raises(UserError, match="none.jsonl"):
        run_finetune(FinetuneConfig(data=[str(tmp_path / "none.jsonl")], output=str(out)))
    assert not out.exists()


def test_output_folder_removed_between_the_check_and_the_open(tmp_path, monkeypatch):
    """A run that created the folder releases its lock and removes the (still empty) folder while
    another run, which saw the folder, is about to create its lock in it: the second run recreates the
    folder and takes the lock (seen once in the racing test above as FileNotFoundError)."""
    folder = tmp_path / "run"
    folder.mkdir()
    real_open, raced = os.open, []

    def racing_open(path, flags, *args):
        if flags & os.O_EXCL and not raced:
            raced.append(path)
            os.rmdir(folder)  # the other run let go and removed the folder it had created
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", racing_open)
    lock = locking.lock(str(folder), "test").acquire()
    assert raced and (folder / ".lock").exists()
    lock.release()
    assert not folder.exists()  # it created the folder the second time, and it was left empty
