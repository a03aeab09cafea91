"""Inline tool-calling generation (toolformer/generation.py): TESTPLAN E 36-38 and C 20-22.

The tiny random model is made to write calls by a scripted logits processor: for each prompt it
pushes the next token of a planned completion while the completion still follows the plan, and
leaves the model alone once it departs from it (after a rollback, say). The same processor records
the raw scores at every step, which lets the tests compare them with a full recompute.
"""

from __future__ import annotations

import datetime as dt

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from toolformer.call_format import OK, parse_calls
from toolformer.generation import (
    _INVALID,
    _OPEN,
    _READY,
    CallRecord,
    GenerationConfig,
    ToolGenerator,
    _open_call_state,
)
from tools.base import CallContext, Tool, ToolError
from tools.executor import ToolExecutor

# Tiny models are latency-bound: extra threads only contend on a 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")




BIAS = 1000.0  # added to a planned token; masking " [" then leaves the model's own ranking


class Scripted(LogitsProcessor):
    """Push planned completions; record (row ids, raw scores) at each step."""

    def __init__(self, tokenizer, plans: dict[str, str | list[int]]):
        self.tok = tokenizer
        self.plans = {tuple(tokenizer(p).input_ids): self._ids(plan) for p, plan in plans.items()}
        self.seen: list[tuple[list[int], torch.Tensor]] = []
        self.pad = tokenizer.pad_token_id

    def _ids(self, plan):
        return plan if isinstance(plan, list) else self.tok(plan, add_special_tokens=False).input_ids

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for b, row in enumerate(input_ids.tolist()):
            while row and row[0] == self.pad:  # left padding (prompts hold no pad/eos token)
                row = row[1:]
            self.seen.append((row, scores[b].clone()))
            for prompt, plan in self.plans.items():
                n = len(prompt)
                done = row[n:]
                if tuple(row[:n]) == prompt and done == plan[:len(done)] and len(done) < len(plan):
                    scores[b, plan[len(done)]] += BIAS
        return scores


class Fixed(Tool):
    """Returns a fixed text (or raises) and counts its calls."""

    name = "Calculator"

    def __init__(self, result="0.29", error: Exception | None = None):
        self.result, self.error, self.calls = result, error, []

    def __call__(self, input, context):
        self.calls.append(input)
        if self.error is not None:
            raise self.error
        return self.result


def make(tiny_model, tools, plans=None, **config):
    model, tok = tiny_model
    proc = Scripted(tok, plans or {})
    gen = ToolGenerator(model, tok, ToolExecutor(tools), GenerationConfig(**config), LogitsProcessorList([proc]))
    return gen, proc


def ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


PROMPT = "Out of 1400 participants, 400 (or"
CALL = " [Calculator(400 / 1400) ->"


@pytest.mark.parametrize("text,state", [
    ("[", _OPEN), ("[Calc", _OPEN), ("[Calculator(400 / 1", _OPEN), ("[Calculator((2+3)*4)", _OPEN),
    ("[Calculator(1) ", _OPEN), ("[Calculator(1) -", _OPEN), ("[Calendar()", _OPEN),
    ("[Calculator(1) ->", _READY), ("[Calculator(1)->", _READY), ("[Calculator(1) → ", _READY),
    ("[Calendar() ->", _READY), ("[1]", _INVALID), ("[ Calc", _INVALID), ("[Calculator(1)]", _INVALID),
    ("[Calculator(1\n", _INVALID), ("[Calculator(1) -> 3", _INVALID), ("[Calculator([", _INVALID),
    ("[Calculator(1) x", _INVALID), ("[Calculator(1) -x", _INVALID),
])
def test_open_call_state(text, state):
    assert _open_call_state(text)[0] == state


def test_open_call_state_gives_the_call_at_the_arrow():
    state, call = _open_call_state("[Calculator((2+3)*4) ->")
    assert state == _READY and (call.tool, call.input, call.result) == ("Calculator", "(2+3)*4", "")


def test_interrupts_at_arrow_injects_exact_ids_and_cache_matches_recompute(tiny_model):
    model, tok = tiny_model
    tool = Fixed("0.29")
    gen, proc = make(tiny_model, {"Calculator": tool}, {PROMPT: CALL}, max_new_tokens=30)
    fed = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: fed.append(kw["input_ids"].shape[1]),
                                           with_kwargs=True)
    try:
        out = gen.generate([PROMPT])[0]
    finally:
        hook.remove()
    prompt_ids, call_ids, result_ids = ids(tok, PROMPT), ids(tok, CALL), ids(tok, " 0.29]")
    assert gen.result_ids(" 0.29") == result_ids
    assert tool.calls == ["400 / 1400"]
    assert out.calls == [CallRecord("Calculator", "400 / 1400", "0.29", None)]
    assert out.text.startswith(" [Calculator(400 / 1400) -> 0.29]")
    assert out.text_without_calls == out.text[len(" [Calculator(400 / 1400) -> 0.29]"):]
    rows = [r for r, _ in proc.seen]
    # The model is never asked for the token after the arrow: decoding stopped there ...
    assert prompt_ids + call_ids not in rows
    # ... and the next step already sees the arrow and exactly the injected ids.
    assert prompt_ids + call_ids + result_ids in rows
    assert rows[-1][:len(prompt_ids) + len(call_ids) + len(result_ids)] == prompt_ids + call_ids + result_ids
    # Each token went through the model once: the prefix was never re-run.
    assert fed[0] == len(prompt_ids)
    assert fed[len(call_ids)] == 1 + len(result_ids)  # the arrow with the result, in one forward
    assert sum(fed) == len(prompt_ids) + out.num_tokens - 1  # the last token is never fed
    assert out.num_tokens == 30
    # Logits from the cache equal a full recompute of the sequence, at every step.
    with torch.no_grad():
        for row, scores in proc.seen:
            full = model(torch.tensor([row])).logits[0, -1]
            assert torch.allclose(scores, full, atol=1e-5), len(row)


def test_batch_mixing_calls_rollbacks_and_plain_rows_equals_each_row_alone(tiny_model):
    model, _ = tiny_model
    plans = {PROMPT: CALL, "Today is": " [Calendar() ->", "He paid 18 + 12 * 3": " [Calculator(1/0) ->"}
    prompts = ["The quick brown fox", PROMPT, "He paid 18 + 12 * 3", "Today is", "In 2019 the town had"]

    class Cal(Tool):
        name = "Calendar"

        def __call__(self, input, context):
            return f"Today is {context.date:%A, %B %d, %Y}."

    class Calc(Fixed):
        def __call__(self, input, context):
            if input == "1/0":
                raise ToolError("div0", "division by zero")
            return "0.29"

    def run(batch):
        gen, proc = make(tiny_model, {"Calculator": Calc(), "Calendar": Cal()}, plans, max_new_tokens=24)
        ctx = CallContext(date=dt.date(2023, 1, 30))
        outs = []
        if batch:
            outs = gen.generate(prompts, ctx, batch_size=len(prompts))
        else:
            for p in prompts:
                outs += gen.generate([p], ctx)
        return outs, proc

    batched, proc = run(True)
    alone, _ = run(False)
    def key(outs):
        return [(o.text, o.calls, o.num_tokens) for o in outs]

    assert key(batched) == key(alone)
    by_prompt = {o.prompt: o for o in batched}
    assert by_prompt[PROMPT].text.startswith(" [Calculator(400 / 1400) -> 0.29]")
    assert by_prompt["Today is"].text.startswith(" [Calendar() -> Today is Monday, January 30, 2023.]")
    failed = by_prompt["He paid 18 + 12 * 3"]
    assert failed.calls == [CallRecord("Calculator", "1/0", None, "div0")]
    assert "[" not in failed.text and "div0" not in failed.text and "division" not in failed.text
    assert by_prompt["The quick brown fox"].calls == []
    # Rows decoded beside holes, injections and rollbacks still match a recompute of their own sequence.
    with torch.no_grad():
        for row, scores in proc.seen:
            full = model(torch.tensor([row])).logits[0, -1]
            assert torch.allclose(scores, full, atol=1e-4), len(row)


def plain(tiny_model, prompts, **config):
    """The same decoding with tools disabled (" [" never emitted)."""
    gen, _ = make(tiny_model, {}, **config, use_tools=False)
    return gen.generate(prompts)


@pytest.mark.parametrize("error,reason", [(ToolError("div0", "division by zero"), "div0"),
                                          (ToolError("timeout", "took too long"), "timeout"),
                                          (RuntimeError("bug in the tool"), "internal")])
def test_tool_error_rolls_back_and_continues_with_api_masked(tiny_model, error, reason):
    tool = Fixed(error=error)
    gen, _ = make(tiny_model, {"Calculator": tool}, {PROMPT: CALL}, max_new_tokens=20)
    out = gen.generate([PROMPT])[0]
    assert tool.calls == ["400 / 1400"]  # executed once
    assert out.calls == [CallRecord("Calculator", "400 / 1400", None, reason)]
    # Rolled back: the same as never having started the call (" [" masked there, and no calls left).
    expected = plain(tiny_model, [PROMPT], max_new_tokens=20)[0]
    assert (out.text, out.num_tokens) == (expected.text, expected.num_tokens)
    assert str(error) not in out.text and "Calculator" not in out.text


def test_unknown_tool_is_rolled_back(tiny_model):
    gen, _ = make(tiny_model, {"Calculator": Fixed()}, {PROMPT: " [QA(who?) ->"}, max_new_tokens=16)
    out = gen.generate([PROMPT])[0]
    assert out.calls == [CallRecord("QA", "who?", None, "unknown_tool")]
    assert out.text == plain(tiny_model, [PROMPT], max_new_tokens=16)[0].text


def test_rollback_crops_the_cache_back_to_before_the_call(tiny_model, monkeypatch):
    from transformers import DynamicCache

    crops = []
    original = DynamicCache.crop
    monkeypatch.setattr(DynamicCache, "crop", lambda self, n: (crops.append(n), original(self, n)))
    gen, proc = make(tiny_model, {"Calculator": Fixed(error=ToolError("div0"))}, {PROMPT: CALL},
                     max_new_tokens=30)
    gen.generate([PROMPT])
    call_len = len(ids(tiny_model[1], CALL))
    assert crops == [-(call_len - 1)]  # the fed call tokens (the arrow itself was never fed)
    model = tiny_model[0]
    with torch.no_grad():
        for row, scores in proc.seen:
            assert torch.allclose(scores, model(torch.tensor([row])).logits[0, -1], atol=1e-5)


def test_argument_that_never_closes_is_abandoned_after_k_tokens(tiny_model):
    model, tok = tiny_model
    tool = Fixed()
    plan = ids(tok, " [Calculator(") + ids(tok, "1") * 200
    gen, _ = make(tiny_model, {"Calculator": tool}, {PROMPT: plan}, max_new_tokens=20,
                  max_call_input_tokens=5)
    forwards = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: forwards.append(1), with_kwargs=True)
    try:
        out = gen.generate([PROMPT])[0]
    finally:
        hook.remove()
    assert tool.calls == [] and out.calls == [] and out.abandoned_calls == 1
    expected = plain(tiny_model, [PROMPT], max_new_tokens=20)[0]
    assert (out.text, out.num_tokens) == (expected.text, expected.num_tokens)
    # 1 prefill + 19 kept tokens fed + at most K+1 call tokens that were thrown away
    assert len(forwards) <= 1 + 19 + 5 + 1


def test_max_calls_limits_executions(tiny_model):
    tok = tiny_model[1]
    plan = ids(tok, CALL) + ids(tok, " 0.29]") + ids(tok, " [Calculator(1 + 2) ->")
    tool = Fixed()
    gen, _ = make(tiny_model, {"Calculator": tool}, {PROMPT: plan}, max_new_tokens=50)
    out = gen.generate([PROMPT])[0]
    assert tool.calls == ["400 / 1400"] and len(out.calls) == 1
    assert [c for c in parse_calls(out.text)] and len(parse_calls(out.text)) == 1
    tool2 = Fixed()
    gen2, _ = make(tiny_model, {"Calculator": tool2}, {PROMPT: plan}, max_new_tokens=50, max_calls=2)
    out2 = gen2.generate([PROMPT])[0]
    assert tool2.calls == ["400 / 1400", "1 + 2"]
    assert out2.text.startswith(" [Calculator(400 / 1400) -> 0.29] [Calculator(1 + 2) -> 0.29]")


def test_model_that_always_wants_api_terminates_without_a_second_call(tiny_model):
    _, tok = tiny_model
    api = ids(tok, " [")
    tool = Fixed()
    # " [" pushed at every step: the first call is nested (" [" again) and abandoned; then masked.
    gen, _ = make(tiny_model, {"Calculator": tool}, {PROMPT: api * 100}, max_new_tokens=15)
    out = gen.generate([PROMPT])[0]
    assert tool.calls == [] and out.abandoned_calls == 1 and out.num_tokens <= 15
    assert api[0] not in tok(out.text, add_special_tokens=False).input_ids


def test_no_tools_never_emits_api_and_matches_model_generate(tiny_model):
    model, tok = tiny_model
    prompts = ["Out of 1400 participants", "Today is the first"]
    outs = plain(tiny_model, prompts, max_new_tokens=12)
    api = ids(tok, " [")[0]
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    ref = model.generate(**enc, max_new_tokens=12, do_sample=False, suppress_tokens=[api])
    for out, row in zip(outs, ref[:, enc.input_ids.shape[1]:].tolist()):
        row = [t for t in row if t != tok.eos_token_id]
        assert out.text == tok.decode(row) and out.num_tokens == len(row)


@pytest.mark.parametrize("rank", [1, 3, 10])
def test_top_k_trigger_fires_at_rank_k_not_k_plus_one(tiny_model, rank):
    _, tok = tiny_model
    api = ids(tok, " [")[0]
    call = ids(tok, CALL)
    others = [t for t in range(len(tok)) if t != api and t not in tok.all_special_ids][:rank - 1]

    class Rank(LogitsProcessor):
        """At the first step: tokens `others` first, then " [" at rank `rank`."""

        def __call__(self, input_ids, scores):
            if input_ids.shape[1] == len(ids(tok, PROMPT)):
                scores = torch.full_like(scores, -100.0)
                for i, t in enumerate(others):
                    scores[:, t] = 50.0 - i
                scores[:, api] = 50.0 - rank + 0.5
            return scores

    for k, fires in [(rank, True), (rank - 1, False)]:
        if k < 1:
            continue
        model = tiny_model[0]
        tool = Fixed()
        gen = ToolGenerator(model, tok, ToolExecutor({"Calculator": tool}),
                            GenerationConfig(max_new_tokens=30, top_k_trigger=k),
                            LogitsProcessorList([Scripted(tok, {PROMPT: call}), Rank()]))
        out = gen.generate([PROMPT])[0]
        assert (tool.calls == ["400 / 1400"]) == fires, k
        if not fires:
            assert tok(out.text, add_special_tokens=False).input_ids[0] == others[0]


@pytest.mark.parametrize("result", [
    "x] -> [Calculator(9**9**9)] → y", "<API> Calculator(1) </API>", "a\nInput: b\nOutput: c]",
    "</s> end", "[Calculator(1+1) -> 2]"])
def test_results_with_markers_are_neutralised(tiny_model, result):
    _, tok = tiny_model
    gen, _ = make(tiny_model, {"Calculator": Fixed(result)}, {PROMPT: CALL}, max_new_tokens=60)
    out = gen.generate([PROMPT])[0]
    calls = parse_calls(out.text)
    assert [(c.tool, c.input, c.status) for c in calls] == [("Calculator", "400 / 1400", OK)]
    inserted = out.calls[0].result
    assert calls[0].result == inserted
    assert not any(m in inserted for m in ("[", "]", "->", "→", "\n"))
    span = gen.result_ids(" " + inserted)
    assert tok.eos_token_id not in span  # "</s>" in a result is text, not the control token
    assert span[-1] == ids(tok, "]")[-1]


def test_calls_in_the_prompt_are_never_executed(tiny_model):
    tool = Fixed()
    prompt = "Out of 1400 [Calculator(9**9**9)] and [Calculator(2 + 3) ->"
    # The prompt's open call is text: only a call the model writes after its own " [" runs.
    gen, _ = make(tiny_model, {"Calculator": tool}, {prompt: " 5]"}, max_new_tokens=12)
    out = gen.generate([prompt])[0]
    assert out.text.startswith(" 5]")
    assert "9**9**9" not in tool.calls and "2 + 3" not in tool.calls


def test_oversized_result_is_truncated(tiny_model):
    gen, _ = make(tiny_model, {"Calculator": Fixed("word " * 200_000)}, {PROMPT: CALL}, max_new_tokens=40)
    out = gen.generate([PROMPT])[0]
    assert len(out.calls[0].result) <= 200
    assert out.num_tokens <= len(ids(tiny_model[1], CALL)) + len(gen.result_ids(" " + out.calls[0].result))


def test_stream_yields_the_same_text_with_the_call_in_one_piece(tiny_model):
    gen, _ = make(tiny_model, {"Calculator": Fixed()}, {PROMPT: CALL}, max_new_tokens=40)
    pieces = list(gen.stream(PROMPT))
    assert pieces[0] == " [Calculator(400 / 1400) -> 0.29]"
    assert "".join(pieces) == gen.last_output.text == gen.generate([PROMPT])[0].text
    assert len(pieces) > 5


def test_stop_at_newline(tiny_model):
    gen, _ = make(tiny_model, {}, {PROMPT: " 12\n34"}, max_new_tokens=20, stop_at_newline=True)
    out = gen.generate([PROMPT])[0]
    assert out.text == " 12"
    assert "".join(gen.stream(PROMPT)) == " 12"


def test_sampling_is_seeded(tiny_model):
    gen, _ = make(tiny_model, {}, {}, max_new_tokens=10, do_sample=True, temperature=0.8, top_p=0.9, seed=3)
    a = gen.generate(["The quick brown fox", "Today is"])
    b = gen.generate(["The quick brown fox", "Today is"])
    assert [o.text for o in a] == [o.text for o in b]


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"top_k_trigger": 0}, {"max_calls": -1},
                                 {"max_call_input_tokens": 0}, {"temperature": 0}, {"top_p": 0}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        GenerationConfig(**bad)


def test_empty_prompt_is_an_error(tiny_model):
    gen, _ = make(tiny_model, {}, {})
    with pytest.raises(ValueError, match="prompt 1"):
        gen.generate(["ok", ""])


# ---- the real default model ----------------------------------------------------------------

FEW_SHOT = ("Out of 1400 participants, 400 (or [Calculator(400 / 1400) -> 0.29] 29%) passed the test.\n"
            "He bought 3 boxes of 12 eggs, [Calculator(3 * 12) -> 36] 36 eggs in all.\n")


@pytest.mark.real_model
def test_real_model_calls_the_calculator_inline(real_model_dir):
    from toolformer.models import load_model

    model, tok = load_model(str(real_model_dir), device="cpu")

    class Products(Tool):
        name = "Calculator"

        def __call__(self, input, context):
            a, op, b = input.split()
            return str(int(a) * int(b)) if op == "*" else "0"

    prompts = [FEW_SHOT + "She read 25 pages a day for 4 days, so", "The capital of France is"]
    record = Scripted(tok, {})
    gen = ToolGenerator(model, tok, ToolExecutor({"Calculator": Products()}), GenerationConfig(max_new_tokens=18),
                        LogitsProcessorList([record]))
    batched = gen.generate(prompts, batch_size=2)
    steps = list(record.seen)
    alone = [gen.generate([p])[0] for p in prompts]
    assert [(o.text, o.calls) for o in batched] == [(o.text, o.calls) for o in alone]
    # The few-shot prompt makes the 135M model write a call; the tool's answer is inserted inline.
    assert batched[0].text.startswith(" [Calculator(25 * 4) -> 100]")
    assert batched[0].calls == [CallRecord("Calculator", "25 * 4", "100", None)]
    after = [(row, scores) for row, scores in steps if tok.decode(row).endswith("-> 100]")]
    assert len(after) == 1  # the step right after the injection, decoded beside the other row
    with torch.no_grad():
        for row, scores in after + steps[-2:]:
            full = model(torch.tensor([row])).logits[0, -1]
            assert torch.allclose(scores, full, atol=1e-4)
    # With tools disabled the loop is plain greedy decoding with " [" suppressed.
    gen_off = ToolGenerator(model, tok, ToolExecutor({}), GenerationConfig(max_new_tokens=8, use_tools=False))
    api = tok(" [", add_special_tokens=False).input_ids[0]
    enc = tok(prompts[1], return_tensors="pt")
    ref = model.generate(**enc, max_new_tokens=8, do_sample=False, suppress_tokens=[api])
    assert gen_off.generate(prompts[1:])[0].text == tok.decode(ref[0, enc.input_ids.shape[1]:],
                                                               skip_special_tokens=True)


def test_models_trained_with_marker_tokens_are_refused_loudly(tiny_model_dir, tmp_path):
    import shutil

    from finetune.markers import MARKER_FORMAT, save_call_format
    from toolformer.errors import UserError
    from commands.generate import generate_command
    from toolformer.models import load_model

    marked = tmp_path / "marked"
    shutil.copytree(tiny_model_dir, marked)
    save_call_format(marked, MARKER_FORMAT)
    model, tok = load_model(str(marked), device="cpu")
    with pytest.raises(ValueError, match="trained with the call markers <API> → </API>"):
        ToolGenerator(model, tok, ToolExecutor({}))
    with pytest.raises(UserError, match="finetune --marker-tokens"):
        generate_command(["2 + 2 ="], model=str(marked), max_new_tokens=2)
