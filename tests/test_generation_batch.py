"""Batched generation (toolformer/decoding.py): tools of rows at the arrow in the same step run
concurrently, and a prompt head shared by a batch runs once -- neither changes an output.

The plans (tests/test_generation.py ``Scripted``) make two or three rows reach the arrow in the same
step; the tools sleep, so a sequential loop waits the sum of their latencies, a concurrent one the
longest of them.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from transformers import LogitsProcessorList

from tests.test_generation import PROMPT, Fixed, Scripted, ids
from toolformer.decoding import _common
from toolformer.execution import ToolOutcome
from toolformer.generation import CallRecord, GenerationConfig, ToolGenerator
from tools.base import CallContext, Tool
from tools.executor import ToolExecutor

pytestmark = pytest.mark.usefixtures("one_thread")

LATENCY = 0.4  # seconds per call of the slow tools
# Two prompts whose planned calls reach the arrow at the same step (checked in `same_step`).
SAME_STEP = {PROMPT: " [Calculator(400 / 1400) ->", "He paid 18 + 12 * 3": " [Calculator(400 + 1400) ->"}


def same_step(tok, plans):
    assert len({len(ids(tok, plan)) for plan in plans.values()}) == 1, "the calls must reach the arrow together"
    return plans


def call_order(tok, plans, tool="Calculator"):
    """The inputs of ``tool``'s planned calls in the order of the batch's rows (by prompt length)."""
    rows = sorted(plans, key=lambda p: len(ids(tok, p)))
    return [plans[p][len(f" [{tool}("):-len(") ->")] for p in rows if plans[p].startswith(f" [{tool}(")]


def generator(tiny_model, executor, plans, tool_threads=8, **config):
    model, tok = tiny_model
    config = {"max_new_tokens": 24, **config}
    return ToolGenerator(model, tok, executor, GenerationConfig(**config),
                         LogitsProcessorList([Scripted(tok, plans)]), tool_threads=tool_threads)


def key(outs):
    return [(o.text, o.calls, o.num_tokens, o.abandoned_calls) for o in outs]


class Intervals:
    """Records (name, start, end) of each call, thread-safely."""

    def __init__(self):
        self.lock = threading.Lock()
        self.spans: list[tuple[str, str, float, float]] = []
        self.in_flight = self.peak = 0

    def run(self, name: str, input: str, seconds: float) -> None:
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        start = time.perf_counter()
        time.sleep(seconds)
        with self.lock:
            self.in_flight -= 1
            self.spans.append((name, input, start, time.perf_counter()))

    def overlap(self, a: str, b: str) -> bool:
        return any(s1 < e2 and s2 < e1 for n1, _, s1, e1 in self.spans for n2, _, s2, e2 in self.spans
                   if (n1, n2) == (a, b) and (s1, e1) != (s2, e2))


class SlowExecutor:
    """A thread-safe executor whose every call takes LATENCY seconds; the second caller of a pair
    waits for the first at a barrier, so calls run one after another fail the test at once."""

    thread_safe = True

    def __init__(self, parties: int | None = None):
        self.record = Intervals()
        self.barrier = threading.Barrier(parties, timeout=10) if parties else None

    def execute(self, tool, input, context):
        if self.barrier is not None:
            self.barrier.wait()  # raises BrokenBarrierError (a rolled-back call) if the calls are sequential
        self.record.run(tool, input, LATENCY)
        return ToolOutcome(f"{len(input)}")


def test_calls_reaching_the_arrow_in_the_same_step_run_concurrently(tiny_model):
    plans = same_step(tiny_model[1], SAME_STEP)
    slow = SlowExecutor(parties=2)
    gen = generator(tiny_model, slow, plans)
    batched = gen.generate(list(plans), batch_size=2)
    assert slow.record.peak == 2
    assert gen.tool_seconds < 1.6 * LATENCY  # ~1x the latency of one call, not 2x
    assert [o.calls for o in batched] == [[CallRecord("Calculator", "400 / 1400", "10", None)],
                                          [CallRecord("Calculator", "400 + 1400", "10", None)]]
    # Identical to running the calls one after another, and to each row alone.
    sequential = generator(tiny_model, SlowExecutor(), plans, tool_threads=1)
    assert key(sequential.generate(list(plans), batch_size=2)) == key(batched)
    assert sequential.tool_seconds >= 2 * LATENCY
    alone = generator(tiny_model, SlowExecutor(), plans)
    assert key([alone.generate([p])[0] for p in plans]) == key(batched)


def test_tool_threads_one_runs_the_calls_in_row_order(tiny_model):
    plans = same_step(tiny_model[1], SAME_STEP)
    slow = SlowExecutor()
    gen = generator(tiny_model, slow, plans, tool_threads=1)
    gen.generate(list(plans), batch_size=2)
    assert slow.record.peak == 1
    assert [i for _, i, _, _ in slow.record.spans] == call_order(tiny_model[1], plans)
    with pytest.raises(ValueError, match="tool_threads"):
        generator(tiny_model, slow, plans, tool_threads=0)


class SlowTool(Tool):
    def __init__(self, record: Intervals, result: str = "0.29"):
        self.record, self.result = record, result

    def __call__(self, input, context):
        self.record.run(self.name, input, LATENCY)
        return self.result


def slow_tools(record):
    class Calc(SlowTool):
        name = "Calculator"

    class Cal(SlowTool):
        name = "Calendar"

    return {"Calculator": Calc(record), "Calendar": Cal(record, "Monday")}


THREE = {PROMPT: " [Calculator(400 / 1400) ->", "He paid 18 + 12 * 3": " [Calculator(400 + 1400) ->",
         "Today is": " [Calendar(140 / 400) ->"}


def test_tool_executor_runs_one_call_per_tool_at_a_time(tiny_model):
    """``ToolExecutor`` is not thread-safe (its tools are not made to be): calls of one tool run in
    the rows' order, calls of different tools side by side."""
    plans = same_step(tiny_model[1], THREE)
    record = Intervals()
    gen = generator(tiny_model, ToolExecutor(slow_tools(record)), plans)
    batched = gen.generate(list(plans), batch_size=3)
    calc = [(i, s, e) for n, i, s, e in record.spans if n == "Calculator"]
    assert [i for i, _, _ in calc] == call_order(tiny_model[1], plans)  # in the rows' order ...
    assert calc[0][2] <= calc[1][1]  # ... one after the other
    assert record.overlap("Calendar", "Calculator")  # the Calendar beside them
    assert gen.tool_seconds < 2.6 * LATENCY  # 2 calls in turn, the third beside them: not 3x
    assert [len(o.calls) for o in batched] == [1, 1, 1] and all(o.calls[0].result for o in batched)
    sequential = generator(tiny_model, ToolExecutor(slow_tools(Intervals())), plans, tool_threads=1)
    assert key(sequential.generate(list(plans), batch_size=3)) == key(batched)


def test_identical_calls_in_one_step_run_once_through_the_cache(tiny_model):
    plans = same_step(tiny_model[1], {PROMPT: " [Calculator(400 / 1400) ->", "Today is": " [Calculator(400 / 1400) ->"})
    record = Intervals()
    executor = ToolExecutor(slow_tools(record))
    outs = generator(tiny_model, executor, plans).generate(list(plans), batch_size=2)
    assert len(record.spans) == 1 and (executor.hits, executor.misses) == (1, 1)
    assert [o.calls for o in outs] == [[CallRecord("Calculator", "400 / 1400", "0.29", None)]] * 2


def test_executor_with_an_sqlite_cache_runs_the_calls_in_turn(tiny_model, tmp_path):
    """An SQLite connection serves only the thread that opened it: a call from a pool thread would
    fail (and be rolled back) once the generator's thread has opened the cache."""
    plans = same_step(tiny_model[1], THREE)
    record = Intervals()
    executor = ToolExecutor(slow_tools(record), cache_path=tmp_path / "cache.sqlite")
    assert executor.execute("Calculator", "1 + 1", CallContext()).ok  # opens the cache on this thread
    outs = generator(tiny_model, executor, plans).generate(list(plans), batch_size=3)
    assert [c.error for o in outs for c in o.calls] == [None, None, None]
    assert record.peak == 1


def test_a_tool_that_raises_in_a_pool_thread_is_rolled_back_alone(tiny_model):
    plans = same_step(tiny_model[1], SAME_STEP)

    class Flaky:
        thread_safe = True

        def execute(self, tool, input, context):
            if input == "400 + 1400":
                raise RuntimeError("bug in the tool")
            return ToolOutcome("0.29")

    outs = generator(tiny_model, Flaky(), plans).generate(list(plans), batch_size=2)
    assert outs[0].calls == [CallRecord("Calculator", "400 / 1400", "0.29", None)]
    assert outs[1].calls == [CallRecord("Calculator", "400 + 1400", None, "internal")]
    assert "[" not in outs[1].text
    sequential = generator(tiny_model, Flaky(), plans, tool_threads=1)
    assert key(sequential.generate(list(plans), batch_size=2)) == key(outs)


# ---- the shared prompt head ------------------------------------------------------------------

HEAD = ("Out of 1400 participants, 400 (or [Calculator(400 / 1400) -> 0.29] 29%) passed the test.\n"
        "He paid 18 + 12 * 3 = 54 dollars for 3 books.\n")
TAILS = ["Out of 1400 participants, 400 (or", "Today is", "He paid 18 + 12 * 3", "The quick brown fox jumps over",
         "In 2019 the town had"]


def head_plans():
    return {HEAD + TAILS[0]: " [Calculator(400 / 1400) ->", HEAD + TAILS[1]: " [Calendar() ->",
            HEAD + TAILS[2]: " [Calculator(1/0) ->"}


class Cal(Tool):
    name = "Calendar"

    def __call__(self, input, context):
        return "Monday"


class Calc(Fixed):
    def __call__(self, input, context):
        if input == "1/0":
            from tools.base import ToolError

            raise ToolError("div0", "division by zero")
        return "0.29"


def run_head_batch(tiny_model, share: bool, **config):
    model, tok = tiny_model
    proc = Scripted(tok, head_plans())
    gen = ToolGenerator(model, tok, ToolExecutor({"Calculator": Calc(), "Calendar": Cal()}),
                        GenerationConfig(max_new_tokens=20, **config), LogitsProcessorList([proc]))
    if not share:
        gen.min_shared_prefix = 10**9
    shapes = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        outs = gen.generate([HEAD + t for t in TAILS], batch_size=len(TAILS))
    finally:
        hook.remove()
    return outs, shapes, proc


def test_a_head_shared_by_the_batch_runs_once_and_changes_no_output(tiny_model):
    tok = tiny_model[1]
    prompts = [ids(tok, HEAD + t) for t in TAILS]
    n = 0
    while all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    width = max(len(p) for p in prompts)
    assert n >= 16
    shared, shapes, proc = run_head_batch(tiny_model, share=True)
    plain, plain_shapes, _ = run_head_batch(tiny_model, share=False)
    assert plain_shapes[0] == (len(TAILS), width)
    assert shapes[:2] == [(1, n), (len(TAILS), width - n)]  # the head once, then the rest of the batch
    assert key(shared) == key(plain)
    by_prompt = {o.prompt[len(HEAD):]: o for o in shared}
    assert by_prompt[TAILS[0]].text.startswith(" [Calculator(400 / 1400) -> 0.29]")
    assert by_prompt[TAILS[1]].text.startswith(" [Calendar() -> Monday]")
    assert by_prompt[TAILS[2]].calls == [CallRecord("Calculator", "1/0", None, "div0")]
    # Every step's scores (padding, injections, a rollback) equal a full recompute of the row.
    model = tiny_model[0]
    with torch.no_grad():
        for row, scores in proc.seen:
            assert torch.allclose(scores, model(torch.tensor([row])).logits[0, -1], atol=1e-4), len(row)
    # ... and each row decoded alone.
    gen = ToolGenerator(model, tok, ToolExecutor({"Calculator": Calc(), "Calendar": Cal()}),
                        GenerationConfig(max_new_tokens=20), LogitsProcessorList([Scripted(tok, head_plans())]))
    assert key([gen.generate([HEAD + t])[0] for t in TAILS]) == key(shared)


def test_a_shared_head_keeps_sampled_outputs(tiny_model):
    config = dict(do_sample=True, temperature=0.9, top_p=0.95, seed=4)
    shared, shapes, _ = run_head_batch(tiny_model, share=True, **config)
    plain, _, _ = run_head_batch(tiny_model, share=False, **config)
    assert shapes[0][0] == 1 and key(shared) == key(plain)


def test_no_shared_head_for_a_single_row_short_heads_or_sliding_window_layers(tiny_model, sliding_model):
    model, tok = tiny_model
    shapes = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                           with_kwargs=True)
    gen = ToolGenerator(model, tok, ToolExecutor({}), GenerationConfig(max_new_tokens=2, use_tools=False))
    try:
        gen.generate([HEAD + TAILS[0]])
        assert shapes[0] == (1, len(ids(tok, HEAD + TAILS[0])))
        shapes.clear()
        gen.generate(["Out of 1400 participants", "Out of 1400 people"], batch_size=2)  # head < 16 tokens
        assert shapes[0][0] == 2
    finally:
        hook.remove()
    s_model, s_tok = sliding_model
    s_shapes = []
    hook = s_model.register_forward_pre_hook(lambda m, a, kw: s_shapes.append(tuple(kw["input_ids"].shape)),
                                             with_kwargs=True)
    try:
        s_gen = ToolGenerator(s_model, s_tok, ToolExecutor({}), GenerationConfig(max_new_tokens=3, use_tools=False))
        outs = s_gen.generate([HEAD + t for t in TAILS[:2]], batch_size=2)
    finally:
        hook.remove()
    assert s_shapes[0][0] == 2  # a sliding layer keeps only its last keys: the head is not shared
    assert key(outs) == key([s_gen.generate([HEAD + t])[0] for t in TAILS[:2]])


@pytest.mark.parametrize("prompts", [[HEAD, HEAD + TAILS[1], HEAD], [HEAD + TAILS[0]] * 3])
def test_a_prompt_that_is_the_whole_head_or_repeats(tiny_model, prompts):
    """A prompt that is all head (a strict prefix of another), and identical prompts: the longest
    prompt's last token is still fed, and every row gets the same output as without sharing."""
    model, tok = tiny_model
    outs = {}
    for share in (True, False):
        gen = ToolGenerator(model, tok, ToolExecutor({"Calculator": Calc(), "Calendar": Cal()}),
                            GenerationConfig(max_new_tokens=12), LogitsProcessorList([Scripted(tok, head_plans())]))
        gen.min_shared_prefix = 16 if share else 10**9
        outs[share] = key(gen.generate(prompts, batch_size=len(prompts)))
    assert outs[True] == outs[False]


# ---- the head kept from one call to the next (DecodeLoop._head_memo) --------------------------

def _head_generator(tiny_model):
    model, tok = tiny_model
    return ToolGenerator(model, tok, ToolExecutor({"Calculator": Calc(), "Calendar": Cal()}),
                         GenerationConfig(max_new_tokens=12), LogitsProcessorList([Scripted(tok, head_plans())]))


def _fed(model):
    shapes = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                           with_kwargs=True)
    return shapes, hook


def test_prompt_after_prompt_feeds_only_what_the_previous_prompt_did_not_run(tiny_model):
    model, tok = tiny_model
    p0, p1 = ids(tok, HEAD + TAILS[0]), ids(tok, HEAD + TAILS[1])
    n = _common(p0, p1)
    assert 16 <= n < len(p1)
    gen = _head_generator(tiny_model)
    shapes, hook = _fed(model)
    try:
        gen.generate([HEAD + TAILS[0]])
        assert shapes[0] == (1, len(p0))  # nothing kept yet: the whole prompt
        shapes.clear()
        second = gen.generate([HEAD + TAILS[1]])
        assert shapes[0] == (1, len(p1) - n)  # the n shared tokens come from the first call's cache
    finally:
        hook.remove()
    assert key(second) == key(_head_generator(tiny_model).generate([HEAD + TAILS[1]]))


def test_batch_after_batch_runs_the_head_once_and_changed_weights_run_it_again(tiny_model):
    model, tok = tiny_model
    gen = _head_generator(tiny_model)
    shapes, hook = _fed(model)
    try:
        gen.generate([HEAD + t for t in TAILS[:3]], batch_size=3)
        assert shapes[0][0] == 1  # the batch's head, once
        shapes.clear()
        outs = gen.generate([HEAD + t for t in TAILS[3:]], batch_size=2)
        assert shapes[0][0] == 2  # not again: the first pass is already the rest of the batch
        # an in-place update (of a norm's weight, to the same values: the fixture's Linear layers keep
        # their packed copies): what was kept may be stale
        weight = next(m.weight for m in model.modules() if "Norm" in type(m).__name__)
        with torch.no_grad():
            weight.mul_(1.0)
        shapes.clear()
        gen.generate([HEAD + TAILS[1]])
        assert shapes[0] == (1, len(ids(tok, HEAD + TAILS[1])))  # the whole prompt again
    finally:
        hook.remove()
    assert key(outs) == key(_head_generator(tiny_model).generate([HEAD + t for t in TAILS[3:]], batch_size=2))


def test_what_is_kept_is_at_most_memo_max_tokens_and_still_serves_the_next_prompt(tiny_model):
    model, tok = tiny_model
    gen = _head_generator(tiny_model)
    gen.memo_max_tokens = 20
    p1 = ids(tok, HEAD + TAILS[1])
    gen.generate([HEAD + TAILS[0]])
    assert len(gen._head_memo[1]) == 20 and gen._head_memo[2][0][0].shape[2] == 20
    shapes, hook = _fed(model)
    try:
        second = gen.generate([HEAD + TAILS[1]])
    finally:
        hook.remove()
    assert shapes[0] == (1, len(p1) - 20)
    assert key(second) == key(_head_generator(tiny_model).generate([HEAD + TAILS[1]]))
