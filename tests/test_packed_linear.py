"""MKL-packed weights for few-row CPU products (toolformer.packed_linear)."""

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from toolformer import packed_linear
from toolformer.models import load_model
from toolformer.packed_linear import MAX_ROWS, MIN_ROWS, pack_linears, unpack_linears

pytestmark = pytest.mark.skipif(not packed_linear.available(), reason="this PyTorch has no MKL packed sgemm")


def packed_layers(model) -> int:
    return sum(isinstance(m, torch.nn.Linear) and "forward" in vars(m) for m in model.modules())


@pytest.fixture
def spy():
    with mock.patch.object(torch.ops.mkl, "_mkl_linear", wraps=torch.ops.mkl._mkl_linear) as s:
        yield s


@pytest.mark.parametrize("bias", [False, True])
def test_packed_product_equals_f_linear_and_serves_only_its_row_range(spy, bias):
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 80, bias=bias)
    assert pack_linears(layer) == 1
    with torch.no_grad():
        for rows in range(1, 20):
            x = torch.randn(rows, 48)
            spy.reset_mock()
            got = layer(x)
            assert got.shape == (rows, 80)
            torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
            assert spy.call_count == (1 if MIN_ROWS <= rows <= MAX_ROWS else 0), rows
        x = torch.randn(2, 3, 1, 48)  # leading dims are rows: 6 of them
        spy.reset_mock()
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        assert spy.call_count == 1


def test_a_changed_weight_is_never_read_from_the_stale_pack(spy):
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 24, bias=False)
    pack_linears(layer)
    x = torch.randn(8, 16)
    with torch.no_grad():
        layer.weight.add_(1.0)  # in place: the version counter moves
        assert torch.equal(layer(x), F.linear(x, layer.weight))
        layer.weight = torch.nn.Parameter(torch.randn(24, 16))  # a new tensor
        assert torch.equal(layer(x), F.linear(x, layer.weight))
    assert spy.call_count == 0


def test_gradients_other_dtypes_and_devices_use_f_linear(spy):
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 24)
    pack_linears(layer)
    x = torch.randn(8, 16)
    layer(x).sum().backward()  # grad mode: F.linear, and the gradient reaches the weight
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    with torch.no_grad():
        half = torch.nn.Linear(16, 24).to(torch.bfloat16)
        assert pack_linears(half) == 0
    assert spy.call_count == 0


def test_load_model_packs_unless_told_not_to(tiny_model_dir, monkeypatch):
    model, _ = load_model(str(tiny_model_dir), device="cpu")
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert linears > 0 and packed_layers(model) == linears
    trained, _ = load_model(str(tiny_model_dir), device="cpu", pack_weights=False)
    assert packed_layers(trained) == 0
    assert model.state_dict().keys() == trained.state_dict().keys()  # the pack lives in forward only
    monkeypatch.setenv("TOOLFORMER_PACKED_LINEAR", "0")
    off, _ = load_model(str(tiny_model_dir), device="cpu")
    assert packed_layers(off) == 0
    assert unpack_linears(model) == linears and packed_layers(model) == 0


def test_batched_greedy_decoding_is_the_same_packed_or_not(tiny_model_dir, spy):
    """8 rows decoded greedily, one step at a time: the packed path is taken and picks the same tokens."""
    packed, tok = load_model(str(tiny_model_dir), device="cpu")
    plain, _ = load_model(str(tiny_model_dir), device="cpu", pack_weights=False)
    prompts = ["The cat sat on", "2 plus 2 is", "Paris is the capital of", "She bought 3 apples and",
               "A train left at", "The answer is", "Once upon a time", "He wrote 12 letters to"]
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        args = dict(max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        a = packed.generate(**enc, **args)
        assert spy.call_count > 0
        b = plain.generate(**enc, **args)
    assert a.shape[1] == enc.input_ids.shape[1] + 12 and torch.equal(a, b)
