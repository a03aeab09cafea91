"""Perplexity on held-out plain text with tools disabled (the paper's Table 8 check).

The paper asks that learning to call tools does not hurt plain language modelling: the
fine-tuned model, scored on ordinary text with API calls disabled, should be as good as the base
model. "Disabled" is automatic here: we only score the given text's tokens, so no call is ever
generated or inserted.

The text is tokenized once and scored with a sliding window (the method of the transformers guide
"Perplexity of fixed-length models"): each window of ``window`` tokens starts ``stride`` tokens after
the previous one, and only tokens not scored by an earlier window count, each seeing between
``window - stride`` and ``window - 1`` tokens of context. The very first token has no context and is
not scored.

Run: ``toolformer evaluate --task perplexity --data ../shared/data/wikitext/wiki.test.raw --limit 20``
"""

from __future__ import annotations

import dataclasses
import math

import torch
from tqdm.auto import tqdm

from toolformer.models import leading_ids


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # tokens scored
    windows: int


def window_spans(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first_scored)`` for each window: tokens ``first_scored..end-1`` are scored.

    >>> window_spans(10, 4, 2)
    [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    """
    if window < 2 or not 1 <= stride < window:
        # Windows must overlap by a token: a window's first token has no context and is not scored.
        raise ValueError(f"need window >= 2 and 1 <= stride < window, got window={window}, stride={stride}")
    spans, scored_until = [], 1  # token 0 has no context
    begin = 0
    while scored_until < n_tokens:
        end = min(begin + window, n_tokens)
        spans.append((begin, end, max(scored_until, begin + 1)))
        scored_until = end
        begin += stride
    return spans


@torch.inference_mode()
def perplexity(model, tokenizer, text: str, window: int = 1024, stride: int = 512,
               max_windows: int | None = None, progress: bool = True) -> PerplexityResult:
    """Sliding-window perplexity of ``text`` under ``model`` (at most ``max_windows`` windows)."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    # Each window starts with the tokens the tokenizer would put first (Gemma's <bos>), never scored.
    lead = torch.tensor(leading_ids(tokenizer), dtype=ids.dtype)
    window = min(window, model.config.max_position_embeddings - len(lead))
    spans = window_spans(len(ids), window, min(stride, window - 1))
    if max_windows is not None:
        spans = spans[:max_windows]
    if not spans:
        raise ValueError("the text has fewer than two tokens: nothing to score")
    total_nll, total_tokens = 0.0, 0
    for begin, end, first in tqdm(spans, desc="perplexity", unit="window", disable=not progress):
        chunk = torch.cat([lead, ids[begin:end]]).unsqueeze(0).to(model.device)
        logits = model(chunk).logits[0, len(lead):].float()
        # logits at position j predict token j + 1: score targets first..end-1.
        log_probs = torch.log_softmax(logits[first - begin - 1:end - begin - 1], dim=-1)
        targets = chunk[0, len(lead) + first - begin:len(lead) + end - begin]
        total_nll -= log_probs.gather(1, targets.unsqueeze(1)).sum().item()
        total_tokens += len(targets)
    nll = total_nll / total_tokens
    return PerplexityResult(math.exp(nll), nll, total_tokens, len(spans))
