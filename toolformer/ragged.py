"""Linear layers on a ragged decode step's real tokens only.

When one row of a batch gets a tool's result injected after its arrow (six or seven tokens) while
the other rows each feed one token, the decode step is ``(B, W)`` with ``W`` the longest feed, the
shorter rows right-aligned after masked holes (:meth:`toolformer.decoding.DecodeLoop._decode`). The
model would multiply every weight with all ``B * W`` positions: at batch 8 and ``W = 7``, 56 rows of
which 8 + 6 are real; such a step took 2-3 times a one-token step (200 vs 93 ms) and the injection
steps were a quarter of a batch's time.

:func:`real_rows_only` makes the model's ``nn.Linear`` layers -- nearly all of a small model's
FLOPs -- take the real positions alone: a forward pre-hook gathers them from the ``(B, W, in)``
input, the layer runs on ``(n, in)``, a forward hook scatters the result back into ``(B, W, out)``
with zeros at the holes. Everything else (norms, rotary embeddings, attention) still sees the full
padded step, so the cache layout is unchanged. What a hole's position computes never reaches a real
one: its key and value are masked out of every row's attention (they were pad-token keys before, zero
keys now), and the other operations are per token. The real positions' outputs equal the padded
computation's up to the summation order of a product with another row count (as ``F.linear``'s own
results differ across row counts).

The same idea as FlashAttention's ``unpad_input`` (varlen) or packed sequences in fine-tuning, applied
only where the layout is per token: this is for models whose cache layers are all full attention
(``DynamicLayer``); a recurrent or convolutional layer would carry a hole into later positions,
so :meth:`DecodeLoop._decode` does not use it there (nor with a single row, or no holes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def real_rows_only(model: torch.nn.Module, real: torch.Tensor) -> Iterator[int]:
    """Within the block, each ``nn.Linear`` of ``model`` given a ``(B, W, in)`` input computes only
    the positions where ``real`` (a ``(B, W)`` bool mask) is true; others get zeros.

    Inputs of any other leading shape (the output layer at ``logits_to_keep=1``: ``(B, 1, in)``)
    run as usual. Yields the number of layers hooked. The hooks are removed on exit, error or not.
    """
    shape = tuple(real.shape)
    index = real.reshape(-1).nonzero().squeeze(1)
    n = int(index.numel())

    def gather(module, args):
        x = args[0]
        if tuple(x.shape[:-1]) != shape:
            return None
        module._ragged_out = True
        return (x.reshape(-1, x.shape[-1]).index_select(0, index),) + tuple(args[1:])

    def scatter(module, args, y):
        if not module.__dict__.pop("_ragged_out", False):
            return None
        full = y.new_zeros(shape[0] * shape[1], y.shape[-1])
        full.index_copy_(0, index, y)
        return full.view(*shape, y.shape[-1])

    handles = []
    try:
        if 0 < n < real.numel():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    handles.append(module.register_forward_pre_hook(gather))
                    handles.append(module.register_forward_hook(scatter))
        yield len(handles) // 2
    finally:
        for handle in handles:
            handle.remove()
