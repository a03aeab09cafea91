"""The WikiSearch tool: BM25 over a passage corpus, with an index built once and loaded fast.

Build an index, then query it::

    toolformer index --input '/work/shared/data/corpus/wiki_passages_*.jsonl.gz' \\
        --output runs/wiki-index --filter split=store
    toolformer call '[WikiSearch(Brown Act)]' --index runs/wiki-index

Scoring and the index format: :mod:`tools.bm25_index`; the corpus readers: :mod:`tools.passages`.
Every name those modules had here before the split is still importable from this module.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from tools.base import CallContext, Tool, ToolError, register_tool
from tools.bm25_index import FORMAT_VERSION, BM25Index, IndexBuilder, build_index, load_index, tokenize
from tools.passages import InputError, Passage, parse_filter, read_passages

__all__ = [
    "FORMAT_VERSION", "MAX_QUERY_CHARS", "MAX_QUERY_TERMS", "BM25Index", "IndexBuilder", "InputError",
    "Passage", "WikiSearch", "build_index", "cut_to_budget", "load_index", "parse_filter",
    "read_passages", "tokenize",
]  # fmt: skip

MAX_QUERY_CHARS = 1000
MAX_QUERY_TERMS = 64


def cut_to_budget(text: str, max_chars: int) -> str:
    """``text`` cut at a word boundary to at most ``max_chars`` characters."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return cut[:space] if space > max_chars // 2 else cut


@register_tool
class WikiSearch(Tool):
    """Returns the best passage for a query, cut to ``max_chars`` (``top_k`` > 1 joins several with
    `` | ``). Backed by a local index (``index``) or, optionally, an HTTP endpoint (``endpoint``)."""

    name = "WikiSearch"

    def __init__(
        self,
        index: str | None = None,
        top_k: int = 1,
        max_chars: int = 200,
        endpoint: str | None = None,
        min_words: int = 0,
        **http_options: Any,
    ):
        self.index_dir = str(index) if index is not None else None
        self.top_k, self.max_chars = top_k, max_chars
        self.min_words = min_words
        self.http = None
        if endpoint is not None:
            from tools.http import HttpClient, HttpEndpoint

            self.http = HttpClient(HttpEndpoint(endpoint, **http_options))

    def __call__(self, input: str, context: CallContext) -> str:
        query = input.strip()
        if not query:
            raise ToolError("parse", "empty query")
        if len(query) > MAX_QUERY_CHARS or len(set(tokenize(query))) > MAX_QUERY_TERMS:
            raise ToolError(
                "limit", f"query longer than {MAX_QUERY_CHARS} characters or {MAX_QUERY_TERMS} words"
            )
        if self.http is not None:
            return cut_to_budget(self.http.answer(query), self.max_chars)
        if self.index_dir is None:
            raise ToolError(
                "unavailable",
                "WikiSearch needs an index: build one with `toolformer index` "
                "and pass index=DIR (or --index DIR)",
            )
        try:
            index = load_index(self.index_dir)
        except InputError as e:
            raise ToolError("unavailable", str(e)) from None
        hits = index.search(query, self.top_k)
        if not hits:
            raise ToolError("no_result", f"no passage matches {query[:60]!r}")
        return cut_to_budget(" | ".join(index.texts[i] for i, _ in hits), self.max_chars)

    def accepts(self, document: Mapping[str, Any], rng: random.Random) -> bool:
        # The paper gives WikiSearch every document; min_words can keep it off very short ones.
        return len(str(document.get("text", "")).split()) >= self.min_words
