"""Hand-written facts behind the bundled sample data (read by ``make_samples.py``).

Written for this project in our own words; every number here is a commonly cited figure, rounded
where sources differ (mountain heights, river lengths). Keep each record's key fact short: the
WikiSearch tool returns only the first ~200 characters of a passage, so the passage templates put
these fields first.

The facts live in three modules by subject -- :mod:`~scripts.sample_data.facts_places` (countries,
landmarks, mountains, rivers, lakes), :mod:`~scripts.sample_data.facts_people` (people, inventions)
and :mod:`~scripts.sample_data.facts_science` (elements, planets) -- and are all importable from here.
"""

from __future__ import annotations

from scripts.sample_data.facts_people import APPROXIMATE_BIRTH, INVENTIONS, PEOPLE
from scripts.sample_data.facts_places import COUNTRIES, LAKES, LANDMARKS, MOUNTAINS, RIVERS
from scripts.sample_data.facts_science import ELEMENT_CLASS, ELEMENTS, PLANETS

__all__ = ["APPROXIMATE_BIRTH", "COUNTRIES", "ELEMENT_CLASS", "ELEMENTS", "INVENTIONS", "LAKES", "LANDMARKS",
           "MOUNTAINS", "PEOPLE", "PLANETS", "RIVERS"]
