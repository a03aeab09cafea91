"""Fixtures shared by the reliability suite: a code-execution canary, RSS probes, a tiny index."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def rss_kb(pid: int | str = "self", field: str = "VmRSS") -> int:
    """Resident set size (or ``VmHWM``, the peak) of a process in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class AuditRecorder:
    """Records code-execution and process-spawning audit events while ``armed``.

    Audit hooks cannot be removed, so one hook is installed per process and gated by ``armed``;
    events are recorded, not raised, because a raise inside a tool would be turned into an
    ``internal`` outcome by the executor and hide the finding.
    """

    WATCHED = (
        "exec",
        "compile",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "subprocess.Popen",
        "ctypes.dlopen",
    )
    _installed: AuditRecorder | None = None

    def __init__(self):
        self.armed = False
        self.events: list[tuple[str, str]] = []
        self.watch_paths: tuple[str, ...] = ()

    def hook(self, event: str, args: tuple) -> None:
        if not self.armed:
            return
        if (
            event in self.WATCHED
            or event == "open"
            and args
            and any(str(args[0]).startswith(p) for p in self.watch_paths)
        ):
            self.events.append((event, repr(args)[:200]))

    @classmethod
    def get(cls) -> AuditRecorder:
        if cls._installed is None:
            cls._installed = cls()
            sys.addaudithook(cls._installed.hook)
        return cls._installed


@pytest.fixture
def audit():
    rec = AuditRecorder.get()
    rec.events.clear()
    yield rec
    rec.armed = False


@pytest.fixture(scope="session")
def canary_dir(tmp_path_factory) -> Path:
    """A directory that hostile payloads try to write a marker file into."""
    return tmp_path_factory.mktemp("canary")


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory) -> Path:
    """A four-passage WikiSearch index."""
    from tools.wikisearch import Passage, build_index

    passages = [
        Passage("1", "Pittsburgh", "Pittsburgh is known as the Steel City."),
        Passage("2", "Brown Act", "The Brown Act is a California law on open meetings."),
        Passage("3", "Turtle", "Tortuga is the Spanish word for turtle."),
        Passage("4", "Paris", "Paris is the capital of France."),
    ]
    return build_index(passages, tmp_path_factory.mktemp("idx") / "index")


def subprocess_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")


@pytest.fixture(scope="session")
def scripted_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The scripted one-layer model of tests/test_pipeline.py (read only: one for the whole suite)."""
    from tests.test_pipeline import build_scripted_model

    return build_scripted_model(tiny_model_dir, tmp_path_factory.mktemp("scripted"))

