"""The ``toolformer call`` and ``toolformer index`` commands: output, exit statuses, errors.

Run: python -m pytest -q tests/test_tools_cli.py
"""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from commands.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_call_prints_the_result(capsys):
    assert run(capsys, "call", "[Calculator(18 + 12 * 3)]") == (0, "54\n", "")
    assert run(capsys, "call", "  [Calculator(10-5-2)]\n", "--no-isolate") == (0, "3\n", "")


def test_call_reads_stdin(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("[Calendar()]\n"))
    assert run(capsys, "call", "-", "--date", "2023-01-30") == (0, "Today is Monday, January 30, 2023.\n", "")


def test_calendar_defaults_to_today(capsys):
    rc, out, _ = run(capsys, "call", "[Calendar()]")
    today = dt.date.today()
    assert (rc, out.strip().endswith(f"{today.day}, {today.year}.")) == (0, True)


def test_tool_error_is_one_line_on_stderr_with_status_1(capsys):
    assert run(capsys, "call", "[Calculator(1/0)]") == (
        1,
        "",
        "toolformer call: Calculator failed (div0): division by zero\n",
    )
    rc, out, err = run(capsys, "call", "[Calculator(9**9**9)]")
    assert (rc, out, err.count("\n"), err.startswith("toolformer call: Calculator failed (limit)")) == (
        1,
        "",
        1,
        True,
    )
    rc, out, err = run(capsys, "call", "[MT(la tortuga)]")
    assert (
        rc,
        err.startswith("toolformer call: MT failed (unavailable): MT needs a local translation model"),
    ) == (1, True)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[Calculator(1+1", "call is unterminated"),
        ("Calculator(1+1)", "no call found"),
        ("[Calculator(1+1)] extra", "expected exactly one call"),
        ("[Shell(rm -rf /)]", "call is unknown_tool"),
        ("[Calculator()]", "call is empty_input"),
        ("[QA(What is [Calculator(2+2)]?)]", "call is nested"),
        ("[Calculator(" + "1+" * 1000 + "1)]", "call is too_long"),
    ],
)
def test_call_that_does_not_parse_exits_2(capsys, text, message):
    rc, out, err = run(capsys, "call", text)
    assert (rc, out) == (2, "")
    assert err.startswith("toolformer call: error: not a well-formed call: ") and message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["call", "[WikiSearch(Brown Act)]"], "WikiSearch needs --index DIR"),
        (["call", "[QA(Who?)]"], "QA needs --index DIR"),
        (["call", "[Calendar()]", "--date", "30/01/2023"], "--date must be a date like 2023-01-30"),
        (["call", "[Calendar()]", "--tools", "nope:Nope"], "cannot load tool 'nope:Nope'"),
        (["index", "--output", "x"], "both --input GLOB and --output DIR are required"),
    ],
)
def test_flag_mistakes_exit_2_with_one_line(capsys, argv, message):
    rc, out, err = run(capsys, *argv)
    assert (rc, out, err.count("\n")) == (2, "", 1)
    assert message in err


@pytest.fixture
def corpus(tmp_path) -> Path:
    rows = [
        {
            "id": "p1",
            "title": "Brown Act",
            "text": "The Brown Act is a California open meetings law.",
            "split": "store",
        },
        {"id": "p2", "title": "Steel", "text": "Pittsburgh is known as the Steel City.", "split": "store"},
        {
            "id": "p3",
            "title": "Hidden",
            "text": "The Brown Act passage that is filtered out.",
            "split": "input",
        },
    ]
    path = tmp_path / "passages.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + '\nnot json\n{"id": "p4", "split": "store"}\n')
    return path


def test_index_then_search(capsys, corpus, tmp_path):
    out_dir = tmp_path / "index"
    rc, out, err = run(
        capsys,
        "index",
        "--input",
        str(tmp_path / "*.jsonl"),
        "--output",
        str(out_dir),
        "--filter",
        "split=store",
    )
    assert rc == 0
    assert out.startswith("indexed 2 passages (")
    assert out.strip().endswith(f"-> {out_dir}; skipped 2 bad records")
    assert run(capsys, "call", "[WikiSearch(Brown Act)]", "--index", str(out_dir)) == (
        0,
        "The Brown Act is a California open meetings law.\n",
        "",
    )
    assert run(capsys, "call", "[WikiSearch(zebra)]", "--index", str(out_dir))[:2] == (1, "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "passages.jsonl"]  # no temp dir left

    rc, _, err = run(capsys, "index", "--input", str(corpus), "--output", str(out_dir))
    assert (rc, "already exists (pass --overwrite to replace it)" in err) == (2, True)
    assert run(capsys, "index", "--input", str(corpus), "--output", str(out_dir), "--overwrite")[0] == 0
    assert json.loads((out_dir / "meta.json").read_text())["passages"] == 3


def test_index_input_errors(capsys, corpus, tmp_path):
    rc, _, err = run(
        capsys, "index", "--input", str(tmp_path / "none-*.jsonl"), "--output", str(tmp_path / "i")
    )
    assert (rc, "no input matches" in err) == (2, True)
    rc, _, err = run(
        capsys, "index", "--input", str(corpus), "--output", str(tmp_path / "i"), "--filter", "split"
    )
    assert (rc, "--filter must be FIELD=VALUE" in err) == (2, True)
    rc, _, err = run(
        capsys, "index", "--input", str(corpus), "--output", str(tmp_path / "i"), "--filter", "split=nothing"
    )
    assert (rc, "no passages to index" in err) == (2, True)
    assert not (tmp_path / "i").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["passages.jsonl"]


def test_installed_command_and_exit_codes():
    toolformer = str(Path(sys.executable).parent / "toolformer")
    ok = subprocess.run(
        [toolformer, "call", "[Calculator(18 + 12 * 3)]"], capture_output=True, text=True, check=False
    )
    assert (ok.returncode, ok.stdout) == (0, "54\n")
    bad = subprocess.run(
        [toolformer, "call", "-"], input="[Calculator(1+1]", capture_output=True, text=True, check=False
    )
    assert (bad.returncode, bad.stdout) == (2, "")
