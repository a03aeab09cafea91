"""Fine-tune faults (issue 9 item 6; TESTPLAN G49-51) with real SIGKILLs of a training subprocess.

A run is killed (SIGKILL, no cleanup) after step 15 and, separately, in the middle of writing
checkpoint-20; NaN is injected at step 15. Each time, resume picks the newest complete checkpoint
(checkpoint-10) and ends at the uninterrupted run's weights. The slow variant kills the subprocess
from outside at random moments, several times, resuming each time.

    python -m pytest -q tests/reliability/test_finetune_faults.py          # fast
    python -m pytest -q -m slow tests/reliability/test_finetune_faults.py  # random kills
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.checkpoints import SafeTrainer, TrainingDiverged, complete_checkpoints
from finetune.train import run_finetune
from tests.reliability.conftest import REPO, subprocess_env
from tests.reliability.finetune_victim import config
from tests.tiny_model import TRAINING_LINES

# Tiny models are latency-bound: extra threads only contend on a 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("ft-data") / "data.jsonl"
    f.write_text("".join(json.dumps({"text": TRAINING_LINES[i % 4]}) + "\n" for i in range(30)))
    return f


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_file, tiny_model_dir) -> dict:
    out = tmp_path_factory.mktemp("ft-ref") / "run"
    result = run_finetune(config(str(data_file), str(out), str(tiny_model_dir)))
    return {"weights": load_file(str(out / "model.safetensors")), "losses": losses(result)}


def losses(result: dict) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in result["log_history"] if "loss" in h}


def victim(data_file, out, model_dir, kill: str, resume: bool = False, extra=()) -> subprocess.Popen:
    cmd = (
        [
            sys.executable,
            "-m",
            "tests.reliability.finetune_victim",
            str(data_file),
            str(out),
            str(model_dir),
            "--kill",
            kill,
        ]
        + (["--resume"] if resume else [])
        + list(extra)
    )
    return subprocess.Popen(
        cmd, env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def assert_same_as_reference(out: Path, reference: dict, result: dict | None = None) -> None:
    got = load_file(str(out / "model.safetensors"))
    assert got.keys() == reference["weights"].keys()
    for k, v in reference["weights"].items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)
    if result is not None:
        for step in range(11, 21):  # the steps redone after checkpoint-10
            assert losses(result)[step] == pytest.approx(reference["losses"][step], rel=1e-5), step


@pytest.mark.parametrize("kill", ["train:15", "save:20"])
def test_sigkill_then_resume_ends_at_the_uninterrupted_weights(
    kill, tmp_path, data_file, tiny_model_dir, reference
):
    out = tmp_path / "run"
    proc = victim(data_file, out, tiny_model_dir, kill)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    ckpts = out / "checkpoints"
    assert [p.name for p in complete_checkpoints(ckpts)] == ["checkpoint-10"]
    # A directory with a final name is never partial: the killed save left only staging debris.
    assert sorted(p.name for p in ckpts.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-10"]
    if kill.startswith("save"):
        assert (ckpts / ".staging" / "checkpoint-20" / "model.safetensors").is_file()
    assert not (out / "finetune.json").exists()
    result = run_finetune(config(str(data_file), str(out), str(tiny_model_dir), resume=True))
    assert result["resumed_from"].endswith("checkpoint-10") and result["steps"] == 20
    assert not (ckpts / ".staging").exists()  # the debris was cleared by the next save
    assert_same_as_reference(out, reference, result)


def test_nan_loss_stops_without_poisoning_checkpoints_and_resume_recovers(
    tmp_path, data_file, tiny_model_dir, reference, monkeypatch
):
    real = SafeTrainer.compute_loss

    def nan_at_15(self, model, inputs, *args, **kwargs):
        loss = real(self, model, inputs, *args, **kwargs)
        return loss * float("nan") if self.state.global_step == 14 else loss

    monkeypatch.setattr(SafeTrainer, "compute_loss", nan_at_15)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 15"):
        run_finetune(config(str(data_file), str(out), str(tiny_model_dir)))
    monkeypatch.undo()
    for ckpt in complete_checkpoints(out / "checkpoints"):
        assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "model.safetensors")).values())
    result = run_finetune(config(str(data_file), str(out), str(tiny_model_dir), resume=True))
    assert result["resumed_from"].endswith("checkpoint-10")
    assert_same_as_reference(out, reference, result)


def step_reached(progress: Path) -> int:
    try:
        return int(progress.read_text() or 0)  # empty while the victim rewrites it
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_random_external_kills_then_resume(tmp_path, data_file, tiny_model_dir, reference):
    """SIGKILL from outside at a random training step (3 times), resuming each time, then finish."""
    rng = random.Random(9)
    out, progress = tmp_path / "run", tmp_path / "progress"
    killed_at = []
    for attempt in range(8):
        progress.unlink(missing_ok=True)
        proc = victim(
            data_file,
            out,
            tiny_model_dir,
            "none",
            resume=attempt > 0,
            extra=["--progress", str(progress), "--step-sleep", "0.15"],
        )
        if len(killed_at) < 3:
            target = rng.randint(1, 19)
            while proc.poll() is None and step_reached(progress) < target:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.15))  # anywhere in the step, the save included
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                killed_at.append(step_reached(progress))
                continue
        _, err = proc.communicate(timeout=300)
        if proc.returncode == 0:
            break
        pytest.fail(f"attempt {attempt} failed: {err.decode()[-2000:]}")
    assert (out / "finetune.json").exists() and len(killed_at) == 3
    print(
        "FIGURES finetune_random_kills",
        json.dumps({"killed_after_steps": killed_at, "attempts": attempt + 1}),
    )
    assert_same_as_reference(out, reference)
