"""Fine-tune a model on the augmented texts (the paper's last step): ``toolformer finetune``.

    toolformer finetune --data runs/augment-1 --model smollm2-135m --output models/tf-135m \\
        --max-steps 2000 --batch-size 8 --effective-batch-size 128 [--lora] [--resume]

The objective is the paper's: causal LM loss over the texts with their calls and results
(``--mask-results`` leaves the results out of the loss). Training runs on the HF Trainer: lr 1e-5,
linear warm-up over the first 10% of the steps, gradient accumulation up to the effective batch
(the paper's is 128), dev perplexity and a checkpoint every ``--save-steps``. fp32 on CPU; on a GPU
fp32 master weights with bf16 autocast. ``--lora`` trains a LoRA adapter (peft) and merges it into
the saved model.

``--output`` ends up a plain HF model directory (config, safetensors, tokenizer, generation config)
that ``toolformer.models.load_model`` and plain transformers load, plus ``finetune.json`` (settings,
data counts, final metrics; written last). Checkpoints live in ``OUTPUT/checkpoints`` and are
crash-safe (finetune/checkpoints.py); ``--resume`` continues from the newest complete one with the
same data order and ends at the same weights as an uninterrupted run.

Several GPUs: ``accelerate launch -m commands.cli finetune --data ... --output ...`` (the
effective batch is split over the processes).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import random
import os
import shutil
import time
from pathlib import Path
from typing import Literal

import torch

from finetune.checkpoints import SafeTrainer, checkpoint_step, latest_complete_checkpoint
from finetune.data import count_calls, mix_original, read_texts, split_train_dev
from finetune.features import EncodeStats, PadCollator, encode_texts
from finetune.markers import MARKER_FORMAT, add_marker_tokens, save_call_format, to_marker_format
from toolformer.call_format import DEFAULT_FORMAT
from toolformer.errors import StorageFull, UserError, storage_full
from toolformer.models import DEFAULT_MODEL, load_model

log = logging.getLogger(__name__)

RESULT_FILE = "finetune.json"
SETTINGS_FILE = "run-settings.json"  # in the checkpoint folder: a resumed run must match it
CHECKPOINTS = "checkpoints"
# Settings that may change between an interrupted run and its resumption without changing the result.
RESUME_MAY_CHANGE = {"resume", "logging_steps", "device", "shrink_batch_on_oom"}


@dataclasses.dataclass
class FinetuneConfig:
    """The settings of a fine-tuning run: ``toolformer finetune`` has one flag per field (this
    docstring is their ``--help``) and reads any of them from ``--config FILE``.

    Attributes:
        data: pipeline run directories (texts-*.jsonl), .jsonl/.json/.parquet files or saved HF datasets.
        output: directory for the fine-tuned model, finetune.json and checkpoints/.
        model: base model: a fetched name, a model directory, a .gguf file or a Hub id.
        text_field: the field holding the text in each record.
        dev_data: held-out texts for dev perplexity (default: a --dev-share of --data).
        dev_share: share of --data held out as dev set when --dev-data is not given.
        mix_original: share of texts with calls whose call-free original is added to train.
        only_with_calls: train (and evaluate) only on texts holding at least one call (the paper, 4.1;
            --no-only-with-calls trains on every text).
        plain_share: with --only-with-calls, also keep this share of texts without calls (relative to
            the texts with calls).
        max_length: sequence length in tokens (longer texts are cut; the paper: 1024).
        batch_size: sequences per device and micro-step.
        effective_batch_size: sequences per optimizer step, via gradient accumulation (the paper: 128).
        learning_rate: peak learning rate (the paper: 1e-5).
        warmup_share: share of --max-steps spent in linear warm-up (the paper: 0.1).
        lr_schedule: learning-rate schedule after the warm-up.
        max_steps: optimizer steps (the paper: up to 2000).
        save_steps: dev perplexity and a checkpoint every N steps.
        keep_checkpoints: complete checkpoints to keep (the newest and the best are always kept).
        final_weights: which weights go to OUTPUT: the best dev perplexity's (the paper, App. B) or the
            last step's.
        mask_results: leave tool results out of the loss (the paper trains on them).
        marker_tokens: add <API>, </API> and → as new tokens and write calls with them (such models
            are not yet supported by `toolformer generate`, which refuses them).
        lora: train a LoRA adapter and merge it into the saved model.
        lora_rank: LoRA rank.
        lora_alpha: LoRA scaling numerator.
        lora_dropout: dropout on the inputs of the LoRA layers.
        max_grad_norm: clip the gradient norm to this before each optimizer step.
        seed: seed for the split, data order and initialisation.
        resume: continue from the newest complete checkpoint in OUTPUT/checkpoints.
        device: cpu or cuda (default: cuda when present).
        logging_steps: log the training loss every N steps (finetune.json's log_history).
        shrink_batch_on_oom: on out-of-memory, halve --batch-size, double the accumulation (same
            effective batch) and go on from the newest complete checkpoint.
    """

    data: list[str]
    output: str
    model: str = DEFAULT_MODEL
    text_field: str = "text"
    dev_data: list[str] | None = None
    dev_share: float = 0.05  # used when no dev_data is given
    mix_original: float = 0.0
    # Keep only texts with at least one call (the paper, section 4.1: C* holds the texts into which
    # a call was inserted; most texts keep none, and a small model trained on them learns no calls).
    only_with_calls: bool = True
    # With only_with_calls: also keep this share of the texts without a call (relative to the texts
    # with calls; 0.5 = one plain text per two with calls), so the model still sees plain text.
    plain_share: float = 0.0
    max_length: int = 1024  # the paper's sequence length
    batch_size: int = 8  # per device and micro-step
    effective_batch_size: int = 128  # the paper's batch; reached by gradient accumulation
    learning_rate: float = 1e-5
    warmup_share: float = 0.1  # linear warm-up over the first 10% of the steps
    # The paper states only the warm-up; "linear" also decays to 0 by max_steps (HF's usual choice),
    # "constant_with_warmup" is the literal reading of the paper.
    lr_schedule: Literal["linear", "constant_with_warmup", "cosine"] = "linear"
    max_steps: int = 2000  # the paper's maximum
    save_steps: int = 500  # dev perplexity and a checkpoint every N steps (the paper: every 500)
    keep_checkpoints: int = 2
    # the paper (App. B) evaluates dev perplexity during training and picks by it: the best by default
    final_weights: Literal["last", "best"] = "best"
    mask_results: bool = False
    marker_tokens: bool = False
    lora: bool = False
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    resume: bool = False
    device: str | None = None
    logging_steps: int = 10
    shrink_batch_on_oom: bool = False

    def __post_init__(self) -> None:
        if not self.data:
            raise UserError("--data is required: a pipeline run directory or data files")
        if not self.output:
            raise UserError("--output is required: the directory for the fine-tuned model")
        for flag in ("max_length", "batch_size", "effective_batch_size", "max_steps", "save_steps"):
            if getattr(self, flag) < 1:
                raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
        if self.max_length < 2:
            raise UserError("--max-length must be at least 2 (one token and EOS)")
        if not 0.0 <= self.warmup_share < 1.0:
            raise UserError(f"--warmup-share {self.warmup_share}: must be in [0, 1)")
        if self.learning_rate <= 0:
            raise UserError(f"--learning-rate {self.learning_rate}: must be positive")

    def grad_accumulation(self, world_size: int) -> int:
        per_step = self.batch_size * world_size
        if self.effective_batch_size % per_step:
            raise UserError(f"--effective-batch-size {self.effective_batch_size} is not a multiple of "
                            f"--batch-size {self.batch_size} x {world_size} process(es)")
        return self.effective_batch_size // per_step


def _settings(cfg: FinetuneConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_MAY_CHANGE}


def _prepare_output(cfg: FinetuneConfig) -> tuple[Path, Path | None]:
    """Check --output against --resume; return (checkpoint dir, checkpoint to resume from)."""
    out = Path(cfg.output)
    ckpt_dir = out / CHECKPOINTS
    if (out / RESULT_FILE).exists() and not cfg.resume:
        raise UserError(f"--output {out} already holds a fine-tuned model; choose another directory")
    # (DIR/.lock is run_finetune's one-writer lock, not a file of another kind of directory)
    if out.exists() and any(p.name != ".lock" for p in out.iterdir()) and not ckpt_dir.exists():
        raise UserError(f"--output {out} exists and is not a fine-tuning directory; choose another one")
    settings_file = ckpt_dir / SETTINGS_FILE
    # A run that failed before its first checkpoint (a bad flag) leaves nothing worth resuming.
    started = ckpt_dir.is_dir() and any(checkpoint_step(p) is not None for p in ckpt_dir.iterdir())
    if started and not cfg.resume:
        raise UserError(f"--output {out} holds checkpoints of an earlier run: pass --resume to continue it, "
                        "or choose another directory")
    resume_from = None
    if cfg.resume and started:
        before = json.loads(settings_file.read_text()) if settings_file.exists() else {}
        changed = sorted(k for k, v in _settings(cfg).items() if json.loads(json.dumps(v)) != before.get(k))
        if changed:
            raise UserError(f"--resume: settings differ from the interrupted run ({', '.join(changed)}); "
                            "resume with the same flags")
        resume_from = latest_complete_checkpoint(ckpt_dir)
    if cfg.resume and resume_from is None:
        log.warning("--resume: no complete checkpoint in %s; starting from the beginning", ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(_settings(cfg), indent=1) + "\n")
    return ckpt_dir, resume_from


def read_split(cfg: FinetuneConfig) -> tuple[list[str], list[str], dict]:
    """Train and dev texts (no tokenizer needed, so data errors come before the model loads)."""
    corpus = read_texts(cfg.data, cfg.text_field)
    if cfg.only_with_calls:
        keep = [i for i, t in enumerate(corpus.texts) if count_calls(t)]
        if not keep:
            raise UserError(f"--only-with-calls (the default): no text in {', '.join(cfg.data)} holds a call "
                            "with a result; pass --no-only-with-calls to train on plain texts")
        plain = [i for i, t in enumerate(corpus.texts) if not count_calls(t)]
        if cfg.plain_share > 0 and plain:
            rng = random.Random(cfg.seed)
            keep = sorted(keep + rng.sample(plain, min(len(plain), round(cfg.plain_share * len(keep)))))
        corpus = dataclasses.replace(corpus, texts=[corpus.texts[i] for i in keep],
                                     sources=[corpus.sources[i] for i in keep] if corpus.sources else [])
    if cfg.dev_data:
        train_texts, dev_texts = corpus.texts, read_texts(cfg.dev_data, cfg.text_field).texts
    else:
        train_texts, dev_texts = split_train_dev(corpus.texts, cfg.dev_share, cfg.seed)
    # Originals are mixed into train only, so dev perplexity stays on texts with calls.
    train_texts = mix_original(train_texts, cfg.mix_original, cfg.seed)
    counts = {"texts_read": len(corpus.texts), "records_skipped": corpus.skipped,
              "train_texts": len(train_texts),
              "dev_texts": len(dev_texts), "train_calls": sum(count_calls(t) for t in train_texts)}
    return train_texts, dev_texts, counts


def tokenized(cfg: FinetuneConfig, texts: list[str], tokenizer, fmt, stats: EncodeStats):
    import datasets

    if not texts:
        return None
    if fmt is not DEFAULT_FORMAT:
        texts = [to_marker_format(t, DEFAULT_FORMAT, fmt) for t in texts]

    def encode(batch):
        return encode_texts(batch["text"], tokenizer, cfg.max_length, cfg.mask_results, fmt, stats)

    return datasets.Dataset.from_dict({"text": texts}).map(encode, batched=True, remove_columns=["text"])


def _apply_lora(cfg: FinetuneConfig, model, new_token_ids: list[int]):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                      lora_dropout=cfg.lora_dropout, target_modules="all-linear",
                      # New marker tokens start at the mean embedding: their rows must train too.
                      trainable_token_indices={"embed_tokens": new_token_ids} if new_token_ids else None)
    return get_peft_model(model, lora)


class FinetuneTrainer(SafeTrainer):
    """:class:`SafeTrainer` without two fixed costs of the HF Trainer's loop (issue #16).

    * ``train()`` starts with ``accelerator.free_memory()``, a full ``gc.collect()`` over every
      object of the process: ~0.5-1 s with transformers, datasets and Beam imported (~480k objects),
      as much as several steps of a small model. The objects that exist when training starts
      (modules, the model, the data) live through it, so they are frozen out of the collector
      (``gc.freeze``) for the run and handed back after (``gc.unfreeze``). Garbage made during
      training is still collected as usual.
    * ``floating_point_ops`` (``total_flos`` in the state and metrics) recounted the model's
      non-embedding parameters on every micro-batch by walking all its modules; the count is the
      same every time, so it is taken once per model.
    """

    _flop_params: tuple[int, int] | None = None  # (id of the model, non-embedding parameters)

    def train(self, *args, **kwargs):
        freeze = gc.get_freeze_count() == 0  # someone else's freeze is theirs to undo
        if freeze:
            gc.freeze()
        try:
            return super().train(*args, **kwargs)
        finally:
            if freeze:
                gc.unfreeze()

    def floating_point_ops(self, inputs) -> int:
        main = getattr(self.model, "main_input_name", "input_ids")
        if main not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        if self._flop_params is None or self._flop_params[0] != id(self.model):
            self._flop_params = (id(self.model), self.model.num_parameters(exclude_embeddings=True))
        return 6 * inputs[main].numel() * self._flop_params[1]


def build_trainer(cfg: FinetuneConfig, callbacks=()) -> tuple[FinetuneTrainer, dict, Path | None]:
    """Load model and data and set up the Trainer; returns (trainer, data counts, resume checkpoint)."""
    from transformers import TrainingArguments

    from finetune.progress import StepProgress  # steps done/total, rate and ETA on toolformer.progress

    world = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = cfg.grad_accumulation(world)
    train_texts, dev_texts, counts = read_split(cfg)
    ckpt_dir, resume_from = _prepare_output(cfg)
    on_gpu = torch.cuda.is_available() and cfg.device != "cpu"
    # fp32 master weights everywhere; on a GPU the Trainer adds bf16 autocast.
    model, tokenizer = load_model(cfg.model, device="cpu", dtype="float32", pack_weights=False)  # trained: no packed copies
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and cfg.max_length > limit:
        raise UserError(f"--max-length {cfg.max_length} is beyond the model's limit of {limit} positions")
    model.config.use_cache = False
    fmt, new_ids = DEFAULT_FORMAT, []
    if cfg.marker_tokens:
        fmt = MARKER_FORMAT
        new_ids = add_marker_tokens(model, tokenizer, fmt)
    if cfg.lora:
        model = _apply_lora(cfg, model, new_ids)
    stats = EncodeStats()
    train = tokenized(cfg, train_texts, tokenizer, fmt, stats)
    dev = tokenized(cfg, dev_texts, tokenizer, fmt, EncodeStats())
    counts.update(truncated_texts=stats.truncated, masked_tokens=stats.masked_tokens,
                  label_tokens=stats.label_tokens)
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_schedule,
        warmup_steps=cfg.warmup_share,  # a float below 1 is a share of max_steps
        weight_decay=0.0,
        max_grad_norm=cfg.max_grad_norm,
        logging_steps=cfg.logging_steps,
        logging_nan_inf_filter=False,  # the bare Trainer's filter hid NaN losses as 0.0
        save_strategy="steps",
        save_steps=cfg.save_steps,
        eval_strategy="steps" if dev is not None else "no",
        eval_steps=cfg.save_steps,
        eval_on_start=dev is not None and resume_from is None,  # the base model's dev perplexity
        metric_for_best_model="eval_loss" if dev is not None else None,
        greater_is_better=False,
        load_best_model_at_end=cfg.final_weights == "best" and dev is not None,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    # Pads each micro-batch to its longest text (DataCollatorForSeq2Seq's tensors, without its
    # per-example Python work).
    collator = PadCollator(tokenizer)
    trainer = FinetuneTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                              data_collator=collator,
                              processing_class=tokenizer, callbacks=[*callbacks, StepProgress()],
                              keep_checkpoints=cfg.keep_checkpoints, shrink_batch_on_oom=cfg.shrink_batch_on_oom)
    trainer.call_format = fmt
    return trainer, counts, resume_from


def save_final(trainer: SafeTrainer, cfg: FinetuneConfig, result: dict) -> Path:
    """Write the plain HF model directory, then finetune.json last (its presence = complete)."""
    out = Path(cfg.output)
    model = trainer.model
    if cfg.lora:
        model = model.merge_and_unload()  # plain weights: loadable without peft
    model.config.use_cache = True
    staging = out / ".final-staging"
    if staging.exists():
        shutil.rmtree(staging)
    writing, tmp = staging, out / (RESULT_FILE + ".tmp")
    try:
        model.save_pretrained(staging)
        trainer.processing_class.save_pretrained(staging)
        if trainer.call_format is not DEFAULT_FORMAT:
            save_call_format(staging, trainer.call_format)
        for f in staging.iterdir():
            os.replace(f, out / f.name)
        staging.rmdir()
        writing = tmp  # whole or not at all: its presence says the directory is complete
        tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
        os.replace(tmp, out / RESULT_FILE)
    except Exception as e:
        full = storage_full(e, writing)
        if full is None:
            raise
        shutil.rmtree(staging, ignore_errors=True)
        tmp.unlink(missing_ok=True)
        raise StorageFull(
            f"cannot write the fine-tuned model: {full[0]} writing {full[1]}; the checkpoints are intact: "
            "free space (or raise the file-size limit), then rerun with --resume"
        ) from e
    return out


def run_finetune(cfg: FinetuneConfig, callbacks=()) -> dict:
    """Train as configured and save; returns what finetune.json holds."""
    from toolformer.locking import lock  # one writer per output directory; a crashed run's lock is taken over

    with lock(cfg.output, "finetune"):
        return _run_finetune(cfg, callbacks)


def _run_finetune(cfg: FinetuneConfig, callbacks=()) -> dict:
    t0 = time.time()
    trainer, counts, resume_from = build_trainer(cfg, callbacks)
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    metrics = dict(output.metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    best = trainer.state.best_model_checkpoint
    result = {
        "settings": dataclasses.asdict(cfg),
        "data": counts,
        "batch_size": trainer.args.per_device_train_batch_size,  # smaller than asked after an OOM
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "precision": "bf16 autocast" if trainer.args.bf16 else "fp32",
        "device": str(trainer.args.device),
        "resumed_from": str(resume_from) if resume_from else None,
        "steps": trainer.state.global_step,
        "final_metrics": metrics,
        "best_checkpoint": best,
        "best_dev_loss": trainer.state.best_metric,
        "best_dev_perplexity": math.exp(trainer.state.best_metric) if trainer.state.best_metric else None,
        "final_weights": cfg.final_weights if trainer.args.load_best_model_at_end else "last",
        "log_history": trainer.state.log_history,
        "wall_seconds": round(time.time() - t0, 1),
    }
    save_final(trainer, cfg, result)
    return result


def finetune(config: FinetuneConfig | None = None, **settings) -> int:
    """Fine-tune a model on texts with tool calls; OUTPUT becomes a plain HF model directory.

    Args:
        config: the settings; on the command line every :class:`FinetuneConfig` field is a flag
            (over those of ``--config FILE``).
        settings: :class:`FinetuneConfig` fields as keyword arguments (over ``config``'s).
    """
    if config is None:
        cfg = FinetuneConfig(**{"data": [], "output": "", **settings})  # no --data: FinetuneConfig says so
    else:
        cfg = dataclasses.replace(config, **settings) if settings else config
    result = run_finetune(cfg)
    m = result["final_metrics"]
    dev = f", dev perplexity {m['eval_perplexity']:.2f}" if "eval_perplexity" in m else ""
    print(f"fine-tuned {result['steps']} steps, train loss {m.get('train_loss', float('nan')):.4f}{dev}; "
          f"model in {cfg.output}")
    return 0
