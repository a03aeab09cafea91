"""The KV-cache argument of transformers models under both names: ``cache`` (transformers >= 5.24)
and ``past_key_values`` (before; deprecated since, removed in 5.40). Used by sampling, filtering
and generation so none of them passes a deprecated argument."""

from __future__ import annotations

import inspect


def cache_keyword(model) -> str:
    """The name of ``model.forward``'s KV-cache argument: ``cache`` since transformers 5.24 renamed
    it (``past_key_values`` still works there but warns that it goes in 5.40), ``past_key_values``
    before, or for a model whose forward takes only ``**kwargs``."""
    try:
        params = inspect.signature(model.forward).parameters  # follows the deprecation wrapper
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out):
    """The KV cache of a forward pass's output: ``out.cache`` since transformers 5.24 (reading
    ``out.past_key_values`` there logs a deprecation warning), ``out.past_key_values`` before."""
    cache = out.get("cache")  # dict.get: neither name goes through the deprecated property
    return cache if cache is not None else out.get("past_key_values")
