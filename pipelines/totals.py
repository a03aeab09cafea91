"""How many units each part will give the model: the total behind augment's done/total and ETA.

A worker cannot know it: Route runs fused with the model, so documents are routed only as the
model consumes them (see ``AugmentModelHandler._progress``). On a run in this process (Beam's
in-process runner with one worker, the default) the launcher can: it reads the input once more,
with the same readers, limit, de-duplication, part split and routing (the tokenizer alone, no
model) as the pipeline, and subtracts the units a resumed part has journaled already. Reading
and tokenizing is a small share of a run (the model is the cost: ~1 s per unit on CPU), but it
is not free, so runs on a cluster, where the handler cannot be told, skip it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pipelines.documents import DOC, input_limits, read_records
from pipelines.stages import in_part, parse_journal, route_document, unit_key
from toolformer.documents import unique_documents

log = logging.getLogger(__name__)


def in_process(options) -> bool:
    """True for the in-process runner with one worker: the one handler runs in this process."""
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    runner = options.view_as(StandardOptions).runner
    if runner not in (None, "FnApiRunner", "DirectRunner", "direct"):
        return False
    # Several workers (threads or processes) would each see a share of the part's units.
    return (options.view_as(DirectOptions).direct_num_workers or 1) <= 1


def _documents(files: list[str], dirs: list[str], text_field: str):
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    for pattern in files:
        for meta in FileSystems.match([pattern])[0].metadata_list:
            with FileSystems.open(meta.path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
                yield from (r for kind, r in read_records(meta.path, stream, text_field, input_limits()) if kind == DOC)
    for d in dirs:
        yield from (r for kind, r in read_records(d, None, text_field, input_limits()) if kind == DOC)


#: The count holds the input's documents in memory (the pipeline's de-duplication and limit need
#: them all): above this many input bytes it is skipped, and progress lines count what was routed.
MAX_COUNT_BYTES = 256 << 20


def input_bytes(files: list[str]) -> int:
    from apache_beam.io.filesystems import FileSystems

    return sum(m.size_in_bytes for pattern in files for m in FileSystems.match([pattern])[0].metadata_list)


def expected_units(inputs: tuple[list[str], list[str]], settings, tools: dict[str, Any],
                   journals: dict[int, list[str]]) -> dict[int, int]:
    """Units the model will see per part: routed units, less those in the part's journal
    (``{}``: not counted, for input files over ``MAX_COUNT_BYTES``)."""
    from toolformer.models import load_tokenizer
    from tools.base import get_tool

    size = input_bytes(inputs[0])
    if size > MAX_COUNT_BYTES:
        log.info("progress without totals: the input is %.1f GB (units are counted up to %d MB)",
                 size / 1e9, MAX_COUNT_BYTES >> 20)
        return {}
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(settings.model)
    instances = {n: get_tool(spec, **tools["config"].get(n, {})) for n, spec in tools["specs"].items()}
    windows = {n: s["window"] for n, s in tools["settings"].items()}
    records = list(_documents(*inputs, settings.text_field))
    docs, _ = unique_documents(records, settings.limit)  # the pipeline's Limit and DedupeIds
    ids = list(docs)
    keys: dict[int, set] = {part: set() for part in range(settings.parts)}
    for doc_id in ids:
        part = next(p for p in range(settings.parts) if in_part(doc_id, p, settings.parts))
        keys[part].update(unit_key(u) for u in route_document(docs[doc_id], instances, windows, tokenizer,
                                                               settings.seed))
    from apache_beam.io.filesystems import FileSystems

    totals = {}
    for part, unit_keys in keys.items():
        done = set()
        for path in journals.get(part, []):
            with FileSystems.open(path) as f:
                done.update(tuple(e["key"]) for e in parse_journal(f.read())[0])
        totals[part] = len(unit_keys - done)
    log.info("counted the units of %d documents in %.1f s (for the progress lines' totals)", len(ids),
             time.perf_counter() - t0)
    return totals
