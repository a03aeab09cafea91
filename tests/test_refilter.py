"""``toolformer refilter`` (pipelines/refilter.py) on fabricated runs: a tau_f that lazily settled
candidates cannot answer is refused; the grounding rule switched both ways. Refilter on a real
pipeline run (same kept calls as a run at the new tau_f): tests/test_pipeline.py."""

from __future__ import annotations

import json

import pytest


def test_refilter_refuses_a_tau_f_that_lazily_settled_candidates_cannot_answer():
    from pipelines.refilter import check_settled
    from toolformer.errors import UserError

    settled = {"tool": "Calc", "error": None, "loss_no_result": None, "delta": 0.3}
    full = {"tool": "Calc", "error": None, "loss_no_result": 2.0, "delta": 0.9}
    check_settled([settled, full], {"Calc": 0.31}, "runs/r1")  # above every bound: exact
    with pytest.raises(UserError, match=r"Calc=0.3: runs/r1 was filtered lazily .* above 0.300000"):
        check_settled([settled, full], {"Calc": 0.3}, "runs/r1")
    check_settled([full], {"Calc": -5.0}, "runs/r1")  # full losses answer any tau_f


def _fabricated_run(path, cands, text):
    path.mkdir()
    (path / "candidates-p0000-00000-of-00001.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cands))
    (path / "texts-p0000-00000-of-00001.jsonl").write_text(json.dumps({"doc_id": "d", "text": text, "calls": []}) + "\n")
    (path / "_SUCCESS").write_text("{}")


def test_refilter_switches_the_grounding_rule(tmp_path):
    from pipelines.refilter import refilter
    from toolformer.errors import UserError

    text = "She sold 315 rolls on Saturday, 555 in total."
    base = {"doc_id": "d", "tool": "Calculator", "window_offset": 0, "token_position": 1, "error": None,
            "threshold": 0.5, "loss_plus": 1.0, "loss_minus": 2.0, "loss_empty": 2.0, "loss_no_result": 2.5,
            "delta": 1.0, "kept": True, "grounded": None, "dropped": None}
    future = {**base, "position": 9, "input": "555 - 315", "call": "[Calculator(555 - 315)]", "result": "240"}
    fine = {**base, "position": 32, "input": "315 + 240", "call": "[Calculator(315 + 240)]", "result": "555"}
    fine["input"] = "315 + 315"
    _fabricated_run(tmp_path / "loose", [future, fine], text)
    assert refilter(str(tmp_path / "loose"), str(tmp_path / "strict"), grounded=["Calculator=true"]) == 0
    got = [json.loads(line) for line in (tmp_path / "strict" / "candidates-p0000-00000-of-00001.jsonl").open()]
    assert [(c["grounded"], c["dropped"], c["kept"]) for c in got] == [(False, "ungrounded", False), (True, None, True)]
    texts = [json.loads(line) for line in (tmp_path / "strict" / "texts-p0000-00000-of-00001.jsonl").open()]
    assert [c["input"] for c in texts[0]["calls"]] == ["315 + 315"]
    # and back: the losses are there, so the dropped call is kept again
    assert refilter(str(tmp_path / "strict"), str(tmp_path / "back"), grounded=["Calculator=false"]) == 0
    got = [json.loads(line) for line in (tmp_path / "back" / "candidates-p0000-00000-of-00001.jsonl").open()]
    assert [c["kept"] for c in got] == [True, True]
    # a run that dropped calls before the filter cannot bring them back
    dropped = {**future, "loss_plus": None, "loss_minus": None, "delta": None, "kept": False, "dropped": "ungrounded"}
    _fabricated_run(tmp_path / "pruned", [dropped], text)
    with pytest.raises(UserError, match="dropped 1 Calculator candidates before the filter"):
        refilter(str(tmp_path / "pruned"), str(tmp_path / "x"), grounded=["Calculator=false"])
    with pytest.raises(UserError, match="expected TOOL=true or TOOL=false"):
        refilter(str(tmp_path / "pruned"), str(tmp_path / "y"), grounded=["Calculator"])
