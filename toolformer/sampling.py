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
from toolformer.cache_api import cache_keyword, output_cache

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
        cache=output_cache(out), mask=mask, text_start=[head + len(m) for m in middle_ids], probs=probs
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


def _cdfs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row cumulative distributions (float64) of ``softmax(logits / temperature)``."""
    return torch.cumsum(torch.softmax(logits / temperature, dim=-1), dim=-1, dtype=torch.float64)


def _draw(
    logits: torch.Tensor, rng: random.Random, temperature: float, cdf: torch.Tensor | None = None
) -> int:
    """Inverse-CDF sampling with a per-sample uniform draw (greedy at temperature 0).

    ``cdf`` (from :func:`_cdfs`) may be passed when several samples draw from the same logits."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    if cdf is None:
        cdf = _cdfs(logits, temperature)
    u = rng.random() * float(cdf[-1])
    return min(int(torch.searchsorted(cdf, torch.tensor([u], dtype=cdf.dtype))), len(cdf) - 1)


class _RowPoolLayer(DynamicLayer):
    """A decode cache layer with room for ``capacity`` rows (it grows) and the whole decode.

    ``update`` writes the new keys in place (DynamicLayer's ``torch.cat`` copied the whole cache
    at every step) and the model sees rows ``0 .. rows-1``. Forking a row or closing a hole copies
    single rows (:meth:`move_rows`) instead of re-indexing the whole cache: a row's prefix is the
    few-shot prompt plus the text (~30 MB for SmolLM2-135M at 700 tokens), so whole-cache copies
    at every fork cost more than the decoding itself.
    """

    def __init__(
        self, keys: torch.Tensor, values: torch.Tensor, rows: Sequence[int], n: int, extra: int, capacity: int
    ):
        super().__init__()
        _, h, _, d = keys.shape
        self._k = keys.new_empty((capacity, h, n + extra, d))
        self._v = values.new_empty((capacity, h, n + extra, d))
        for b, row in enumerate(rows):
            self._k[b, :, :n], self._v[b, :, :n] = keys[row, :, :n], values[row, :, :n]
        self._rows, self._len = len(rows), n
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._views()

    def _views(self) -> None:
        self.keys = self._k[: self._rows, :, : self._len]
        self.values = self._v[: self._rows, :, : self._len]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        t = key_states.shape[-2]
        self._k[: self._rows, :, self._len : self._len + t] = key_states
        self._v[: self._rows, :, self._len : self._len + t] = value_states
        self._len += t
        self._views()
        return self.keys, self.values

    def move_rows(self, moves: Sequence[tuple[int, int]], rows: int) -> None:
        """Copy row ``src`` to row ``dst`` for each ``(dst, src)``, then expose ``rows`` rows
        (the storage doubles when the rows outgrow it)."""
        if rows > self._k.shape[0]:
            grown = max(rows, 2 * self._k.shape[0])
            k = self._k.new_empty((grown, *self._k.shape[1:]))
            v = self._v.new_empty((grown, *self._v.shape[1:]))
            k[: self._rows, :, : self._len] = self._k[: self._rows, :, : self._len]
            v[: self._rows, :, : self._len] = self._v[: self._rows, :, : self._len]
            self._k, self._v = k, v
        for dst, src in moves:
            self._k[dst, :, : self._len] = self._k[src, :, : self._len]
            self._v[dst, :, : self._len] = self._v[src, :, : self._len]
        self._rows = rows
        self._views()


def _place_children(parents: Sequence[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """Rows for the next step's decoding rows, child j continuing row ``parents[j]``.

    Returns (row of each child, row copies ``(dst, src)``). The first child of a parent keeps
    its row when that row stays in use (rows ``0 .. len(parents)-1``); the others are copied
    into the free rows. A copy never reads a row another copy writes: every source row is kept
    by its own first child or lies beyond the rows in use.
    """
    n = len(parents)
    row_of: list[int | None] = [None] * n
    kept = set()
    for j, p in enumerate(parents):
        if p < n and p not in kept:
            kept.add(p)
            row_of[j] = p
    holes = iter(r for r in range(n) if r not in kept)
    moves = []
    for j, p in enumerate(parents):
        if row_of[j] is None:
            row_of[j] = next(holes)
            moves.append((row_of[j], p))
    return row_of, moves


def _chunks_of_positions(
    requests: Sequence[SampleRequest], scored: ScoredBatch, max_cache_tokens: int
) -> list[list[tuple[tuple[int, int], list[int]]]]:
    """Requests grouped by (row, position), the groups packed into chunks whose samples x longest
    prefix stay within ``max_cache_tokens``: the bound on a chunk's decode cache, which holds one
    row per sample if every sample takes its own way (usually far fewer: rows are shared until
    samples differ, and most end at the tool's name). A group is never split."""
    groups: dict[tuple[int, int], list[int]] = {}
    for r, req in enumerate(requests):
        groups.setdefault((req.row, req.position), []).append(r)
    chunks: list[list[tuple[tuple[int, int], list[int]]]] = []
    samples = longest = 0
    for key, members in groups.items():
        length = scored.text_start[key[0]] + key[1]
        if chunks and (samples + len(members)) * max(longest, length) <= max_cache_tokens:
            chunks[-1].append((key, members))
            samples, longest = samples + len(members), max(longest, length)
        else:
            chunks.append([(key, members)])
            samples, longest = len(members), length
    return chunks


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
) -> list[list[int] | None]:
    """Sample one continuation of [P(x), x_<i, " ["] per request; ``None`` if it never closed.

    ``viable(tokens)`` may say early that a sample can no longer become an accepted call (it
    does not start with the tool's name): it is dropped at once instead of decoded to its end,
    which leaves the accepted samples unchanged (each sample draws from its own generator).

    Each decoding row reuses its document's row of the scoring cache: keys of x_i.. and padding
    are masked out and the position ids continue at i, which equals running [P(x), x_<i, " ["]
    afresh. Samples that have drawn the same tokens at the same position share one row: the m
    samples of a position start as one row, and a row forks (its cache rows copied) only when its
    samples draw different tokens. Every sample still draws from its own generator and the shared
    row's logits are the ones it would have had alone, so the samples equal decoding each one by
    itself; what is saved is computation (a position's first step costs one row, not m, and most
    samples of a tool end at its name). Ended rows leave the batch at once; forks and holes cost
    single-row copies (:class:`_RowPoolLayer`).
    """
    out: list[list[int] | None] = [None] * len(requests)
    for chunk in _chunks_of_positions(requests, scored, max_cache_tokens):
        rows = [row for (row, _), _ in chunk]
        visible = torch.tensor([scored.text_start[row] + pos for (row, pos), _ in chunk])
        keep_keys = int(visible.max())  # keys beyond every row's prefix are never attended to
        cache = DynamicCache()
        cache.layers = [
            _RowPoolLayer(layer.keys, layer.values, rows, keep_keys, max_new_tokens, 2 * len(rows))
            for layer in scored.cache.layers
        ]
        mask = scored.mask[rows, :keep_keys] * (torch.arange(keep_keys)[None, :] < visible[:, None])
        position = visible.clone()  # the position id of " [" is the length of [P, x_<i]
        token = torch.full((len(chunk),), api_id, dtype=torch.long)
        rngs = {r: random.Random(requests[r].seed) for _, members in chunk for r in members}
        # batch row -> the samples it decodes and the tokens they share so far
        beam_samples: list[list[int]] = [list(members) for _, members in chunk]
        beam_tokens: list[list[int]] = [[] for _ in chunk]
        for _ in range(max_new_tokens):
            mask = torch.cat([mask, torch.ones((len(beam_samples), 1), dtype=torch.long)], dim=1)
            logits = (
                model(
                    input_ids=token[:, None].to(model.device),
                    attention_mask=mask.to(model.device),
                    position_ids=position[:, None].to(model.device),
                    **{cache_keyword(model): cache},
                    use_cache=True,
                )
                .logits[:, -1]
                .float()
                .cpu()
            )
            cdfs = _cdfs(logits, temperature) if temperature > 0 else None
            parents, children, child_tokens = [], [], []
            for b, samples in enumerate(beam_samples):
                by_token: dict[int, list[int]] = {}
                for r in samples:
                    tid = _draw(logits[b], rngs[r], temperature, None if cdfs is None else cdfs[b])
                    by_token.setdefault(tid, []).append(r)
                for tid, members in by_token.items():
                    toks = beam_tokens[b] + [tid]
                    if tid in closing:
                        for r in members:
                            out[r] = list(toks)
                    elif not (tid in abandoning or (viable is not None and not viable(toks))):
                        parents.append(b)
                        children.append(members)
                        child_tokens.append(toks)
            if not parents:
                break
            row_of, moves = _place_children(parents)
            for layer in cache.layers:
                layer.move_rows(moves, len(parents))
            order = sorted(range(len(parents)), key=row_of.__getitem__)  # children by their row
            idx = torch.tensor([parents[j] for j in order])
            mask, position = mask[idx], position[idx] + 1
            beam_samples = [children[j] for j in order]
            beam_tokens = [child_tokens[j] for j in order]
            token = torch.tensor([beam_tokens[b][-1] for b in range(len(order))])
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
