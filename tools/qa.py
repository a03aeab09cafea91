"""The QA tool: answers a question offline by retrieving a passage and reading a short answer.

Run one call::

    toolformer call '[QA(Where was Marie Curie born?)]' --index runs/wiki-index [--model smollm2-135m]

The paper used Atlas, a retrieval-augmented QA model. Offline we do the same in two steps: BM25
retrieves the best passage from the WikiSearch index (:func:`tools.wikisearch.load_index`, shared
with WikiSearch), then a reader turns (question, passage) into a few words. The default reader is
the language model reading greedily (:class:`LMReader`, a handful of new tokens); any callable
``reader(question, passage) -> str`` can replace it. ``endpoint=URL`` asks a remote QA service
instead (:mod:`tools.http`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from tools.base import CallContext, Tool, ToolError, register_tool
from tools.wikisearch import MAX_QUERY_CHARS, InputError, cut_to_budget, load_index

Reader = Callable[[str, str], str]

# Two worked examples: without them the 135M default model answers with a whole sentence.
READER_PROMPT = (
    "Answer each question with a short span copied from its passage.\n\n"
    "Passage: The Eiffel Tower in Paris was completed in 1889 for the World's Fair.\n"
    "Question: When was the Eiffel Tower completed?\nAnswer: 1889\n\n"
    "Passage: Lake Baikal, in Siberia, is the deepest lake in the world.\n"
    "Question: Where is Lake Baikal?\nAnswer: Siberia\n\n"
    "Passage: {passage}\nQuestion: {question}\nAnswer:"
)


class LMReader:
    """Greedy reading with a causal LM loaded by :func:`toolformer.models.load_model` on first use."""

    def __init__(
        self,
        model: str | None = None,
        max_new_tokens: int = 8,
        max_passage_chars: int = 1200,
        device: str | None = None,  # None: cuda > mps > cpu, as load_model picks
    ):
        self.model_spec = model
        self.max_new_tokens = max_new_tokens
        self.max_passage_chars = max_passage_chars
        self.device = device
        self._loaded = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _loaded=None)  # the model is loaded again where it runs

    def __call__(self, question: str, passage: str) -> str:
        import torch

        from toolformer.models import DEFAULT_MODEL, load_model

        if self._loaded is None:
            self._loaded = load_model(self.model_spec or DEFAULT_MODEL, device=self.device)
        model, tokenizer = self._loaded
        # The prompt is filled with replace(), not format(): passages contain braces.
        prompt = READER_PROMPT.replace("{passage}", cut_to_budget(passage, self.max_passage_chars)).replace(
            "{question}", question
        )
        enc = tokenizer(prompt, return_tensors="pt").to(model.device)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        text = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return text.strip().split("\n")[0].strip()


@register_tool
class QA(Tool):
    """``QA(index=DIR, model=SPEC)`` reads offline; ``QA(endpoint=URL)`` asks a service."""

    name = "QA"

    def __init__(
        self,
        index: str | None = None,
        model: str | None = None,
        reader: Reader | None = None,
        endpoint: str | None = None,
        max_new_tokens: int = 8,
        max_chars: int = 100,
        min_words: int = 0,
        device: str | None = None,
        **http_options: Any,
    ):
        self.index_dir = str(index) if index is not None else None
        self.reader = reader if reader is not None else LMReader(model, max_new_tokens, device=device)
        self.max_chars = max_chars
        self.min_words = min_words
        self.http = None
        if endpoint is not None:
            from tools.http import HttpClient, HttpEndpoint

            self.http = HttpClient(HttpEndpoint(endpoint, **http_options))

    def __call__(self, input: str, context: CallContext) -> str:
        question = " ".join(input.split())
        if not question:
            raise ToolError("parse", "empty question")
        if len(question) > MAX_QUERY_CHARS:
            raise ToolError("limit", f"question longer than {MAX_QUERY_CHARS} characters")
        if self.http is not None:
            return cut_to_budget(self.http.answer(question), self.max_chars)
        if self.index_dir is None:
            raise ToolError(
                "unavailable",
                "QA needs a passage index: build one with `toolformer index` and "
                "pass index=DIR (or --index DIR), or configure endpoint=URL",
            )
        try:
            index = load_index(self.index_dir)
        except InputError as e:
            raise ToolError("unavailable", str(e)) from None
        hits = index.search(question, 1)
        if not hits:
            raise ToolError("no_result", f"no passage matches {question[:60]!r}")
        answer = " ".join(self.reader(question, index.texts[hits[0][0]]).split()).rstrip(".")
        if not answer:
            raise ToolError("no_result", "the reader gave no answer")
        return cut_to_budget(answer, self.max_chars)

    def accepts(self, document: Mapping[str, Any], rng: random.Random) -> bool:
        # The paper gives QA every document; min_words can keep it off very short ones.
        return len(str(document.get("text", "")).split()) >= self.min_words
