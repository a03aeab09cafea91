"""Developer scripts, not installed: run from the repository root (``python -m scripts....``)."""
