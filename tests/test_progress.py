"""Progress lines (issue #17, item 2): the formatting, augment's per-task line on a small run,
and fine-tuning's step line."""

from __future__ import annotations

import json
import logging
import re
from types import SimpleNamespace

import pytest

from pipelines import model_handler
from tests.test_pipeline import MANY, run, scripted_dir, settings, write_jsonl  # noqa: F401 (fixture)
from toolformer.progress import Throttle, duration, progress_text

pytestmark = pytest.mark.usefixtures("one_thread")


def test_duration():
    assert [duration(s) for s in (0, 44.6, 60, 185, 3600, 7620, 90000)] == [
        "0 s", "45 s", "1 min 00 s", "3 min 05 s", "1 h 00 min", "2 h 07 min", "1 d 01 h"]


def test_line_with_a_known_total_has_share_rate_and_eta():
    assert progress_text("augment sample", 63, 85, 120) == (
        "augment sample: 63/120 units (52%), 1 min 25 s, 0.74 units/s, ETA 1 min 17 s")
    assert progress_text("x", 1, 30, 1, unit="step") == "x: 1/1 step (100%), 30 s, 30 s/step, ETA 0 s"
    assert progress_text("x", 0, 5, 10).endswith("ETA unknown")
    assert progress_text("x", 20, 4, 10).endswith("5.0 units/s, ETA 0 s")  # overshoot: no negative ETA


def test_line_with_a_count_so_far_gives_no_eta():
    line = progress_text("augment sample", 63, 85, 65, final=False, so_far="routed")
    assert line == ("augment sample: 63 units done of 65 routed so far, 1 min 25 s, 0.74 units/s, "
                    "no ETA until the total is known")
    line = progress_text("f", 3, 10, extra=" (9 candidates)")
    assert line == "f: 3 units (9 candidates), 10 s, 0.30 units/s"


def test_resumed_work_counts_in_done_but_not_in_the_rate():
    # steps 10..15 in 10 s: 0.5 steps/s, 5 steps left -> 10 s
    assert progress_text("finetune", 15, 10, 20, unit="step", since=10) == (
        "finetune: 15/20 steps (75%), 10 s, 0.50 steps/s, ETA 10 s")


def test_throttle():
    now = [0.0]
    t = Throttle(15, clock=lambda: now[0])
    assert not t.due()
    now[0] = 15
    assert t.due() and not t.due()
    assert t.due(force=True)
    assert Throttle(15, first=True, clock=lambda: 0.0).due()


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "toolformer.progress"]


def test_augment_logs_done_total_rate_and_eta(scripted_dir, tmp_path, monkeypatch, caplog):  # noqa: F811
    """The launcher counts the units (pipelines/totals.py) and tells the in-process handler."""
    monkeypatch.setattr(model_handler, "PROGRESS_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="toolformer.progress")
    inp = write_jsonl(tmp_path / "docs.jsonl", MANY)  # one window each: 8 units
    stats = run(settings(scripted_dir, "max_batch_tokens=128"), [inp], tmp_path / "run")
    assert stats["tools"]["Calc"]["windows"] == len(MANY)
    lines = progress_lines(caplog)
    sample = [line for line in lines if line.startswith("augment sample:")]
    assert sample[-1].startswith("augment sample: 8/8 units (100%), ")
    assert re.search(r"augment sample: \d/8 units \(\d+%\), \d+ s, [\d.]+ units/s, ETA \d+ s$", sample[0])
    # the filter's total is not known to the worker: the units sampled with candidates so far
    filt = [line for line in lines if line.startswith("augment filter:")]
    assert filt and all(line.endswith("no ETA until the total is known") for line in filt)
    assert re.match(r"augment filter: 8 units done of 8 sampled with candidates so far \(\d+ candidates\)",
                    filt[-1])


def test_augment_without_a_total_counts_units_routed_so_far(
        scripted_dir, tmp_path, monkeypatch, caplog):  # noqa: F811
    """Workers the launcher cannot tell (a cluster, several processes): the units routed so far."""
    import pipelines.augment

    monkeypatch.setattr(pipelines.augment, "in_process", lambda options: False)
    monkeypatch.setattr(model_handler, "PROGRESS_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="toolformer.progress")
    inp = write_jsonl(tmp_path / "docs.jsonl", MANY)
    run(settings(scripted_dir, "max_batch_tokens=128"), [inp], tmp_path / "run")
    sample = [line for line in progress_lines(caplog) if line.startswith("augment sample:")]
    for line in sample:
        found = re.match(r"augment sample: (\d+) units? done of (\d+) routed so far", line)
        done, routed = map(int, found.groups())
        assert done <= routed <= len(MANY)
    assert sample[-1].startswith("augment sample: 8 units done of 8 routed so far")


def test_totals_per_part_mirror_the_pipeline_and_leave_out_journaled_units(scripted_dir, tmp_path, monkeypatch):  # noqa: F811
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.augment import pipeline_options, split_inputs, tool_setup
    from pipelines.stages import in_part, journal_line
    from pipelines.totals import expected_units, in_process

    assert in_process(pipeline_options([]))
    assert not in_process(PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_processing"]))
    assert not in_process(PipelineOptions(["--runner=DataflowRunner"]))
    docs = MANY + [dict(MANY[0], text=MANY[0]["text"] + " longer")]  # a duplicate id: one document
    inp = write_jsonl(tmp_path / "docs.jsonl", docs)
    s = settings(scripted_dir, "parts=3")
    tools = tool_setup(s)
    parts = {p: [d["doc_id"] for d in MANY if in_part(d["doc_id"], p, 3)] for p in range(3)}
    assert expected_units(split_inputs([str(inp)]), s, tools, {}) == {p: len(ids) for p, ids in parts.items()}
    part = max(parts, key=lambda p: len(parts[p]))
    journal = tmp_path / "journal.jsonl"
    journal.write_bytes(journal_line({"key": [parts[part][0], "Calc", 0], "records": [], "dead": [], "counts": {}}))
    got = expected_units(split_inputs([str(inp)]), s, tools, {part: [str(journal)]})
    assert got[part] == len(parts[part]) - 1
    monkeypatch.setattr("pipelines.totals.MAX_COUNT_BYTES", inp.stat().st_size - 1)  # a larger input: not counted
    assert expected_units(split_inputs([str(inp)]), s, tools, {}) == {}
    monkeypatch.undo()
    # the pipeline's Limit comes before its de-duplication: the 3 smallest ids are d0, d0 and d1
    limited = settings(scripted_dir, "parts=1", "limit=3")
    assert expected_units(split_inputs([str(inp)]), limited, tool_setup(limited), {}) == {0: 2}
    stats = run(limited, [inp], tmp_path / "run")
    assert stats["tools"]["Calc"]["windows"] == 2


def test_finetune_logs_steps_done_total_and_eta(tmp_path, tiny_model_dir, caplog):
    from finetune.train import FinetuneConfig, run_finetune
    from tests.tiny_model import TRAINING_LINES

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": TRAINING_LINES[i % 4]}) + "\n" for i in range(8)))
    caplog.set_level(logging.INFO, logger="toolformer.progress")
    run_finetune(FinetuneConfig(data=[str(data)], output=str(tmp_path / "out"), model=str(tiny_model_dir),
                                max_steps=3, batch_size=4, effective_batch_size=4, save_steps=100,
                                max_length=48, dev_share=0.0, logging_steps=1))
    lines = progress_lines(caplog)
    assert lines[0].startswith("finetune: 1/3 steps (33%), ") and " ETA " in lines[0]
    last = r"finetune: 3/3 steps \(100%\), \d+ s, [\d.]+ (steps/s|s/step), ETA 0 s, loss \d"
    assert re.match(last, lines[-1])


def test_step_progress_after_a_resume():
    from finetune.progress import StepProgress

    cb, now = StepProgress(every_s=15), [100.0]
    state = SimpleNamespace(global_step=10, max_steps=20, is_world_process_zero=True)
    cb.on_train_begin(None, state, None)
    cb.throttle.clock = lambda: now[0]
    cb.throttle.started = 100.0
    messages = []
    logger = logging.getLogger("toolformer.progress")
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    try:
        state.global_step, now[0] = 11, 102.0
        cb.on_step_end(None, state, None)
        cb.on_log(None, state, None, logs={"loss": 1.25})
        state.global_step, now[0] = 12, 104.0  # not due: 2 s after the last line
        cb.on_step_end(None, state, None)
        state.global_step, now[0] = 20, 120.0  # the last step is always shown
        cb.on_step_end(None, state, None)
    finally:
        logger.removeHandler(handler)
    assert messages == [
        "finetune: 11/20 steps (55%), 2 s, 0.50 steps/s, ETA 18 s",
        "finetune: 20/20 steps (100%), 20 s, 0.50 steps/s, ETA 0 s, loss 1.250",
    ]
