"""The augmentation report as a reader meets it (issue #17, item 5): images decode and links land
(scripts/check_report.py), candidates dropped before execution are counted rather than called
malformed, excerpts are not cut inside a word; and, marked slow, a real run with the scripted
tiny model rendered in headless Chromium."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.test_report import _candidate, _write_jsonl, run_dir  # noqa: F401 (fixture)
from commands.report import _cut, load_run, write_report

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_report", ROOT / "scripts" / "check_report.py")
check_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_report)


def test_written_report_has_no_broken_image_or_link(run_dir, tmp_path):  # noqa: F811
    write_report(run_dir, tmp_path / "rep")
    problems, notes = check_report.check_report(tmp_path / "rep")
    assert problems == []
    assert any("index.html: 3 references" in n for n in notes)  # the three embedded plots


def test_checker_finds_a_missing_file_a_bad_image_and_a_dangling_anchor(tmp_path):
    (tmp_path / "ok.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # the signature, no image
    (tmp_path / "index.html").write_text(
        '<h1 id="top">r</h1><img src="gone.png"><img src="ok.png"><img src="data:image/png;base64,AAAA">'
        '<a href="#top">up</a><a href="#nowhere">x</a><a href="https://example.org">ext</a>'
        '<a href="other.html">o</a>', encoding="utf-8")
    (tmp_path / "report.md").write_text("![a](missing.png) [b](https://example.org)\n", encoding="utf-8")
    problems, _ = check_report.check_report(tmp_path)
    text = "\n".join(problems)
    assert len(problems) == 6, text
    for needle in ("gone.png: no such file", "ok.png does not decode", "embedded image does not decode",
                   "no element with id 'nowhere'", "other.html: no such file", "missing.png: no such file"):
        assert needle in text


def test_dropped_candidates_are_counted_not_called_malformed(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    ungrounded = {**_candidate("d1", "Calculator", 3, "9 * 2", None, 0.0, 0.3, False),
                  "dropped": "ungrounded", "grounded": False, "loss_plus": None, "loss_minus": None, "loss_empty": None,
                  "loss_no_result": None, "delta": None}  # as the pipeline writes it: never executed
    _write_jsonl(d / "candidates-00000-of-00001.jsonl", [
        ungrounded, ungrounded,
        _candidate("d1", "Calculator", 5, "2 + 2", "4", 1.0, 0.3, True),
        _candidate("d1", "Calculator", 6, "1 / 0", None, None, 0.3, False, error="div0"),
    ])
    _write_jsonl(d / "texts-00000-of-00001.jsonl",
                 [{"doc_id": "d1", "text": "Two and two, four.", "calls": []}])
    (d / "run.json").write_text(json.dumps({"lazy_filter": True}))
    data = load_run(d)
    calc = data.tools["Calculator"]
    assert (data.skipped, data.warnings) == (0, [])
    assert (calc.candidates, calc.dropped, calc.failed, calc.executed, calc.kept) == (4, 2, 1, 1, 1)
    assert dict(data.drops) == {("Calculator", "ungrounded"): 2} and data.lazy_filter
    write_report(d, tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
    assert "| Calculator | 4 | 2 | 1 | 1 | 1 | 100.0% |" in md
    assert "Candidates: 4; dropped before execution: 2; executed: 1; kept: 1" in md
    assert "Calculator 2 (ungrounded: the call's input is not in the text before it" in md
    assert "This run used lazy\\_filter" in md
    assert "malformed" not in md
    assert check_report.check_report(tmp_path / "rep")[0] == []


def test_excerpts_are_cut_between_words():
    assert _cut("hello world foo", 9, from_end=True) == "world foo"
    assert _cut("hello world foo", 7, from_end=True) == "foo"  # "rld foo" less its cut word
    assert _cut("hello world foo", 8, from_end=False) == "hello"
    assert _cut("hello world foo", 5, from_end=False) == "hello"
    assert _cut("abcdefgh", 3, from_end=False) == "abc"  # one long word: cut anyway


@pytest.mark.slow
def test_report_of_a_small_run_renders_in_chromium(tmp_path, tiny_model_dir):
    """A real pipeline run (scripted tiny model, stub tool), its report, headless Chromium."""
    if check_report.browser() is None:
        pytest.skip("no chromium (apt-get install chromium)")
    import torch

    from tests.test_pipeline import MANY, build_scripted_model, run, settings, write_jsonl

    torch.set_num_threads(1)
    scripted = build_scripted_model(tiny_model_dir, tmp_path / "scripted")
    inp = write_jsonl(tmp_path / "docs.jsonl", MANY)
    run(settings(scripted, "max_batch_tokens=128"), [inp], tmp_path / "run")
    write_report(tmp_path / "run", tmp_path / "rep")
    problems, _ = check_report.check_report(tmp_path / "rep", tmp_path / "shot.png")
    assert problems == []
    from PIL import Image

    with Image.open(tmp_path / "shot.png") as im:
        assert im.size == (1200, 2000)
    if keep := os.environ.get("TOOLFORMER_KEEP_SCREENSHOT"):
        shutil.copy(tmp_path / "shot.png", keep)
