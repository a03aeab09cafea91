"""Grouped-query attention on the CPU without copying the key/value cache.

SmolLM2-135M has 9 query heads over 3 key/value heads. transformers' ``sdpa`` attention
(``transformers.integrations.sdpa_attention.sdpa_attention_forward``) hands the grouping to torch
(``enable_gqa=True``) only when no attention mask is given -- its rule is written for CUDA, where a
mask with GQA falls back to the math kernel. With a mask it regroups the query for a single query
token (``pack_gqa``, no copy), and otherwise repeats every key/value head three times
(``repeat_kv``): a copy of the whole cache, in every layer, for every masked forward of more than one
token. In a batch-8 generation step that injects a tool's result (7 tokens, 155 cached), those 60
copies of ``(8, 3, 3, 155, 64)`` took 101 of the step's 205 ms; the attention of such a step's layer
2.2 ms with the copy, 0.45 ms without.

On the CPU, torch's flash kernel (``_scaled_dot_product_flash_attention_for_cpu``) takes a mask with
``enable_gqa=True`` and returns the same numbers as the repeated heads (measured here: max difference
0.0 at shapes of generation, of the augment scorer and of a prefill). :func:`enable` makes
transformers use that path on the CPU for masked forwards of more than one query token, without
gradients (fine-tuning keeps the library's path; the one-token path keeps ``pack_gqa``, which
measured faster than ``enable_gqa`` there). Other devices are untouched. ``TOOLFORMER_CPU_GQA=0``
turns it off.

It replaces the library's ``use_gqa_in_sdpa`` in its module (the function the attention calls to
decide); a transformers without that function, or with another signature, is left as it is (the
attention is then only slower, never different).
"""

from __future__ import annotations

import inspect
import logging

import torch

from toolformer.switches import switched_on

log = logging.getLogger(__name__)

ENV = "TOOLFORMER_CPU_GQA"


def _cpu_masked_gqa(original):
    def use_gqa_in_sdpa(attention_mask, key, value):
        if (key.device.type == "cpu" and not torch.is_grad_enabled() and attention_mask is not None
                and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1
                and key.shape[-1] == value.shape[-1]):
            return True
        return original(attention_mask, key, value)

    use_gqa_in_sdpa.toolformer_original = original
    return use_gqa_in_sdpa


def enabled() -> bool:
    return switched_on(ENV)


def enable() -> bool:
    """Use torch's GQA for masked multi-token CPU attention (idempotent). True if it is in place."""
    if not enabled() or tuple(int(x) for x in torch.__version__.split(".")[:2]) < (2, 5):
        return False  # enable_gqa arrived in torch 2.5
    try:
        from transformers.integrations import sdpa_attention
    except ImportError:
        return False
    current = getattr(sdpa_attention, "use_gqa_in_sdpa", None)
    if current is None:
        log.info("transformers has no use_gqa_in_sdpa: masked CPU attention repeats the KV heads")
        return False
    if hasattr(current, "toolformer_original"):
        return True
    if list(inspect.signature(current).parameters) != ["attention_mask", "key", "value"]:
        log.info("transformers' use_gqa_in_sdpa has another signature: left as it is")
        return False
    sdpa_attention.use_gqa_in_sdpa = _cpu_masked_gqa(current)
    return True


def disable() -> None:
    """Put the library's own rule back (tests, comparisons)."""
    from transformers.integrations import sdpa_attention

    current = getattr(sdpa_attention, "use_gqa_in_sdpa", None)
    if current is not None and hasattr(current, "toolformer_original"):
        sdpa_attention.use_gqa_in_sdpa = current.toolformer_original
