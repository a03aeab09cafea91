"""The pipeline's steps inside Beam (``pipelines/stages.py``), one DoFn at a time, with Beam's
``TestPipeline`` and ``assert_that``: outputs per tag (main / dead letter / finished) and the
counters each step adds. The steps' plain functions are tested in test_augment_texts.py and
test_grounding.py; the whole pipeline in test_pipeline.py."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # (not collected as a test class)
from apache_beam.testing.util import assert_that, equal_to

from pipelines.stages import (
    DEAD,
    FINISHED,
    NAMESPACE,
    CandidateRecordsFn,
    CountSamplesFn,
    FinishUnitFn,
    MergeFn,
    RouteFn,
    unique_document,
)
from tests.test_pipeline import STUB

pytestmark = pytest.mark.usefixtures("one_thread")


def counters(result) -> dict[str, int]:
    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    return {c.key.metric.name: c.committed for c in found if c.committed and not c.key.metric.name.startswith("time_ms")}


def run(build):
    p = BeamTestPipeline()
    build(p)
    result = p.run()
    result.wait_until_finish()
    return counters(result)


def test_route_emits_one_unit_per_window_of_accepted_documents(tiny_model_dir):
    from toolformer.models import load_tokenizer

    docs = [{"doc_id": "a", "text": "One, two, three, four."}, {"doc_id": "b", "text": "No commas"}]
    tok = load_tokenizer(str(tiny_model_dir))
    n_tokens = len(tok(" " + docs[0]["text"], add_special_tokens=False)["input_ids"])

    def build(p):
        units = (p | beam.Create(docs)
                 | beam.ParDo(RouteFn({"Calc": STUB}, {}, {"Calc": 512}, str(tiny_model_dir), 3)))
        assert_that(units, equal_to([{"doc_id": "a", "tool": "Calc", "offset": 0, "text": docs[0]["text"],
                                      "n_tokens": n_tokens, "seed": 3, "date": None}]))

    got = run(build)
    assert got == {"docs_routed:Calc": 1, "windows:Calc": 1}


UNIT = {"doc_id": "a", "tool": "Calc", "offset": 0, "text": "x, y", "n_tokens": 3, "seed": 0, "date": None}
SAMPLED = {"positions": [{"token_position": 1, "p": 0.9}], "samples": 3, "unterminated": 1, "unparsed": 0,
           "duplicates": 1, "timing": {"score_s": 0.0, "sample_s": 0.0}}
CAND = {"token_position": 1, "position": 1, "input": "7", "call": "[Calc(7)]"}


def test_count_samples_finishes_units_without_candidates():
    def build(p):
        out = (p | beam.Create([(UNIT, {**SAMPLED, "candidates": [CAND]}),
                                ({**UNIT, "doc_id": "b"}, {**SAMPLED, "candidates": []})])
               | beam.ParDo(CountSamplesFn()).with_outputs(FINISHED, main="units"))
        counts = {"positions:Calc": 1, "samples:Calc": 3, "unterminated:Calc": 1, "duplicates:Calc": 1}
        assert_that(out.units, equal_to([{**UNIT, "candidates": [CAND], "counts": {**counts, "candidates:Calc": 1}}]),
                    label="units")
        assert_that(out[FINISHED] | beam.Map(lambda f: (f["key"], f["records"], f["counts"])),
                    equal_to([(["b", "Calc", 0], [], counts)]), label="finished")

    assert run(build) == {}  # counted later, by FinishUnit (once per unit, journal replay included)


def test_candidate_records_then_finish_unit_count_and_route_dead_letters():
    executed = {**UNIT, "counts": {"executed:Calc": 2}, "dead": [{"doc_id": "a", "reason": "parse"}],
                "candidates": [{**CAND, "result": "7", "error": None, "grounded": True, "dropped": None},
                               {**CAND, "input": "8", "call": "[Calc(8)]", "result": None, "error": "parse",
                                "grounded": True, "dropped": None}]}
    losses = {"seconds": 0.5, "losses": [{"loss_plus": 1.0, "loss_minus": 2.5, "loss_empty": 2.5,
                                          "loss_no_result": 3.0}]}

    def build(p):
        out = (p | beam.Create([(executed, losses)]) | beam.ParDo(CandidateRecordsFn({"Calc": 1.0}))
               | beam.ParDo(FinishUnitFn(None)).with_outputs(DEAD, main="records"))
        assert_that(out.records | beam.Map(lambda r: (r["input"], r["kept"], r["delta"])),
                    equal_to([("7", True, 1.5), ("8", False, None)]), label="records")
        assert_that(out[DEAD], equal_to([{"doc_id": "a", "reason": "parse"}]), label="dead")

    assert run(build) == {"executed:Calc": 2, "kept:Calc": 1}


def test_dedupe_and_merge_insert_kept_calls_once_per_position():
    doc = {"doc_id": "a", "text": "x, y"}
    rec = {"doc_id": "a", "tool": "Calc", "position": 1, "call": "[Calc(7)]", "input": "7", "result": "7",
           "kept": True, "delta": 1.5}

    def build(p):
        docs = (p | "Docs" >> beam.Create([("a", [doc, {"doc_id": "a", "text": "z, longer"}])])
                | beam.FlatMap(unique_document).with_outputs(DEAD, main="docs"))
        records = p | "Records" >> beam.Create([("a", rec), ("a", {**rec, "input": "8", "call": "[Calc(8)]",
                                                                   "result": "8", "delta": 0.5})])
        merged = ({"docs": docs.docs | beam.Map(lambda d: (d["doc_id"], d)), "records": records}
                  | beam.CoGroupByKey() | beam.ParDo(MergeFn()))
        assert_that(merged, equal_to([{"doc_id": "a", "text": "x [Calc(7) -> 7], y",
                                       "calls": [{"tool": "Calc", "input": "7", "result": "7", "position": 1}]}]),
                    label="merged")
        assert_that(docs[DEAD] | beam.Map(lambda d: d["reason"]), equal_to(["duplicate_id"]), label="dead")

    assert run(build) == {"docs_duplicate_id": 1, "texts_written": 1, "texts_with_calls": 1}
