"""Tokens/s and peak memory of our fine-tuning against a plain PyTorch loop on the same batches.

Ours is finetune/train.py's FinetuneTrainer (HF Trainer + staged checkpoints + NaN guard); the plain
loop is a minimal PyTorch one (AdamW, grad accumulation, clipping, linear schedule).

    python benchmarks/bench_finetune.py                          # tiny random model (seconds)
    python benchmarks/bench_finetune.py --model smollm2-135m --max-length 64 --steps 6
    python benchmarks/bench_finetune.py --device cuda --dtype bfloat16 --model smollm2-135m   # a GPU

Both variants read their micro-batches from the same Trainer dataloader (same seed, same order,
same collator padding each batch to its longest text) inside the timed part: the plain loop
iterates it as any PyTorch loop iterates its DataLoader, so data loading and collation count on
both sides. Both run the same number of optimizer steps on the same model with the same work per
step: AdamW (the Trainer's: fused kernel, no weight decay), the linear warm-up/decay schedule, gradient accumulation, clipping to
``max_grad_norm``; fp32 on CPU, fp32 master weights with bf16 autocast on a GPU (``--dtype``
names it; the fine-tuning command has no other mode, so another choice is refused). Each is timed
from the first batch to the last step (model loading excluded; the Trainer's own set-up inside
``train()`` counts). By default no checkpoint is written (the Trainer's end-of-training save is
switched off too; ``--save-steps N`` puts saving back in). Each run is its own subprocess so that
its peak RSS (CPU) or ``torch.cuda.max_memory_allocated`` (GPU) is its own; variants alternate
``--repeats`` times and the fastest run of each counts, because other jobs on a shared machine make
single timings noisy. Prints one JSON line per run and the ratios ours / plain with the load
average. Each run also reports its CPU time (``time.process_time``, all threads of the process):
on a machine with more runnable jobs than cores the wall time of a run mostly measures how much
of a core it was given, while the CPU time of a one-thread run (``--threads 1``) measures the
work it did; ``cpu_tokens_per_s_ratio_ours_over_plain`` compares the runs with the least CPU time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_data(path: Path, n: int) -> None:
    from tests.tiny_model import TRAINING_LINES

    path.write_text("".join(json.dumps({"text": " ".join(TRAINING_LINES[i % 8:] + TRAINING_LINES[:i % 8])})
                            + "\n" for i in range(n)))


class NoSave(TrainerCallback):
    """Time the training loop alone: drop every save, the end-of-training one included."""

    def on_step_end(self, args, state, control, **kwargs):
        control.should_save = False


def run_variant(variant: str, model: str, data: str, out: str, steps: int, max_length: int, batch: int,
                accum: int, save_steps: int, device: str = "cpu") -> dict:
    from finetune.train import FinetuneConfig, build_trainer

    cfg = FinetuneConfig(data=[data], output=out, model=model, max_steps=steps, batch_size=batch,
                         effective_batch_size=batch * accum, max_length=max_length, dev_share=0.0,
                         save_steps=save_steps if save_steps > 0 else 10**9, learning_rate=1e-5, device=device)
    trainer, _, _ = build_trainer(cfg)
    if save_steps <= 0:
        trainer.add_callback(NoSave())
    loader = trainer.get_train_dataloader()
    batches = []
    while len(batches) < steps * accum:  # the exact micro-batches the Trainer will see, in its order
        batches.extend(loader)
    tokens = int(sum(b["attention_mask"].sum() for b in batches[:steps * accum]))
    del batches
    dev = trainer.args.device
    bf16 = trainer.args.bf16  # what the fine-tuning command chose: bf16 autocast on a GPU that has it
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    if variant == "ours":
        trainer.train()
    else:
        model_ = trainer.model.to(dev).train()
        # The Trainer's AdamW: the same kernel (fused on torch >= 2.8) and hyper-parameters.
        args = trainer.args
        opt = torch.optim.AdamW(model_.parameters(), lr=cfg.learning_rate, weight_decay=0.0,
                                betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
                                fused=True if args.optim == "adamw_torch_fused" else None)
        warm = max(1, math.ceil(cfg.warmup_share * steps))  # the Trainer's warm-up steps
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: s / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
        micro = iter(())
        for step in range(steps):
            for _ in range(accum):
                b = next(micro, None)
                if b is None:  # next epoch
                    micro = iter(loader)
                    b = next(micro)
                b = {k: v.to(dev) for k, v in b.items()}
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = model_(**b).loss / accum
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model_.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"variant": variant, "device": str(dev), "precision": "bf16 autocast" if bf16 else "fp32",
            "steps": steps, "tokens": tokens,
            "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
            "cpu_seconds": round(cpu_seconds, 3), "tokens_per_cpu_s": round(tokens / cpu_seconds, 1),
            "peak_mib": round(peak, 1), "peak_kind": "cuda allocated" if cuda else "max RSS"}


def check_device(device: str, dtype: str | None) -> str:
    """The --dtype to report; exits with one line when the device or the precision cannot be had."""
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"bench_finetune: --device cuda: CUDA is not available here (torch {torch.__version__}, "
                 f"built for CUDA {torch.version.cuda or 'none'}); run on a GPU machine or pass --device cpu")
    # The fine-tuning command trains fp32 on a CPU and with bf16 autocast on a GPU that supports it.
    native = "bfloat16" if device == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if dtype is not None and dtype != native:
        sys.exit(f"bench_finetune: --dtype {dtype} on {device}: toolformer finetune trains {native} there "
                 f"(fp32 master weights{', bf16 autocast' if native == 'bfloat16' else ''}); pass --dtype {native}")
    return native


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model spec (default: a tiny random Llama built here)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--accum", type=int, default=2)
    p.add_argument("--save-steps", type=int, default=0, help="checkpoint every N steps in 'ours' "
                   "(default 0: never, to time the training loop alone)")
    p.add_argument("--repeats", type=int, default=2,
                   help="alternating runs per variant; the fastest counts")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where both variants train (cuda: fails with one line when there is no GPU)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                   help="precision, checked against what toolformer finetune does on --device: float32 on "
                        "cpu, fp32 master weights + bf16 autocast (bfloat16) on a GPU (default: that)")
    p.add_argument("--variant", choices=["ours", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dtype = check_device(a.device, a.dtype)
    if a.variant:  # child process
        print(json.dumps(run_variant(a.variant, a.model, a.data, a.out, a.steps, a.max_length, a.batch_size,
                                     a.accum, a.save_steps, a.device)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = a.model
        if model is None:
            from tests.tiny_model import build_tiny_model

            model = str(build_tiny_model(tmp / "tiny", hidden=64, layers=4))
        data = tmp / "data.jsonl"
        make_data(data, 64)
        results, cpu_best = {}, {}
        for n, variant in enumerate(["plain", "ours"] * a.repeats):
            cmd = [sys.executable, __file__, "--variant", variant, "--model", model, "--data", str(data),
                   "--out", str(tmp / f"{variant}-{n}"), "--steps", str(a.steps),
                   "--max-length", str(a.max_length),
                   "--batch-size", str(a.batch_size), "--accum", str(a.accum),
                   "--save-steps", str(a.save_steps), "--device", a.device, "--dtype", dtype]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
            if proc.returncode:
                sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(run))
            if variant not in results or run["seconds"] < results[variant]["seconds"]:
                results[variant] = run
            if variant not in cpu_best or run["cpu_seconds"] < cpu_best[variant]["cpu_seconds"]:
                cpu_best[variant] = run
        ours, plain = results["ours"], results["plain"]
        print(json.dumps({
            "tokens_per_s_ratio_ours_over_plain": round(ours["tokens_per_s"] / plain["tokens_per_s"], 3),
            "peak_memory_ratio_ours_over_plain": round(ours["peak_mib"] / plain["peak_mib"], 3),
            "cpu_tokens_per_s_ratio_ours_over_plain": round(
                cpu_best["ours"]["tokens_per_cpu_s"] / cpu_best["plain"]["tokens_per_cpu_s"], 3),
            "model": a.model or "tiny", "device": a.device, "dtype": dtype,
            "load_average": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
