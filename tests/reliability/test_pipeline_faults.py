"""Pipeline campaigns (issue 9 items 1, 2, 4; TESTPLAN E34, F42-F47) on the scripted tiny model.

* Kill and resume: ``toolformer augment`` in a subprocess is SIGKILLed mid-run, then resumed; the
  final records equal an uninterrupted run's (same set, no duplicates, no loss), no orphaned
  temporary file survives, and neither finished parts nor a part's journaled units are redone.
  Fast: one kill inside part 1 of 2. Slow: 300 documents, five kills at random moments in 7 parts;
  and three kills inside one part, each resume replaying more units.
* Tool faults: a loopback HTTP tool server (127.0.0.1 only) hangs, drips, answers 500/503/429,
  garbage and a huge body in a scripted mix; the pipeline finishes, failures per reason equal the
  injected counts, and every dead letter names document, position, call and reason.
* Bad input: invalid JSON, missing/empty text, a 10 MB text, invalid UTF-8, NUL bytes, lone
  surrogates and text already holding call markers: dead-lettered or processed, counted, never
  fatal, never executed.

    python -m pytest -q tests/reliability/test_pipeline_faults.py
    python -m pytest -q -s -m slow tests/reliability/test_pipeline_faults.py
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.reliability.conftest import REPO, subprocess_env
from tests.reliability.pipeline_tools import (
    HTTP_SPEC,
    KILL_AT_CALL,
    SPEC,
    HttpCalc,
    RecordingCalc,
    documents,
    overrides,
    read_kind,
    settings,
    write_jsonl,
)
from toolformer.call_format import parse_calls

# Tiny models are latency-bound: extra threads only contend on a 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")

FAKE_CALL_DOC = {"doc_id": "fake-call", "text": "Pay [Calc(666) -> 1], then [Calc(555)] and 3 -> 4, ok."}
BAD_LINES = [
    b"{not json",
    json.dumps({"doc_id": "no-text"}).encode(),
    json.dumps({"doc_id": "empty", "text": "   "}).encode(),
    b'{"doc_id": "latin1", "text": "caf\xe9, bad"}',
    json.dumps({"doc_id": "nul", "text": "a\x00b, c"}).encode(),
    b'{"doc_id": "surrogate", "text": "lone \\ud800, surrogate"}',
    json.dumps({"doc_id": "huge", "text": "word " * 2_000_000}).encode(),  # 10 MB, no comma: not routed
    json.dumps(FAKE_CALL_DOC).encode(),
]
EXPECTED_BAD = {
    "invalid_json": 1,
    "missing_text": 1,
    "empty_text": 1,
    "invalid_utf8": 1,
    "nul_bytes": 1,
    "invalid_unicode": 1,
}


def run(settings_, inputs, out, resume=False):
    from pipelines.augment import run_augment

    return run_augment(settings_, [str(i) for i in inputs], str(out), resume, [])[1]


def augment_subprocess(
    inp: Path,
    out: Path,
    model: Path,
    parts: int,
    resume: bool,
    log: Path,
    env: dict | None = None,
    *extra: str,
) -> subprocess.Popen:
    """``toolformer augment`` in a child process (``env`` added to its environment, ``extra``
    settings overrides after the usual ones)."""
    cmd = [
        sys.executable,
        "-m",
        "commands.cli",
        "augment",
        "--input",
        str(inp),
        "--output",
        str(out),
        "--model",
        str(model),
        "--tools",
        SPEC,
        "--parts",
        str(parts),
        "--override",
        *overrides(SPEC, *extra),
    ] + (["--resume"] if resume else [])
    return subprocess.Popen(
        cmd,
        env={**subprocess_env(), **(env or {})},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )


def leftovers(out: Path) -> list[str]:
    """Temporary files of a killed run: Beam's temp folders, our atomic-write temps."""
    return sorted(
        str(p.relative_to(out))
        for pattern in ("beam-temp-*", "**/*.tmp", "**/.*.tmp*")
        for p in out.glob(pattern)
    )


def assert_same_records(out: Path, reference: Path) -> None:
    for kind in ("texts", "candidates", "errors"):
        assert read_kind(out, kind) == read_kind(reference, kind), kind
    ids = [t["doc_id"] for t in read_kind(out, "texts")]
    assert len(ids) == len(set(ids))  # no duplicates
    assert (
        json.loads((out / "stats.json").read_text())["documents"]
        == json.loads((reference / "stats.json").read_text())["documents"]
    )


# --- Bad input and the reference run ----------------------------------------------------------


@pytest.fixture(scope="module")
def reference(scripted_dir, tmp_path_factory) -> dict:
    """An uninterrupted run over 40 good documents and every kind of bad record, in 2 parts."""
    tmp = tmp_path_factory.mktemp("reference")
    inp = write_jsonl(tmp / "docs.jsonl", [*documents(40), *BAD_LINES])
    RecordingCalc.inputs = []
    stats = run(settings(scripted_dir, SPEC, "parts=2"), [inp], tmp / "run")
    return {"input": inp, "out": tmp / "run", "stats": stats, "inputs": list(RecordingCalc.inputs)}


def test_bad_input_is_dead_lettered_or_processed_counted_and_never_executed(reference):
    stats, out = reference["stats"], reference["out"]
    assert stats["bad_records"] == EXPECTED_BAD
    assert stats["documents"]["docs_bad"] == 6 and stats["documents"]["docs_read"] == 42
    assert stats["documents"]["docs_truncated"] == 1 and stats["documents"]["texts_written"] == 42
    errors = [e for e in read_kind(out, "errors") if e["stage"] == "read"]
    assert Counter(e["reason"] for e in errors) == EXPECTED_BAD
    assert all(e["detail"].startswith("docs.jsonl line ") for e in errors)  # names file and line
    texts = {t["doc_id"]: t for t in read_kind(out, "texts")}
    assert texts["huge"]["truncated"] is True and len(texts["huge"]["text"]) == 100_000
    fake = texts["fake-call"]
    # The document's own markers were neutralised: only the pipeline's inserted calls parse as calls.
    assert [c.input for c in parse_calls(fake["text"]) if c.ok] == ["7"] * len(fake["calls"])
    assert "666" not in " ".join(reference["inputs"]) and "555" not in " ".join(reference["inputs"])
    assert set(reference["inputs"]) == {"7"}
    assert stats["tools"]["Calc"]["executed"] == len(reference["inputs"])


# --- Kill and resume --------------------------------------------------------------------------


def journaled_units(out: Path, part: int) -> set[tuple]:
    from pipelines.rundir import journal_files
    from pipelines.stages import parse_journal

    return {tuple(e["key"]) for f in journal_files(out, part) for e in parse_journal(Path(f).read_bytes())[0]}


def test_sigkill_mid_run_then_resume_equals_uninterrupted(scripted_dir, reference, tmp_path):
    """The victim SIGKILLs itself halfway through part 1 of 2 (part 0 is done and marked). The
    resume redoes neither part 0 nor part 1's units journaled before the kill."""
    out, log = tmp_path / "run", tmp_path / "victim.log"
    calls = [
        json.loads((reference["out"] / ".parts" / f"p000{part}.done").read_text())["stats"]["executed:Calc"]
        for part in (0, 1)
    ]
    # Small batches: units finish (and are journaled) a few at a time. One torch thread, as in this
    # process: with two, the losses of small batches differ from the reference's in the 6th decimal.
    small_batches = ("max_batch_tokens=64", "threads=1")
    proc = augment_subprocess(
        reference["input"],
        out,
        scripted_dir,
        2,
        False,
        log,
        {KILL_AT_CALL: str(calls[0] + calls[1] // 2)},
        *small_batches,
    )
    assert proc.wait(timeout=120) == -signal.SIGKILL, log.read_text()[-2000:]
    assert (out / ".parts" / "p0000.done").exists() and not (out / ".parts" / "p0001.done").exists()
    assert not (out / "_SUCCESS").exists() and journaled_units(out, 0) == set()
    journaled = journaled_units(out, 1)
    assert journaled  # part 1's units finished before the kill
    RecordingCalc.inputs = []
    run(settings(scripted_dir, SPEC, "parts=2", *small_batches), [reference["input"]], out, resume=True)
    done = json.loads((out / ".parts" / "p0001.done").read_text())["stats"]
    figures = {
        "tool_calls": {"part0": calls[0], "part1": calls[1], "resume": len(RecordingCalc.inputs)},
        "part1_units": int(done["units_resumed"] + done["units_journaled"]),
        "part1_units_resumed": int(done["units_resumed"]),
    }
    print("FIGURES pipeline_kill", json.dumps(figures))
    assert done["units_resumed"] == len(journaled)
    # Part 0 was not redone, nor were part 1's journaled units (they made at least one call each).
    assert 0 < len(RecordingCalc.inputs) <= calls[1] - len(journaled)
    assert leftovers(out) == [] and not (out / ".journal").exists()
    assert_same_records(out, reference["out"])


def parts_done(out: Path) -> int:
    return len(list((out / ".parts").glob("*.done")))


def kill_when(proc: subprocess.Popen, ready, delay_s: float) -> bool:
    """SIGKILL ``proc`` ``delay_s`` after ``ready()`` first holds. Returns False if the process
    finished first."""
    while not ready():
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    stop = time.monotonic() + delay_s
    while time.monotonic() < stop:
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def kill_at_random_point(proc: subprocess.Popen, out: Path, after_parts: int, delay_s: float) -> bool:
    """SIGKILL ``proc`` ``delay_s`` after its run has ``after_parts`` parts done, so the kill lands
    inside the next part (not during start-up), whatever the machine's load."""
    return kill_when(proc, lambda: (out / ".parts").is_dir() and parts_done(out) >= after_parts, delay_s)


@pytest.mark.slow
def test_five_random_sigkills_then_resume_equal_uninterrupted(scripted_dir, tmp_path):
    """300 documents in 7 parts; SIGKILL at a random moment inside five successive parts, resuming
    each time."""
    inp = write_jsonl(tmp_path / "docs.jsonl", [*documents(300, seed=1), *BAD_LINES])
    reference = tmp_path / "reference"
    run(settings(scripted_dir, SPEC, "parts=7"), [inp], reference)
    out, log = tmp_path / "run", tmp_path / "victim.log"
    rng = random.Random(42)
    kills, orphans_seen, attempts, parts_done_at_kill = 0, 0, 0, []
    while True:
        attempts += 1
        proc = augment_subprocess(inp, out, scripted_dir, 7, attempts > 1, log)
        done_before = parts_done(out) if out.exists() else 0
        if kills < 5 and kill_at_random_point(proc, out, done_before + 1, rng.uniform(0.0, 3.0)):
            kills += 1
            orphans_seen += len(leftovers(out))
            parts_done_at_kill.append(parts_done(out))
            continue
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
        break
    figures = {
        "documents": 300,
        "kills": kills,
        "attempts": attempts,
        "parts_done_at_each_kill": parts_done_at_kill,
        "orphans_seen_after_kills": orphans_seen,
    }
    print("FIGURES pipeline_kills", json.dumps(figures))
    assert kills == 5 and parts_done_at_kill == sorted(set(parts_done_at_kill))  # five different parts
    assert leftovers(out) == []
    assert_same_records(out, reference)


def kill_after_progress(proc: subprocess.Popen, out: Path, journaled: int, delay_s: float) -> bool:
    """SIGKILL ``proc`` ``delay_s`` after its part's journal holds at least ``journaled`` units."""
    return kill_when(proc, lambda: len(journaled_units(out, 0)) >= journaled, delay_s)


@pytest.mark.slow
def test_random_sigkills_inside_one_part_each_resume_makes_progress(scripted_dir, tmp_path):
    """``--parts 1`` (the default): 300 documents, three SIGKILLs, the k-th a random moment (up to
    0.3 s) after a quarter, half and three quarters of the units are journaled (and more than at
    the kill before: units are journaled a model batch at a time); every resume
    replays the units journaled before it and the final records equal an uninterrupted run's."""
    inp = write_jsonl(tmp_path / "docs.jsonl", [*documents(300, seed=1), *BAD_LINES])
    one_thread = "threads=1"  # as in this process (the reference); see the fast kill test
    reference = tmp_path / "reference"
    run(settings(scripted_dir, SPEC, one_thread), [inp], reference)
    units = json.loads((reference / ".parts" / "p0000.done").read_text())["stats"]["units_journaled"]
    out, log = tmp_path / "run", tmp_path / "victim.log"
    rng = random.Random(7)
    journaled_at_kill: list[int] = []
    attempts = 0
    while True:
        attempts += 1
        proc = augment_subprocess(inp, out, scripted_dir, 1, attempts > 1, log, None, one_thread)
        # units are journaled a model batch at a time: ask for progress past the last kill too
        target = max(int(units * (len(journaled_at_kill) + 1) / 4), (journaled_at_kill or [0])[-1] + 1)
        if len(journaled_at_kill) < 3 and kill_after_progress(proc, out, target, rng.uniform(0.0, 0.3)):
            journaled_at_kill.append(len(journaled_units(out, 0)))
            continue
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
        break
    done = json.loads((out / ".parts" / "p0000.done").read_text())["stats"]
    figures = {
        "documents": 300,
        "units": int(units),
        "attempts": attempts,
        "units_journaled_at_each_kill": journaled_at_kill,
        "units_computed_by_the_last_attempt": int(done.get("units_journaled", 0)),
    }
    print("FIGURES pipeline_kills_one_part", json.dumps(figures))
    assert len(journaled_at_kill) == 3 and journaled_at_kill == sorted(set(journaled_at_kill))
    assert done["units_resumed"] == journaled_at_kill[-1] == units - done.get("units_journaled", 0)
    assert leftovers(out) == [] and not (out / ".journal").exists()
    assert_same_records(out, reference)


# --- Tool faults through a loopback HTTP server -------------------------------------------------

FAULTS = [
    "hang",
    "drip",
    "500",
    "429",
    "garbage",
    "huge",
    "503",
    "hang",
    "drip",
    "500",
    "429",
    "garbage",
    "huge",
]
EXPECTED_FAILURES = {"timeout": 4, "http_500": 2, "http_503": 1, "http_429": 2, "bad_response": 4}


class ScriptedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, script: list[str]):
        super().__init__(("127.0.0.1", 0), FaultHandler)
        self.script, self.lock, self.seen = list(script), threading.Lock(), []

    def next_behaviour(self, path: str) -> str:
        with self.lock:
            self.seen.append(path)
            return self.script.pop(0) if self.script else "ok"


class FaultHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        behaviour = self.server.next_behaviour(self.path)
        try:
            if behaviour == "ok":
                query = self.path.split("query=", 1)[1]
                self._send(200, json.dumps({"result": query}).encode(), {"Content-Type": "application/json"})
            elif behaviour == "hang":
                time.sleep(1.5)  # accept, never answer
            elif behaviour == "drip":
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.end_headers()
                for _ in range(15):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.1)
            elif behaviour in ("500", "503"):
                self._send(int(behaviour), b"server error")
            elif behaviour == "429":
                self._send(429, b"slow down", {"Retry-After": "1"})
            elif behaviour == "garbage":
                self._send(200, b"<html>\x00\xff not json", {"Content-Type": "text/html"})
            elif behaviour == "huge":
                self.send_response(200)
                self.end_headers()  # no Content-Length: the client must cap the bytes it reads
                for _ in range(16):
                    self.wfile.write(b"x" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should


@pytest.fixture
def fault_server():
    server = ScriptedServer(FAULTS)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_http_tool_faults_are_counted_per_reason_and_dead_lettered(scripted_dir, fault_server, tmp_path):
    HttpCalc.url = f"http://127.0.0.1:{fault_server.server_address[1]}/calc"
    HttpCalc.client = None
    docs = documents(24, seed=3)
    inp = write_jsonl(tmp_path / "docs.jsonl", docs)
    out = tmp_path / "run"
    t0 = time.perf_counter()
    stats = run(settings(scripted_dir, HTTP_SPEC, "tool_retries=0", "max_failure_ratio=1.0"), [inp], out)
    wall = time.perf_counter() - t0
    tool = stats["tools"]["Calc"]
    assert tool["failures"] == EXPECTED_FAILURES
    assert tool["failed"] == len(FAULTS) and tool["executed"] == len(fault_server.seen)  # one request each
    assert tool["kept"] == tool["executed"] - len(FAULTS)
    assert all(p.startswith("/calc?query=7") for p in fault_server.seen)  # the model's text only in query
    dead = [e for e in read_kind(out, "errors") if e["stage"] == "execute"]
    assert Counter(e["reason"] for e in dead) == EXPECTED_FAILURES
    ids = {d["doc_id"] for d in docs}
    for e in dead:
        assert e["doc_id"] in ids and "position " in e["detail"] and "call [Calc(7)]" in e["detail"]
    failed = [c for c in read_kind(out, "candidates") if c["error"]]
    assert Counter(c["error"] for c in failed) == EXPECTED_FAILURES
    assert all(c["result"] is None and c["kept"] is False for c in failed)  # dropped, never inserted
    for t in read_kind(out, "texts"):
        assert all(c["result"] == "7" for c in t["calls"])
    print(
        "FIGURES tool_faults",
        json.dumps(
            {"requests": len(fault_server.seen), "failures": tool["failures"], "wall_s": round(wall, 2)}
        ),
    )
