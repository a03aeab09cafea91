"""Out of memory (issue 18): the model's decoder raises ``torch.OutOfMemoryError`` for every pass
over more than T input tokens (rows x width), as a device would past its memory
(tests/reliability/resource_victim.py:oom_above; in process for the batch-halving cases, in a
``toolformer`` subprocess for the one-line stops).

* Augment's model stage (pipelines/model_handler.py, AugmentModel.infer): the batch's token budget
  is halved and the batch redone until it fits; the records equal an unfaulted run's exactly
  (``filter_context=prefix``, batch-invariant on the tiny model) and the retries are counted
  (``oom_retries:sample|filter`` in the parts' stats, one warning line each). A single row that
  does not fit stops the run with one line (exit 4); ``--resume`` then completes with the same
  records.
* Generation (toolformer/generation.py, ToolGenerator.generate): the batch of prompts is decoded
  again in halves (later batches no larger); the outputs, calls included, equal an unfaulted run's;
  ``oom_retries`` counts them. A prompt that does not fit alone stops with one line (exit 4).

    python -m pytest -q -s tests/reliability/test_oom.py
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers.models.llama.modeling_llama import LlamaModel

from pipelines import rundir
from pipelines.stages import in_part
from tests.reliability.conftest import REPO, subprocess_env
from tests.reliability.pipeline_tools import (
    SPEC,
    RecordingCalc,
    documents,
    overrides,
    read_kind,
    settings,
    write_jsonl,
)
from tests.reliability.resource_victim import OomLog, oom_above
from tests.test_generation import CALL, PROMPT, Fixed, make
from toolformer.errors import OutOfMemory
from tools.base import CallContext

# Tiny models are latency-bound: extra threads only contend on a 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")

EXTRA = ("threads=1",)
# The passes of the run below: batches up to 6 rows x 76 tokens (456) at max_batch_tokens=512;
# single rows up to 134 tokens (the long document's windows), 66 for the prompt cached at load.
FITS_SINGLE_ROWS = 140  # every single row fits: halving always succeeds
TOO_SMALL_FOR_LONG = 100  # the long document's single rows do not fit


def long_document() -> dict:
    """~240 tokens (4 windows of 64), in part 1 of 2: part 0 finishes before it is reached."""
    doc_id = next(f"long-{i}" for i in range(50) if in_part(f"long-{i}", 1, 2))
    return {"doc_id": doc_id, "text": ", ".join(f"item {i} costs {i * 7}" for i in range(40)) + "."}


def run(scripted_dir: Path, inp: Path, out: Path, resume: bool = False) -> dict:
    from pipelines.augment import run_augment

    return run_augment(settings(scripted_dir, SPEC, "parts=2", *EXTRA), [str(inp)], str(out), resume, [])[1]


@pytest.fixture(scope="module")
def reference(scripted_dir, tmp_path_factory) -> dict:
    """An unfaulted run over 40 short documents, a long one and a bad record, in 2 parts."""
    tmp = tmp_path_factory.mktemp("oom-reference")
    inp = write_jsonl(tmp / "docs.jsonl", [*documents(40), long_document(), b"{not json"])
    stats = run(scripted_dir, inp, tmp / "run")
    return {"input": inp, "out": tmp / "run", "stats": stats}


def assert_same_records(out: Path, reference: Path) -> None:
    for kind in ("texts", "candidates", "errors"):
        assert read_kind(out, kind) == read_kind(reference, kind), kind
    for key in ("documents", "bad_records", "tools"):
        assert (
            json.loads((out / "stats.json").read_text())[key]
            == json.loads((reference / "stats.json").read_text())[key]
        ), key


def retries_in_markers(out: Path) -> dict[str, int]:
    got: dict[str, int] = {}
    for part in (0, 1):
        for k, v in rundir.read_json(rundir.marker(out, part))["stats"].items():
            if k.startswith("oom_retries:"):
                got[k] = got.get(k, 0) + int(v)
    return got


def test_model_stage_oom_halves_the_batch_and_records_equal_unfaulted(
    scripted_dir, reference, tmp_path, monkeypatch, caplog
):
    seen = OomLog()
    monkeypatch.setattr(LlamaModel, "forward", oom_above(FITS_SINGLE_ROWS, seen))
    caplog.set_level(logging.WARNING, logger="pipelines.model_handler")
    out = tmp_path / "run"
    run(scripted_dir, reference["input"], out)
    monkeypatch.undo()
    lines = [r.getMessage() for r in caplog.records if "out of memory on a pass of" in r.getMessage()]
    retries = retries_in_markers(out)
    figures = {
        "failed_passes": len(seen.failed),
        "largest_failed": max(t for _, t in seen.failed),
        "largest_ok": seen.largest_ok,
        "retries": retries,
        "warning_lines": len(lines),
    }
    print("FIGURES oom_model_stage", json.dumps(figures))
    assert seen.failed and seen.largest_ok <= FITS_SINGLE_ROWS
    assert retries.get("oom_retries:sample", 0) > 0 and retries.get("oom_retries:filter", 0) > 0
    assert len(lines) == sum(retries.values()) == len(seen.failed)  # one retry, one line per failed pass
    assert_same_records(out, reference["out"])


def test_model_stage_single_row_oom_stops_with_one_line_then_resume_equals_unfaulted(
    scripted_dir, reference, tmp_path
):
    out = tmp_path / "run"
    argv = [
        "augment", "--input", str(reference["input"]), "--output", str(out), "--model", str(scripted_dir),
        "--tools", SPEC, "--parts", "2", "--override", *overrides(SPEC, *EXTRA),
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "tests.reliability.resource_victim", f"oom:{TOO_SMALL_FOR_LONG}", *argv],
        env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300,
    )  # fmt: skip
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 4, err[-3000:]
    assert "Traceback" not in err and "Caught CUDA OOM" not in err, err[-3000:]
    [line] = [x for x in err.splitlines() if x.startswith("toolformer augment: error: ")]
    assert re.search(r"out of memory on a single row of 134 tokens \(max_batch_tokens \d+, halved [1-9]\d* "
                     r"times from 512\)", line) and "rerun with --resume" in line, line
    # Part 0 (short documents only) finished; part 1 stopped at the long document, not marked done.
    assert rundir.part_done(out, 0) and not rundir.part_done(out, 1)
    assert not (out / rundir.SUCCESS).exists()
    part0 = rundir.read_json(rundir.marker(out, 0))["stats"]
    journaled = sum(len(Path(f).read_text().splitlines()) for f in rundir.journal_files(out, 1))
    RecordingCalc.inputs = []
    run(scripted_dir, reference["input"], out, resume=True)
    part1 = rundir.read_json(rundir.marker(reference["out"], 1))["stats"]
    figures = {
        "part0_oom_retries": {k: int(v) for k, v in part0.items() if k.startswith("oom_retries:")},
        "part1_units_journaled_before": journaled,
        "resume_tool_calls": len(RecordingCalc.inputs),
        "part1_tool_calls": int(part1[f"executed:{RecordingCalc.name}"]),
    }
    print("FIGURES oom_single_row", json.dumps(figures))
    assert sum(figures["part0_oom_retries"].values()) > 0  # part 0 ran out of memory too, and halved
    assert len(RecordingCalc.inputs) <= part1[f"executed:{RecordingCalc.name}"]  # part 0 was not redone
    assert_same_records(out, reference["out"])


# --- generation ------------------------------------------------------------------------------

PROMPTS = [
    PROMPT,
    "The quick brown fox",
    "He paid 18 + 12 * 3 = 54 dollars for 3 books and a pen at the store in Paris, and",
    "Today is",
    "In 2019 the town had 1,280 people; in 2020 it had",
    "Pittsburgh is also known as",
    "Out of 1400 participants",
    "The name derives from la tortuga, the Spanish word for",
]


def outputs(gen, prompts, batch_size):
    outs = gen.generate(prompts, CallContext(date=dt.date(2023, 1, 30)), batch_size=batch_size)
    return [(o.text, o.calls, o.num_tokens) for o in outs]


def test_generation_oom_halves_the_batch_and_outputs_equal_unfaulted(tiny_model, monkeypatch, caplog):
    plans = {PROMPT: CALL, "Out of 1400 participants": CALL}
    gen, _ = make(tiny_model, {"Calculator": Fixed()}, plans, max_new_tokens=16)
    reference = outputs(gen, PROMPTS, 8)
    assert gen.oom_retries == 0 and sum(bool(calls) for _, calls, _ in reference) == 2
    seen = OomLog()
    # the first pass of the 8 prompts: 8 rows x 59 tokens; of the 4 longest 4 x 59; of 2: 2 x 59 fits
    monkeypatch.setattr(LlamaModel, "forward", oom_above(120, seen))
    caplog.set_level(logging.WARNING, logger="toolformer.generation")
    got = outputs(gen, PROMPTS, 8)
    lines = [r.getMessage() for r in caplog.records if "out of memory with a batch" in r.getMessage()]
    print("FIGURES oom_generation", json.dumps({"failed_passes": len(seen.failed), "retries": gen.oom_retries,
                                                "largest_ok": seen.largest_ok}))
    assert got == reference
    assert gen.oom_retries == len(lines) == len(seen.failed) >= 2  # 8 -> 4 -> 2 at least


def test_generation_single_prompt_oom_is_one_clear_error(tiny_model, monkeypatch):
    gen, _ = make(tiny_model, {"Calculator": Fixed()}, max_new_tokens=8)
    monkeypatch.setattr(LlamaModel, "forward", oom_above(10))
    with pytest.raises(OutOfMemory, match=r"out of memory decoding prompt 1 alone \(\d+ prompt tokens"):
        gen.generate(["Today is", PROMPTS[2]], batch_size=2)  # "Today is" fits alone, PROMPTS[2] does not
    with pytest.raises(OutOfMemory, match=r"out of memory decoding prompt 0 alone"):
        list(gen.stream(PROMPTS[2]))


def test_generate_command_single_prompt_oom_is_one_line(tiny_model_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "tests.reliability.resource_victim", "oom:10", "generate", "--model",
         str(tiny_model_dir), "--json", "--max-new-tokens", "4", "Today is", PROMPTS[2]],
        env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300,
    )  # fmt: skip
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 4 and "Traceback" not in err, err[-3000:]
    [line] = [x for x in err.splitlines() if x.startswith("toolformer generate: error: ")]
    assert "out of memory decoding prompt 1 alone" in line, line
