"""Crash-safe checkpoints and a divergence guard around the HF Trainer (TESTPLAN G 49-51).

What the bare Trainer (transformers 5.23) does and we must not:

* it writes ``checkpoint-N`` in place, so a kill during a save leaves a directory that looks like a
  checkpoint; resume then fails on it instead of falling back to the previous one;
* ``save_total_limit`` rotation runs before the new checkpoint is known to be whole, and at the end
  of training with ``save_total_limit=1`` it deletes every checkpoint but the best one;
* one NaN loss turns every parameter NaN while the run "finishes" and logs loss 0.0.

:class:`SafeTrainer` writes each checkpoint into ``.staging/`` first, adds a manifest
(``checkpoint-complete.json``: every file and its size) last, then renames the folder into place:
a directory named ``checkpoint-N`` is always whole. Rotation is ours and runs only after the
rename, and never deletes the newest complete checkpoint nor the best one. A non-finite loss or
gradient norm stops training with :class:`TrainingDiverged` naming the step, before the optimizer
applies it; weights are checked to be finite before every save.

Resuming reads a checkpoint with no pickle that can run code: weights from ``model.safetensors``
(safetensors); ``trainer_state.json`` as JSON; ``optimizer.pt``, ``scheduler.pt`` and
``rng_state.pth`` through the Trainer's ``torch.load(..., weights_only=True)`` (PyTorch's restricted
unpickler: tensors, numbers, strings and containers only; for the RNG state the Trainer also
allows numpy's array reconstruction, ``ndarray`` and ``dtype``). Before that,
:func:`verify_checkpoint` checks every file (safetensors header and length, the CRC of every member
of the torch zip archives, JSON syntax), and any failure while loading is one
:class:`CheckpointReadError` line naming the file.

Used by finetune/train.py (``toolformer finetune``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from toolformer.errors import UserError, storage_full

log = logging.getLogger(__name__)

MANIFEST = "checkpoint-complete.json"
STAGING = ".staging"
_STEP = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class TrainingDiverged(UserError):
    """Loss, gradients or weights became NaN/Inf; the last good checkpoint is kept."""

    exit_code = 3


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, permissions); the previous one is intact."""

    exit_code = 4


class CheckpointReadError(UserError):
    """A checkpoint to resume from has a corrupt, truncated or unsafe file (the message names it)."""


def _hint(folder: Path) -> str:
    return f"delete {folder} to resume from the checkpoint before it"


def verify_checkpoint(folder: Path) -> None:
    """Every file of ``folder`` readable without unpickling: safetensors headers and lengths, the
    torch zip archives' CRCs, JSON syntax. :class:`CheckpointReadError` names the first bad file."""
    import zipfile

    from toolformer.models import ModelError, check_safetensors

    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        try:
            if p.suffix == ".safetensors":
                check_safetensors(p)
            elif p.suffix in (".pt", ".pth", ".bin"):
                if not zipfile.is_zipfile(p):
                    raise ValueError("not a torch zip archive (truncated, or a legacy pickle)")
                with zipfile.ZipFile(p) as z:
                    bad = z.testzip()
                if bad is not None:
                    raise ValueError(f"member {bad} fails its CRC check")
            elif p.suffix == ".json":
                json.loads(p.read_text(encoding="utf-8"))
        except ModelError as e:
            raise CheckpointReadError(f"{e}; {_hint(folder)}") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            raise CheckpointReadError(
                f"corrupt checkpoint file {p}: {' '.join(str(e).split())[:160]}; {_hint(folder)}"
            ) from None


def _loading(folder: str | None, names: tuple[str, ...], fn):
    """Run a Trainer checkpoint loader; any failure is one line naming the file(s) it reads."""
    try:
        return fn()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, KeyError...: one line
        where = [str(Path(folder) / n) for n in names if (Path(folder) / n).exists()] if folder else []
        raise CheckpointReadError(
            f"cannot resume from {' or '.join(where) or folder}: {type(e).__name__}: "
            f"{' '.join((str(e).strip().splitlines() or [''])[0].split())[:200]}"
            + (f"; {_hint(Path(folder))}" if folder else "")
        ) from None


def write_manifest(folder: Path, step: int) -> None:
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"step": step, "files": files}, indent=1) + "\n")
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)


def is_complete(folder: Path) -> bool:
    """True when ``folder`` has a manifest and every file it lists, at the listed size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return all((folder / name).stat().st_size == size for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError):
        return False


def checkpoint_step(folder: Path) -> int | None:
    m = _STEP.match(folder.name)
    return int(m.group(1)) if m else None


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete ``checkpoint-N`` folders under ``run_dir``, oldest step first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in run_dir.iterdir()
             if p.is_dir() and checkpoint_step(p) is not None]
    complete = []
    for step, p in sorted(found):
        if is_complete(p):
            complete.append(p)
        else:
            log.warning("ignoring incomplete checkpoint %s (no or broken %s)", p, MANIFEST)
    return complete


def latest_complete_checkpoint(run_dir: str | Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def rotate(run_dir: Path, keep: int | None, best: Path | None) -> None:
    """Delete the oldest complete checkpoints beyond ``keep``; never the newest nor ``best``."""
    if not keep or keep <= 0:
        return
    done = complete_checkpoints(run_dir)
    protected = {done[-1]} if done else set()
    if best is not None:
        protected.add(Path(best))
    excess = len(done) - max(keep, len(protected))
    for p in done:
        if excess <= 0:
            break
        if p not in protected:
            log.info("deleting old checkpoint %s (keep %d)", p, keep)
            shutil.rmtree(p)
            excess -= 1


def assert_finite_parameters(model: torch.nn.Module, step: int) -> None:
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise TrainingDiverged(f"parameter {name} is not finite at step {step}; not saving it "
                                   "(the last complete checkpoint is kept)")


class SafeTrainer(Trainer):
    """HF Trainer with staged, manifest-marked checkpoints, our own rotation and a NaN guard.

    ``keep_checkpoints`` replaces ``TrainingArguments.save_total_limit`` (leave that one unset).
    """

    def __init__(self, *args, keep_checkpoints: int | None = None, shrink_batch_on_oom: bool = False,
                 **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.save_total_limit:
            raise ValueError("SafeTrainer rotates checkpoints itself: pass keep_checkpoints, "
                             "not save_total_limit")
        if self.args.auto_find_batch_size:
            raise ValueError("SafeTrainer shrinks batches itself: pass shrink_batch_on_oom, "
                             "not auto_find_batch_size")
        self.keep_checkpoints = keep_checkpoints
        self.shrink_batch_on_oom = shrink_batch_on_oom
        self._staging_dir: str | None = None
        self.add_callback(_GradNormGuard())

    def train(self, resume_from_checkpoint: str | None = None, **kwargs):
        """``Trainer.train``, restarted with half the micro-batch after an out-of-memory error.

        The Trainer's own ``auto_find_batch_size`` multiplies the batch by 0.9 and keeps the
        accumulation, so the effective batch drifts, and it restarts its loop on weights that
        already took steps. We halve the micro-batch, double the accumulation (same samples per
        optimizer step, in the same order) and restart from the newest complete checkpoint, or from
        the starting weights when there is none yet.
        """
        from accelerate.utils.memory import should_reduce_batch_size

        if resume_from_checkpoint:
            verify_checkpoint(Path(resume_from_checkpoint))
        start = None
        if self.shrink_batch_on_oom and not resume_from_checkpoint:
            start = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        while True:
            try:
                return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
            except RuntimeError as e:
                if not should_reduce_batch_size(e):
                    raise
                batch = self.args.per_device_train_batch_size
                where = f"out of memory at step {self.state.global_step + 1} with micro-batch {batch}"
                if not self.shrink_batch_on_oom:
                    raise UserError(f"{where}; lower --batch-size (the accumulation makes up the effective "
                                    "batch) or pass --shrink-batch-on-oom") from e
                if batch == 1 or batch % 2:
                    raise UserError(f"{where}, which cannot be halved; lower --max-length or use --lora"
                                    ) from e
                self.args.per_device_train_batch_size = self._train_batch_size = batch // 2
                self.args.gradient_accumulation_steps *= 2
                log.warning("%s: retrying with %d x %d accumulation", where, batch // 2,
                            self.args.gradient_accumulation_steps)
                self.optimizer, self.lr_scheduler = None, None
                self.accelerator.free_memory()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                latest = latest_complete_checkpoint(self.args.output_dir)
                if latest is None:
                    self.model.load_state_dict(start)
                resume_from_checkpoint = str(latest) if latest else None

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Raised before the optimizer step, so the weights in memory and on disk stay finite.
        if not torch.isfinite(loss).all():
            raise TrainingDiverged(
                f"loss is {loss.item()} at step {self.state.global_step + 1}; stopping "
                f"(last complete checkpoint: {latest_complete_checkpoint(self.args.output_dir) or 'none'})")
        return loss

    # The Trainer's checkpoint loaders (all torch.load calls there use weights_only=True), made
    # to fail with one line naming the file instead of a traceback.
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        names = ("model.safetensors", "adapter_model.safetensors", "config.json")
        load = super()._load_from_checkpoint
        return _loading(resume_from_checkpoint, names, lambda: load(resume_from_checkpoint, model))

    def _load_optimizer_and_scheduler(self, checkpoint):
        load = super()._load_optimizer_and_scheduler
        return _loading(checkpoint, ("optimizer.pt", "scheduler.pt", "scaler.pt"), lambda: load(checkpoint))

    def _load_rng_state(self, checkpoint):
        load = super()._load_rng_state
        return _loading(checkpoint, ("rng_state.pth",), lambda: load(checkpoint))

    def _get_output_dir(self, trial) -> str:
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        step = self.state.global_step
        assert_finite_parameters(self.model, step)
        run_dir = Path(super()._get_output_dir(trial))
        staging = run_dir / STAGING
        if staging.exists():
            shutil.rmtree(staging)  # debris of a save that was killed
        staging.mkdir(parents=True)
        name = f"{PREFIX_CHECKPOINT_DIR}-{step}"
        best_before = self.state.best_model_checkpoint
        self._staging_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
            self._staging_dir = None
            # The Trainer records the best checkpoint at the path it just wrote to: point it at the
            # final path, and rewrite the state file so a resumed run finds it.
            if self.state.best_global_step == step:
                self.state.best_model_checkpoint = str(run_dir / name)
            else:
                self.state.best_model_checkpoint = best_before
            self.state.save_to_json(str(staging / name / "trainer_state.json"))
            write_manifest(staging / name, step)
        except Exception as e:
            # Disk full or a file-size limit: torch.save and safetensors report it as RuntimeError
            # or SafetensorError, not OSError; look at the error and at the staged files.
            full = storage_full(e, staging)
            if full is None and not isinstance(e, OSError):
                raise
            what = (isinstance(e, OSError) and e.strerror) or (full[0] if full else str(e))
            where = f" (writing {full[1]})" if full else ""
            shutil.rmtree(staging, ignore_errors=True)
            self.state.best_model_checkpoint = best_before
            raise CheckpointWriteError(
                f"could not write {name} in {run_dir}{where}: {what}; the last complete checkpoint "
                f"({latest_complete_checkpoint(run_dir) or 'none'}) is intact"
                + ("; free space (or raise the file-size limit), then rerun with --resume" if full else "")
            ) from e
        finally:
            self._staging_dir = None
        final = run_dir / name
        if final.exists():  # an earlier incomplete attempt at the same step
            shutil.rmtree(final)
        os.replace(staging / name, final)
        shutil.rmtree(staging)
        best = Path(self.state.best_model_checkpoint) if self.state.best_model_checkpoint else None
        rotate(run_dir, self.keep_checkpoints, best)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "eval_loss" in logs:  # the paper reports dev perplexity
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 700.0))
        super().log(logs, *args, **kwargs)


class _GradNormGuard(TrainerCallback):
    """Stop before an optimizer step on non-finite gradients (e.g. overflow with a finite loss)."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.stack([g.float().norm() for g in grads])).all():
            raise TrainingDiverged(f"gradient norm is not finite at step {state.global_step + 1}; stopping")
