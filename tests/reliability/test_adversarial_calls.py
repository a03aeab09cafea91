"""Adversarial calls (issue 9 item 3; TESTPLAN A-C): >= 1,000 hostile call strings through
``toolformer call`` (in process via ``tools.cli.call``, and a handful as real subprocesses) and
through the pipeline's execute stage (``pipelines.stages.execute_candidates`` with a
``ToolExecutor`` holding the real tools, the Calculator in its isolated worker).

Proves: zero code executions (a marker-file canary every code payload tries to create, plus an
audit hook recording exec/compile/spawn events during each call), every call bounded in time,
memory bounded (parent RSS delta, worker peak RSS). Figures are printed on one ``FIGURES`` line:

    python -m pytest -q -s tests/reliability/test_adversarial_calls.py
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.reliability.conftest import REPO, percentile, rss_kb, subprocess_env
from tests.reliability.hostile import TOOLS, fixed_corpus, hostile_calls

CLI_BOUND_S = 2.0  # one in-process `toolformer call` (parse + tool), worst case, on a loaded 2-core box
EXEC_BOUND_S = 1.5  # one execute-stage call: the Calculator worker's timeout (1 s) + 0.5 s
RSS_BOUND_KB = 64 * 1024  # parent RSS growth over the whole campaign
GENERATED = 650  # hypothesis examples on top of the fixed corpus


def _unexpected(events: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Audit events that are not a module import (importing runs a code object from a file)."""
    bad = []
    for event, args in events:
        if event == "exec" and (
            'file "' + sys.prefix in args
            or 'file "' + sys.base_prefix in args
            or 'file "' + str(REPO) in args
        ):
            continue
        if event == "subprocess.Popen" and "tools.isolation" in args:
            continue  # a restarted Calculator worker (counted separately)
        bad.append((event, args))
    return bad


def run_cli(text: str, index: Path, model: Path) -> tuple[int, str, str]:
    """``toolformer call TEXT`` in process: (exit status, stdout, stderr), as the CLI maps them."""
    from toolformer.errors import UserError
    from tools.cli import call

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = call(text, date="2023-01-30", index=str(index), model=str(model), isolate=False)
        except UserError as e:
            code = e.exit_code
    return code, out.getvalue(), err.getvalue()


class ExecuteStage:
    """The pipeline's execute stage over every well-formed call in a string."""

    def __init__(self, index: Path, model: Path):
        from tools.base import get_tool
        from tools.executor import ToolExecutor

        self.calculator = get_tool("Calculator")  # isolated worker, 1 s timeout, 256 MB
        self.executor = ToolExecutor(
            {
                "Calculator": self.calculator,
                "WikiSearch": get_tool("WikiSearch", index=str(index)),
                "QA": get_tool("QA", index=str(index), model=str(model), device="cpu"),
                "Calendar": get_tool("Calendar"),
                "MT": get_tool("MT"),
            }
        )
        self.results: list[str] = []

    def __call__(self, text: str) -> int:
        from pipelines.stages import execute_candidates
        from toolformer.call_format import parse_calls, render_call

        n = 0
        for i, c in enumerate(parse_calls(text, known_tools=TOOLS, no_input_tools=("Calendar",))):
            if not c.ok:
                continue
            unit = {
                "doc_id": f"hostile-{i}",
                "tool": c.tool,
                "date": "2023-01-30",
                "candidates": [
                    {
                        "input": c.input,
                        "position": c.span[0],
                        "token_position": 0,
                        "call": render_call(c.tool, c.input),
                    }
                ],
            }
            unit, _ = execute_candidates(unit, self.executor, retries=0)
            self.results += [x["result"] for x in unit["candidates"] if x["result"] is not None]
            n += 1
        return n


@pytest.fixture(scope="module")
def stage(tiny_index, tiny_model_dir):
    s = ExecuteStage(tiny_index, tiny_model_dir)
    for warm in (
        "[Calculator(1+1)]",
        "[WikiSearch(Paris)]",
        "[QA(capital of France?)]",
        "[Calendar()]",
        "[MT(tortuga)]",
        "[Calculator(9**9**9)]",
    ):
        s(warm)  # start the worker and do the first imports before the audit hook is armed
    yield s
    s.calculator._worker.close()


def test_hostile_corpus_never_executes_and_stays_bounded(
    canary_dir, tiny_index, tiny_model_dir, stage, audit
):
    corpus = fixed_corpus(str(canary_dir))
    generated: list[str] = []

    @settings(
        max_examples=GENERATED,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_calls(str(canary_dir)))
    def collect(text):
        generated.append(text)

    collect()
    corpus += generated
    assert len(corpus) >= 1000

    for warm in ("[Calculator(1+1)]", "[WikiSearch(Paris)]", "[QA(capital of France?)]", "[Calendar()]"):
        run_cli(warm, tiny_index, tiny_model_dir)
    audit.watch_paths = (str(canary_dir),)
    rss_before = rss_kb()
    restarts_before = stage.calculator._worker.restarts
    cli_s, exec_s, codes, executed = [], [], {0: 0, 1: 0, 2: 0}, 0
    for text in corpus:
        audit.armed = True
        t0 = time.perf_counter()
        code, out, err = run_cli(text, tiny_index, tiny_model_dir)
        t1 = time.perf_counter()
        executed += stage(text)
        t2 = time.perf_counter()
        audit.armed = False
        cli_s.append(t1 - t0)
        exec_s.append(t2 - t1)
        codes[code] += 1
        assert "Traceback" not in err, (text[:80], err)
        assert "\n" not in out.rstrip("\n") and len(out) <= 401, text[:80]  # one sanitised line
    rss_delta = rss_kb() - rss_before
    worker_peak = rss_kb(stage.calculator._worker._proc.pid, "VmHWM")
    figures = {
        "strings": len(corpus),
        "generated": len(generated),
        "cli_exit_codes": codes,
        "executed_calls": executed,
        "cli_max_ms": round(max(cli_s) * 1000, 1),
        "cli_p99_ms": round(percentile(cli_s, 0.99) * 1000, 2),
        "exec_max_ms": round(max(exec_s) * 1000, 1),
        "exec_p99_ms": round(percentile(exec_s, 0.99) * 1000, 2),
        "parent_rss_delta_mb": round(rss_delta / 1024, 1),
        "worker_peak_rss_mb": round(worker_peak / 1024, 1),
        "worker_restarts": stage.calculator._worker.restarts - restarts_before,
    }
    print("FIGURES adversarial", json.dumps(figures))

    assert list(canary_dir.iterdir()) == []  # the marker file was never created
    assert _unexpected(audit.events) == []  # nothing compiled, exec'd or spawned during a call
    assert max(cli_s) < CLI_BOUND_S and max(exec_s) < EXEC_BOUND_S
    assert rss_delta < RSS_BOUND_KB and worker_peak < 256 * 1024
    assert figures["worker_restarts"] == 0  # nothing reached the worker's kill switch
    assert codes[2] > 0 and codes[1] > 0 and executed > 0  # the corpus exercises every path
    for result in stage.results:  # a result can never carry a call back into the text
        assert "[" not in result and "]" not in result and "->" not in result and "→" not in result


@pytest.mark.parametrize(
    "payload, code",
    [
        ("[Calculator(__import__('os').system('touch {canary}/sub'))]", 1),
        ("[Calculator(9**9**9)]", 1),
        ("[Calculator(open('{canary}/sub2','w'))]", 1),
        ("[Shell(touch {canary}/sub3)]", 2),
        ("[Calculator(18 + 12 * 3)]", 0),
    ],
)
def test_toolformer_call_subprocess(payload, code, canary_dir):
    text = payload.replace("{canary}", str(canary_dir))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "commands.cli", "call", text],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=subprocess_env(),
        cwd=REPO,
    )
    wall = time.perf_counter() - t0
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and wall < 30
    if code == 0:
        assert proc.stdout == "54\n"
    else:
        assert len(proc.stderr.strip().splitlines()) == 1  # one clear line
    assert list(canary_dir.iterdir()) == []


def test_audit_recorder_catches_exec(audit):
    """Positive control: the recorder used above does see a code execution."""
    audit.armed = True
    exec("1")  # noqa: S102 - the event under test
    audit.armed = False
    assert [e for e, _ in _unexpected(audit.events)] == ["compile", "exec"]  # exec of a string compiles it
