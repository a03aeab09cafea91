"""Tools and inputs for the pipeline campaigns: a recording stub and an HTTP-backed tool, both named
``Calc`` so the scripted tiny model of tests/test_pipeline.py (it always writes ``[Calc(7)]`` after
a comma) drives them.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path
from typing import ClassVar

from tests.test_pipeline import TEMPLATE, read_kind, write_jsonl  # noqa: F401 (re-exported)
from tools.base import Tool, ToolError

SPEC = "tests.reliability.pipeline_tools:RecordingCalc"
HTTP_SPEC = "tests.reliability.pipeline_tools:HttpCalc"


KILL_AT_CALL = "PIPELINE_TOOLS_KILL_AT_CALL"


class RecordingCalc(Tool):
    """Returns its input and records every input it is called with (class-level, per process).

    With the environment variable ``PIPELINE_TOOLS_KILL_AT_CALL=N`` (set for a victim subprocess
    only), its N-th call SIGKILLs its own process: a real crash at a known point of the run.
    """

    name = "Calc"
    deterministic = False  # every candidate reaches the tool
    inputs: ClassVar[list[str]] = []
    _lock = threading.Lock()

    @property
    def prompt_template(self) -> str:
        return TEMPLATE

    def accepts(self, document, rng: random.Random) -> bool:
        return "," in document["text"]

    def __call__(self, input, context):
        if context.doc_id is None:  # the filter's examples (Tool.filter_examples, on the launcher)
            return input
        with type(self)._lock:
            type(self).inputs.append(input)
            if len(type(self).inputs) == int(os.environ.get(KILL_AT_CALL, "0")):
                os.kill(os.getpid(), signal.SIGKILL)
        if not input.isdigit():
            raise ToolError("parse", f"not a number: {input[:20]!r}")
        return input


class HttpCalc(RecordingCalc):
    """Asks a loopback server (``url`` set by the test) with no retries, so each candidate is
    exactly one request and failures map one-to-one to the server's scripted faults."""

    url = ""
    client = None

    def __call__(self, input, context):
        from tools.http import HttpClient, HttpEndpoint

        if context.doc_id is None:  # the filter's examples: no request (the tests count requests)
            return input
        cls = type(self)
        if cls.client is None:
            cls.client = HttpClient(
                HttpEndpoint(
                    cls.url,
                    connect_timeout_s=0.5,
                    read_timeout_s=0.4,
                    deadline_s=0.6,
                    retries=0,
                    max_bytes=4096,
                )
            )
        return cls.client.answer(input)


def settings(model_dir: Path, spec: str = SPEC, *extra: str):
    from pipelines.settings import build_settings

    return build_settings(None, overrides(spec, *extra), model=str(model_dir), tools=(spec,))


def overrides(spec: str = SPEC, *extra: str) -> list[str]:
    return [
        f"{spec}.tau_s=0.5",
        f"{spec}.k=5",
        f"{spec}.m=3",
        f"{spec}.tau_f=-100",
        f"{spec}.window=64",
        f"{spec}.max_call_tokens=12",
        # The campaigns compare records bit for bit across batch sizes and thread counts: the paper's
        # prefix filter gives that on the tiny model; the prompt filter (the default) moves losses by
        # float noise there (~2e-6, decisions equal), see RELIABILITY.md.
        f"{spec}.filter_context=prefix",
        "max_batch_tokens=512",
        *extra,
    ]


def documents(n: int, seed: int = 0) -> list[dict]:
    """``n`` short documents, most with one or two commas (each comma gives one candidate)."""
    rng = random.Random(seed)
    words = ["apples", "trains", "the river", "a tower", "four cats", "Paris", "the sum"]
    docs = []
    for i in range(n):
        parts = [f"{rng.choice(words)} {rng.randint(1, 99)}" for _ in range(rng.randint(1, 3))]
        docs.append({"doc_id": f"doc{i:05d}", "text": ", ".join(parts) + "."})
    return docs
