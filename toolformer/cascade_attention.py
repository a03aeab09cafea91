"""Attention over a prompt head shared by many rows, read once per step (cascade attention).

The augment sampler's row pool (:mod:`toolformer.row_pool`) decodes up to 48 rows a step, each the
continuation of [P(x), x_<i, " ["]. P(x) begins with the tool's few-shot head -- the same 471 tokens
(the Calculator's) for every row. Stored per row, each step's attention reads that head's keys and
values once per row: at 48 rows of ~650 cached tokens, 48 x 650 x 46 KB (30 layers, 3 key/value
heads of 64, fp32) = 1.4 GB a step against 0.54 GB of weights, which made sampling run at 12% of the
matmul rate. Here the head is kept once, ``(1, kv_heads, H, d)`` per layer, and a row's cache holds its
own columns only; a step's attention is computed in two parts and merged exactly:

* the head: the queries of all rows that share it, stacked as one batch of ``rows x heads/kv_heads``
  queries per key/value head, against its keys (one read of the head for all of them);
* the row's own keys, with the step's mask (torch's CPU flash kernel, grouped-query);

each part returns its log-sum-exp, and the two are combined as softmax over the union would be:
``o = (o1 e^l1 + o2 e^l2) / (e^l1 + e^l2)`` -- the split FlashAttention uses for its blocks and
FlashInfer's cascade / "shared prefix" kernels for exactly this case.

It is switched on per forward call: :func:`install` wraps transformers' ``sdpa`` attention function so
that a forward given ``cascade=Cascade(...)`` (transformers passes extra model kwargs through to the
attention function) computes this, and every other forward goes to the library's function unchanged.
Only for the CPU (the log-sum-exp comes from ``_scaled_dot_product_flash_attention_for_cpu``), full
attention layers and inference; :func:`usable` says whether a model qualifies, and
``TOOLFORMER_CASCADE=0`` turns it off (every row then holds its own copy of the head, as before).
"""

from __future__ import annotations

import dataclasses

import torch

from toolformer.switches import switched_on

ENV = "TOOLFORMER_CASCADE"  # 0 / false / no / off: rows keep their own copy of the head


@dataclasses.dataclass
class Cascade:
    """The shared heads of one forward call.

    ``heads[h][layer]`` is the ``(keys, values)`` of head ``h`` at ``layer``, each ``(1, kv_heads,
    length, d)``; ``rows[h]`` are the batch rows (a LongTensor) whose sequence begins with head ``h``
    (rows in no group attend to their own keys only).
    """

    heads: list[list[tuple[torch.Tensor, torch.Tensor]]]
    rows: list[torch.Tensor]


def _flash(query, key, value, mask, scale):
    """(output, log-sum-exp) of torch's CPU flash attention."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    return flash(query, key, value, attn_mask=mask, scale=scale)[:2]


def cascade_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, cascade: Cascade, scaling: float | None = None):
    """Attention of ``query`` (B, heads, q, d) over each row's head (if any) then its own ``key``/``value``
    (B, kv_heads, L, d) under ``attention_mask`` (bool or additive, (B, 1, q, L)); (B, q, heads, d)."""
    b, h, q, d = query.shape
    if attention_mask is None and q > 1:
        raise ValueError("cascade attention of several query tokens needs the step's causal mask")
    kv = key.shape[1]
    rep = h // kv
    mask = attention_mask
    if mask is not None and mask.dtype == torch.bool:
        # (the CPU flash op takes an additive mask of the query dtype only)
        mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill_(~mask, -torch.inf)
    out, lse = _flash(query, key, value, mask, scaling)  # (B, heads, q, d), (B, heads, q): a fresh tensor
    for head, rows in zip(cascade.heads, cascade.rows):
        if rows.numel() == 0:
            continue
        hk, hv = head[module.layer_idx]
        n = rows.numel()
        # (n, heads, q, d) -> (1, kv_heads, n * rep * q, d): every query of a key/value head, all rows
        qs = query.index_select(0, rows).reshape(n, kv, rep * q, d)
        qs = qs.transpose(0, 1).reshape(1, kv, n * rep * q, d)
        o1, l1 = _flash(qs, hk, hv, None, scaling)
        o1 = o1.reshape(kv, n, rep * q, d).transpose(0, 1).reshape(n, h, q, d)
        l1 = l1.reshape(kv, n, rep * q).transpose(0, 1).reshape(n, h, q)
        o2, l2 = out.index_select(0, rows), lse.index_select(0, rows)
        top = torch.maximum(l1, l2)
        w1, w2 = torch.exp(l1 - top), torch.exp(l2 - top)
        merged = (o1 * w1[..., None] + o2 * w2[..., None]) / (w1 + w2)[..., None]
        out.index_copy_(0, rows, merged)
    return out.transpose(1, 2).contiguous(), None


def install() -> None:
    """Wrap transformers' ``sdpa`` attention: a call with ``cascade=`` runs :func:`cascade_forward`,
    every other call the library's function (idempotent)."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if getattr(current, "toolformer_cascade", False):
        return

    def sdpa_or_cascade(module, query, key, value, attention_mask, *args, cascade: Cascade | None = None,
                        **kwargs):
        if cascade is None:
            return current(module, query, key, value, attention_mask, *args, **kwargs)
        return cascade_forward(module, query, key, value, attention_mask, cascade, kwargs.get("scaling"))

    sdpa_or_cascade.toolformer_cascade = True
    AttentionInterface.register("sdpa", sdpa_or_cascade)


def usable(model) -> bool:
    """Whether ``model`` can take ``cascade=``: sdpa attention on the CPU, every layer full attention
    (a sliding-window layer must not see a head its window has left), torch's CPU flash op present."""
    if not switched_on(ENV):
        return False
    config = model.config
    types = getattr(config, "layer_types", None)
    if types:
        full = all(t == "full_attention" for t in types)
    else:
        full = getattr(config, "sliding_window", None) is None
    ok = (model.device.type == "cpu" and getattr(config, "_attn_implementation", None) == "sdpa" and full
          and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"))
    if ok:
        install()
    return ok
