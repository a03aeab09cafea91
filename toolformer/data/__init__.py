"""Sample data bundled with the package for the demo: our own text, written for this project.

* ``sample_docs.jsonl``: short documents to augment ({"doc_id", "text", "url", "kind", optional "date"}),
* ``sample_passages.jsonl``: encyclopedia-style passages for the WikiSearch BM25 index
  ({"id", "title", "text"}),
* ``sample_math.jsonl``: math word problems ({"id", "question", "answer"}),
* ``sample_cloze.jsonl``: fact cloze items ({"id", "masked_sentence", "question", "answer"}).

The files are produced by ``python -m scripts.sample_data.make_samples`` from hand-written facts
(``scripts/sample_data/facts.py``, not installed) and templates; that command rewrites them byte for byte.
"""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).parent
SAMPLE_FILES = ("sample_docs.jsonl", "sample_passages.jsonl", "sample_math.jsonl", "sample_cloze.jsonl")


def sample_path(name: str) -> Path:
    """Path of a bundled sample file, e.g. ``sample_path("sample_docs.jsonl")``."""
    if name not in SAMPLE_FILES:
        raise ValueError(f"unknown sample file {name!r} (choose from {', '.join(SAMPLE_FILES)})")
    return DATA_DIR / name
