"""Generate the bundled sample data deterministically from ``facts.py`` and templates.

    python -m scripts.sample_data.make_samples            # rewrite the four sample_*.jsonl files
    python -m scripts.sample_data.make_samples --check    # fail if the committed files are out of date

Every arithmetic statement in a document or a math problem is produced together with the
relation it states (``a op b = c``) and checked with exact fractions before anything is
written; every cloze answer is checked to occur in a passage about its subject.

What each file holds is made in its own module: ``passages.py`` (sample_passages.jsonl),
``documents.py`` (sample_docs.jsonl), ``eval_items.py`` (sample_math.jsonl, sample_cloze.jsonl), from
the facts in ``facts.py`` and the helpers in ``common.py``; this module puts them together.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from toolformer.data import DATA_DIR
from scripts.sample_data.common import (
    MONTHS,
    NAMES,
    OPS,
    TEAMS,
    TOWNS,
    WEEKDAYS,
    Relation,
    a_an,
    cap,
    check_relations,
    long_date,
    money,
    num,
    ordinal,
    rel,
    words,
)
from scripts.sample_data.documents import (
    ARITHMETIC_KINDS,
    CLOSERS,
    FIRST_DATE,
    LAST_DATE,
    arithmetic_doc,
    date_doc,
    fact_doc,
    lengthen,
    make_docs,
    random_date,
    with_metadata,
)
from scripts.sample_data.eval_items import make_cloze, make_math
from scripts.sample_data.passages import (
    SHORT_NAMES,
    country_passages,
    decade_passages,
    make_passages,
    people_passages,
    short,
    thing_passages,
)

__all__ = [  # what this module defined before the generators moved out, all still importable here
    "ARITHMETIC_KINDS", "CLOSERS", "FIRST_DATE", "LAST_DATE", "MONTHS", "NAMES", "OPS", "SEED", "SHORT_NAMES",
    "TEAMS", "TOWNS", "WEEKDAYS", "Relation", "a_an", "arithmetic_doc", "cap", "check_relations",
    "country_passages", "date_doc", "decade_passages", "fact_doc", "generate", "lengthen", "long_date",
    "main", "make_cloze", "make_docs", "make_math", "make_passages", "money", "num", "ordinal",
    "people_passages", "random_date", "rel", "render", "short", "thing_passages", "with_metadata", "words",
]

SEED = 20230209  # the Toolformer paper's arXiv date; any fixed value keeps the files stable


def generate() -> dict[str, list[dict]]:
    """All four files' records; the same on every run (one seeded generator per file)."""
    passages = make_passages(random.Random(SEED))
    return {
        "sample_passages.jsonl": passages,
        "sample_docs.jsonl": make_docs(random.Random(SEED + 1)),
        "sample_math.jsonl": make_math(random.Random(SEED + 2)),
        "sample_cloze.jsonl": make_cloze(random.Random(SEED + 3), passages),
    }


def render(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files differ from a fresh "
                                                             "generation")
    parser.add_argument("--output", type=Path, default=DATA_DIR, help="directory to write to")
    args = parser.parse_args(argv)
    stale = []
    for name, records in generate().items():
        path = args.output / name
        text = render(records)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        path.write_text(text, encoding="utf-8")
        print(f"{path}: {len(records)} records, {len(text.encode()):,} bytes")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python -m scripts.sample_data.make_samples)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
