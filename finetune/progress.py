"""Fine-tuning progress a person can read: ``finetune: step 30/60 (50%), ..., ETA 1 min 03 s``.

The Trainer runs with ``disable_tqdm=True`` (its bar garbles logs), so without this only the
loss dicts printed every ``logging_steps`` show that it moves. :class:`StepProgress` logs a line
on the ``toolformer.progress`` logger on the first step, then every ``every_s`` seconds and on
the last step: steps done/total, rate and ETA from this process's steps (a resumed run's earlier
steps count in done/total, not in the rate), and the latest training loss.
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from toolformer.progress import Throttle, log, progress_text


class StepProgress(TrainerCallback):
    def __init__(self, every_s: float = 15.0):
        self.every_s = every_s
        self.throttle: Throttle | None = None
        self.first_step = 0
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if log.level == logging.NOTSET:  # the commands leave it unset: progress is shown by default
            log.setLevel(logging.INFO)
        self.throttle = Throttle(self.every_s, first=True)
        self.first_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = logs["loss"]

    def on_step_end(self, args, state, control, **kwargs):
        if self.throttle is None or not state.is_world_process_zero:
            return
        last = state.global_step >= state.max_steps
        if not self.throttle.due(force=last):
            return
        extra = f", loss {self.loss:.3f}" if self.loss is not None else ""
        line = progress_text("finetune", state.global_step, self.throttle.elapsed(), state.max_steps,
                             unit="step", since=self.first_step)
        log.info("%s%s", line, extra)
