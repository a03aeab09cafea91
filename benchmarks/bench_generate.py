"""Inline tool-calling generation against plain ``model.generate``, on the same prompts and lengths.

    python benchmarks/bench_generate.py [--model smollm2-135m] [--prompts 6] [--new-tokens 24] [--threads 1]

Prints, each measured in this run (tool time measured apart and left out of every rate):

1. no calls: ``ToolGenerator(use_tools=False)`` vs ``model.generate`` (greedy, " [" suppressed): the
   cost of our loop itself, one row at a time (target >= 0.9x);
2. with calls: few-shot arithmetic prompts where the model writes a Calculator call, one row at a
   time, vs ``model.generate`` producing as many tokens from the same prompt (target >= 0.9x);
3. the naive way: generate up to the arrow, run the tool, then call ``model.generate`` again on the
   whole text (prompt, call, result) for the rest -- the prefix is re-run; our loop keeps the cache;
4. batched throughput of our loop at batch sizes 1, 2, 4, 8 over as many prompts as the largest batch
   (target: batch 8 >= 4x batch 1); the few-shot head the prompts share runs once per batch;
5. the ceiling of batching without that: a bare forward loop (prefill, then 1-token steps; no tools,
   no bookkeeping) over the same prompts at batch 1 and the largest batch, and its decode steps alone.

4 and 5 also give rates per CPU second of this process, steadier than the wall clock on a busy
machine (with ``--threads 1``; with more threads they count every thread's time).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from toolformer.cache_api import cache_keyword
from toolformer.generation import GenerationConfig, ToolGenerator
from toolformer.models import DEFAULT_MODEL, load_model
from tools.base import get_tool
from tools.executor import ToolExecutor

FEW_SHOT = ("Out of 1400 participants, 400 (or [Calculator(400 / 1400) -> 0.29] 29%) passed the test.\n"
            "He bought 3 boxes of 12 eggs, [Calculator(3 * 12) -> 36] 36 eggs in all.\n"
            "The team won 18 of its 24 games, [Calculator(18 / 24) -> 0.75] 75% of them.\n")
TASKS = ["She read 25 pages a day for 4 days, so", "A train travels 60 miles per hour for 3 hours, covering",
         "The shop sold 45 of its 180 shirts, that is", "Each of the 7 boxes holds 15 pens, so there are",
         "He had 120 dollars and spent 35, leaving", "A class of 32 pupils split into 4 groups, that is",
         "The farm has 14 cows and 23 sheep, so", "She ran 5 km a day for 6 days, in all"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def hf_generate(model, tok, text: str, n: int, api: int):
    """``model.generate`` for exactly ``n`` new tokens (greedy, " [" suppressed)."""
    enc = tok(text, return_tensors="pt").to(model.device)
    return model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, suppress_tokens=[api],
                          pad_token_id=tok.pad_token_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--device", default=None, help="cuda, cpu or mps (default: the best available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on CUDA)")
    parser.add_argument("--no-pack", action="store_true",
                        help="no MKL-packed weights for few-row products (the figures before "
                             "toolformer.packed_linear; same as TOOLFORMER_PACKED_LINEAR=0)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_generate: --device cuda, but no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, device=args.device, dtype=args.dtype, pack_weights=not args.no_pack)
    device = model.device
    api = tok(" [", add_special_tokens=False).input_ids[0]
    cache_kw = cache_keyword(model)
    calc = get_tool("Calculator")
    prompts = [FEW_SHOT + t for t in (TASKS * 4)[:args.prompts]]
    print(f"model {args.model} on {device} ({model.dtype}), {args.prompts} prompts of ~"
          f"{len(tok(prompts[0]).input_ids)} tokens, up to {args.new_tokens} new tokens, "
          f"torch threads {torch.get_num_threads()}, packed Linear layers: "
          f"{sum(isinstance(m, torch.nn.Linear) and 'forward' in vars(m) for m in model.modules())}")
    hf_generate(model, tok, prompts[0], 2, api)  # warm-up

    # 1. our loop without calls vs model.generate
    off = ToolGenerator(model, tok, ToolExecutor({}), GenerationConfig(max_new_tokens=args.new_tokens, use_tools=False))
    ours_t = ours_n = hf_t = 0.0
    for p in prompts:  # interleaved, so load changes hit both sides alike
        out, t = timed(lambda p=p: off.generate([p])[0], device)
        ours_t, ours_n = ours_t + t, ours_n + out.num_tokens
        _, t = timed(lambda p=p, n=out.num_tokens: hf_generate(model, tok, p, n, api), device)
        hf_t += t
    print(f"1. no calls, one row:   ours {ours_n / ours_t:7.1f} tok/s   "
          f"model.generate {ours_n / hf_t:7.1f} tok/s   ratio {hf_t / ours_t:.2f}x")

    # 2 and 3. with calls, one row at a time
    on = ToolGenerator(model, tok, ToolExecutor({"Calculator": calc}), GenerationConfig(max_new_tokens=args.new_tokens))
    ours_t = ours_n = hf_t = naive_t = 0.0
    calls, injected = [], 0
    for p in prompts:
        out, t = timed(lambda p=p: on.generate([p])[0], device)
        tool_t = on.tool_seconds
        ours_t, ours_n = ours_t + t - tool_t, ours_n + out.num_tokens
        calls += out.calls
        injected += sum(len(on.result_ids(" " + c.result)) for c in out.calls if c.result is not None)
        _, t = timed(lambda p=p, n=out.num_tokens: hf_generate(model, tok, p, n, api), device)
        hf_t += t
        naive_t += naive(model, tok, p, out, api, device) if out.calls and out.calls[0].result else t
    print(f"2. with calls, one row: ours {ours_n / ours_t:7.1f} tok/s   "
          f"model.generate {ours_n / hf_t:7.1f} tok/s   ratio {hf_t / ours_t:.2f}x   "
          f"({sum(c.result is not None for c in calls)} calls made, {len(calls)} executed, "
          f"{injected} of the {int(ours_n)} tokens injected)")
    print(f"3. naive re-generate after the result: {ours_n / naive_t:7.1f} tok/s   "
          f"ours {ours_n / ours_t:7.1f} tok/s   gain {naive_t / ours_t:.2f}x")

    # 4. batched throughput, over enough prompts to fill the largest batch
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    batch_prompts = [FEW_SHOT + t for t in (TASKS * 4)[:max(args.prompts, *sizes)]]
    # Also per CPU second of this process: on a shared machine other processes stretch the wall
    # time of one batch size more than another's; with one torch thread the CPU time is the work.
    rates, cpu_rates = [], []
    for bs in sizes:
        cpu = time.process_time()
        outs, t = timed(lambda bs=bs: on.generate(batch_prompts, batch_size=bs), device)
        cpu = time.process_time() - cpu
        n = sum(o.num_tokens for o in outs)
        rates.append(n / (t - on.tool_seconds))
        cpu_rates.append(n / cpu)
        print(f"4. batch size {bs:3d}: {rates[-1]:7.1f} tok/s  ({rates[-1] / rates[0]:.2f}x batch 1)   "
              f"per CPU second {cpu_rates[-1]:7.1f} tok/s ({cpu_rates[-1] / cpu_rates[0]:.2f}x)   "
              f"{len(batch_prompts)} prompts")

    # 5. the bare forward loop: what batching alone gives, without sharing the prompts' head
    big = max(sizes)
    one = [bare_loop(model, tok, [p], args.new_tokens, cache_kw) for p in batch_prompts[:big]]
    many = bare_loop(model, tok, batch_prompts[:big], args.new_tokens, cache_kw)
    n, steps = big * args.new_tokens, args.new_tokens - 1
    t1, d1, c1, e1 = (sum(r[i] for r in one) for i in range(4))
    print(f"5. bare forward loop: batch 1 {n / t1:7.1f} tok/s, batch {big} {n / many[0]:7.1f} tok/s "
          f"({t1 / many[0]:.2f}x, per CPU second {c1 / many[2]:.2f}x: the ceiling without a shared head); "
          f"its 1-token steps alone {1000 * d1 / (big * steps):.0f} vs {1000 * many[1] / steps:.0f} ms per step "
          f"({d1 / many[1]:.2f}x, per CPU second {e1 / many[3]:.2f}x)")


@torch.inference_mode()
def bare_loop(model, tok, texts: list[str], n: int, cache_kw: str) -> tuple[float, float, float, float]:
    """Seconds for ``model`` alone to write ``n`` greedy tokens after each of ``texts`` as one
    left-padded batch (prefill, then ``n - 1`` 1-token steps on a DynamicCache), and those of the
    steps; then the same two in CPU seconds of this process."""
    from transformers import DynamicCache

    device = model.device
    enc = tok(texts, return_tensors="pt", padding=True, padding_side="left").to(device)
    mask = enc.attention_mask
    cache = DynamicCache(config=model.config)
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=enc.input_ids, attention_mask=mask, position_ids=pos, **{cache_kw: cache},
                   use_cache=True, logits_to_keep=1).logits
    sync(device)
    prefilled, cpu_prefilled = time.perf_counter(), time.process_time()
    pos = pos[:, -1:]
    for _ in range(n - 1):
        token = logits[:, -1].argmax(-1, keepdim=True)
        pos, mask = pos + 1, torch.cat([mask, torch.ones_like(token)], dim=1)
        logits = model(input_ids=token, attention_mask=mask, position_ids=pos, **{cache_kw: cache},
                       use_cache=True, logits_to_keep=1).logits
    sync(device)
    end, cpu_end = time.perf_counter(), time.process_time()
    return end - start, end - prefilled, cpu_end - cpu_start, cpu_end - cpu_prefilled


def naive(model, tok, prompt, out, api, device) -> float:
    """Seconds (tool time excluded) for the naive way to write ``out``: generate up to the arrow,
    run the tool, then ``model.generate`` again on the whole text for the remaining tokens."""
    text = out.text
    arrow_end = text.index("->") + 2
    head = tok(text[:arrow_end], add_special_tokens=False).input_ids
    _, t1 = timed(lambda: hf_generate(model, tok, prompt, len(head), api), device)
    closed = text.index("]", arrow_end) + 1
    done = len(tok(text[:closed], add_special_tokens=False).input_ids)
    rest = max(1, out.num_tokens - done)
    _, t2 = timed(lambda: hf_generate(model, tok, prompt + text[:closed], rest, api), device)
    return t1 + t2


if __name__ == "__main__":
    main()
