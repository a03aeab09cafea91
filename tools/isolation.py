"""A killable worker process with CPU and memory limits: the second safety layer for tool code.

The calculator's parser is safe by construction; this layer stops what might still slip through
(a bug that loops or allocates). In Beam, a thread-based timeout did not stop ``9**9**9`` (> 40 s,
observed); only a separate process can be killed.

:class:`IsolatedFunction` keeps one long-lived worker (``python -m tools.isolation TARGET``) and
talks to it over pipes, one JSON line per call (~0.1 ms; no pickle crosses the boundary). The
worker limits its own address space (``RLIMIT_AS``) and CPU time (``RLIMIT_CPU``). A call that
exceeds ``timeout_s`` kills the worker (``ToolError("timeout")``); a worker that dies gives
``ToolError("internal")``; the next call starts a fresh worker.

Try it:  ``python -m tools.isolation tools.calculator:evaluate`` and type ``"1+2"`` (a JSON string).
"""

from __future__ import annotations

import importlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from tools.base import ToolError

MAX_MESSAGE_BYTES = 1 << 20


class IsolatedFunction:
    """Calls ``target`` (``"module:function"``, a ``str -> str`` function) in a worker process.

    Picklable (Beam ships tools to workers): the process handle is dropped when pickled and a new
    worker is started lazily on the first call.
    """

    def __init__(self, target: str, timeout_s: float = 1.0, memory_mb: int = 256, cpu_s: int = 600):
        self.target = target
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.cpu_s = cpu_s  # cumulative for the worker's life: a backstop, not the per-call limit
        self._proc: subprocess.Popen | None = None
        self._buffer = b""
        self._lock = threading.Lock()
        self.restarts = 0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_proc=None, _buffer=b"", _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        # The worker must import the same code as we do (tests define evaluators in tests/).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        cmd = [
            sys.executable,
            "-m",
            "tools.isolation",
            self.target,
            "--memory-mb",
            str(self.memory_mb),
            "--cpu-s",
            str(self.cpu_s),
        ]
        self._buffer = b""
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)

    def _started(self) -> subprocess.Popen:
        """A new worker that has said it is ready (imports done, limits set), within ``STARTUP_S``."""
        proc = self._start()
        try:
            line = self._read_line(proc, time.monotonic() + STARTUP_S)
        except EOFError:
            line = b""
        if line != READY:
            if line is None:
                why = f"did not start within {STARTUP_S:g} s"
            else:  # its output closed: it is exiting (an import error, a crash)
                try:
                    why = f"exited at start (status {proc.wait(timeout=5)})"
                except subprocess.TimeoutExpired:
                    why = "closed its output at start"
            self._proc = proc
            self.close()
            raise ToolError("internal", f"worker for {self.target} {why}")
        return proc

    def close(self) -> None:
        """Kill the worker (it is restarted on the next call)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        if proc is not None:
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                pipe.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - at interpreter shutdown there is nothing useful to do
            pass

    def _read_line(self, proc: subprocess.Popen, deadline: float) -> bytes | None:
        """One reply line, or None on timeout; raises EOFError if the worker died."""
        fd = proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError
            self._buffer += chunk
            if len(self._buffer) > MAX_MESSAGE_BYTES:
                raise EOFError
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def __call__(self, arg: str) -> str:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    self.close()
                    self.restarts += 1
                self._proc = self._started()
            proc = self._proc
            # The call's own time only: the worker has started (its interpreter and imports took
            # seconds on a loaded 2-core machine, and counting them timed out "48 / 2" in a row).
            deadline = time.monotonic() + self.timeout_s
            try:
                proc.stdin.write(json.dumps(arg).encode() + b"\n")
                line = self._read_line(proc, deadline)
            except (EOFError, BrokenPipeError):
                code = proc.poll()
                self.close()
                raise ToolError("internal", f"worker for {self.target} exited (status {code})") from None
            if line is None:
                self.close()
                raise ToolError("timeout", f"{self.target} took longer than {self.timeout_s} s")
        reply = json.loads(line)
        if "result" in reply:
            return reply["result"]
        raise ToolError(reply["reason"], reply["message"])


STARTUP_S = 60  # a worker's interpreter start and imports; not part of any call's time limit
READY = b'{"ready": true}'


def _resolve(target: str) -> Callable[[str], str]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _serve(target: str, memory_mb: int, cpu_s: int) -> None:
    import resource

    fn = _resolve(target)  # import before limiting memory: imports are not the calls' fault
    limit = memory_mb << 20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(
        resource.RLIMIT_AS, (limit, limit if hard == resource.RLIM_INFINITY else min(limit, hard))
    )
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(READY + b"\n")  # the parent's per-call deadline starts after this
    stdout.flush()
    for line in stdin:
        try:
            reply = {"result": str(fn(json.loads(line)))}
        except ToolError as e:
            reply = {"reason": e.reason, "message": e.message}
        except MemoryError:
            reply = {"reason": "limit", "message": f"out of memory (limit {memory_mb} MB)"}
        except RecursionError:
            reply = {"reason": "limit", "message": "recursion too deep"}
        except Exception as e:  # noqa: BLE001 - a bug in the tool: report it, keep serving
            reply = {"reason": "internal", "message": f"{type(e).__name__}: {e}"[:300]}
        stdout.write(json.dumps(reply).encode() + b"\n")
        stdout.flush()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        description="Serve a str -> str function over stdin/stdout (JSON lines)."
    )
    parser.add_argument("target", help="module:function")
    parser.add_argument("--memory-mb", type=int, default=256)
    parser.add_argument("--cpu-s", type=int, default=600)
    args = parser.parse_args()
    _serve(args.target, args.memory_mb, args.cpu_s)
