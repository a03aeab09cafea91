"""``toolformer.augment.augment_texts``: the method in-process, without Beam, gives the records and
counts of a pipeline run on the same documents (issue #14: "the method without Beam")."""

from __future__ import annotations

import json

import pytest

from tests.test_pipeline import BAD_LINES, DOCS, MANY, STUB, StubCalc, read_kind, run, settings
from toolformer.augment import augment_texts, model_plan
from toolformer.augment_model import AugmentModel
from tools.base import get_tool
from tools.executor import ToolExecutor

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scripted_dir(tiny_model_dir, tmp_path_factory):
    from tests.test_pipeline import build_scripted_model

    return build_scripted_model(tiny_model_dir, tmp_path_factory.mktemp("scripted"))


def executor() -> ToolExecutor:
    return ToolExecutor({"Calc": get_tool(STUB)})


def losses_apart(a: list[dict], b: list[dict]) -> float:
    keys = ("loss_plus", "loss_minus", "loss_empty", "loss_no_result", "delta")
    return max([abs(x[k] - y[k]) for x, y in zip(a, b) for k in keys if x[k] is not None] or [0.0])


def without_losses(rows: list[dict]) -> list[dict]:
    drop = {"loss_plus", "loss_minus", "loss_empty", "loss_no_result", "delta"}
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def test_augment_texts_gives_the_pipeline_records(scripted_dir, tmp_path):
    lines = [json.dumps(d) for d in DOCS] + [line.decode("utf-8", "surrogateescape") for line in BAD_LINES[1:3]] \
        + [json.dumps(d) for d in MANY] + [json.dumps({"doc_id": "a", "text": "Zed, again."})]  # a duplicate id
    inp = tmp_path / "docs.jsonl"
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    s = settings(scripted_dir)
    StubCalc.calls = 0
    stats = run(s, [inp], tmp_path / "run")
    records = [json.loads(line) for line in lines]

    got = augment_texts(records, str(scripted_dir), executor(), s, specs={"Calc": STUB})

    sort = lambda rows: sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))
    assert sort(got.texts) == read_kind(tmp_path / "run", "texts")
    want_cands = read_kind(tmp_path / "run", "candidates")
    assert sort(without_losses(got.candidates)) == sort(without_losses(want_cands))
    by_key = lambda rows: sorted(rows, key=lambda r: (r["doc_id"], r["position"], r["input"]))
    assert losses_apart(by_key(got.candidates), by_key(want_cands)) <= 1e-5
    # the errors: two bad records (named by their index here, by file and line in the pipeline)
    # and one duplicate id, the same reasons
    assert sorted(e["reason"] for e in got.errors) == sorted(e["reason"] for e in read_kind(tmp_path / "run", "errors"))
    assert [e["detail"].split(":")[0] for e in got.errors if e["reason"] != "duplicate_id"] == ["texts[3]", "texts[4]"]
    # counts: stats.json's documents and per-tool figures, from the same counter names
    c = got.counts
    assert {k: c.get(k, 0) for k in stats["documents"]} == stats["documents"]
    tool = stats["tools"]["Calc"]
    assert {k: c.get(f"{k}:Calc", 0) for k in tool if k not in ("failures", "failed")} == {
        k: v for k, v in tool.items() if k not in ("failures", "failed")}
    assert stats["bad_records"] == {k.split(":", 1)[1]: v for k, v in c.items() if k.startswith("bad_records:")}
    assert c["kept:Calc"] == sum(r["kept"] for r in got.candidates) > 0


def test_augment_texts_takes_plain_strings_and_a_loaded_model(scripted_dir):
    s = settings(scripted_dir)
    ex = executor()
    plan = model_plan(ex.tools, s, {"Calc": STUB})
    assert plan.templates["Calc"].endswith("Input: {input}\nOutput:")
    assert plan.tool_settings["Calc"]["k"] == 5 and plan.tool_settings["Calc"]["tau_f"] == -100
    assert (plan.model_spec, plan.max_batch_tokens, plan.takes_input) == (str(scripted_dir), 512, {"Calc": True})
    model = plan.load()
    assert isinstance(model, AugmentModel)
    got = augment_texts(["He paid 18, then 12, and 30 more.", "No commas here."], model, ex, s,
                        specs={"Calc": STUB})
    texts = {t["text"] for t in got.texts}
    assert texts == {"He paid 18, [Calc(7) -> 7] then 12, [Calc(7) -> 7] and 30 more.", "No commas here."}
    assert all(t["doc_id"].startswith("sha1-") for t in got.texts)  # the pipeline's content ids
    assert got.counts["docs_read"] == 2 and got.counts["docs_routed:Calc"] == 1
    assert got.errors == []
