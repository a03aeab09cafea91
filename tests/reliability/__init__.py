"""Cross-system reliability campaign (issue 9): adversarial calls, bad input, tool faults, kills.

Fast part (in the normal run):  python -m pytest -q tests/reliability
Long part:                      python -m pytest -q -m slow tests/reliability
Figures and guarantees: RELIABILITY.md at the repository root.
"""
