"""Overhead of our fine-tuning stack (SafeTrainer = HF Trainer + staged checkpoints + NaN guard) against a
minimal plain-PyTorch loop (AdamW, grad accumulation, clipping, linear schedule) over the same batches.

    python benchmarks/bench_finetune.py                          # tiny random model (seconds)
    python benchmarks/bench_finetune.py --model smollm2-135m --max-length 64 --steps 6

Both variants take their batches from the same Trainer dataloader (same seed, same order, same
padding), run the same number of optimizer steps on the same model in fp32, and are timed from the
first batch to the last step (model loading excluded). By default no checkpoint is written (the
Trainer's end-of-training save is switched off too; ``--save-steps N`` puts saving back in). Each
run is its own subprocess so that its peak RSS (CPU) or ``torch.cuda.max_memory_allocated`` (GPU) is
its own; variants alternate ``--repeats`` times and the fastest run of each counts, because other
jobs on a shared machine make single timings noisy. Prints one JSON line per run and the ratios
ours / plain.
"""

from __future__ import annotations

import argparse
import json
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
                accum: int, save_steps: int) -> dict:
    from finetune.train import FinetuneConfig, build_trainer

    cfg = FinetuneConfig(data=[data], output=out, model=model, max_steps=steps, batch_size=batch,
                         effective_batch_size=batch * accum, max_length=max_length, dev_share=0.0,
                         save_steps=save_steps if save_steps > 0 else 10**9, learning_rate=1e-5, device="cpu"
                         if not torch.cuda.is_available() else None)
    trainer, _, _ = build_trainer(cfg)
    if save_steps <= 0:
        trainer.add_callback(NoSave())
    loader = trainer.get_train_dataloader()
    batches = []
    while len(batches) < steps * accum:  # the exact micro-batches the Trainer will see, in its order
        batches.extend(loader)
    batches = batches[:steps * accum]
    tokens = int(sum(b["attention_mask"].sum() for b in batches))
    device = trainer.args.device
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if variant == "ours":
        trainer.train()
    else:
        model_ = trainer.model.to(device).train()
        opt = torch.optim.AdamW(model_.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
        warm = max(1, int(cfg.warmup_share * steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: s / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
        for step in range(steps):
            for b in batches[step * accum:(step + 1) * accum]:
                b = {k: v.to(device) for k, v in b.items()}
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = model_(**b).loss / accum
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model_.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"variant": variant, "device": str(device), "steps": steps, "tokens": tokens,
            "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
            "peak_mib": round(peak, 1),
            "peak_kind": "cuda allocated" if torch.cuda.is_available() else "max RSS"}


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
    p.add_argument("--variant", choices=["ours", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.variant:  # child process
        print(json.dumps(run_variant(a.variant, a.model, a.data, a.out, a.steps, a.max_length, a.batch_size,
                                     a.accum, a.save_steps)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = a.model
        if model is None:
            from tests.tiny_model import build_tiny_model

            model = str(build_tiny_model(tmp / "tiny", hidden=64, layers=4))
        data = tmp / "data.jsonl"
        make_data(data, 64)
        results = {}
        for n, variant in enumerate(["plain", "ours"] * a.repeats):
            cmd = [sys.executable, __file__, "--variant", variant, "--model", model, "--data", str(data),
                   "--out", str(tmp / f"{variant}-{n}"), "--steps", str(a.steps),
                   "--max-length", str(a.max_length),
                   "--batch-size", str(a.batch_size), "--accum", str(a.accum),
                   "--save-steps", str(a.save_steps)]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
            if proc.returncode:
                sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(run))
            if variant not in results or run["seconds"] < results[variant]["seconds"]:
                results[variant] = run
        ours, plain = results["ours"], results["plain"]
        print(json.dumps({
            "tokens_per_s_ratio_ours_over_plain": round(ours["tokens_per_s"] / plain["tokens_per_s"], 3),
            "peak_memory_ratio_ours_over_plain": round(ours["peak_mib"] / plain["peak_mib"], 3)}))


if __name__ == "__main__":
    main()
