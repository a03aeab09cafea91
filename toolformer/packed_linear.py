"""Few-row CPU matmuls with MKL-packed weights: the decode steps of a batch.

Decoding 8 rows is 8 rows times every weight of the model. MKL's sgemm handles those skinny
products with a row-major ``[out, in]`` weight by sweeping the weight once per block of about three
rows, so at 4-12 rows it reads the weights 2-4 times from memory: one thread, the 211 Linear shapes
of SmolLM2-135M (random weights, 30 layers + the output layer), 8 rows take 98 ms against 40 ms for
1 row. With each weight packed once in MKL's own format (``cblas_sgemm_pack``, which
``torch.ops.mkl._mkl_linear`` multiplies with; PyTorch's inductor uses it the same way for frozen
CPU models) 8 rows take 60 ms; at 1-3 rows the two are within 4%, from 16 rows on the plain product
is as fast or faster. In the model, a decode step of 8 rows at 132 cached tokens: 132 -> 104 ms
(the Linear layers 70 -> 59 ms, the output layer 26 -> 12 ms); 1 row: 59 ms either way. On another
VM (2026-12-04) 1-3 rows gain too, the output layer most: the body's Linears at 1 / 2 / 3 rows 36.3 /
55.0 / 67.4 ms plain against 32.9 / 46.2 / 59.2 packed, the output layer 10.4 / 22.2 / 33.5 against
4.7 / 9.1 / 14.1 (``F.linear`` at 3 rows cost more than at 8 there), and a one-row decode step at 140
cached tokens went 74.4 -> 63.5 ms (median of 12; the same greedy texts). So :func:`pack_linears`
keeps both: the packed copy serves inputs of ``MIN_ROWS``-``MAX_ROWS`` rows (one-row decoding
included), everything else (prefill, scoring, the filter's passes, the augment sampler's 48-row pool)
goes through ``F.linear`` with the original weight as before.

The cost is memory: the packed copies of SmolLM2-135M add about 0.9 GB of resident memory to the
0.54 GB of fp32 weights. ``TOOLFORMER_PACKED_LINEAR=0`` turns packing off.

Only for inference: the packed copy is taken once, so :func:`pack_linears` is applied by
``load_model`` (``pack_weights=True``, its default: generation, evaluation, the QA tool), not for
fine-tuning nor for augmentation (its sampling pool decodes 48 rows at a time; the pool measured no
faster packed: 4.5-6.1 s against 4.6 s for the same samples), and a layer whose weight changes
after packing (an in-place update, a new tensor) falls back to ``F.linear`` -- the result is never
computed from stale weights. Gradients, other dtypes and other devices use ``F.linear`` too. The
packed product is not bit-identical to ``F.linear`` (a different summation order: differences of
about 1e-6 relative), as ``F.linear`` itself is not across row counts.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

from toolformer.switches import switched_on

log = logging.getLogger(__name__)

MIN_ROWS, MAX_ROWS = 1, 12  # where packed beats (or, on some CPUs, equals) the plain product (docstring)
ENV = "TOOLFORMER_PACKED_LINEAR"


def available() -> bool:
    """Whether this PyTorch has the MKL packed sgemm ops (x86 builds with MKL)."""
    return (torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
            and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight"))


def enabled() -> bool:
    """Packing is on unless ``TOOLFORMER_PACKED_LINEAR`` is ``0`` (or ``false``/``no``/``off``)."""
    return switched_on(ENV)


def _forward(module: torch.nn.Linear, packed: torch.Tensor, ptr: int, version: int,
             x: torch.Tensor) -> torch.Tensor:
    weight = module.weight
    rows = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
    if (MIN_ROWS <= rows <= MAX_ROWS and x.dtype == torch.float32 and x.device.type == "cpu"
            and not torch.is_grad_enabled() and weight.data_ptr() == ptr and weight._version == version):
        y = torch.ops.mkl._mkl_linear(x.reshape(rows, x.shape[-1]).contiguous(), packed, weight,
                                      module.bias, rows)
        return y.view(*x.shape[:-1], y.shape[-1])
    return F.linear(x, weight, module.bias)


def pack_linears(model: torch.nn.Module) -> int:
    """Give every fp32 CPU ``nn.Linear`` of ``model`` a packed weight for few-row inputs.

    Returns how many layers were packed: 0 where MKL's packed ops are missing (ARM, macOS builds)
    or ``TOOLFORMER_PACKED_LINEAR=0``; the model then computes exactly as loaded. The weights and
    ``state_dict`` are untouched: the packed copy lives only in the layer's forward.
    """
    if not enabled():
        return 0
    if not available():
        log.info("this PyTorch has no MKL packed sgemm: few-row products use F.linear")
        return 0
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, torch.nn.Linear) or "forward" in vars(module):
                continue  # already packed (or a forward someone else set)
            w = module.weight
            if w.device.type != "cpu" or w.dtype != torch.float32 or w.dim() != 2:
                continue
            # (the pack does not depend on rows)
            packed = torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), 8)
            module.forward = functools.partial(_forward, module, packed, w.data_ptr(), w._version)
            count += 1
    return count


def unpack_linears(model: torch.nn.Module) -> int:
    """Undo :func:`pack_linears` (frees the packed copies); returns how many layers it restored."""
    count = 0
    for module in model.modules():
        fwd = vars(module).get("forward")
        ours = isinstance(fwd, functools.partial) and fwd.func is _forward
        if isinstance(module, torch.nn.Linear) and ours:
            del module.forward
            count += 1
    return count
