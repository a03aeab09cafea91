"""End-to-end pipeline runs (FnApiRunner) on a scripted tiny model with a stub tool.

Covers TESTPLAN E34-35 and F39-47 where they apply: exact records and metrics, failed calls
dropped/counted/dead-lettered, failure ratio stops the job, bad input records, refusing to
overwrite a run, resume after a crash with identical records (per part, and per unit from the
journal), torn shards, determinism across input order / batch size / worker threads, refilter.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests import tiny_model
from tools.base import Tool, ToolError

TEMPLATE = (
    "Add calls to a Calc API.\nInput: A, [Calc(7)] B.\nOutput: A, [Calc(7)] B.\nInput: {input}\nOutput:"
)

# Tiny models are latency-bound: extra threads only contend on a 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")
CHAIN = [",", "Ġ[", "Ca", "l", "c", "(", "7", ")", "]"]  # each token's successor is the next (cyclic)


def build_scripted_model(tiny_dir: Path, out: Path, scale: float = 3.0) -> Path:
    """The tiny model scripted to write ``, [Calc(7)]`` (see tests/tiny_model.py)."""
    return tiny_model.build_scripted_model(tiny_dir, out, CHAIN, scale)


class StubCalc(Tool):
    """Returns its input; fails (reason "parse") for documents in ``fail_ids``; its heuristic
    crashes for documents in ``crash_ids`` (a simulated worker crash); once it has answered
    ``exit_after`` calls, the next one raises SystemExit (the run dies mid-part, like a killed
    process: nothing catches it). Not cached, so every candidate reaches it."""

    name = "Calc"
    deterministic = False
    calls = 0
    fail_ids: frozenset = frozenset()
    crash_ids: frozenset = frozenset()
    exit_after: int | None = None

    @property
    def prompt_template(self) -> str:
        return TEMPLATE

    def accepts(self, document, rng: random.Random) -> bool:
        if document["doc_id"] in type(self).crash_ids:
            raise RuntimeError(f"simulated crash on {document['doc_id']}")
        return "," in document["text"]

    def __call__(self, input, context):
        if context.doc_id is None:  # the filter's examples (Tool.filter_examples, on the launcher)
            return input
        if type(self).exit_after is not None and type(self).calls >= type(self).exit_after:
            raise SystemExit(f"simulated exit after {type(self).calls} tool calls")
        type(self).calls += 1
        if context.doc_id in type(self).fail_ids:
            raise ToolError("parse", "unlucky")
        return input


class FailingCalc(StubCalc):
    """Every call times out: drives retries and the failure-ratio check."""

    def __call__(self, input, context):
        if context.doc_id is None:  # the filter's examples: not counted
            raise ToolError("timeout", "always")
        type(self).calls += 1
        raise ToolError("timeout", "always")


STUB = "tests.test_pipeline:StubCalc"
DOCS = [
    {"doc_id": "a", "text": "He paid 18, then 12, and 30 more.", "date": "2023-01-30"},
    {"doc_id": "b", "text": "No numbers here at all."},  # no comma: not routed
    {"doc_id": "c", "text": "Red, green."},
]


@pytest.fixture(scope="module")
def scripted_dir(tiny_model_dir, tmp_path_factory):
    return build_scripted_model(tiny_model_dir, tmp_path_factory.mktemp("scripted"))


def write_jsonl(path: Path, rows: list) -> Path:
    """One line per row: bytes and str as they are (raw or broken records), anything else as JSON."""
    with path.open("wb") as f:
        for r in rows:
            line = r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode("utf-8")
            f.write(line + b"\n")
    return path


def read_kind(out: Path, kind: str) -> list[dict]:
    rows = []
    for p in sorted(out.glob(f"{kind}-*.jsonl")):
        rows += [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def settings(scripted_dir, *extra: str, tool: str = STUB):
    from pipelines.settings import build_settings

    key = tool
    return build_settings(
        None,
        [
            f"{key}.tau_s=0.5",
            f"{key}.k=5",
            f"{key}.m=3",
            f"{key}.tau_f=-100",
            f"{key}.window=64",
            f"{key}.max_call_tokens=12",
            "max_batch_tokens=512",
            "min_calls_for_ratio=1",
            *extra,
        ],
        model=str(scripted_dir),
        tools=(tool,),
    )


def run(settings_, inputs, out, resume=False, extra=()):
    from pipelines.augment import run_augment

    return run_augment(settings_, [str(i) for i in inputs], str(out), resume, list(extra))[1]


@pytest.fixture(autouse=True)
def reset_stub():
    StubCalc.calls, StubCalc.fail_ids, StubCalc.crash_ids = 0, frozenset(), frozenset()
    StubCalc.exit_after = None
    FailingCalc.calls = 0
    yield


MANY = [{"doc_id": f"d{n}", "text": f"Item {n}, then {n + 1}, done."} for n in range(8)]
BAD_LINES = [
    b"{not json",
    json.dumps({"doc_id": "m"}).encode(),
    json.dumps({"doc_id": "e", "text": "  "}).encode(),
    b'{"doc_id": "u", "text": "caf\xe9, bad"}',
    json.dumps({"doc_id": "n", "text": "a\x00b, c"}).encode(),
    b'{"doc_id": "s", "text": "lone \\ud800, surrogate"}',
    json.dumps([1, 2]).encode(),
]
A_TEXT = "He paid 18, [Calc(7) -> 7] then 12, [Calc(7) -> 7] and 30 more."


@pytest.fixture(scope="module")
def base_run(scripted_dir, tmp_path_factory):
    """One complete run over good and bad records, shared by the tests that only read it."""
    tmp = tmp_path_factory.mktemp("base")
    inp = tmp / "docs.jsonl"
    inp.write_bytes(
        b"\n".join(
            [json.dumps(d).encode() for d in DOCS] + BAD_LINES + [json.dumps(d).encode() for d in MANY]
        )
        + b"\n"
    )
    StubCalc.calls = 0
    stats = run(settings(scripted_dir), [inp], tmp / "run")
    return {"input": inp, "out": tmp / "run", "stats": stats, "calls": StubCalc.calls}


def test_end_to_end_records_and_metrics(base_run):
    out, stats = base_run["out"], base_run["stats"]
    texts = {t["doc_id"]: t for t in read_kind(out, "texts")}
    assert texts["a"] == {
        "doc_id": "a",
        "date": "2023-01-30",
        "text": A_TEXT,
        "calls": [
            {"tool": "Calc", "input": "7", "result": "7", "position": 11},
            {"tool": "Calc", "input": "7", "result": "7", "position": 20},
        ],
    }
    assert texts["b"] == {"doc_id": "b", "text": DOCS[1]["text"], "calls": []}
    assert texts["c"]["text"] == "Red, [Calc(7) -> 7] green."
    assert texts["d3"]["text"] == "Item 3, [Calc(7) -> 7] then 4, [Calc(7) -> 7] done."
    cands = [c for c in read_kind(out, "candidates") if c["doc_id"] in ("a", "c")]
    assert [
        (c["doc_id"], c["position"], c["token_position"], c["call"], c["result"], c["kept"])
        for c in sorted(cands, key=lambda c: (c["doc_id"], c["position"]))
    ] == [
        ("a", 11, 10, "[Calc(7)]", "7", True),
        ("a", 20, 15, "[Calc(7)]", "7", True),
        ("c", 4, 5, "[Calc(7)]", "7", True),
    ]
    for c in read_kind(out, "candidates"):
        assert c["loss_minus"] == min(c["loss_empty"], c["loss_no_result"])
        assert c["delta"] == round(c["loss_minus"] - c["loss_plus"], 6)
        assert c["threshold"] == -100.0 and c["error"] is None
    tool = stats["tools"]["Calc"]
    # 10 routed documents (b has no comma), 19 commas, 3 samples each, all identical
    assert (
        tool["docs_routed"],
        tool["windows"],
        tool["positions"],
        tool["samples"],
        tool["duplicates"],
        tool["candidates"],
        tool["executed"],
        tool["kept"],
        tool["failed"],
    ) == (10, 10, 19, 57, 38, 19, 19, 19, 0)
    assert stats["documents"]["docs_read"] == 11 and stats["documents"]["texts_with_calls"] == 10
    assert set(stats["stage_seconds"]) >= {"route", "score_positions", "sample_calls", "execute", "filter"}
    assert json.loads((out / "stats.json").read_text()) == stats
    assert (out / "_SUCCESS").exists() and base_run["calls"] == 19
    import pyarrow.parquet as pq

    table = pq.read_table(next(out.glob("candidates-*.parquet")))
    assert sorted(table.column("doc_id").to_pylist())[:3] == ["a", "a", "c"] and table.num_rows == 19
    assert pq.read_table(next(out.glob("texts-*.parquet"))).num_rows == 11


def test_bad_records_are_dead_lettered_and_counted(base_run):
    stats = base_run["stats"]
    assert stats["bad_records"] == {
        "invalid_json": 1,
        "missing_text": 1,
        "empty_text": 1,
        "invalid_utf8": 1,
        "nul_bytes": 1,
        "invalid_unicode": 1,
        "not_an_object": 1,
    }
    assert stats["documents"]["docs_bad"] == 7
    errors = read_kind(base_run["out"], "errors")
    assert sorted((e["reason"], e["detail"].split(":")[0]) for e in errors) == sorted(
        [
            ("invalid_json", "docs.jsonl line 4"),
            ("missing_text", "docs.jsonl line 5"),
            ("empty_text", "docs.jsonl line 6"),
            ("invalid_utf8", "docs.jsonl line 7"),
            ("nul_bytes", "docs.jsonl line 8"),
            ("invalid_unicode", "docs.jsonl line 9"),
            ("not_an_object", "docs.jsonl line 10"),
        ]
    )


def test_failed_calls_are_dropped_counted_and_dead_lettered(scripted_dir, tmp_path):
    StubCalc.fail_ids = frozenset({"a"})
    out = tmp_path / "run"
    stats = run(
        settings(scripted_dir, "max_failure_ratio=0.9"), [write_jsonl(tmp_path / "d.jsonl", DOCS)], out
    )
    texts = {t["doc_id"]: t for t in read_kind(out, "texts")}
    assert texts["a"]["text"] == DOCS[0]["text"] and texts["a"]["calls"] == []  # nothing inserted
    assert texts["c"]["text"] == "Red, [Calc(7) -> 7] green."  # other candidates unaffected
    assert stats["tools"]["Calc"]["failures"] == {"parse": 2}
    failed = [c for c in read_kind(out, "candidates") if c["error"]]
    assert [(c["doc_id"], c["position"], c["result"], c["loss_plus"], c["kept"]) for c in failed] == [
        ("a", 11, None, None, False),
        ("a", 20, None, None, False),
    ]
    errors = read_kind(out, "errors")
    assert [(e["doc_id"], e["stage"], e["reason"]) for e in errors] == [("a", "execute", "parse")] * 2
    assert "position 11 call [Calc(7)]" in " ".join(e["detail"] for e in errors)


def test_failure_ratio_above_threshold_fails_the_job(scripted_dir, tmp_path):
    from toolformer.errors import UserError

    out = tmp_path / "run"
    with pytest.raises(
        UserError, match=r"tool Calc failed 3 of 3 calls \(100%\), above max_failure_ratio 50%"
    ):
        run(
            settings(scripted_dir, tool="tests.test_pipeline:FailingCalc"),
            [write_jsonl(tmp_path / "d.jsonl", DOCS)],
            out,
        )
    assert not (out / "_SUCCESS").exists()
    assert FailingCalc.calls == 9  # transient failures were retried twice each


def test_refuses_an_existing_run_directory(scripted_dir, base_run):
    from toolformer.errors import UserError

    out = base_run["out"]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(UserError, match="already holds a complete run; pass --resume"):
        run(settings(scripted_dir), [base_run["input"]], out)
    with pytest.raises(UserError, match="settings differ from the run in .*: seed"):
        run(settings(scripted_dir, "seed=5"), [base_run["input"]], out, resume=True)
    run(settings(scripted_dir), [base_run["input"]], out, resume=True)  # complete: a no-op
    run(settings(scripted_dir, "threads=2"), [base_run["input"]], out, resume=True)  # a speed setting may change
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert StubCalc.calls == 0


def test_resume_after_crash_then_torn_shard_give_identical_records(scripted_dir, base_run, tmp_path):
    """Parts do not change records; a crashed run resumed redoes only its unfinished part; a torn
    shard (its marker's sha256 no longer matches) is regenerated."""
    from pipelines.stages import in_part

    s = settings(scripted_dir, "parts=3")
    victim = next(d["doc_id"] for d in MANY if in_part(d["doc_id"], 2, 3))
    StubCalc.crash_ids = frozenset({victim})
    out = tmp_path / "crashed"
    with pytest.raises(Exception, match="simulated crash"):
        run(s, [base_run["input"]], out)
    assert not (out / "_SUCCESS").exists() and (out / ".parts" / "p0001.done").exists()
    assert not (out / ".parts" / "p0002.done").exists()
    StubCalc.calls, StubCalc.crash_ids = 0, frozenset()
    run(s, [base_run["input"]], out, resume=True)
    part2_calls = sum(2 for d in MANY if in_part(d["doc_id"], 2, 3)) + sum(
        d["text"].count(",") for d in DOCS if in_part(d["doc_id"], 2, 3)
    )
    assert StubCalc.calls == part2_calls < base_run["calls"]  # only part 2 redone
    for kind in ("texts", "candidates", "errors"):
        assert read_kind(out, kind) == read_kind(base_run["out"], kind)

    shard = next(out.glob("texts-p0001-*.jsonl"))
    shard.write_bytes(shard.read_bytes()[:25])
    (out / "_SUCCESS").unlink()
    StubCalc.calls = 0
    run(s, [base_run["input"]], out, resume=True)
    assert read_kind(out, "texts") == read_kind(base_run["out"], "texts")
    assert 0 < StubCalc.calls < base_run["calls"]


def journal_entries(out: Path, part: int = 0) -> list[dict]:
    from pipelines.rundir import journal_files
    from pipelines.stages import parse_journal

    return [e for f in journal_files(out, part) for e in parse_journal(Path(f).read_bytes())[0]]


def without_timings(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k not in ("stage_seconds", "wall_seconds")}


def test_crash_inside_a_part_then_resume_replays_journaled_units(scripted_dir, base_run, tmp_path):
    """With one part, a run that dies after some units resumes from the unit journal: the journaled
    units are not recomputed (their tool calls are not made again), a torn last line and a unit
    journaled twice are handled, and records and stats.json equal an uninterrupted run's."""
    from toolformer.errors import UserError

    # Small model batches: units finish (and are journaled) a few at a time, not all at the end.
    s = settings(scripted_dir, "max_batch_tokens=64")
    out = tmp_path / "run"
    StubCalc.exit_after = 12
    with pytest.raises(SystemExit, match="simulated exit"):
        run(s, [base_run["input"]], out)
    assert not (out / "_SUCCESS").exists() and not (out / ".parts" / "p0000.done").exists()
    [journal] = list((out / ".journal" / "p0000").glob("*.jsonl"))
    entries = journal_entries(out)
    assert 2 <= len(entries) < base_run["stats"]["tools"]["Calc"]["windows"]
    # A crash mid-write leaves a torn last line; a retried bundle journals a unit twice.
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    (journal.parent / "retried.jsonl").write_bytes(lines[0])
    replayed = entries[:-1]  # the torn unit is recomputed

    with pytest.raises(UserError, match="settings differ from the run in .*: seed"):
        run(settings(scripted_dir, "max_batch_tokens=64", "seed=5"), [base_run["input"]], out, resume=True)
    assert journal_entries(out) == replayed + [entries[0]]  # a refused resume leaves the journal

    StubCalc.calls, StubCalc.exit_after = 0, None
    stats = run(s, [base_run["input"]], out, resume=True)
    done = json.loads((out / ".parts" / "p0000.done").read_text())["stats"]
    assert done["units_resumed"] == len(replayed) and done["journal_duplicates"] == 1
    assert done["journal_torn"] == 1
    assert done["units_resumed"] + done["units_journaled"] == stats["tools"]["Calc"]["windows"]
    # Only the units not journaled called the tool (one call per candidate record).
    assert StubCalc.calls == base_run["calls"] - sum(len(e["records"]) for e in replayed)
    for kind in ("texts", "candidates", "errors"):
        assert read_kind(out, kind) == read_kind(base_run["out"], kind)
    assert without_timings(stats) == without_timings(base_run["stats"])
    assert not (out / ".journal").exists()  # deleted once the part is done


def test_deterministic_across_order_batch_size_and_workers(scripted_dir, base_run, tmp_path):
    lines = base_run["input"].read_bytes().splitlines()
    shuffled = tmp_path / "b.jsonl"
    shuffled.write_bytes(b"\n".join(lines[::-1]) + b"\n")
    run(
        settings(scripted_dir, "max_batch_tokens=64"),
        [shuffled],
        tmp_path / "two",
        extra=["--direct_num_workers=2", "--direct_running_mode=multi_threading"],
    )
    for kind in ("texts", "candidates"):
        assert read_kind(base_run["out"], kind) == read_kind(tmp_path / "two", kind)


def test_refilter_reapplies_tau_f_without_the_model(base_run, tmp_path):
    from pipelines.augment import refilter

    out = base_run["out"]
    assert refilter(str(out), str(tmp_path / "strict"), ["Calc=100"]) == 0
    texts = {t["doc_id"]: t for t in read_kind(tmp_path / "strict", "texts")}
    assert texts["a"]["text"] == DOCS[0]["text"] and texts["a"]["calls"] == []
    cands = read_kind(tmp_path / "strict", "candidates")
    assert {(c["kept"], c["threshold"]) for c in cands} == {(False, 100.0)}
    assert refilter(str(tmp_path / "strict"), str(tmp_path / "loose"), ["Calc=-100"]) == 0
    assert read_kind(tmp_path / "loose", "texts") == read_kind(out, "texts")
    assert (tmp_path / "loose" / "_SUCCESS").exists()


def test_steps_are_repeatable_and_independent_of_batch_neighbours(scripted_dir):
    """A retried bundle gives the same outputs (TESTPLAN F39); a unit's samples and losses do not
    depend on the other units in its model batch (F45)."""
    from pipelines.model_handler import AugmentModel
    from pipelines.stages import execute_candidates, route_document
    from tools.executor import ToolExecutor

    am = AugmentModel(
        str(scripted_dir),
        {"Calc": TEMPLATE},
        {"Calc": {"tau_s": 0.5, "k": 5, "m": 3, "max_call_tokens": 12, "temperature": 1.0}},
        {"Calc": True},
        max_batch_tokens=512,
    )
    tools = {"Calc": StubCalc()}
    units = [u for d in MANY[:3] + DOCS for u in route_document(d, tools, {"Calc": 64}, am.tokenizer, 0)]
    assert units == [
        u for d in MANY[:3] + DOCS for u in route_document(d, tools, {"Calc": 64}, am.tokenizer, 0)
    ]
    batch = am.sample(units)
    alone = [am.sample([u])[0] for u in units]
    strip = lambda r: {k: v for k, v in r.items() if k != "timing"}
    assert [strip(r) for r in batch] == [strip(r) for r in alone]
    executor = ToolExecutor({"Calc": StubCalc()})
    executed = [
        execute_candidates({**u, "candidates": r["candidates"]}, executor)[0] for u, r in zip(units, batch)
    ]
    again = [
        execute_candidates({**u, "candidates": r["candidates"]}, executor)[0] for u, r in zip(units, batch)
    ]
    assert executed == again
    assert [r["losses"] for r in am.losses(executed)] == [am.losses([u])[0]["losses"] for u in executed]


def test_lazy_filter_keeps_the_same_calls_with_fewer_losses(scripted_dir, base_run, tmp_path):
    """lazy_filter skips L(call without result) where L(eps) - L+ < tau_f already rejects a call:
    the same texts and keep decisions; those records hold L- = L(eps), an upper bound."""
    tau = 0.5  # the scripted model ignores prefixes: every L(eps) - L+ is 0, every call settled
    full = run(settings(scripted_dir, f"{STUB}.tau_f={tau}"), [base_run["input"]], tmp_path / "full")
    lazy = run(
        settings(scripted_dir, f"{STUB}.tau_f={tau}", "lazy_filter=true"),
        [base_run["input"]],
        tmp_path / "lazy",
    )
    assert read_kind(tmp_path / "full", "texts") == read_kind(tmp_path / "lazy", "texts")
    assert full["tools"] == lazy["tools"]
    key = lambda c: (c["doc_id"], c["position"], c["call"])
    by_key = {key(c): c for c in read_kind(tmp_path / "full", "candidates")}
    settled = 0
    for c in read_kind(tmp_path / "lazy", "candidates"):
        ref = by_key.pop(key(c))
        assert c["kept"] == ref["kept"] and c["loss_plus"] == ref["loss_plus"]
        if c["error"] is None and c["loss_no_result"] is None:
            settled += 1
            assert not c["kept"] and c["loss_minus"] == ref["loss_empty"] >= ref["loss_minus"]
        else:
            assert c == ref
    assert not by_key and settled > 0


def test_augment_gives_qa_and_wikisearch_the_index(tmp_path):
    """`augment --tools qa --index DIR` built QA without its index (every call "unavailable")."""
    from pipelines.augment import tool_setup
    from pipelines.settings import build_settings
    from toolformer.errors import UserError

    index = str(tmp_path / "idx")
    s = build_settings(None, [], tools=("qa", "wikisearch", "calculator"), index=index)
    assert tool_setup(s)["config"] == {"QA": {"index": index}, "WikiSearch": {"index": index}, "Calculator": {}}
    with pytest.raises(UserError, match="--tools qa needs --index DIR"):
        tool_setup(build_settings(None, [], tools=("qa",)))


def test_a_run_directory_loads_with_datasets(base_run, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = str(base_run["out"])
    # Arrow unifies the records' keys (a key one record lacks reads as None) and types the values
    # (an ISO date becomes a timestamp)
    same = lambda rows: sorted(json.dumps({k: v for k, v in r.items() if v is not None}, sort_keys=True,
                                          default=lambda t: t.date().isoformat()) for r in rows)
    for kind in ("texts", "candidates", "errors"):
        rows = datasets.load_dataset(out, kind, split="train").to_list()
        assert len(rows) > 0 and same(rows) == same(read_kind(base_run["out"], kind))
    assert datasets.load_dataset(out, split="train").num_rows == len(read_kind(base_run["out"], "texts"))
