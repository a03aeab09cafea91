"""Generation's KV cache written in place (used by :mod:`toolformer.decoding`).

``DynamicLayer`` concatenates each step's keys onto the cache; :class:`GrowingLayer` writes them into
a storage with room to spare. Measured in :mod:`toolformer.decoding`'s docstring.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer written in place: ``keys``/``values`` are views of a storage
    with room for more columns, and a step writes its new columns into it.

    ``DynamicLayer.update`` concatenates, so every step of every layer copies the whole cache into
    fresh memory (at batch 8 and 155 columns, 60 copies of 0.9 MB a step; when the allocator hands
    back unmapped pages each costs a page fault per 4 KiB). Here the storage grows by a quarter (at
    least ``min_room`` columns) when full: a generation of up to 128 tokens after its prompt never
    copies the cache again, a long one copies it O(log n) times, and the memory is at most 1.25x the
    cache's plus 128 columns (not 2x: an evaluation batch of long prompts would double its cache).
    Everything ``DynamicLayer`` does still works on the views: ``crop`` narrows them (the next step
    overwrites the cropped columns), and anything that assigns ``keys``/``values`` anew
    (``DecodeLoop._share_prefix``) is taken as the new content, copied into a fresh storage at the next
    update. The views never reach an unwritten column.
    """

    min_room = 128  # spare columns at least, when the storage is (re)allocated

    def _in_storage(self) -> bool:
        k = getattr(self, "_k", None)
        return (k is not None and self.keys is not None and self.keys.data_ptr() == k.data_ptr()
                and self.keys.stride() == k.stride() and self.values.data_ptr() == self._v.data_ptr()
                and self.values.stride() == self._v.stride() and self.keys.shape[:2] == k.shape[:2])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, t = self.get_seq_length(), key_states.shape[-2]
        if not (self._in_storage() and n + t <= self._k.shape[2]):
            b, h, _, d = key_states.shape
            capacity = n + t + max(self.min_room, (n + t) // 4)
            k = key_states.new_empty((b, h, capacity, d))
            v = value_states.new_empty((b, h, capacity, value_states.shape[-1]))
            if n:
                k[:, :, :n], v[:, :, :n] = self.keys, self.values
            self._k, self._v = k, v
        self._k[:, :, n:n + t] = key_states
        self._v[:, :, n:n + t] = value_states
        self.keys, self.values = self._k[:, :, :n + t], self._v[:, :, :n + t]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0 and self._in_storage():  # keep the room: one copy, not two
            n = self.get_seq_length()
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]
        else:
            super().batch_select_indices(indices)


def new_cache(config, grow: bool = True) -> DynamicCache:
    """A ``DynamicCache`` for ``config``; with ``grow`` its full-attention layers are
    :class:`GrowingLayer` (sliding-window and other layers stay as the library makes them)."""
    cache = DynamicCache(config=config)
    if grow:
        cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
