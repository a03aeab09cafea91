"""The run settings now live in the method core (:mod:`toolformer.settings`), where the pipeline
and :func:`toolformer.augment.augment_texts` read them alike; re-exported here for the commands,
``beam_runner.py`` and code written against this path."""

from toolformer.settings import (  # noqa: F401
    CHOICES,
    PAPER_DEFAULTS,
    RunSettings,
    ToolSettings,
    build_settings,
    settings_from_json,
)
