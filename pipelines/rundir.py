"""The per-run output directory: parts with verified markers, resume, refusal, stats, ``_SUCCESS``.

Layout of ``DIR`` (``toolformer augment --output DIR``)::

    run.json                      the settings (a resume must use the same ones)
    texts-p0000-00000-of-00001.jsonl, candidates-p0000-*.jsonl, errors-p0000-*.jsonl
    texts-p0000-*.parquet, candidates-p0000-*.parquet
    .parts/p0000.done             written after part 0's files: their sha256 and the part's metrics
    .journal/p0000/<uuid4>.jsonl  part 0's finished units while it runs (deleted once it is done)
    stats.json, README.md         written last, when every part is done; README.md is the dataset
                                  card: datasets.load_dataset(DIR, "texts" | "candidates" | "errors")
    _SUCCESS                      the very last

Documents are split into parts by a stable hash of their id; each part is one Beam run. A killed
run leaves parts without a marker (or files whose hash no longer matches: a torn shard); resume
deletes those files and the runner's orphaned ``beam-temp-*`` folders and redoes only those parts.
Inside a part, every finished unit (document x tool x token window) is journaled as it finishes
(``pipelines.stages.FinishUnitFn``); resume keeps an unfinished part's journal, and the part's
new run replays the journaled units instead of recomputing them.

``DIR`` is a local path or any Beam file system URL (``gs://``, ``s3://``, ...): every operation
here goes through ``apache_beam.io.filesystems.FileSystems``, so the launcher needs no access to
the workers' disks. On an object store a folder is only a key prefix: one that holds no objects
is the same as a missing one, and there is nothing to create or remove apart from the objects.
Small JSON files (run.json, markers, stats.json) are written whole or not at all: on the local
file system through a ``.tmp`` file renamed into place, on an object store by the store itself
(an object appears when its upload is closed); see :func:`write_json`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path


from toolformer.errors import UserError
from toolformer.locking import LOCK, lock  # noqa: F401  (rundir.lock: augment's one writer)
from toolformer.runs import (  # noqa: F401  (the file system helpers, used here and as rundir.*)
    CARD,
    DATASET_CARD,
    RAW,
    RESUME_HINT,
    basename,
    delete,
    delete_folder,
    exists,
    has_files,
    is_local,
    join,
    json_lines,
    match,
    mkdirs,
    read_bytes,
    read_json,
    sha256,
    write_bytes,
    write_json,
)

log = logging.getLogger(__name__)

KINDS = ("texts", "candidates", "errors")
SUCCESS = "_SUCCESS"
JOURNAL = ".journal"
PARTS = ".parts"
def part_name(part: int) -> str:
    return f"p{part:04d}"




# --- The run directory -------------------------------------------------------------------------


def journal_dir(out: str | Path, part: int) -> str:
    """Where part ``part``'s workers journal its finished units (a folder of ``*.jsonl``)."""
    return join(out, JOURNAL, part_name(part))


def journal_files(out: str | Path, part: int) -> list[str]:
    """The journal files a resumed part replays, listed once on the launcher before it starts
    (the files the new run writes have new names, so it never reads its own journal)."""
    return match(join(journal_dir(out, part), "*.jsonl"))


def drop_journal(out: str | Path, part: int) -> None:
    """Delete a done part's journal (its units are in the part's verified files now)."""
    delete_folder(journal_dir(out, part))
    if not has_files(join(out, JOURNAL)):  # only once no other part's journal is left
        delete_folder(join(out, JOURNAL))


def part_files(out: str | Path, part: int) -> list[str]:
    return sorted(p for kind in KINDS for p in match(join(out, f"{kind}-{part_name(part)}-*")))


def marker(out: str | Path, part: int) -> str:
    return join(out, PARTS, f"{part_name(part)}.done")


def delete_orphaned_temp_folders(out: str) -> None:
    """Delete the temporary folders (``beam-temp-*``) of a killed runner's file sinks."""
    if is_local(out):  # real folders, maybe empty: FileSystems lists only files, so look here
        if os.path.isdir(out):
            for entry in os.scandir(out):
                if entry.name.startswith("beam-temp-"):
                    delete_folder(join(out, entry.name))
    else:  # an object store: the objects under those prefixes
        delete(match(join(out, "beam-temp-**")))


# Settings that decide how fast a run goes, not its records (up to float summation order): a resumed
# run may use others (e.g. more torch threads once a machine is free). run.json keeps the first ones.
RESUME_MAY_CHANGE = frozenset({"threads", "large_model"})


def prepare(out: str | Path, settings_json: dict, resume: bool, parts: int) -> list[int]:
    """Check the directory and return the parts still to do.

    A directory that already holds a run is refused unless ``resume`` (then its settings must
    match). A complete run resumed is a no-op (``[]``).
    """
    out = str(out)
    if is_local(out) and os.path.exists(out) and not os.path.isdir(out):
        # (on an object store an object named DIR and the objects under DIR/ do not collide)
        raise UserError(f"--output {out} exists and is not a directory")
    # (the one-writer lock, DIR/.lock, taken just before this, is not a run's file)
    existing = any(basename(p) != LOCK for p in match(join(out, "**"), limit=2))
    if existing and not resume:
        state = "a complete run" if exists(join(out, SUCCESS)) else "an unfinished run or other files"
        raise UserError(
            f"--output {out} already holds {state}; pass --resume to continue it, "
            "or choose a new output directory"
        )
    if existing:
        run_json = join(out, "run.json")
        if not exists(run_json):
            raise UserError(f"--resume: {out} has no run.json, it is not an augment run directory")
        try:
            before = read_json(run_json)
        except (OSError, ValueError) as e:
            raise UserError(f"--resume: cannot read {run_json}: {e}") from None
        diff = sorted(
            k
            for k in set(before) | set(settings_json)
            if before.get(k) != settings_json.get(k) and k not in RESUME_MAY_CHANGE
        )
        if diff:
            raise UserError(f"--resume: settings differ from the run in {out}: {', '.join(diff)}")
        if exists(join(out, SUCCESS)):
            return []
    mkdirs(out)
    mkdirs(join(out, PARTS))
    if not existing:
        write_json(join(out, "run.json"), settings_json)
    delete_orphaned_temp_folders(out)  # a killed runner's temporary shards
    # a killed atomic write (only the local file system writes them)
    delete(match(join(out, "*.tmp")) + match(join(out, PARTS, "*.tmp")))
    todo = []
    for part in range(parts):
        if part_done(out, part):
            drop_journal(out, part)  # killed between its marker and the journal's deletion
        else:
            delete(part_files(out, part))  # its journal stays: the part's new run replays it
            todo.append(part)
    return todo


def part_done(out: str | Path, part: int) -> bool:
    """A part is done when its marker exists and lists exactly its files, byte for byte."""
    path = marker(out, part)
    if not exists(path):
        return False
    try:
        listed = read_json(path)["files"]
    except (ValueError, KeyError, TypeError):
        return False
    present = {basename(p): p for p in part_files(out, part)}
    return set(listed) == set(present) and all(sha256(present[n]) == h for n, h in listed.items())


def mark_done(out: str | Path, part: int, stats: dict) -> None:
    files = {basename(p): sha256(p) for p in part_files(out, part)}
    write_json(marker(out, part), {"files": files, "stats": stats})


def part_stats(out: str | Path, parts: int) -> list[dict]:
    return [read_json(marker(out, p))["stats"] for p in range(parts)]


def finish(out: str | Path, stats: dict) -> None:
    """stats.json and the dataset card (``README.md``: the run loads with ``datasets.load_dataset``),
    then ``_SUCCESS`` last: a run with ``_SUCCESS`` is complete."""
    write_json(join(out, "stats.json"), stats)
    write_bytes(join(out, CARD), DATASET_CARD.encode("utf-8"))
    write_bytes(join(out, SUCCESS), b"")
