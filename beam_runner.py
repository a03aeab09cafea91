"""Run the augmentation pipeline the Beam-examples way: app flags and runner flags on one line.

    python beam_runner.py --input 'data/*.jsonl' --output runs/r1 [--tools calculator] \\
        [--runner=FnApiRunner --direct_num_workers=2 --direct_running_mode=multi_processing]

The flags are those of ``toolformer augment`` (see ``pipelines/augment.py`` for runners and how
the model reaches the workers); every flag it does not know goes to Beam's PipelineOptions.
"""

from __future__ import annotations

import logging
import sys

from commands.cli import build_parser
from toolformer.errors import UserError


def run(argv: list[str] | None = None, save_main_session: bool = True):
    """Parse the flags, run every unfinished part, print the stats; returns the PipelineResult
    of the last part run (None when a resumed run was already complete)."""
    from pipelines.augment import augment, run_augment
    from pipelines.settings import build_settings

    known, pipeline_args = build_parser("augment", augment).parse_known_args(argv)
    a = vars(known)
    settings = build_settings(
        a["config"],
        a["override"],
        model=a["model"],
        tools=tuple(a["tools"].split(",")) if a["tools"] else None,
        index=a["index"],
        limit=a["limit"],
        seed=a["seed"],
        text_field=a["text_field"],
        parts=a["parts"],
        context_window=a["context_window"],
    )
    result, stats = run_augment(
        settings, a["input"] or [], a["output"] or "", a["resume"], pipeline_args, save_main_session,
        dask_workers=a["dask_workers"],
    )
    import json

    print(json.dumps(stats, indent=2))
    return result


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    try:
        run()
    except UserError as e:
        print(f"beam_runner.py: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
