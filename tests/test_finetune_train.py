"""Fine-tuning runs on the tiny model: learning, resume, crash-safe checkpoints, NaN guard, LoRA, markers.

TESTPLAN G 49-51. Each run takes a few seconds on CPU.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from finetune.checkpoints import (
    MANIFEST,
    CheckpointWriteError,
    SafeTrainer,
    TrainingDiverged,
    complete_checkpoints,
    latest_complete_checkpoint,
    rotate,
    write_manifest,
)
from finetune.markers import MARKER_FORMAT, add_marker_tokens, load_call_format
from finetune.train import FinetuneConfig, run_finetune
from tests.tiny_model import TRAINING_LINES
from toolformer.errors import UserError
from toolformer.models import load_model

# Tiny models are latency-bound: extra threads only contend on a 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.fixture()
def data_file(tmp_path):
    # 30 texts, batch 4 x 2 accumulation: an epoch is 4 steps, so step 10 falls mid-epoch.
    f = tmp_path / "data.jsonl"
    f.write_text("".join(json.dumps({"text": TRAINING_LINES[i % 4]}) + "\n" for i in range(30)))
    return f


def config(data_file, out, model_dir, **kw):
    base = {"data": [str(data_file)], "output": str(out), "model": str(model_dir), "max_steps": 20,
            "batch_size": 4, "effective_batch_size": 8, "learning_rate": 5e-3, "save_steps": 10,
            "max_length": 48, "dev_share": 0.0, "logging_steps": 1, "keep_checkpoints": 5}
    base.update(kw)
    return FinetuneConfig(**base)


class Kill(Exception):
    pass


class KillAt(TrainerCallback):
    """Simulates a crash right after optimizer step ``step``."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Kill(f"killed at {self.step}")


def losses(result):
    return {h["step"]: h["loss"] for h in result["log_history"] if "loss" in h}


def weights(out):
    return load_file(str(Path(out) / "model.safetensors"))


def test_loss_falls_on_a_repeated_batch_and_output_is_a_plain_model_dir(tmp_path, tiny_model_dir):
    f = tmp_path / "one.jsonl"
    f.write_text((json.dumps({"text": TRAINING_LINES[0]}) + "\n") * 8)
    out = tmp_path / "out"
    result = run_finetune(config(f, out, tiny_model_dir, max_steps=12, save_steps=100, warmup_share=0.0,
                                learning_rate=3e-2))
    curve = losses(result)
    assert sorted(curve) == list(range(1, 13))
    assert curve[12] < 0.5 * curve[1]
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "finetune.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "finetune.json").read_text())
    assert saved["steps"] == 12 and saved["gradient_accumulation_steps"] == 2 and saved["precision"] == "fp32"
    assert saved["data"]["train_texts"] == 8 and saved["data"]["train_calls"] == 8
    model, tok = load_model(str(out), device="cpu")
    ids = tok(TRAINING_LINES[0], return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    assert loss < curve[1]


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, tiny_model_dir, data_file):
    full = run_finetune(config(data_file, tmp_path / "a", tiny_model_dir))
    with pytest.raises(Kill):
        run_finetune(config(data_file, tmp_path / "b", tiny_model_dir), callbacks=[KillAt(15)])
    ckpts = complete_checkpoints(tmp_path / "b" / "checkpoints")
    assert [p.name for p in ckpts] == ["checkpoint-10"]
    resumed = run_finetune(config(data_file, tmp_path / "b", tiny_model_dir, resume=True))
    assert resumed["resumed_from"].endswith("checkpoint-10")
    assert resumed["steps"] == 20
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    la, lb = losses(full), losses(resumed)
    assert sorted(lb) == list(range(1, 21))
    for step in range(1, 21):
        assert lb[step] == pytest.approx(la[step], rel=1e-5), step


def test_exception_inside_save_leaves_no_checkpoint_and_resume_falls_back(tmp_path, tiny_model_dir, data_file,
                                                                         monkeypatch):
    real_save = SafeTrainer.save_model
    calls = []

    def failing_save(self, output_dir=None, _internal_call=False):
        calls.append(output_dir)
        if len(calls) == 2:  # the save of checkpoint-20
            raise OSError(28, "No space left on device")
        return real_save(self, output_dir, _internal_call)

    monkeypatch.setattr(SafeTrainer, "save_model", failing_save)
    out = tmp_path / "out"
    with pytest.raises(CheckpointWriteError,
                       match=r"could not write checkpoint-20 in .*: No space left on device; "
                             r".*checkpoint-10\) is intact"):
        run_finetune(config(data_file, out, tiny_model_dir))
    monkeypatch.undo()
    names = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("checkpoint-"))
    assert names == ["checkpoint-10"]  # no partial folder under a final name
    assert not (out / "finetune.json").exists()
    resumed = run_finetune(config(data_file, out, tiny_model_dir, resume=True))
    assert resumed["resumed_from"].endswith("checkpoint-10") and resumed["steps"] == 20


@pytest.mark.parametrize("broken", ["model.safetensors", "trainer_state.json", MANIFEST])
def test_resume_picks_newest_complete_checkpoint(tmp_path, broken):
    run = tmp_path / "checkpoints"
    for step in (10, 20):
        d = run / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"w" * step)
        (d / "trainer_state.json").write_text("{}")
        write_manifest(d, step)
    (run / "checkpoint-30").mkdir()  # a bare-Trainer style partial folder: no manifest
    (run / "checkpoint-30" / "model.safetensors").write_bytes(b"x")
    assert latest_complete_checkpoint(run) == run / "checkpoint-20"
    (run / "checkpoint-20" / broken).unlink()
    assert latest_complete_checkpoint(run) == run / "checkpoint-10"
    (run / "checkpoint-10" / "model.safetensors").write_bytes(b"short")  # truncated write
    assert latest_complete_checkpoint(run) is None


def test_rotation_never_deletes_newest_or_best(tmp_path):
    run = tmp_path / "checkpoints"
    for step in (10, 20, 30, 40):
        d = run / f"checkpoint-{step}"
        d.mkdir(parents=True)
        write_manifest(d, step)
    (run / "checkpoint-50").mkdir()  # incomplete newest: must not count as "newest"
    rotate(run, keep=1, best=run / "checkpoint-20")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-20", "checkpoint-40", "checkpoint-50"]
    rotate(run, keep=1, best=None)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-40", "checkpoint-50"]


def test_keep_one_checkpoint_keeps_last_and_best_through_a_run(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "out"
    result = run_finetune(config(data_file, out, tiny_model_dir, max_steps=30, dev_share=0.2,
                                 keep_checkpoints=1))
    names = sorted(p.name for p in complete_checkpoints(out / "checkpoints"))
    assert "checkpoint-30" in names
    assert Path(result["best_checkpoint"]).name in names
    assert math.isfinite(result["final_metrics"]["eval_perplexity"])
    assert result["final_metrics"]["eval_perplexity"] == pytest.approx(
        math.exp(result["final_metrics"]["eval_loss"]))


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path, tiny_model_dir, data_file,
                                                                      monkeypatch):
    real = SafeTrainer.compute_loss

    def nan_at_13(self, model, inputs, *args, **kwargs):
        loss = real(self, model, inputs, *args, **kwargs)
        return loss * float("nan") if self.state.global_step == 12 else loss

    monkeypatch.setattr(SafeTrainer, "compute_loss", nan_at_13)
    out = tmp_path / "out"
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 13; .*checkpoint-10"):
        run_finetune(config(data_file, out, tiny_model_dir))
    assert [p.name for p in complete_checkpoints(out / "checkpoints")] == ["checkpoint-10"]
    assert not (out / "checkpoints" / "checkpoint-20").exists() and not (out / "finetune.json").exists()
    saved = load_file(str(out / "checkpoints" / "checkpoint-10" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())


class InfGradAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step - 1:
            model.model.norm.weight.register_hook(lambda g: g * float("inf"))


def test_non_finite_gradient_stops_before_the_optimizer_step(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "out"
    with pytest.raises(TrainingDiverged, match="gradient norm is not finite at step 13"):
        run_finetune(config(data_file, out, tiny_model_dir), callbacks=[InfGradAt(13)])
    assert [p.name for p in complete_checkpoints(out / "checkpoints")] == ["checkpoint-10"]


def test_lora_merged_model_gives_base_plus_adapter_logits(tmp_path, tiny_model_dir, data_file):
    from peft import PeftModel

    out = tmp_path / "out"
    run_finetune(config(data_file, out, tiny_model_dir, lora=True, max_steps=10, lora_rank=4,
                        learning_rate=1e-2))
    merged, tok = load_model(str(out), device="cpu")
    assert not any("lora" in k for k in weights(out))
    base, _ = load_model(str(tiny_model_dir), device="cpu")
    adapted = PeftModel.from_pretrained(base, str(out / "checkpoints" / "checkpoint-10")).eval()
    ids = tok(TRAINING_LINES[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = adapted(**ids).logits
        got = merged(**ids).logits
        plain = load_model(str(tiny_model_dir), device="cpu")[0](**ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # the adapter did change the model


def test_marker_tokens_get_mean_rows(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    old = model.get_input_embeddings().weight.detach().clone()
    ids = add_marker_tokens(model, tok)
    assert ids == list(range(old.shape[0], old.shape[0] + 3))
    emb = model.get_input_embeddings().weight
    for i in ids:
        torch.testing.assert_close(emb[i], old.mean(dim=0))
    assert tok("<API>QA(x) → y</API>", add_special_tokens=False).input_ids[0] == ids[0]


def test_marker_tokens_survive_save_and_reload(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "out"
    run_finetune(config(data_file, out, tiny_model_dir, marker_tokens=True, max_steps=4, save_steps=4))
    model, tok = load_model(str(out), device="cpu")
    base_tok = load_model(str(tiny_model_dir), device="cpu")[1]
    new_ids = tok.convert_tokens_to_ids(["<API>", "</API>", "→"])
    assert new_ids == [len(base_tok), len(base_tok) + 1, len(base_tok) + 2]
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == len(base_tok) + 3
    text = "400 (or <API>Calculator(400 / 1400) → 0.29</API> 29%)"
    enc = tok(text, add_special_tokens=False).input_ids
    assert [i for i in enc if i in new_ids] == [new_ids[0], new_ids[2], new_ids[1]]  # <API> → </API>
    assert tok.decode(enc, skip_special_tokens=True) == text
    assert load_call_format(out) == MARKER_FORMAT
    emb = model.get_input_embeddings().weight
    assert not torch.equal(emb[new_ids[0]], emb[new_ids[1]])  # trained apart from the shared mean start


def test_sequence_length_beyond_model_limit(tmp_path, tiny_model_dir, data_file):
    with pytest.raises(UserError, match="--max-length 4096 is beyond the model's limit of 2048 positions"):
        run_finetune(config(data_file, tmp_path / "out", tiny_model_dir, max_length=4096))
    # The failed start left nothing to resume: the corrected command just runs.
    assert run_finetune(config(data_file, tmp_path / "out", tiny_model_dir, max_steps=2))["steps"] == 2


def test_output_and_resume_guards(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "out"
    with pytest.raises(Kill):
        run_finetune(config(data_file, out, tiny_model_dir, max_steps=4, save_steps=2), callbacks=[KillAt(3)])
    with pytest.raises(UserError, match="holds checkpoints of an earlier run: pass --resume"):
        run_finetune(config(data_file, out, tiny_model_dir, max_steps=4, save_steps=2))
    with pytest.raises(UserError, match=r"settings differ from the interrupted run \(learning_rate\)"):
        run_finetune(config(data_file, out, tiny_model_dir, max_steps=4, save_steps=2, learning_rate=1.0,
                            resume=True))
    run_finetune(config(data_file, out, tiny_model_dir, max_steps=4, save_steps=2, resume=True))
    with pytest.raises(UserError, match="already holds a fine-tuned model"):
        run_finetune(config(data_file, out, tiny_model_dir, max_steps=4, save_steps=2))


@pytest.mark.parametrize("args, message", [
    (["--max-steps", "2"], "--data is required"),
    (["--data", "{missing}", "--output", "{out}"], "no such file or directory"),
    (["--data", "{empty}", "--output", "{out}"], "no texts found (empty data)"),
    (["--data", "{nofield}", "--output", "{out}"], "no field 'text'"),
    (["--data", "{data}", "--output", "{out}", "--batch-size", "3"], "not a multiple of --batch-size 3"),
])
def test_cli_errors_are_one_line(tmp_path, tiny_model_dir, data_file, capsys, args, message):
    from commands.cli import main

    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "nofield.jsonl").write_text('{"body": "x"}\n')
    paths = {"missing": tmp_path / "missing.jsonl", "empty": tmp_path / "empty.jsonl",
             "nofield": tmp_path / "nofield.jsonl", "data": data_file, "out": tmp_path / "out"}
    argv = ["finetune", "--model", str(tiny_model_dir)] + [a.format(**paths) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("toolformer finetune: error: ") and message in err


def test_lora_with_marker_tokens_trains_the_new_rows_only(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "out"
    run_finetune(config(data_file, out, tiny_model_dir, lora=True, marker_tokens=True, lora_rank=4,
                        learning_rate=1e-2, max_steps=4, save_steps=4))
    model, tok = load_model(str(out), device="cpu")
    base, base_tok = load_model(str(tiny_model_dir), device="cpu")
    emb, old = model.get_input_embeddings().weight, base.get_input_embeddings().weight
    n = len(base_tok)
    assert emb.shape[0] == len(tok) == n + 3
    torch.testing.assert_close(emb[:n], old)  # LoRA leaves the old embedding rows alone
    assert not torch.equal(emb[n], emb[n + 1])  # the new rows left their shared mean start


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch(tmp_path, tiny_model_dir,
                                                                          data_file, monkeypatch):
    """TESTPLAN 52: the forward runs out of memory above micro-batch 2 from step 13 on."""
    import functools

    from transformers.models.llama.modeling_llama import LlamaModel

    reference = run_finetune(config(data_file, tmp_path / "ref", tiny_model_dir))
    real_forward = LlamaModel.forward
    step = [0]

    @functools.wraps(real_forward)
    def forward(self, input_ids=None, *args, **kwargs):
        if self.training and input_ids.shape[0] > 2 and step[0] >= 12:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_forward(self, input_ids, *args, **kwargs)

    class Step(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            step[0] = state.global_step

    monkeypatch.setattr(LlamaModel, "forward", forward)
    with pytest.raises(UserError,
                       match="out of memory at step 13 with micro-batch 4; .*--shrink-batch-on-oom"):
        run_finetune(config(data_file, tmp_path / "plain", tiny_model_dir), callbacks=[Step()])
    step[0] = 0
    result = run_finetune(config(data_file, tmp_path / "shrunk", tiny_model_dir, shrink_batch_on_oom=True),
                          callbacks=[Step()])
    assert (result["batch_size"], result["gradient_accumulation_steps"], result["steps"]) == (2, 4, 20)
    assert result["resumed_from"] is None
    want, got = weights(tmp_path / "ref"), weights(tmp_path / "shrunk")
    for k in want:  # same samples per optimizer step, in the same order: the same weights
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    assert losses(result)[20] == pytest.approx(losses(reference)[20], rel=1e-4)


def test_final_weights_best_writes_the_best_checkpoint(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "out"
    dev = tmp_path / "dev.jsonl"  # other lines than train: overfitting train makes dev loss rise again
    dev.write_text("".join(json.dumps({"text": line}) + "\n" for line in TRAINING_LINES[4:]))
    result = run_finetune(config(data_file, out, tiny_model_dir, max_steps=40, save_steps=5,
                                 dev_data=[str(dev)], learning_rate=5e-2, final_weights="best",
                                 warmup_share=0.0))
    evals = {h["step"]: h["eval_loss"] for h in result["log_history"] if "eval_loss" in h and 0 < h["step"]}
    best_step = min(evals, key=evals.get)
    assert best_step < 40  # the case under test: the best weights are not the last ones
    assert Path(result["best_checkpoint"]).name == f"checkpoint-{best_step}"
    assert result["final_weights"] == "best"
    best = load_file(str(Path(result["best_checkpoint"]) / "model.safetensors"))
    final = weights(out)
    for k in final:
        torch.testing.assert_close(final[k], best[k])
