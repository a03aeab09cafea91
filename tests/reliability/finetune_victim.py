"""A fine-tuning run that SIGKILLs itself at a chosen point (the subprocess of test_finetune_faults).

    python -m tests.reliability.finetune_victim DATA OUT MODEL --kill train:15|save:20|none [--resume]
        [--progress FILE --step-sleep S]

``train:N`` kills the process right after optimizer step N; ``save:N`` kills it in the middle of
writing checkpoint-N (the weights and optimizer are on disk, the RNG and trainer state are not).
The kill is a real SIGKILL: no exception handler, ``finally`` or atexit runs. ``--progress`` writes
the global step to FILE after each step, and ``--step-sleep`` pauses after each step, so that a
parent can SIGKILL the run from outside at a random step (the tiny model trains 20 steps in 0.3 s;
the pause changes no arithmetic).
"""

from __future__ import annotations

import argparse
import os
import signal
import time

import torch
from transformers import Trainer, TrainerCallback

from finetune.train import FinetuneConfig, run_finetune


def config(data: str, out: str, model: str, resume: bool = False) -> FinetuneConfig:
    # 30 texts, batch 4 x 2 accumulation: an epoch is 4 steps, so the kills fall mid-epoch.
    return FinetuneConfig(
        data=[data],
        output=out,
        model=model,
        max_steps=20,
        batch_size=4,
        effective_batch_size=8,
        learning_rate=5e-3,
        save_steps=10,
        max_length=48,
        dev_share=0.0,
        logging_steps=1,
        keep_checkpoints=5,
        resume=resume,
    )


class KillAfterStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class ReportProgress(TrainerCallback):
    def __init__(self, path: str, sleep_s: float):
        self.path, self.sleep_s = path, sleep_s

    def on_step_end(self, args, state, control, **kwargs):
        with open(self.path, "w") as f:
            f.write(str(state.global_step))
        time.sleep(self.sleep_s)


def kill_inside_save(step: int) -> None:
    real = Trainer._save_rng_state

    def save_rng_then_die(self, output_dir):
        if self.state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, output_dir)

    Trainer._save_rng_state = save_rng_then_die


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("model")
    parser.add_argument("--kill", default="none")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--progress")
    parser.add_argument("--step-sleep", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    callbacks = [ReportProgress(args.progress, args.step_sleep)] if args.progress else []
    where, _, step = args.kill.partition(":")
    if where == "train":
        callbacks.append(KillAfterStep(int(step)))
    elif where == "save":
        kill_inside_save(int(step))
    run_finetune(config(args.data, args.out, args.model, args.resume), callbacks=callbacks)


if __name__ == "__main__":
    main()
