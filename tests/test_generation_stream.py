"""Streaming generation (toolformer/generation.py ``tokens()`` and ``stream()``, toolformer/detokenize.py).

``tokens()`` yields an event per decision of the decode loop (a token, an injected result, a
rollback); ``stream()`` yields text, a call held back until it has run. Both must agree with
``generate()`` and decode only a window of the latest tokens per step (linear, not quadratic, work).
"""

from __future__ import annotations

import random

import pytest
from transformers import LogitsProcessor, LogitsProcessorList

from tests.test_generation import CALL, PROMPT, Fixed, Scripted, ids, make
from toolformer.detokenize import IncrementalText
from toolformer.generation import CallRecord, GenerationConfig, TokenEvent, ToolGenerator
from tools.base import ToolError
from tools.executor import ToolExecutor

pytestmark = pytest.mark.usefixtures("one_thread")


def apply(events: list[TokenEvent]) -> tuple[list[int], str]:
    """What a consumer of ``tokens()`` shows: the kept ids and their text, rollbacks applied."""
    kept, text = [], ""
    for e in events:
        if e.kind == "rollback":
            assert tuple(kept[len(kept) - len(e.ids):]) == e.ids  # only ids given before are taken back
            assert text.endswith(e.text)
            kept, text = kept[:len(kept) - len(e.ids)], text[:len(text) - len(e.text)]
        else:
            kept += e.ids
            text += e.text
    return kept, text


class NoEos(LogitsProcessor):
    def __init__(self, eos):
        self.eos = eos

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.eos] = -float("inf")
        return scores


class Calc(Fixed):
    def __call__(self, input, context):
        self.calls.append(input)
        if input == "1/0":
            raise ToolError("div0", "division by zero")
        return "0.29"


PLANS = {
    PROMPT: CALL,  # a completed call
    "He paid 18 + 12 * 3": " [Calculator(1/0) ->",  # the tool fails: rolled back
    "Today is": " [QA(who?) ->",  # an unknown tool: rolled back
    "The quick brown fox": " jumps [Calculator(1 + 2) -> 3] café → 29%",  # the model writes its own result
    "In 2019 the town had": " 1,280 people; é€😀 ok",  # multi-byte characters split over byte tokens
}


@pytest.mark.parametrize("config", [dict(max_new_tokens=30), dict(max_new_tokens=40, max_calls=2),
                                    dict(max_new_tokens=30, stop_at_newline=True), dict(max_new_tokens=12),
                                    dict(max_new_tokens=30, do_sample=True, temperature=0.9, seed=1)])
@pytest.mark.parametrize("prompt", list(PLANS))
def test_stream_pieces_add_up_to_generate(tiny_model, prompt, config):
    gen, _ = make(tiny_model, {"Calculator": Calc()}, PLANS, **config)
    expected = gen.generate([prompt])[0]
    pieces = list(gen.stream(prompt))
    assert "".join(pieces) == expected.text == gen.last_output.text
    assert all(pieces)
    assert (gen.last_output.calls, gen.last_output.num_tokens) == (expected.calls, expected.num_tokens)
    events = list(gen.tokens(prompt))
    kept, text = apply(events)
    assert len(kept) == expected.num_tokens
    # the events' text is the decoded completion (not cut at a newline), but an incomplete last character
    full = gen._text(kept)
    assert full.startswith(text) and set(full[len(text):]) <= {"\ufffd"}
    if config.get("stop_at_newline"):
        assert text.split("\n", 1)[0] == expected.text


def test_stream_with_newline_and_a_call(tiny_model):
    plans = {PROMPT: " 12 [Calculator(2) -> 3]\n34"}
    gen, _ = make(tiny_model, {"Calculator": Fixed("3")}, plans, max_new_tokens=30, stop_at_newline=True)
    pieces = list(gen.stream(PROMPT))
    assert "".join(pieces) == gen.generate([PROMPT])[0].text == " 12 [Calculator(2) -> 3]"
    assert " [Calculator(2) -> 3]" in pieces  # the call in one piece, with its result
    events = list(gen.tokens(PROMPT))
    assert apply(events)[1] == " 12 [Calculator(2) -> 3]\n"  # the events keep the newline token


def test_events_of_a_completed_call_give_the_exact_result_ids(tiny_model):
    _, tok = tiny_model
    gen, _ = make(tiny_model, {"Calculator": Calc()}, {PROMPT: CALL}, max_new_tokens=30)
    events = list(gen.tokens(PROMPT))
    call_ids = ids(tok, CALL)
    head = events[:len(call_ids)]
    assert [e.kind for e in head] == ["token"] * len(call_ids) and all(e.in_call for e in head)
    assert [i for e in head for i in e.ids] == call_ids
    assert "".join(e.text for e in head) == CALL
    result = events[len(call_ids)]
    assert result.kind == "result" and not result.in_call
    assert list(result.ids) == gen.result_ids(" 0.29") == ids(tok, " 0.29]")
    assert result.text == " 0.29]"
    rest = events[len(call_ids) + 1:]
    assert rest and all(e.kind == "token" and not e.in_call and len(e.ids) == 1 for e in rest)
    kept, text = apply(events)
    out = gen.generate([PROMPT])[0]
    assert text == out.text and len(kept) == out.num_tokens
    assert gen.last_output.calls == [CallRecord("Calculator", "400 / 1400", "0.29", None)]


@pytest.mark.parametrize("tools,plan,calls", [
    ({"Calculator": Fixed(error=ToolError("div0", "division by zero"))}, CALL,
     [CallRecord("Calculator", "400 / 1400", None, "div0")]),
    ({"Calculator": Fixed()}, " [QA(who?) ->", [CallRecord("QA", "who?", None, "unknown_tool")]),
    ({"Calculator": Fixed()}, " [Calculator(1]", []),  # malformed: abandoned before the tool
])
def test_a_failed_call_is_one_rollback_event(tiny_model, tools, plan, calls):
    _, tok = tiny_model
    gen, _ = make(tiny_model, tools, {PROMPT: plan}, max_new_tokens=20)
    events = list(gen.tokens(PROMPT))
    kinds = [e.kind for e in events]
    assert kinds.count("rollback") == 1 and "result" not in kinds
    at = kinds.index("rollback")
    rollback, before = events[at], events[:at]
    assert all(e.in_call for e in before) and [i for e in before for i in e.ids] == list(rollback.ids)
    assert list(rollback.ids) == ids(tok, plan)
    assert rollback.text == "".join(e.text for e in before) == tok.decode(ids(tok, plan))
    assert not rollback.in_call
    after = events[at + 1:]
    assert after and all(e.kind == "token" and not e.in_call for e in after)
    assert gen.api_id not in after[0].ids  # " [" masked at the step after the rollback
    out = gen.generate([PROMPT])[0]
    kept, text = apply(events)
    assert text == out.text and len(kept) == out.num_tokens and gen.last_output.calls == calls == out.calls
    assert "".join(gen.stream(PROMPT)) == out.text


def test_events_come_as_they_are_decided(tiny_model):
    model, tok = tiny_model
    forwards = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: forwards.append(1), with_kwargs=True)
    gen = ToolGenerator(model, tok, ToolExecutor({}), GenerationConfig(max_new_tokens=30, use_tools=False),
                        LogitsProcessorList([NoEos(tok.eos_token_id)]))
    try:
        events = gen.tokens("The quick brown fox")
        next(events)
        assert len(forwards) == 1  # the prompt's forward only: the first token before the second step
        next(events)
        assert len(forwards) == 2
        pieces = gen.stream("Today is")
        next(pieces)
        assert len(forwards) <= 4
    finally:
        hook.remove()


@pytest.mark.parametrize("with_call", [False, True])
def test_streaming_decodes_linear_work(tiny_model, monkeypatch, with_call):
    model, tok = tiny_model
    work = {"calls": 0, "tokens": 0}
    decode = type(tok).decode

    def counting(self, token_ids, *args, **kwargs):
        work["calls"] += 1
        work["tokens"] += len(token_ids)
        return decode(self, token_ids, *args, **kwargs)

    monkeypatch.setattr(type(tok), "decode", counting)
    measured = {}
    for n in (50, 100, 200):
        processors = [NoEos(tok.eos_token_id)] + ([Scripted(tok, {PROMPT: CALL})] if with_call else [])
        gen = ToolGenerator(model, tok, ToolExecutor({"Calculator": Fixed()}),
                            GenerationConfig(max_new_tokens=n, use_tools=with_call), LogitsProcessorList(processors))
        work.update(calls=0, tokens=0)
        text = "".join(gen.stream(PROMPT))
        assert gen.last_output.num_tokens == n and text == gen.last_output.text
        measured[n] = dict(work)
        # about 3 ids per token for the pieces and n for the final text; a call adds its own checks
        # (the open call decoded at each of its tokens): bounded, not growing with n
        extra = 200 if with_call else 0
        assert work["tokens"] <= 5 * n + extra, (n, work)
        assert work["calls"] <= 3 * n + 50, (n, work)
        assert gen.last_decoded_tokens <= 3 * n + 10
    # linear: four times the tokens, about four times the work (a quadratic loop would do ~16x)
    assert measured[200]["tokens"] <= 4.5 * measured[50]["tokens"], measured


# ---- the incremental detokenizer -----------------------------------------------------------

def test_incremental_text_matches_full_decode(tiny_model):
    _, tok = tiny_model
    rng = random.Random(0)
    texts = ["plain ascii text, 1 + 2 = 3", "café → 29% é€😀 日本語 ok", " [Calculator(1) -> 0.29] x\ny"]
    for text in texts:
        seq = ids(tok, text)
        inc = IncrementalText(lambda i: tok.decode(i, skip_special_tokens=True, clean_up_tokenization_spaces=False))
        pieces, at = [], 0
        while at < len(seq):
            k = rng.choice([1, 1, 1, 2, 3])
            pieces.append(inc.push(seq[at:at + k]))
            at += k
        assert "".join(pieces) == text
        assert inc.decoded_tokens <= 6 * len(seq)  # a few ids per id (more while a character is split)


def test_incremental_text_rollback_restores_the_state(tiny_model):
    _, tok = tiny_model
    inc = IncrementalText(tok.decode)
    shown = "".join(inc.push([t]) for t in ids(tok, "Out of 1400 é"))
    call = ids(tok, " [Calculator(1 → 2")
    pushed = "".join(inc.push([t]) for t in call)
    assert pushed and inc.rollback(len(call)) == pushed  # the text shown for the call, to take back
    rest = "".join(inc.push([t]) for t in ids(tok, " passed"))
    assert shown + rest == "Out of 1400 é passed"
    word = ids(tok, " Calculator(400")
    assert len(word) > 1
    inc.push(word)
    with pytest.raises(ValueError, match="push boundary"):
        inc.rollback(len(word) - 1)
