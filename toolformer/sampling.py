"""Sampling candidate API calls (paper section 2): score positions, then sample calls at the best.

For a tool's few-shot prompt P and a text x (tokens x_1..x_n of " " + x):

* :func:`score_positions` — one forward pass over [P(x), x] gives, at every position i,
  ``p_i = p(" [" | P(x), x_<i)`` (" [" is one token in SmolLM2's vocabulary: the paper's <API>).
* :func:`select_positions` — the top k positions with ``p_i > tau_s``.
* :func:`sample_calls` — m continuations of [P(x), x_<i, " ["] per kept position, stopping at a
  token holding "]"; samples that never close are dropped, the rest parsed with the shared call
  format (:func:`parse_sampled_call`), only the tool's own name accepted.

P(x) = head + x + tail where the head (task sentence and examples, up to ``Input:``) is the same
for every document: :class:`PromptCache` encodes it once and every batch starts from a copy of
its KV cache. The scoring pass returns its cache of [P, x] for all rows, and sampling at
position i copies the row's keys of [P, x_<i] into a decoding row (explicit position ids
continue at i), so no prefix is ever recomputed. Decoding is continuous batching
(:class:`RowPool`): a pool of rows kept full across positions, documents, scoring batches and
tools, each ended sample's row refilled at once with the next waiting position.

Randomness is per sample: each (document, tool, position, sample) draws from its own
``random.Random`` seeded by a stable hash, by inverse-CDF sampling, so the samples of a document
do not depend on its batch neighbours, the input order or the number of workers.
Run by the pipeline (``toolformer augment``); tests call these functions on the tiny model.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache

from toolformer.call_format import DEFAULT_FORMAT, CallFormat, CallSyntaxError, parse_call
from toolformer.cache_api import cache_keyword, output_cache
from toolformer.row_pool import (  # noqa: F401  (the decoding pool, re-exported)
    DECODE_ROWS_ACCELERATOR,
    DECODE_ROWS_CPU,
    POOL_SLACK,
    RowPool,
    _cdfs,
    _draw,
    decode_rows_for,
)

INPUT_SLOT = "{input}"


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from a stable hash of ``parts`` (Python's ``hash()`` differs per process)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclasses.dataclass(frozen=True)
class PromptParts:
    """P(x) = head + x + tail, then the copy " " + x the model is asked to write."""

    head: str  # task sentence and examples up to "Input:" (trailing spaces moved to the middle)
    gap: str  # the spaces between "Input:" and the slot
    tail: str  # "\nOutput:" (trailing spaces dropped: the copy of x brings its own space)

    @classmethod
    def from_template(cls, template: str) -> PromptParts:
        if template.count(INPUT_SLOT) != 1:
            raise ValueError(f"a prompt template needs exactly one {INPUT_SLOT} slot")
        before, after = template.split(INPUT_SLOT)
        head = before.rstrip(" ")
        return cls(head=head, gap=before[len(head) :], tail=after.rstrip(" "))

    def middle(self, text: str) -> str:
        """What follows the cached head: the slot filled with x, then the tail."""
        return self.gap + text + self.tail


class PromptCache:
    """The few-shot head of one tool's prompt, encoded once; copies of its KV cache per batch."""

    def __init__(self, model, tokenizer, template: str):
        self.parts = PromptParts.from_template(template)
        self.head_ids = tokenizer(self.parts.head, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            # A cache of full layers, not the model's default: Gemma's would keep only the last
            # `sliding_window` keys of its sliding layers, and rows are expanded from these keys.
            out = model(input_ids=torch.tensor([self.head_ids], device=model.device),
                        **{cache_keyword(model): DynamicCache()}, use_cache=True)
        self._layers = [(layer.keys, layer.values) for layer in output_cache(out).layers]

    def __len__(self) -> int:
        return len(self.head_ids)

    @property
    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The head's (keys, values) per layer, each (1, kv_heads, len(self), d)."""
        return self._layers

    def expanded(self, batch: int) -> DynamicCache:
        """A fresh cache holding the head for ``batch`` rows (the model appends to it in place)."""
        return DynamicCache(
            [
                (k.expand(batch, -1, -1, -1).contiguous(), v.expand(batch, -1, -1, -1).contiguous())
                for k, v in self._layers
            ]
        )


@dataclasses.dataclass
class ScoredBatch:
    """The scoring pass of a batch of documents, kept for sampling.

    ``cache`` holds [head, middle_b, x_b, pad] for every row b (shape (B, ..., H + L, d));
    ``text_start[b]`` is the index of x_1 of row b in that sequence; ``mask`` (LongTensor of
    shape (B, H + L)) marks real tokens; ``probs[b]`` (FloatTensor of shape (n_b,)) is p_i.
    """

    cache: DynamicCache
    mask: torch.Tensor
    text_start: list[int]
    probs: list[torch.Tensor]
    head: PromptCache | None = None  # the head every row begins with (the row pool keeps it once)


@torch.no_grad()
def score_positions(
    model,
    prompt: PromptCache,
    middle_ids: Sequence[Sequence[int]],
    text_ids: Sequence[Sequence[int]],
    api_id: int,
    pad_id: int,
) -> ScoredBatch:
    """p_i = p(api | P(x), x_<i) for every position of every document, one forward pass.

    ``middle_ids[b]`` are the tokens of ``prompt.parts.middle(x_b)``; ``text_ids[b]`` those of
    " " + x_b. Rows are right-padded after the shared head, so default position ids are right.
    """
    rows = [list(m) + list(t) for m, t in zip(middle_ids, text_ids)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    suffix_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
        suffix_mask[b, : len(r)] = 1
    head = len(prompt)
    mask = torch.cat([torch.ones((len(rows), head), dtype=torch.long), suffix_mask], dim=1)
    cache = prompt.expanded(len(rows))
    # Logits only where they predict a text token: the last (width - min middle + 1) positions.
    first = min(len(m) for m in middle_ids) - 1
    out = model(
        input_ids=ids.to(model.device),
        attention_mask=mask.to(model.device),
        **{cache_keyword(model): cache},
        use_cache=True,
        logits_to_keep=width - first,
    )
    logits = out.logits.float()  # log p(api) without materialising log-probs over the vocabulary
    logp_api = (logits[..., api_id] - torch.logsumexp(logits, dim=-1)).cpu()  # (B, width - first)
    probs = []
    for b, (m, t) in enumerate(zip(middle_ids, text_ids)):
        # logits at suffix index s predict token s + 1; x_i (0-based) sits at len(m) + i.
        start = len(m) - 1 - first
        probs.append(logp_api[b, start : start + len(t)].exp())
    return ScoredBatch(
        cache=output_cache(out), mask=mask, text_start=[head + len(m) for m in middle_ids], probs=probs,
        head=prompt,
    )


def select_positions(probs: torch.Tensor, k: int, tau_s: float, first: int = 1) -> list[int]:
    """The top ``k`` positions from ``first`` on with ``p_i > tau_s`` (ties to the earlier
    position), in text order.

    Differs from the paper: position 0 (a call before the first token) is skipped by default.
    There the filter compares how two prefixes predict the text's first tokens, with no text
    before the call for it to be computed from; on GSM8K with SmolLM2-135M such calls were kept
    by that noise alone (e.g. "[Calculator(2 * 5) -> 10]Marcy is a makeup artist ...").
    """
    above = (probs > tau_s).tolist()  # compared in the tensor's dtype: p == tau_s is not above
    order = sorted((i for i in range(first, len(probs)) if above[i]), key=lambda i: (-float(probs[i]), i))
    return sorted(order[:k])


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    row: int  # the document's row in the scored batch
    position: int  # i: the call goes before x_i
    seed: int  # from stable_seed(seed, doc_id, tool, position, sample)


def stop_token_ids(tokenizer, fmt: CallFormat = DEFAULT_FORMAT) -> tuple[frozenset[int], frozenset[int]]:
    """(closing, abandoning) token ids: a token holding "]" or an arrow ends a call; a newline
    or end-of-sequence abandons it (the call format forbids newlines inside a call)."""
    closing, abandoning = set(), set()
    for tid in range(len(tokenizer)):
        s = tokenizer.decode([tid])
        if fmt.end in s or any(a in s for a in fmt.arrows):
            closing.add(tid)
        elif "\n" in s:
            abandoning.add(tid)
    abandoning.update(t for t in (tokenizer.eos_token_id,) if t is not None)
    abandoning.difference_update(closing)
    return frozenset(closing), frozenset(abandoning)


@torch.no_grad()
def sample_calls(
    model,
    scored: ScoredBatch,
    requests: Sequence[SampleRequest],
    api_id: int,
    closing: frozenset[int],
    abandoning: frozenset[int],
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    max_cache_tokens: int = 65536,
    viable: Callable[[list[int]], bool] | None = None,
    max_rows: int | None = None,
) -> list[list[int] | None]:
    """Sample one continuation of [P(x), x_<i, " ["] per request; ``None`` if it never closed.

    ``viable(tokens)`` may say early that a sample can no longer become an accepted call (it
    does not start with the tool's name): it is dropped at once instead of decoded to its end,
    which leaves the accepted samples unchanged (each sample draws from its own generator).

    One :class:`RowPool` over the requests of one scoring batch (``AugmentModel.sample`` keeps
    one pool across its batches): samples of a position share a row until they draw different
    tokens, ended rows are refilled at once with waiting positions, and the samples equal
    decoding each one by itself.
    """
    pool = RowPool(model, api_id, closing, abandoning, max_rows=max_rows, max_cache_tokens=max_cache_tokens)
    out = pool.add(scored, requests, max_new_tokens, temperature, viable)
    pool.run()
    return out


def call_start_check(tokenizer, tool: str) -> Callable[[list[int]], bool]:
    """``viable`` for :func:`sample_calls`: the text so far must agree with ``Tool(``."""
    opening = tool + "("

    def viable(tokens: list[int]) -> bool:
        text = tokenizer.decode(tokens)
        return opening.startswith(text) or text.startswith(opening)

    return viable


def parse_sampled_call(
    tool: str, continuation: str, fmt: CallFormat = DEFAULT_FORMAT, takes_input: bool = True
) -> str | None:
    """The input of a sampled call ``"[" + continuation``, or ``None`` if it is not a clean call
    of ``tool``. Text after the closing "]" (same token) is cut; a call the model closed with an
    arrow is read without the result it would have invented (the tool supplies the result)."""
    text = fmt.start + continuation
    cuts = [p for p in [text.find(fmt.end)] + [text.find(a) for a in fmt.arrows] if p >= 0]
    if not cuts:
        return None
    text = text[: min(cuts)].rstrip() + fmt.end
    try:
        call = parse_call(text, fmt, known_tools=(tool,), no_input_tools=() if takes_input else (tool,))
    except CallSyntaxError:
        return None
    if not takes_input and call.input.strip():
        return None
    return call.input.strip()
