"""The CUDA paths, run where a GPU is present (skipped here: no CUDA on the CI machine).

Generation on CUDA gives the CPU's tokens for the same greedy decode, calls and rollbacks included
(fp32 on both, so no dtype difference), and the in-process augmentation on CUDA keeps the CPU's
calls (bf16 there, the default on CUDA). ``benchmarks/gpu.sh`` runs the benchmarks there. Written
without a GPU to run them on: the first GPU session should run ``pytest tests/test_cuda.py``."""

from __future__ import annotations

import datetime as dt

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_generation_on_cuda_equals_cpu(tiny_model_dir):
    from tests.test_generation import CALL, PROMPT, Fixed, Scripted
    from toolformer.generation import GenerationConfig, ToolGenerator
    from toolformer.models import load_model
    from tools.base import CallContext, ToolError
    from tools.executor import ToolExecutor
    from transformers import LogitsProcessorList

    class Calc(Fixed):
        def __call__(self, input, context):
            if input == "1/0":
                raise ToolError("div0", "division by zero")
            return "0.29"

    prompts = ["The quick brown fox", PROMPT, "He paid 18 + 12 * 3", "In 2019 the town had"]
    plans = {PROMPT: CALL, "He paid 18 + 12 * 3": " [Calculator(1/0) ->"}

    def run(device):
        model, tok = load_model(str(tiny_model_dir), device=device, dtype="float32")
        gen = ToolGenerator(model, tok, ToolExecutor({"Calculator": Calc()}), GenerationConfig(max_new_tokens=24),
                            LogitsProcessorList([Scripted(tok, plans)]))
        outs = gen.generate(prompts, CallContext(date=dt.date(2023, 1, 30)), batch_size=len(prompts))
        return [(o.text, o.calls, o.num_tokens) for o in outs]

    cuda, cpu = run("cuda"), run("cpu")
    assert cuda == cpu
    assert cuda[1][0].startswith(" [Calculator(400 / 1400) -> 0.29]")


def test_augment_texts_on_cuda_keeps_the_cpus_calls(tiny_model_dir, tmp_path):
    import dataclasses

    from tests.test_pipeline import STUB, build_scripted_model, settings
    from toolformer.augment import augment_texts, model_plan
    from tools.base import get_tool
    from tools.executor import ToolExecutor

    scripted = build_scripted_model(tiny_model_dir, tmp_path / "scripted")
    s = settings(scripted)
    executor = ToolExecutor({"Calc": get_tool(STUB)})
    texts = ["He paid 18, then 12, and 30 more.", "Red, green.", "No commas"]
    got = {}
    for device in ("cpu", "cuda"):
        plan = dataclasses.replace(model_plan(executor.tools, s, {"Calc": STUB}), device=device)
        out = augment_texts(texts, plan.load(), executor, s, specs={"Calc": STUB})
        got[device] = ([t["text"] for t in out.texts], [(c["input"], c["kept"]) for c in out.candidates],
                       [c["delta"] for c in out.candidates])
    assert got["cuda"][:2] == got["cpu"][:2]
    # bf16 on CUDA (the default there), fp32 on the CPU: the losses agree to bf16's precision
    assert max(abs(a - b) for a, b in zip(got["cuda"][2], got["cpu"][2]) if a is not None) < 0.05
