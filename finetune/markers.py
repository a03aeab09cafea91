"""Optional dedicated tokens for the call markers (``toolformer finetune ... --marker-tokens``).

By default calls are written with ordinary text (`` [``, ``]``, ``->``), as in the paper's own
implementation, and the vocabulary is unchanged. With marker tokens the three markers become new
tokens ``<API>``, ``</API>`` and ``→`` (the paper's notation): the texts are rewritten to that
format, the embeddings grow by three rows initialised to the mean of the existing rows, and the
format is saved beside the tokenizer in ``call_format.json`` so that generation reads it back with
:func:`load_call_format` and writes calls the way the model was trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from toolformer.call_format import (  # noqa: F401  (load_call_format re-exported)
    DEFAULT_FORMAT,
    FORMAT_FILE,
    CallFormat,
    iter_calls,
    load_call_format,
    neutralize,
    render_call,
)

MARKER_FORMAT = CallFormat(start="<API>", end="</API>", arrow="→", accepted_arrows=())


def to_marker_format(text: str, src: CallFormat = DEFAULT_FORMAT, dst: CallFormat = MARKER_FORMAT) -> str:
    """Rewrite every well-formed call of ``text`` from ``src`` to ``dst`` markers.

    Text outside calls is neutralised for ``dst`` so a literal ``<API>`` or ``→`` in a document can
    never turn into a marker token.
    """
    out, last = [], 0
    for call in iter_calls(text, src):
        if not call.ok:
            continue
        start, end = call.span
        out.append(neutralize(text[last:start], dst))
        out.append(render_call(call.tool, neutralize(call.input, dst),
                               None if call.result is None else neutralize(call.result, dst), dst))
        last = end
    out.append(neutralize(text[last:], dst))
    return "".join(out)


def add_marker_tokens(model, tokenizer, fmt: CallFormat = MARKER_FORMAT) -> list[int]:
    """Add the markers of ``fmt`` as tokens; new embedding rows = mean of the old rows.

    Returns the new token ids. The mean (rather than a random row) keeps the first logits of the
    new tokens in the range of the old ones, so training starts from a sensible loss.
    """
    from tokenizers import AddedToken

    markers = [fmt.start, fmt.end, fmt.arrow]
    # normalized=False: matched verbatim; special=False: kept when decoding with skip_special_tokens.
    added = tokenizer.add_tokens([AddedToken(m, normalized=False, special=False) for m in markers])
    ids = tokenizer.convert_tokens_to_ids(markers)
    if added == 0:
        return ids
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[old:] = emb[:old].mean(dim=0)
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():  # untied output head
            out.weight[old:] = out.weight[:old].mean(dim=0)
    return ids


def save_call_format(directory: str | Path, fmt: CallFormat) -> None:
    Path(directory, FORMAT_FILE).write_text(
        json.dumps({"start": fmt.start, "end": fmt.end, "arrow": fmt.arrow}, ensure_ascii=False) + "\n",
        encoding="utf-8")
