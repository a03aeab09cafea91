"""The row pool that decodes the sampled calls (paper, section 2: m samples at each of the top-k
positions): rows kept full across positions, windows, documents and scoring batches of a model
batch, a finished sample's row refilled at once (continuous batching). Used by
:func:`toolformer.sampling.sample_calls` and :meth:`toolformer.augment_model.AugmentModel.sample`."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from toolformer.cache_api import cache_keyword
from toolformer.cascade_attention import Cascade, usable

if TYPE_CHECKING:
    from toolformer.sampling import SampleRequest, ScoredBatch


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


# Rows of the decode pool on a CPU: decode step time vs rows for SmolLM2-135M at 800 cached
# tokens (benchmarks/bench_augment.py --decode-rows, 1 thread, a shared 2-core VM), ms per row
# at rows 1 / 8 / 16 / 32 / 48 / 64 / 96: busy (load 8) 210 / 62 / 42 / 32 / 31 / 29 / 27;
# lighter (load 2) 47 / 16 / 13 / 15 / 10 / 14 / 9. The weights are read once per step, so
# the cost per row falls steeply up to 16-32 rows and is flat beyond (attention over each row's
# own cache, about half of a step, and the matmuls on its row dominate): 48 is past the knee,
# and more rows only cost memory (a row of 800 tokens holds ~37 MB of cache). Accelerators take
# far more rows; there the token budget (memory) binds first. With the tool's prompt head kept
# once (cascade attention, below; another VM, Intel Xeon, 1 thread, 800 cached tokens of which 480
# the shared head): ms per row at 1 / 8 / 16 / 32 / 48 / 64 / 96 rows 66 / 14.4 / 9.9 / 7.1 / 6.0 /
# 5.6 / 5.2, against 62 / 16.1 / 12.4 / 9.8 / 9.0 / 8.6 / 7.9 with the head in every row: still
# flat past 48, and the rows of 6 documents rarely fill more.
DECODE_ROWS_CPU = 48
DECODE_ROWS_ACCELERATOR = 512
POOL_SLACK = 64  # spare cache columns: the pool is compacted at most once per this many steps


def decode_rows_for(device) -> int:
    """The pool's row budget on ``device`` (the token budget bounds it too)."""
    return DECODE_ROWS_CPU if torch.device(device).type == "cpu" else DECODE_ROWS_ACCELERATOR


class _PoolLayer(DynamicLayer):
    """One layer of the row pool's KV cache.

    Storage (capacity, heads, width, dim); the model sees rows ``0 .. rows-1`` and columns
    ``lo .. col-1``, and every row writes the key of its next token at column ``col``. A row's
    keys are contiguous and end at ``col`` (its prefix was copied to end there when it joined),
    so rows of different lengths share a step like left-padded rows: the mask hides the columns
    before a row's first key, and relative distances within a row (a sliding window) are right.
    Written in place (DynamicLayer's ``torch.cat`` copied the cache every step). The storage is
    not zeroed when allocated (fresh memory costs a page fault per 4 KiB on first touch, ~1 s per
    GB on this VM, and most rows of the capacity may never be used): a row's columns before its
    first key are zeroed when it is loaded or forked, so every column a step reads is finite
    (an unwritten NaN would poison the softmax even where masked).
    """

    def __init__(self, like: torch.Tensor, capacity: int, width: int):
        super().__init__()
        _, h, _, d = like.shape
        self._k = like.new_empty((capacity, h, width, d))
        self._v = like.new_empty((capacity, h, width, d))
        self.dtype, self.device, self.is_initialized = like.dtype, like.device, True
        self.rows = self.lo = self.col = 0
        self._views(0)

    @property
    def capacity(self) -> int:
        return self._k.shape[0]

    @property
    def width(self) -> int:
        return self._k.shape[2]

    def _views(self, extra: int) -> None:
        self.keys = self._k[: self.rows, :, self.lo : self.col + extra]
        self.values = self._v[: self.rows, :, self.lo : self.col + extra]

    def window(self, rows: int, lo: int, col: int) -> None:
        """What the next forward pass sees: rows ``0 .. rows-1``, keys ``lo .. col-1``."""
        self.rows, self.lo, self.col = rows, lo, col
        self._views(0)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        t = key_states.shape[-2]
        self._k[: self.rows, :, self.col : self.col + t] = key_states
        self._v[: self.rows, :, self.col : self.col + t] = value_states
        self._views(t)
        return self.keys, self.values

    def load(self, row: int, keys: torch.Tensor, values: torch.Tensor, end: int) -> None:
        """Write a prefix (heads, n, dim) into ``row`` so that it ends before column ``end``."""
        start = end - keys.shape[-2]
        self._k[row, :, :start], self._v[row, :, :start] = 0, 0
        self._k[row, :, start:end], self._v[row, :, start:end] = keys, values

    def copy_row(self, dst: int, src: int, start: int, end: int) -> None:
        self._k[dst, :, :start], self._v[dst, :, :start] = 0, 0
        self._k[dst, :, start:end] = self._k[src, :, start:end]
        self._v[dst, :, start:end] = self._v[src, :, start:end]

    def reshape(self, rows: int, lo: int, col: int, capacity: int, width: int, new_col: int) -> None:
        """Move columns ``lo .. col-1`` of rows ``0 .. rows-1`` to end at ``new_col``, in a storage
        of ``capacity`` rows and ``width`` columns (reallocated if either changes)."""
        n, shift = col - lo, new_col - col
        src_k, src_v = self._k[:rows, :, lo:col], self._v[:rows, :, lo:col]
        if capacity != self.capacity or width != self.width:
            _, h, _, d = self._k.shape
            k, v = self._k.new_empty((capacity, h, width, d)), self._v.new_empty((capacity, h, width, d))
            k[:rows, :, : lo + shift], v[:rows, :, : lo + shift] = 0, 0
            k[:rows, :, lo + shift : lo + shift + n], v[:rows, :, lo + shift : lo + shift + n] = src_k, src_v
            self._k, self._v = k, v
        elif shift:  # (columns left of the moved ones stay finite: zeros or older keys)
            self._k[:rows, :, lo + shift : lo + shift + n] = src_k.clone()
            self._v[:rows, :, lo + shift : lo + shift + n] = src_v.clone()


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


@dataclasses.dataclass(frozen=True)
class _Settings:
    """How the samples of one :meth:`RowPool.add` decode."""

    max_new_tokens: int
    temperature: float
    viable: Callable[[list[int]], bool] | None


@dataclasses.dataclass
class _Group:
    """The samples of one (document row, position), waiting for a pool row."""

    scored: ScoredBatch
    row: int
    visible: int  # length of [P, x_<i]: the prefix, and the position id of " ["
    samples: list[int]  # pool-wide sample ids
    settings: _Settings
    shared: int = 0  # leading columns (the tool's prompt head) kept once, not in the row (cascade)
    head: int | None = None  # which of the pool's shared heads, if any

    @property
    def own(self) -> int:
        """Columns of the prefix the row's own cache holds."""
        return self.visible - self.shared


@dataclasses.dataclass
class _Row:
    """A pool row: samples that have drawn the same tokens so far share it."""

    samples: list[int]
    tokens: list[int]
    token: int  # the next input token
    position: int  # its position id
    start: int  # the cache column of the row's first key
    settings: _Settings
    head: int | None = None  # the shared head its sequence begins with (cascade attention), if any


class RowPool:
    """Continuous batching of call samples: a pool of decoding rows kept full across positions,
    windows, documents and scoring batches (and tools: each :meth:`add` brings its own settings).

    A position's m samples join as one row, which forks (its cache row copied) only when its
    samples draw different tokens. When a row ends -- all its samples closed the call, were
    abandoned (a newline, end of sequence, or ``viable`` said no) or drew ``max_new_tokens``
    tokens -- its place is taken at the next step by the next waiting position, whose prefix is
    copied from its scoring batch's cache (keys of x_i.. left out, position ids continuing at i:
    the same as decoding [P(x), x_<i, " ["] afresh). Admission stops at ``max_rows`` rows or
    when rows x cache width would pass ``max_cache_tokens`` (a pool that is empty always takes
    one position; forks may pass both bounds: a fork cannot wait).

    On the CPU (where :func:`toolformer.cascade_attention.usable`), the tool's few-shot head that
    begins every row's prefix is not copied into the rows: the pool keeps the scoring batch's
    :class:`~toolformer.sampling.PromptCache` once and each step's attention reads it once for all
    rows (cascade attention), the rows holding [middle, x_<i, " [", ...] only. The Calculator's head
    is 471 tokens, about 70% of a GSM8K row: the augment benchmark's sampling stage 3.4-3.7 s ->
    2.3-2.6 s. The logits move by float noise only, so a draw flips where its uniform lands that close
    to a CDF boundary (on 60 GSM8K problems 3 of 370 candidates, all dropped as ungrounded; the same
    kept calls). ``cascade=False`` or ``TOOLFORMER_CASCADE=0`` turns it off.

    Each sample draws from its own ``random.Random(seed)`` and a row's logits are those the
    sample would have had alone (up to float noise from the batch shape), so the samples do not
    depend on which rows share a step, the order of requests or the budgets. Tensors live on the
    model's device; only each step's logits come to the host for the draws.

    Use: ``out = pool.add(scored, requests, ...)`` (a list filled in as samples end), then
    :meth:`run` -- ``run(drain=False)`` returns as soon as every request added so far has a row
    (score the next batch while the pool holds its rows: the next batch's positions join the
    same steps), ``run()`` when all have ended.
    """

    def __init__(
        self,
        model,
        api_id: int,
        closing: frozenset[int],
        abandoning: frozenset[int],
        max_rows: int | None = None,
        max_cache_tokens: int = 65536,
        cascade: bool | None = None,
    ):
        self.model, self.api_id = model, api_id
        self.closing, self.abandoning = closing, abandoning
        self.max_rows = decode_rows_for(model.device) if max_rows is None else max(1, max_rows)
        self.max_cache_tokens = max_cache_tokens
        # The tool's prompt head kept once for all rows (toolformer.cascade_attention); default: where
        # the model can take it (sdpa on the CPU, full attention layers).
        self.cascade = usable(model) if cascade is None else (cascade and usable(model))
        self._heads: list = []  # the PromptCache of each shared head in use
        self._pending: collections.deque[_Group] = collections.deque()
        self._rows: list[_Row] = []
        self._layers: list[_PoolLayer] | None = None
        self._col = 0  # the column the next step writes
        self._rng: dict[int, random.Random] = {}
        self._out: dict[int, tuple[list, int]] = {}
        self._next_id = 0
        self.steps = self.row_steps = 0  # decode steps run, and rows decoded over all of them

    def add(
        self,
        scored: ScoredBatch,
        requests: Sequence[SampleRequest],
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        viable: Callable[[list[int]], bool] | None = None,
    ) -> list[list[int] | None]:
        """Queue one continuation of [P(x), x_<i, " ["] per request (rows of ``scored``); returns
        the list of samples (``None``: never closed), complete once :meth:`run` has drained."""
        out: list[list[int] | None] = [None] * len(requests)
        if max_new_tokens <= 0:
            return out
        settings = _Settings(max_new_tokens, temperature, viable)
        groups: dict[tuple[int, int], _Group] = {}
        for r, req in enumerate(requests):
            sid, self._next_id = self._next_id, self._next_id + 1
            self._rng[sid], self._out[sid] = random.Random(req.seed), (out, r)
            key = (req.row, req.position)
            if key not in groups:
                visible = scored.text_start[req.row] + req.position
                groups[key] = _Group(scored, req.row, visible, [], settings, *self._shared_head(scored))
            groups[key].samples.append(sid)
        self._pending.extend(groups.values())
        return out

    @torch.no_grad()
    def run(self, drain: bool = True) -> None:
        """Decode until every queued position has a row (``drain=False``: then return before the
        next step, so the positions of the next :meth:`add` join that step) or has ended."""
        while True:
            self._admit()
            if not self._pending and not (drain and self._rows):
                return
            self._step()

    # -- internals -------------------------------------------------------------------------

    def _shared_head(self, scored: ScoredBatch) -> tuple[int, int | None]:
        """(columns left out of each row, index of the head in ``self._heads``) for ``scored``."""
        head = scored.head
        if not self.cascade or head is None or len(head) == 0:
            return 0, None
        for h, known in enumerate(self._heads):
            if known is head:
                return len(head), h
        self._heads.append(head)
        return len(head), len(self._heads) - 1

    def _width_for(self, visible: int, settings: _Settings) -> int:
        """Columns a row needs: its prefix, " [" and the tokens fed back, one to write, slack."""
        return visible + settings.max_new_tokens + 1 + POOL_SLACK

    def _admit(self) -> None:
        """Fill free rows with waiting positions (within the budgets)."""
        new: list[_Group] = []
        while self._pending:
            g = self._pending[0]
            rows = len(self._rows) + len(new)
            width = max(self._layers[0].width if self._layers else 0, self._width_for(g.own, g.settings))
            if rows and (rows >= self.max_rows or (rows + 1) * width > self.max_cache_tokens):
                break
            new.append(self._pending.popleft())
        if not new:
            return
        need_col = max(g.own for g in new)
        min_width = max(self._width_for(g.own, g.settings) for g in new)
        rows = len(self._rows) + len(new)
        if self._layers is None:
            capacity = max(rows, min(self.max_rows, max(1, self.max_cache_tokens // min_width)))
            self._layers = [_PoolLayer(layer.keys, capacity, min_width) for layer in new[0].scored.cache.layers]
            self._col = need_col
        else:
            if not self._rows:  # nothing live: the write column may move freely
                self._col = need_col
            layer0 = self._layers[0]
            if self._col < need_col or rows > layer0.capacity or min_width > layer0.width:
                self._reshape(rows, max(need_col, self._col), min_width)
        for g in new:
            b = len(self._rows)
            for layer, src in zip(self._layers, g.scored.cache.layers):
                cols = slice(g.shared, g.visible)
                layer.load(b, src.keys[g.row, :, cols], src.values[g.row, :, cols], self._col)
            self._rows.append(
                _Row(g.samples, [], self.api_id, g.visible, self._col - g.own, g.settings, g.head)
            )

    def _reshape(self, rows: int, new_col: int, min_width: int = 0) -> None:
        """Move the live columns to end at ``new_col``, growing the storage to hold ``rows`` rows
        and ``new_col`` + slack columns where needed."""
        live = self._rows
        lo = min((r.start for r in live), default=self._col)
        layer0 = self._layers[0]
        capacity = layer0.capacity if rows <= layer0.capacity else max(rows, min(2 * layer0.capacity, self.max_rows))
        width = max(layer0.width, min_width, new_col + 1 + POOL_SLACK)
        for layer in self._layers:
            layer.reshape(len(live), lo, self._col, capacity, width, new_col)
        shift = new_col - self._col
        for r in live:
            r.start += shift
        self._col = new_col

    def _step(self) -> None:
        rows = self._rows
        if not rows:
            return
        if self._col >= self._layers[0].width:  # no column left to write: compact
            lo = min(r.start for r in rows)
            hint = max((g.own for g in itertools.islice(self._pending, self.max_rows)), default=0)
            self._reshape(len(rows), max(self._col - lo, hint))
        col, lo, dev = self._col, min(r.start for r in rows), self.model.device
        for layer in self._layers:
            layer.window(len(rows), lo, col)
        starts = torch.tensor([r.start for r in rows], device=dev)
        mask = torch.arange(lo, col + 1, device=dev)[None, :] >= starts[:, None]
        logits = (
            self.model(
                input_ids=torch.tensor([[r.token] for r in rows], device=dev),
                attention_mask=mask.long(),
                position_ids=torch.tensor([[r.position] for r in rows], device=dev),
                **{cache_keyword(self.model): self._cache()},
                use_cache=True,
                **self._cascade(rows),
            )
            .logits[:, -1]
            .float()
            .cpu()
        )
        self._col += 1
        self.steps, self.row_steps = self.steps + 1, self.row_steps + len(rows)
        cdfs: dict[int, torch.Tensor] = {}
        for t in {r.settings.temperature for r in rows if r.settings.temperature > 0}:
            idx = [b for b, r in enumerate(rows) if r.settings.temperature == t]
            for b, cdf in zip(idx, _cdfs(logits[idx], t)):
                cdfs[b] = cdf
        parents: list[int] = []
        children: list[_Row] = []
        for b, row in enumerate(rows):
            s = row.settings
            by_token: dict[int, list[int]] = {}
            for sid in row.samples:
                tid = _draw(logits[b], self._rng[sid], s.temperature, cdfs.get(b))
                by_token.setdefault(tid, []).append(sid)
            for tid, members in by_token.items():
                toks = row.tokens + [tid]
                if tid in self.closing:
                    for sid in members:
                        out, r = self._out[sid]
                        out[r] = list(toks)
                elif not (
                    tid in self.abandoning
                    or len(toks) >= s.max_new_tokens
                    or (s.viable is not None and not s.viable(toks))
                ):
                    parents.append(b)
                    children.append(_Row(members, toks, tid, row.position + 1, row.start, s, row.head))
                    continue
                for sid in members:  # ended (closed, abandoned or out of tokens)
                    del self._rng[sid], self._out[sid]
        row_of, moves = _place_children(parents)
        if len(parents) > self._layers[0].capacity:  # forks outgrew the storage
            self._reshape(len(parents), self._col)
        for dst, src in moves:
            for layer in self._layers:
                layer.copy_row(dst, src, rows[src].start, self._col)
        order = sorted(range(len(parents)), key=row_of.__getitem__)
        self._rows = [children[j] for j in order]
        if not self._rows and not self._pending:
            self._layers = None  # the pool's storage is freed when it runs dry
            self._heads = []

    def _cascade(self, rows: list[_Row]) -> dict:
        """The ``cascade=`` argument of a step whose rows begin with shared heads ({} if none)."""
        groups: dict[int, list[int]] = {}
        for b, r in enumerate(rows):
            if r.head is not None:
                groups.setdefault(r.head, []).append(b)
        if not groups:
            return {}
        dev = self.model.device
        return {"cascade": Cascade([self._heads[h].layers for h in groups],
                                   [torch.tensor(b, device=dev) for b in groups.values()])}

    def _cache(self) -> DynamicCache:
        cache = DynamicCache()
        cache.layers = list(self._layers)
        return cache
