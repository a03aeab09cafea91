"""Sliding-window perplexity (evaluation/perplexity.py) on the tiny model."""

import math

import pytest
import torch

from evaluation.perplexity import perplexity, window_spans

TEXT = ("Out of 1400 participants, 400 passed the test. The quick brown fox jumps over the lazy dog. "
        "In 2019 the town had 1,280 people; in 2020 it had 1,350, an increase of 70.")


@pytest.mark.parametrize("n, window, stride, expected", [
    (10, 4, 2, [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]),
    (10, 4, 3, [(0, 4, 1), (3, 7, 4), (6, 10, 7)]),
    (3, 8, 4, [(0, 3, 1)]),
    (1, 8, 4, []),
])
def test_window_spans(n, window, stride, expected):
    spans = window_spans(n, window, stride)
    assert spans == expected
    scored = [t for _, end, first in spans for t in range(first, end)]
    assert scored == list(range(1, n))  # every token but the first, exactly once


def test_window_spans_rejects_bad_settings():
    for stride in (0, 4, 5):
        with pytest.raises(ValueError, match="stride"):
            window_spans(10, 4, stride)


def test_one_window_equals_the_models_own_loss(tiny_model):
    model, tok = tiny_model
    ids = tok(TEXT, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()  # mean NLL of tokens 1..n-1
    result = perplexity(model, tok, TEXT, window=4096, stride=4096, progress=False)
    assert result.tokens == ids.shape[1] - 1 and result.windows == 1
    assert result.nll == pytest.approx(loss, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(loss), rel=1e-5)


def test_sliding_windows_score_each_token_once_with_limited_context(tiny_model):
    model, tok = tiny_model
    text = TEXT[:90]
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    window, stride = 16, 8
    expected = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):  # token t, seen with the context its window gives it
            begin = max(b for b, _, first in window_spans(len(ids), window, stride) if first <= t)
            logits = model(ids[begin:t].unsqueeze(0)).logits[0, -1]
            expected -= torch.log_softmax(logits, -1)[ids[t]].item()
    result = perplexity(model, tok, text, window=window, stride=stride, progress=False)
    assert result.tokens == len(ids) - 1
    assert result.nll == pytest.approx(expected / (len(ids) - 1), rel=1e-4)
    limited = perplexity(model, tok, text, window=window, stride=stride, max_windows=2, progress=False)
    assert (limited.windows, limited.tokens) == (2, 15 + 8)
