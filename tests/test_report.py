"""Tests of the augmentation report (commands/report.py) on small fake run directories.

python -m pytest -q tests/test_report.py
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from commands.cli import main
from toolformer.errors import UserError
from commands.report import load_run, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

ORIGINAL_1 = "Out of 1400 participants, 400 passed the test, or 29% of all."
ORIGINAL_2 = "The museum opened in 1998. Today is its anniversary."


def _candidate(doc_id, tool, position, input, result, delta, threshold, kept, error=None):
    plus = None if error else 2.0
    return {"doc_id": doc_id, "tool": tool, "position": position, "token_position": position // 4,
            "call": f"[{tool}({input})]", "input": input, "result": result, "error": error,
            "loss_plus": plus, "loss_minus": None if error else plus + delta,
            "loss_empty": None if error else plus + delta,
            "loss_no_result": None if error else plus + delta + 1,
            "delta": None if error else delta, "threshold": threshold, "kept": kept}


def _write_jsonl(path: Path, records: list, extra_lines: tuple[str, ...] = ()) -> None:
    lines = [json.dumps(r, ensure_ascii=False) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run with 6 Calculator, 3 Calendar and 2 WikiSearch candidates, known deltas and failures."""
    d = tmp_path / "run"
    d.mkdir()
    # Positions are character offsets in the original text: the space before "29%" and "passed".
    p29, p_passed = ORIGINAL_1.index(" 29%"), ORIGINAL_1.index(" passed")
    p_today = ORIGINAL_2.index(" Today")
    calc = [
        _candidate("d1", "Calculator", p29, "400 / 1400", "0.29", 2.5, 0.5, True),
        _candidate("d1", "Calculator", p_passed, "1400 - 400", "1000", 0.75, 0.5, True),
        _candidate("d1", "Calculator", 11, "1400 * 2", "2800", 0.25, 0.5, False),
        _candidate("d1", "Calculator", 11, "-1", "-1", -1.5, 0.5, False),
        _candidate("d1", "Calculator", 5, "1 / 0", None, None, 0.5, False, error="div0"),
        _candidate("d1", "Calculator", 5, "9**9**9", None, None, 0.5, False, error="limit"),
    ]
    cal = [
        _candidate("d2", "Calendar", p_today, "", "Today is Monday, May 4, 2026.", 1.25, 1.0, True),
        _candidate("d2", "Calendar", 0, "", "Today is Monday, May 4, 2026.", 0.5, 1.0, False),
        _candidate("d2", "Calendar", 10, "", "Today is Monday, May 4, 2026.", -0.25, 1.0, False),
    ]
    wiki = [
        _candidate("d3", "WikiSearch", 3, "Lima", None, None, 1.0, False, error="timeout"),
        _candidate("d3", "WikiSearch", 3, "Peru", None, None, 1.0, False, error="timeout"),
    ]
    _write_jsonl(d / "candidates-00000-of-00002.jsonl", calc[:4], extra_lines=("{not json",))
    with gzip.open(d / "candidates-00001-of-00002.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in calc[4:] + cal + wiki) + "\n")
    text_1 = ORIGINAL_1[:p29] + " [Calculator(400 / 1400) -> 0.29]" + ORIGINAL_1[p29:]
    text_1 = text_1[:p_passed] + " [Calculator(1400 - 400) -> 1000]" + text_1[p_passed:]
    text_2 = ORIGINAL_2[:p_today] + " [Calendar() -> Today is Monday, May 4, 2026.]" + ORIGINAL_2[p_today:]
    _write_jsonl(d / "texts-00000-of-00001.jsonl", [
        {"doc_id": "d1", "text": text_1, "url": "https://example.org/a",
         "calls": [{"tool": "Calculator", "input": "1400 - 400", "result": "1000", "position": p_passed},
                   {"tool": "Calculator", "input": "400 / 1400", "result": "0.29", "position": p29}]},
        {"doc_id": "d2", "text": text_2, "date": "2026-05-04",
         "calls": [{"tool": "Calendar", "input": "", "result": "Today is Monday, May 4, 2026.",
                    "position": p_today}]},
        {"doc_id": "d3", "text": "Lima is the capital of Peru.", "calls": []},
    ])
    _write_jsonl(d / "errors-00000-of-00001.jsonl", [
        {"doc_id": "d9", "stage": "read", "reason": "invalid_json", "detail": "line 7"},
        {"doc_id": "d8", "stage": "read", "reason": "invalid_json", "detail": "line 9"},
        {"doc_id": "d7", "stage": "execute", "reason": "timeout", "detail": "WikiSearch"},
    ])
    (d / "stats.json").write_text(json.dumps({"documents": 5, "kept": {"Calculator": 2, "Calendar": 1}}))
    (d / "_SUCCESS").write_text("")
    return d


def test_counts_per_tool(run_dir):
    data = load_run(run_dir)
    assert list(data.tools) == ["Calculator", "Calendar", "WikiSearch"]
    calc, cal, wiki = data.tools.values()
    assert (calc.candidates, calc.failed, calc.executed, calc.kept, calc.inserted) == (6, 2, 4, 2, 2)
    assert (cal.candidates, cal.failed, cal.executed, cal.kept, cal.inserted) == (3, 0, 3, 1, 1)
    assert (wiki.candidates, wiki.failed, wiki.executed, wiki.kept, wiki.inserted) == (2, 2, 0, 0, 0)
    assert sorted(calc.deltas) == [-1.5, 0.25, 0.75, 2.5]
    assert calc.threshold == 0.5 and cal.threshold == 1.0
    assert dict(data.failures) == {("Calculator", "div0"): 1, ("Calculator", "limit"): 1,
                                   ("WikiSearch", "timeout"): 2}
    assert dict(data.dead_letters) == {("read", "invalid_json"): 2, ("execute", "timeout"): 1}
    assert (data.documents, data.documents_with_calls, data.skipped) == (3, 2, 1)
    assert data.warnings == ["candidates-00000-of-00002.jsonl line 5: invalid JSON (Expecting property name "
                             "enclosed in double quotes)"]


def test_best_examples_are_ordered_and_placed_at_their_position(run_dir):
    data = load_run(run_dir)
    best = data.examples["Calculator"]
    assert [ex.delta for ex in best] == [2.5, 0.75]
    top = best[0]
    assert top.call == "[Calculator(400 / 1400) -> 0.29]"
    # Reconstructed from the original text, not from the text with both calls inserted.
    assert top.before == "Out of 1400 participants, 400 passed the test, or"
    assert top.after == " 29% of all."
    assert data.examples["Calendar"][0].before == "The museum opened in 1998."
    assert "WikiSearch" not in data.examples


def test_report_files_and_exact_numbers(run_dir, tmp_path):
    out = tmp_path / "rep"
    index = write_report(run_dir, out)
    assert index == out / "index.html"
    for png in ("kept_per_tool.png", "delta_per_tool.png", "failures_per_tool.png"):
        assert (out / png).read_bytes().startswith(PNG_MAGIC)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| Calculator | 6 | 2 | 4 | 2 | 50.0% | 0.50 | 0.50 | 2.50 | 2 |" in md
    assert "| Calendar | 3 | 0 | 3 | 1 | 33.3% | 1.00 | 0.50 | 1.25 | 1 |" in md
    assert "| WikiSearch | 2 | 2 | 0 | 0 | – | 1.00 | – | – | 0 |" in md
    assert "| all | 11 | 4 | 7 | 3 | 42.9% |  |  |  | 3 |" in md
    assert "| WikiSearch | timeout | 2 | 100.0% |" in md
    assert "| Calculator | div0 | 1 | 16.7% |" in md
    assert "| read | invalid\\_json | 2 |" in md
    assert "| kept.Calculator | 2 |" in md
    assert ("> Out of 1400 participants, 400 passed the test, or **\\[Calculator(400 / 1400) -> 0.29\\]** "
            "29% of all.") in md
    assert "Document `d1`, L⁻ − L⁺ = 2.50 (L⁺ = 2.00, L⁻ = 4.50):" in md
    assert "Candidates: 11; executed: 7; kept: 3 (42.9% of executed)." in md
    assert "![Kept calls per tool](kept_per_tool.png)" in md
    assert "Skipped 1 malformed record(s):" in md

    page = index.read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 3
    assert '<mark class="call">[Calculator(400 / 1400) -&gt; 0.29]</mark>' in page
    assert "<td>Calculator</td><td>6</td><td>2</td><td>4</td><td>2</td><td>50.0%</td>" in page


def test_html_escapes_document_text(run_dir, tmp_path):
    texts = run_dir / "texts-00000-of-00001.jsonl"
    records = [json.loads(line) for line in texts.read_text().splitlines()]
    records[1]["text"] = records[1]["text"].replace("anniversary", "<script>alert(1)</script> day")
    _write_jsonl(texts, records)
    page = write_report(run_dir, tmp_path / "rep").read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; day" in page


def test_empty_run_gets_a_message(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "candidates-00000-of-00001.jsonl").write_text("")
    text_record = {"doc_id": "a", "text": "x", "calls": []}
    (d / "texts-00000-of-00001.jsonl").write_text(json.dumps(text_record) + "\n")
    (d / "stats.json").write_text("{}")
    index = write_report(d)
    assert index == d / "report" / "index.html"
    md = (d / "report" / "report.md").read_text(encoding="utf-8")
    assert "This run has no candidate calls" in md
    assert "Warning: no _SUCCESS marker" in md
    assert "Documents in texts: 1 (0 with at least one call)." in md
    assert not list((d / "report").glob("*.png"))
    assert "This run has no candidate calls" in index.read_text(encoding="utf-8")


def test_cli_prints_path(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report" / "index.html")


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p, "is not a pipeline run directory"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is not a directory"),
])
def test_bad_run_dir_is_a_user_error(tmp_path, capsys, make, message):
    path = make(tmp_path)
    with pytest.raises(UserError, match=message):
        load_run(path)
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("toolformer report: error: ") and message in err and err.count("\n") == 1


def test_only_the_best_three_examples_per_tool(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    deltas = [0.6, 3.0, 1.0, 3.0, 2.0]  # a tie at 3.0: the earlier record comes first
    _write_jsonl(d / "candidates-00000-of-00001.jsonl", [
        _candidate(f"d{i}", "Calculator", 0, f"{i} + 1", str(i + 1), delta, 0.5, True)
        for i, delta in enumerate(deltas)])
    data = load_run(d)
    assert [(ex.doc_id, ex.delta) for ex in data.examples["Calculator"]] == [("d1", 3.0), ("d3", 3.0),
                                                                              ("d4", 2.0)]
    assert not data.examples["Calculator"][0].found  # no texts-*.jsonl: the call is shown alone
    md = (write_report(d).parent / "report.md").read_text(encoding="utf-8")
    assert "> **\\[Calculator(1 + 1) -> 2\\]** (the document's text is not in texts-\\*.jsonl)" in md


def test_histogram_bins_put_the_threshold_on_an_edge():
    from commands.report import _bins, _plot_range

    bins = _bins(-1.3, 2.2, 0.5, n=10)
    assert any(abs(b - 0.5) < 1e-9 for b in bins)
    assert bins[0] <= -1.3 and bins[-1] >= 2.2 - 1e-9 and len(bins) in (11, 12)
    values = [0.0] * 10 + [1.0] * 10 + [-40.0]
    assert _plot_range(values) == (-3.0, 1.0)  # -40 lies beyond 3 IQRs below the first quartile


def test_truncated_gzip_shard_and_records_without_losses_are_skipped(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    good = [_candidate("d1", "QA", 0, "q", "a", 1.5, 1.0, True)]
    no_delta = dict(_candidate("d2", "QA", 0, "q", "a", 0.0, 1.0, False), delta=None)
    _write_jsonl(d / "candidates-00000-of-00002.jsonl", good + [no_delta, ["not", "an", "object"]])
    many = [_candidate(f"d{i}", "QA", i, f"question {i * 7919 % 10007}", "a", i / 1000, 1.0, True)
            for i in range(3000)]
    payload = gzip.compress(("\n".join(json.dumps(r) for r in many) + "\n").encode())
    (d / "candidates-00001-of-00002.jsonl.gz").write_bytes(payload[: len(payload) // 2])
    data = load_run(d)
    qa = data.tools["QA"]
    assert qa.candidates == qa.executed == len(qa.deltas) == qa.kept
    assert 2 <= qa.candidates <= 3000  # the readable part of the truncated shard is kept
    assert data.skipped == 3
    assert data.warnings[:2] == ["candidates-00000-of-00002.jsonl line 2: executed candidate without a "
                                 "numeric delta", "candidates-00000-of-00002.jsonl line 3: not a JSON object"]
    assert data.warnings[2].startswith("candidates-00001-of-00002.jsonl.gz after line ")
