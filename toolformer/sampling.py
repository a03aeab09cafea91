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
position i reuses it with the keys from x_i on masked out (explicit position ids continue at i),
so no prefix is ever recomputed and all samples of a batch of documents decode together.

Randomness is per sample: each (document, tool, position, sample) draws from its own
``random.Random`` seeded by a stable hash, by inverse-CDF sampling, so the samples of a document
do not depend on its batch neighbours, the input order or the number of workers.
Run by the pipeline (``toolformer augment``); tests call these functions on the tiny model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from toolformer.call_format import DEFAULT_FORMAT, CallFormat, CallSyntaxError, parse_call

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
            out = model(input_ids=torch.tensor([self.head_ids], device=model.device), use_cache=True)
        self._layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]

    def __len__(self) -> int:
        return len(self.head_ids)

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
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=width - first,
    )
    logp_api = torch.log_softmax(out.logits.float(), dim=-1)[..., api_id].cpu()  # (B, width - first)
    probs = []
    for b, (m, t) in enumerate(zip(middle_ids, text_ids)):
        # logits at suffix index s predict token s + 1; x_i (0-based) sits at len(m) + i.
        start = len(m) - 1 - first
        probs.append(logp_api[b, start : start + len(t)].exp())
    return ScoredBatch(
        cache=out.past_key_values, mask=mask, text_start=[head + len(m) for m in middle_ids], probs=probs
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


def _draw(logits: torch.Tensor, rng: random.Random, temperature: float) -> int:
    """Inverse-CDF sampling with a per-sample uniform draw (greedy at temperature 0)."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    cdf = torch.cumsum(torch.softmax(logits / temperature, dim=-1), dim=-1, dtype=torch.float64)
    u = rng.random() * float(cdf[-1])
    return min(int(torch.searchsorted(cdf, torch.tensor([u], dtype=cdf.dtype))), len(cdf) - 1)


class _PreallocatedLayer(DynamicLayer):
    """A cache layer whose storage holds the whole decode from the start: ``update`` writes the
    new keys in place, where DynamicLayer's ``torch.cat`` copied the whole cache at every step."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, extra: int):
        super().__init__()
        r, h, n, d = keys.shape
        self._k = keys.new_empty((r, h, n + extra, d))
        self._v = values.new_empty((r, h, n + extra, d))
        self._k[:, :, :n], self._v[:, :, :n] = keys, values
        self._len = n
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._views()

    def _views(self) -> None:
        self.keys, self.values = self._k[:, :, : self._len], self._v[:, :, : self._len]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        t = key_states.shape[-2]
        self._k[:, :, self._len : self._len + t] = key_states
        self._v[:, :, self._len : self._len + t] = value_states
        self._len += t
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k[indices], self._v[indices]
        self._views()


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
    max_rows: int = 32,
    viable: Callable[[list[int]], bool] | None = None,
) -> list[list[int] | None]:
    """Sample one continuation of [P(x), x_<i, " ["] per request; ``None`` if it never closed.

    ``viable(tokens)`` may say early that a sample can no longer become an accepted call (it
    does not start with the tool's name): it is dropped at once instead of decoded to its end,
    which leaves the accepted samples unchanged (each row draws from its own generator).

    Each request reuses its row of the scoring cache: keys of x_i.. and padding are masked out and
    the position ids continue at i, which equals running [P(x), x_<i, " ["] afresh. Requests are
    decoded ``max_rows`` at a time; finished rows leave the batch once half of it has finished
    (compacting copies the cache, so not at every step).
    """
    out: list[list[int] | None] = [None] * len(requests)
    for chunk_start in range(0, len(requests), max_rows):
        chunk = list(range(chunk_start, min(len(requests), chunk_start + max_rows)))
        rows = torch.tensor([requests[r].row for r in chunk])
        visible = torch.tensor([scored.text_start[requests[r].row] + requests[r].position for r in chunk])
        keep_keys = int(visible.max())  # keys beyond every row's prefix are never attended to
        cache = DynamicCache()
        cache.layers = [
            _PreallocatedLayer(
                layer.keys[rows, :, :keep_keys], layer.values[rows, :, :keep_keys], max_new_tokens
            )
            for layer in scored.cache.layers
        ]
        mask = scored.mask[rows, :keep_keys] * (torch.arange(keep_keys)[None, :] < visible[:, None])
        position = visible.clone()  # the position id of " [" is the length of [P, x_<i]
        token = torch.full((len(chunk),), api_id, dtype=torch.long)
        rngs = [random.Random(requests[r].seed) for r in chunk]
        slots = list(range(len(chunk)))  # batch row -> index into chunk
        active = [True] * len(chunk)
        generated: list[list[int]] = [[] for _ in chunk]
        for _ in range(max_new_tokens):
            mask = torch.cat([mask, torch.ones((len(slots), 1), dtype=torch.long)], dim=1)
            logits = (
                model(
                    input_ids=token[:, None].to(model.device),
                    attention_mask=mask.to(model.device),
                    position_ids=position[:, None].to(model.device),
                    past_key_values=cache,
                    use_cache=True,
                )
                .logits[:, -1]
                .float()
                .cpu()
            )
            next_tokens = token.clone()
            for b, c in enumerate(slots):
                if not active[c]:
                    continue
                tid = _draw(logits[b], rngs[c], temperature)
                generated[c].append(tid)
                next_tokens[b] = tid
                if tid in closing:
                    out[chunk[c]] = generated[c]
                    active[c] = False
                elif tid in abandoning or (viable is not None and not viable(generated[c])):
                    active[c] = False
            alive = [b for b, c in enumerate(slots) if active[c]]
            if not alive:
                break
            if len(alive) <= len(slots) // 2:
                idx = torch.tensor(alive)
                cache.batch_select_indices(idx)
                mask, position, next_tokens = mask[idx], position[idx], next_tokens[idx]
                slots = [slots[b] for b in alive]
            token = next_tokens
            position = position + 1
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
