"""On/off switches read from the environment: ``TOOLFORMER_PACKED_LINEAR``, ``TOOLFORMER_CPU_GQA``,
``TOOLFORMER_CASCADE`` (each on unless set to 0, false, no or off)."""

from __future__ import annotations

import os

OFF = frozenset({"0", "false", "no", "off"})


def switched_on(name: str) -> bool:
    """Whether the switch ``name`` is on (the default) rather than set to one of :data:`OFF`."""
    return os.environ.get(name, "1").strip().lower() not in OFF
