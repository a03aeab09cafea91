"""Disk full / file-size limit (issue 18): the process's files may not grow past a few KB from a
chosen moment (``RLIMIT_FSIZE`` in a subprocess, SIGXFSZ ignored: writes fail with EFBIG, after
writing what fits, as on a full disk; tests/reliability/resource_victim.py).

* ``toolformer augment``, the limit hit while writing the per-part journal, the output shards
  (JSONL and Parquet, in the runner's temporary folders) and a part's done-marker;
* ``toolformer index`` (tools/bm25_index.py), while writing the passage texts and the postings;
* ``toolformer finetune``, while writing checkpoint-20 and while writing the final model.

Each time: exit status 4 and one line naming the file and "file too large", no traceback; nothing
half-written taken as done (no ``_SUCCESS``, no part marked done that is not whole, no checkpoint
under its final name that is not complete, no index directory); then, with the limit lifted,
``--resume`` (augment, finetune) or a plain rerun (index) ends with exactly the records of an
uninterrupted run (the same texts, candidates and dead letters; the same index files byte for
byte; the same final weights).

    python -m pytest -q -s tests/reliability/test_disk_full.py
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.checkpoints import complete_checkpoints
from pipelines import rundir
from pipelines.stages import parse_journal
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
from tests.tiny_model import TRAINING_LINES

# Tiny models are latency-bound: extra threads only contend on a 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")

BAD = [b"{not json", json.dumps({"doc_id": "no-text"}).encode()]  # so the errors shards hold records
EXTRA = ("threads=1",)  # the victim runs one torch thread, as this process does


def victim(fault: str, *argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``toolformer ARGV`` under ``fault`` (see resource_victim.py), stderr through a pipe (a file
    would be under the size limit too)."""
    return subprocess.run(
        [sys.executable, "-m", "tests.reliability.resource_victim", fault, *argv],
        env=subprocess_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
    )


def one_error_line(proc: subprocess.CompletedProcess, command: str) -> str:
    """The run failed with exit 4 and exactly one ``toolformer COMMAND: error:`` line, no traceback."""
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 4, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(f"toolformer {command}: error: ")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


# --- augment ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(scripted_dir, tmp_path_factory) -> dict:
    """An uninterrupted run over 40 documents and 2 bad records, in 2 parts."""
    tmp = tmp_path_factory.mktemp("df-reference")
    inp = write_jsonl(tmp / "docs.jsonl", [*documents(40), *BAD])
    run_in_process(scripted_dir, inp, tmp / "run")
    return {"input": inp, "out": tmp / "run"}


def run_in_process(scripted_dir: Path, inp: Path, out: Path, resume: bool = False) -> dict:
    from pipelines.augment import run_augment

    return run_augment(settings(scripted_dir, SPEC, "parts=2", *EXTRA), [str(inp)], str(out), resume, [])[1]


def augment_argv(inp: Path, out: Path, model: Path) -> list[str]:
    return [
        "augment", "--input", str(inp), "--output", str(out), "--model", str(model), "--tools", SPEC,
        "--parts", "2", "--override", *overrides(SPEC, *EXTRA),
    ]  # fmt: skip


def assert_same_records(out: Path, reference: Path) -> None:
    for kind in ("texts", "candidates", "errors"):
        assert read_kind(out, kind) == read_kind(reference, kind), kind
    ids = [t["doc_id"] for t in read_kind(out, "texts")]
    assert len(ids) == len(set(ids))
    for key in ("documents", "bad_records", "tools"):
        assert (
            json.loads((out / "stats.json").read_text())[key]
            == json.loads((reference / "stats.json").read_text())[key]
        ), key


def journal_lines(out: Path, part: int) -> tuple[int, int]:
    """(whole units, torn or invalid lines) in part ``part``'s journal."""
    whole = torn = 0
    for f in rundir.journal_files(out, part):
        entries, bad = parse_journal(Path(f).read_bytes())
        whole, torn = whole + len(entries), torn + bad
    return whole, torn


# (fault, where the failed write is, parts done and marked when it fails)
AUGMENT_CASES = {
    "journal": ("fsize:3000:start", "/.journal/p0000/", []),
    "shards": ("fsize:3000:sink", "/beam-temp-", []),
    "parquet": ("fsize:1000:parquet", "/beam-temp-", []),
    "marker": ("fsize:500:marker=1", "/.parts/p0001.done.tmp", [0]),
}


@pytest.mark.parametrize("case", list(AUGMENT_CASES))
def test_augment_disk_full_stops_with_one_line_then_resume_equals_uninterrupted(
    case, scripted_dir, reference, tmp_path
):
    fault, where, done = AUGMENT_CASES[case]
    out = tmp_path / "run"
    proc = victim(fault, *augment_argv(reference["input"], out, scripted_dir))
    line = one_error_line(proc, "augment")
    assert f"cannot write {out}{where}" in line and ": file too large; " in line, line
    assert "rerun with --resume" in line
    # Nothing half-written counts as done.
    assert not (out / rundir.SUCCESS).exists() and not (out / "stats.json").exists()
    assert [p for p in (0, 1) if rundir.part_done(out, p)] == done
    assert sorted(p.name for p in (out / rundir.PARTS).iterdir() if p.suffix == ".done") == [
        f"p{p:04d}.done" for p in done
    ]
    whole, torn = journal_lines(out, done[-1] + 1 if done else 0)
    if case == "journal":
        assert torn == 1  # the line the limit cut; a resume ignores it
    RecordingCalc.inputs = []
    run_in_process(scripted_dir, reference["input"], out, resume=True)
    figures = {"case": case, "journaled_units_before": whole, "torn_lines": torn, "resume_tool_calls": len(RecordingCalc.inputs)}
    print("FIGURES disk_full_augment", json.dumps(figures))
    assert_same_records(out, reference["out"])
    assert not list(out.glob("beam-temp-*")) and not list(out.glob("**/*.tmp"))
    assert not (out / rundir.JOURNAL).exists()


# --- index -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def passages(tmp_path_factory) -> Path:
    """400 passages of 12 two-letter words: texts.bin ~14 KB, postings.docs.npy ~19 KB."""
    rng = random.Random(0)
    words = [a + b for a in "abcdefghijklmnopqrstuvwxyz" for b in "abcdefghijklmnopqrstuvwxyz"]
    path = tmp_path_factory.mktemp("passages") / "passages.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "title": f"T{i}", "text": " ".join(rng.sample(words, 12))}) + "\n"
            for i in range(400)
        )
    )
    return path


def index_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("limit,file", [(8000, "texts.bin.tmp"), (15000, "postings.docs.npy")])
def test_index_disk_full_leaves_no_index_then_rebuild_equals_uninterrupted(limit, file, passages, tmp_path):
    from tools.cli import index

    index(input=str(passages), output=str(tmp_path / "reference"))
    out = tmp_path / "index"
    line = one_error_line(victim(f"fsize:{limit}:start", "index", "--input", str(passages), "--output", str(out)), "index")
    assert f"/.index.tmp-" in line and f"/{file}: file too large; " in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference"]  # no index, no build folder left
    assert index(input=str(passages), output=str(out)) == 0
    assert index_files(out) == index_files(tmp_path / "reference")


# --- finetune --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ft_data(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("df-ft-data") / "data.jsonl"
    f.write_text("".join(json.dumps({"text": TRAINING_LINES[i % 4]}) + "\n" for i in range(30)))
    return f


def ft_argv(data: Path, out: Path, model: Path) -> list[str]:
    # 30 texts, batch 4 x 2 accumulation, checkpoints at steps 10 and 20 (as test_finetune_faults)
    return [
        "finetune", "--data", str(data), "--output", str(out), "--model", str(model), "--max-steps", "20",
        "--batch-size", "4", "--effective-batch-size", "8", "--learning-rate", "5e-3", "--save-steps", "10",
        "--max-length", "48", "--dev-share", "0", "--keep-checkpoints", "5",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ft_reference(tmp_path_factory, ft_data, tiny_model_dir) -> dict[str, torch.Tensor]:
    from finetune.train import finetune
    from commands.cli import build_parser

    out = tmp_path_factory.mktemp("df-ft-ref") / "run"  # the same flags, parsed as the command does
    assert finetune(**vars(build_parser("finetune", finetune).parse_args(ft_argv(ft_data, out, tiny_model_dir)[1:]))) == 0
    return load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize(
    "when,complete",
    [("save=20", ["checkpoint-10"]), ("final", ["checkpoint-10", "checkpoint-20"])],
    ids=["checkpoint", "final"],
)
def test_finetune_disk_full_keeps_complete_checkpoints_then_resume_equals_uninterrupted(
    when, complete, tmp_path, ft_data, tiny_model_dir, ft_reference
):
    out = tmp_path / "run"
    line = one_error_line(victim(f"fsize:20000:{when}", *ft_argv(ft_data, out, tiny_model_dir)), "finetune")
    assert "rerun with --resume" in line, line
    if when.startswith("save"):
        assert f"could not write checkpoint-20 in {out}/checkpoints (writing {out}/checkpoints/.staging): " in line
        assert ": file too large; " in line.lower() and "checkpoint-10) is intact" in line, line
    else:
        assert f"file too large writing {out}/.final-staging; " in line, line
    ckpts = out / "checkpoints"
    assert [p.name for p in complete_checkpoints(ckpts)] == complete
    # every directory under a final checkpoint name is complete; no staging debris, no final model
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith("checkpoint-")) == complete
    assert not (ckpts / ".staging").exists() and not (out / ".final-staging").exists()
    assert not (out / "finetune.json").exists() and not (out / "finetune.json.tmp").exists()
    proc = victim("none", *ft_argv(ft_data, out, tiny_model_dir), "--resume")
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    result = json.loads((out / "finetune.json").read_text())
    assert result["resumed_from"].endswith(complete[-1]) and result["steps"] == 20
    got = load_file(str(out / "model.safetensors"))
    assert got.keys() == ft_reference.keys()
    for k, v in ft_reference.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)
