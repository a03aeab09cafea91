"""The per-unit resume journal's plain parts, without Beam or a model: the journal line format,
reading a journal with torn and duplicate lines, the join that replays or recomputes a unit, the
writer's lazy open and rotation, and which journals a resume keeps. The end-to-end crash and
resume is ``tests/test_pipeline.py::test_crash_inside_a_part_then_resume_replays_journaled_units``.
"""

from __future__ import annotations

import json
import pickle

import apache_beam as beam

from pipelines import rundir, stages


def unit(doc_id: str = "d1", offset: int = 0) -> dict:
    return {"doc_id": doc_id, "tool": "Calc", "offset": offset, "text": "x, y", "n_tokens": 3}


def finished(doc_id: str = "d1", offset: int = 0, kept: bool = True) -> dict:
    record = {
        "doc_id": doc_id,
        "position": 2,
        "call": "[Calc(7)]",
        "loss_plus": 0.1,
        "delta": 1e-6,
        "kept": kept,
    }
    dead = [{"doc_id": doc_id, "stage": "execute", "reason": "parse", "detail": "tool Calc ..."}]
    return stages.finished_unit(unit(doc_id, offset), [record], dead, {"executed:Calc": 1, "kept:Calc": 1})


def test_journal_lines_round_trip_and_torn_or_invalid_lines_are_left_out():
    a, b = finished("a"), finished("b\u00e9\n", 7)
    data = stages.journal_line(a) + stages.journal_line(b)
    assert data.count(b"\n") == 2 and data.isascii()  # one line per unit, whatever the text
    assert stages.parse_journal(data) == ([a, b], 0)
    torn = data + stages.journal_line(finished("c"))[:40]  # killed mid-write
    assert stages.parse_journal(torn) == ([a, b], 1)
    invalid = b'[1, 2]\n{"key": ["a", "Calc"], "records": [], "dead": [], "counts": {}}\n\n'
    assert stages.parse_journal(invalid + data) == ([a, b], 2)


def test_resume_unit_recomputes_replays_dedupes_and_drops_stale_entries():
    u, entry = unit(), finished()
    key = stages.unit_key(u)
    assert entry["key"] == list(key)
    assert list(stages.resume_unit((key, {"units": [u], "journal": []}))) == [u]
    [out] = stages.resume_unit((key, {"units": [u], "journal": [entry, json.loads(json.dumps(entry))]}))
    assert out.tag == stages.RESUMED and out.value == entry  # journaled twice: replayed once
    assert list(stages.resume_unit((key, {"units": [], "journal": [entry]}))) == []  # no longer routed
    edited = {**u, "text": u["text"] + " (edited)"}  # the document changed between crash and resume
    assert list(stages.resume_unit((key, {"units": [edited], "journal": [entry]}))) == [edited]
    redated = {**u, "date": "1999-12-31"}
    assert list(stages.resume_unit((key, {"units": [redated], "journal": [entry]}))) == [redated]
    assert list(stages.resume_unit((key, {"units": [u], "journal": [{**entry, "input": None}]}))) == [u]


def test_finish_unit_counts_emits_and_journals_with_rotation(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "JOURNAL_ROTATE_UNITS", 2)
    folder = tmp_path / ".journal" / "p0000"
    fn = pickle.loads(pickle.dumps(stages.FinishUnitFn(str(folder))))  # workers get a pickled copy
    outs = []
    for n in range(5):
        outs += list(fn.process(finished(f"d{n}")))
        if n == 0:  # written and flushed before the bundle ends (a SIGKILL now would keep it)
            [first] = folder.glob("*.jsonl")
            assert stages.parse_journal(first.read_bytes()) == ([finished("d0")], 0)
    fn.finish_bundle()
    records = [o for o in outs if not isinstance(o, beam.pvalue.TaggedOutput)]
    dead = [o.value for o in outs if isinstance(o, beam.pvalue.TaggedOutput)]
    assert [r["doc_id"] for r in records] == [d["doc_id"] for d in dead] == [f"d{n}" for n in range(5)]
    files = sorted(folder.glob("*.jsonl"))
    assert sorted(len(f.read_bytes().splitlines()) for f in files) == [1, 2, 2]  # rotated every 2 units
    entries = [e for f in files for e in stages.parse_journal(f.read_bytes())[0]]
    assert sorted(e["key"][0] for e in entries) == [f"d{n}" for n in range(5)]
    assert fn._file is None
    fn.finish_bundle()  # an empty bundle opens nothing
    assert len(list(folder.glob("*.jsonl"))) == 3
    replay = stages.FinishUnitFn(None)  # a resumed unit is emitted, not journaled again
    assert len(list(replay.process(finished("d9")))) == 2 and len(list(folder.glob("*.jsonl"))) == 3


def test_resume_keeps_unfinished_parts_journals_and_drops_done_ones(tmp_path):
    out = tmp_path / "run"
    assert rundir.prepare(out, {"seed": 0}, False, 2) == [0, 1]
    for part in (0, 1):
        folder = rundir.journal_dir(out, part)
        (out / ".journal" / rundir.part_name(part)).mkdir(parents=True)
        (out / ".journal" / rundir.part_name(part) / "u.jsonl").write_bytes(stages.journal_line(finished()))
        assert rundir.journal_files(out, part) == [f"{folder}/u.jsonl"]
    rundir.mark_done(out, 0, {})  # killed after part 0's marker, before its journal was deleted
    assert rundir.prepare(out, {"seed": 0}, True, 2) == [1]
    assert rundir.journal_files(out, 0) == [] and len(rundir.journal_files(out, 1)) == 1
    rundir.drop_journal(out, 1)
    assert not (out / ".journal").exists()
