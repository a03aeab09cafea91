"""The MT tool: translates a phrase into English with a local sequence-to-sequence model.

Run one call (needs a translation model directory, e.g. an NLLB or Marian opus-mt checkpoint)::

    toolformer call '[MT(tortuga)]' --mt-model /models/nllb-200-distilled-600M

The paper used NLLB-600M with fastText language identification of the source. We load any
``AutoModelForSeq2SeqLM`` directory given as ``model_dir``; for NLLB-style tokenizers that know
the target language code (``eng_Latn``) generation is forced to start in English, otherwise the
model's own setup (a Marian ``*-en`` model) decides. Without ``model_dir`` every call fails with
``ToolError("unavailable")``: never a silent empty result.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tools import heuristics
from tools.base import CallContext, Tool, ToolError, register_tool

MAX_INPUT_CHARS = 400


@register_tool
class MT(Tool):
    name = "MT"

    def __init__(
        self,
        model_dir: str | None = None,
        target_lang: str = "eng_Latn",
        max_new_tokens: int = 48,
        device: str = "cpu",
    ):
        self.model_dir = str(model_dir) if model_dir else None
        self.target_lang = target_lang
        self.max_new_tokens = max_new_tokens
        self.device = device
        self._loaded = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _loaded=None)

    def _load(self):
        if self.model_dir is None:
            raise ToolError(
                "unavailable",
                "MT needs a local translation model: pass model_dir=DIR "
                "(e.g. an NLLB or Marian opus-mt checkpoint directory)",
            )
        if not Path(self.model_dir).is_dir():
            raise ToolError("unavailable", f"MT model directory {self.model_dir} does not exist")
        if self._loaded is None:
            from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            model = AutoModelForSeq2SeqLM.from_pretrained(self.model_dir).to(self.device).eval()
            self._loaded = model, tokenizer
        return self._loaded

    def __call__(self, input: str, context: CallContext) -> str:
        import torch

        text = " ".join(input.split())
        if not text:
            raise ToolError("parse", "nothing to translate")
        if len(text) > MAX_INPUT_CHARS:
            raise ToolError("limit", f"input longer than {MAX_INPUT_CHARS} characters")
        model, tokenizer = self._load()
        kwargs: dict[str, Any] = {}
        lang_id = tokenizer.convert_tokens_to_ids(self.target_lang)
        if lang_id is not None and lang_id != tokenizer.unk_token_id:
            kwargs["forced_bos_token_id"] = lang_id
        enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=256).to(model.device)
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1, **kwargs
            )
        result = tokenizer.decode(out[0], skip_special_tokens=True).strip()
        if not result:
            raise ToolError("no_result", "the model produced no translation")
        return result

    def accepts(self, document: Mapping[str, Any], rng: random.Random) -> bool:
        return heuristics.has_foreign_text(str(document.get("text", "")))

    def grounded(self, input: str, text_before: str) -> bool:
        """The paper's MT rule (App. A.1): the text to translate is written before the call
        (compared with whitespace runs collapsed)."""
        text = " ".join(input.split())
        return bool(text) and text in " ".join(text_before.split())
