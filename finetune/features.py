"""Turn texts with calls into causal-LM training features, optionally masking the tool results.

The paper's objective is the plain LM loss over the texts *with* calls and their results. With
``mask_results`` the tokens of each result (the text between the arrow and the closing marker of
``[Tool(input) -> result]``) get label -100, so the model learns when and how to call but is not
taught to predict what the tool answers (at inference the tool writes the result).

Used by finetune/train.py; run through ``toolformer finetune ... --mask-results``.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolformer.call_format import DEFAULT_FORMAT, CallFormat, iter_calls
from toolformer.models import leading_ids

IGNORE_INDEX = -100  # the label value the HF loss skips


@dataclass
class EncodeStats:
    truncated: int = 0  # texts cut at max_length
    masked_tokens: int = 0
    label_tokens: int = 0  # tokens that count in the loss


def result_spans(text: str, fmt: CallFormat = DEFAULT_FORMAT) -> list[tuple[int, int]]:
    """Character spans of the results of the well-formed calls in ``text``.

    A span runs from just after the arrow to the closing marker, so the space after the arrow is
    included (in byte-level BPE it belongs to the result's first token).
    """
    spans = []
    for call in iter_calls(text, fmt):
        if not (call.ok and call.has_result):
            continue
        start, end = call.span
        close = end - len(fmt.end)
        body = text[start:close]
        # The result cannot contain an arrow, so the last arrow in the call is the separator.
        arrow_at, arrow = max((body.rfind(a), a) for a in fmt.arrows)
        spans.append((start + arrow_at + len(arrow), close))
    return spans


def masked_labels(input_ids: list[int], offsets: list[tuple[int, int]],
                  spans: list[tuple[int, int]]) -> list[int]:
    """``input_ids`` with every token that overlaps a result span replaced by -100.

    ``offsets`` (from the tokenizer's ``offsets_mapping``) are the tokens' character spans.
    """
    labels = list(input_ids)
    if not spans:
        return labels
    for i, (a, b) in enumerate(offsets):
        if b > a and any(a < end and b > start for start, end in spans):
            labels[i] = IGNORE_INDEX
    return labels


def encode_texts(texts: list[str], tokenizer, max_length: int, mask_results: bool = False,
                 fmt: CallFormat = DEFAULT_FORMAT, stats: EncodeStats | None = None) -> dict[str, list]:
    """Tokenize a batch: ``input_ids``, ``attention_mask``, ``labels`` (lists, unpadded).

    Each text ends with EOS so documents do not run into each other; texts longer than
    ``max_length`` are cut (the paper's sequence length is 1024) and counted in ``stats``.
    """
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=mask_results, verbose=False)
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    lead = leading_ids(tokenizer)  # Gemma's <bos>: what the model saw first in pre-training (never a label)
    keep = max_length - 1 - len(lead)  # room for EOS
    for n, (text, ids) in enumerate(zip(texts, enc["input_ids"])):
        if len(ids) > keep and stats is not None:
            stats.truncated += 1
        ids = ids[:keep]
        if mask_results:
            labels = masked_labels(ids, enc["offset_mapping"][n][:keep], result_spans(text, fmt))
        else:
            labels = list(ids)
        ids = lead + list(ids) + [tokenizer.eos_token_id]
        labels = [IGNORE_INDEX] * len(lead) + list(labels) + [tokenizer.eos_token_id]
        if stats is not None:
            stats.masked_tokens += sum(1 for x in labels[len(lead):] if x == IGNORE_INDEX)
            stats.label_tokens += sum(1 for x in labels if x != IGNORE_INDEX)
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append(labels)
    return out


class PadCollator:
    """Stack a list of :func:`encode_texts` features into int64 tensors, padded to the batch's longest.

    The same tensors as ``transformers.DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)``
    (``input_ids`` padded with the pad token, ``attention_mask`` with 0, ``labels`` with -100, on
    the tokenizer's padding side) built with one ``torch.tensor`` call per field instead of
    ``tokenizer.pad``'s per-example Python work: the collator runs on every micro-batch, inside
    the training loop.
    """

    def __init__(self, tokenizer):
        pad = tokenizer.pad_token_id
        if pad is None:  # load_model sets one; without it there is nothing to pad input_ids with
            raise ValueError("the tokenizer has no pad token")
        self.pad = {"input_ids": pad, "attention_mask": 0, "labels": IGNORE_INDEX}
        self.left = tokenizer.padding_side == "left"

    def __call__(self, features: list[dict]) -> dict:
        import torch

        out = {}
        for key in features[0]:
            rows = [list(f[key]) for f in features]
            longest = max(map(len, rows))
            fill = self.pad.get(key, 0)
            if self.left:
                rows = [[fill] * (longest - len(r)) + r for r in rows]
            else:
                rows = [r + [fill] * (longest - len(r)) for r in rows]
            out[key] = torch.tensor(rows, dtype=torch.long)
        return out
