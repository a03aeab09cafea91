"""The fixed per-step cost of fine-tuning stays small (issue #16): the collator pads in one tensor
call per field, no per-step callback touches a file, the Trainer's start-of-training full garbage
collection skips the long-lived objects, and the FLOP count does not re-walk the model each batch.
"""

import gc
import json
import sys

import pytest
import torch
from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback

from finetune.checkpoints import SafeTrainer
from finetune.features import IGNORE_INDEX, PadCollator, encode_texts
from finetune.train import FinetuneConfig, FinetuneTrainer, build_trainer
from tests.tiny_model import TRAINING_LINES
from toolformer.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def data_file(tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_text("".join(json.dumps({"text": TRAINING_LINES[i % 4]}) + "\n" for i in range(30)))
    return f


def config(data_file, out, model_dir, **kw):
    base = {"data": [str(data_file)], "output": str(out), "model": str(model_dir), "max_steps": 8,
            "batch_size": 4, "effective_batch_size": 8, "learning_rate": 5e-3, "save_steps": 100,
            "max_length": 48, "dev_share": 0.0, "logging_steps": 1, "device": "cpu"}
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_pads_to_the_batch_longest_like_seq2seq(tiny_model_dir, side):
    _, tok = load_model(str(tiny_model_dir), device="cpu")
    tok.padding_side = side
    texts = [TRAINING_LINES[0], TRAINING_LINES[4][:20], TRAINING_LINES[2]]
    enc = encode_texts(texts, tok, max_length=64, mask_results=True)
    features = [{k: enc[k][i] for k in enc} for i in range(len(texts))]
    ours = PadCollator(tok)(features)
    theirs = DataCollatorForSeq2Seq(tok, label_pad_token_id=IGNORE_INDEX, padding=True)(features)
    longest = max(len(ids) for ids in enc["input_ids"])
    assert longest < 64  # padded to the batch, not to --max-length
    assert set(ours) == set(theirs) == {"input_ids", "attention_mask", "labels"}
    for key in ours:
        assert ours[key].dtype == torch.long and ours[key].shape == (3, longest)
        assert torch.equal(ours[key], theirs[key]), key
    short = ours["attention_mask"][1]
    assert short.sum() == len(enc["input_ids"][1]) and (short[0] == 0) == (side == "left")


class _Watch(TrainerCallback):
    """Records every file opened (audit hook) between the start of step 3 and the end of the last
    step but one: the steady per-step path, past lazy imports and before the final save."""

    def __init__(self, last):
        self.last, self.on, self.opened, self.frozen = last, False, [], []

    def audit(self, event, args):
        if self.on and event == "open":
            self.opened.append(args[0])

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 2:
            self.on = True
        self.frozen.append(gc.get_freeze_count())

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.last:
            self.on = False


def test_per_step_path_opens_no_file_and_gc_is_frozen_only_while_training(tmp_path, tiny_model_dir, data_file):
    trainer, _, _ = build_trainer(config(data_file, tmp_path / "out", tiny_model_dir))
    assert isinstance(trainer, FinetuneTrainer) and isinstance(trainer, SafeTrainer)
    assert isinstance(trainer.data_collator, PadCollator)
    watch = _Watch(last=7)
    sys.addaudithook(watch.audit)  # hooks cannot be removed; this one only records while watch.on
    trainer.add_callback(watch)
    before = gc.get_freeze_count()
    try:
        trainer.train()
    finally:
        watch.on = False
    assert watch.opened == []  # progress, logging, NaN guard: no file work on a step without a save
    assert all(n > 0 for n in watch.frozen)  # the long-lived objects sit out the collections...
    assert gc.get_freeze_count() == before  # ...and are handed back to the collector after train()
    assert trainer.state.global_step == 8


def test_flop_count_is_the_trainers(tmp_path, tiny_model_dir, data_file):
    trainer, _, _ = build_trainer(config(data_file, tmp_path / "out", tiny_model_dir))
    batch = next(iter(trainer.get_train_dataloader()))
    expected = Trainer.floating_point_ops(trainer, batch)
    assert expected > 0
    assert trainer.floating_point_ops(batch) == expected
    assert trainer.floating_point_ops(batch) == expected  # the cached count
