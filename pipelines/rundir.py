"""The per-run output directory: parts with verified markers, resume, refusal, stats, ``_SUCCESS``.

Layout of ``DIR`` (``toolformer augment --output DIR``)::

    run.json                      the settings (a resume must use the same ones)
    texts-p0000-00000-of-00001.jsonl, candidates-p0000-*.jsonl, errors-p0000-*.jsonl
    texts-p0000-*.parquet, candidates-p0000-*.parquet
    .parts/p0000.done             written after part 0's files: their sha256 and the part's metrics
    .journal/p0000/<uuid4>.jsonl  part 0's finished units while it runs (deleted once it is done)
    stats.json, _SUCCESS          written last, when every part is done

Documents are split into parts by a stable hash of their id; each part is one Beam run. A killed
run leaves parts without a marker (or files whose hash no longer matches: a torn shard); resume
deletes those files and the runner's orphaned ``beam-temp-*`` folders and redoes only those parts.
Inside a part, every finished unit (document x tool x token window) is journaled as it finishes
(``pipelines.stages.FinishUnitFn``); resume keeps an unfinished part's journal, and the part's
new run replays the journaled units instead of recomputing them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from toolformer.errors import UserError

KINDS = ("texts", "candidates", "errors")
SUCCESS = "_SUCCESS"
JOURNAL = ".journal"


def part_name(part: int) -> str:
    return f"p{part:04d}"


def journal_dir(out: str | Path, part: int) -> str:
    """Where part ``part``'s workers journal its finished units (a folder of ``*.jsonl``)."""
    return f"{out}/{JOURNAL}/{part_name(part)}"


def journal_files(out: Path, part: int) -> list[str]:
    """The journal files a resumed part replays, listed once on the launcher before it starts
    (the files the new run writes have new names, so it never reads its own journal)."""
    return sorted(str(p) for p in Path(journal_dir(out, part)).glob("*.jsonl") if p.is_file())


def drop_journal(out: Path, part: int) -> None:
    """Delete a done part's journal (its units are in the part's verified files now)."""
    shutil.rmtree(journal_dir(out, part), ignore_errors=True)
    try:
        (out / JOURNAL).rmdir()  # only once it is empty
    except OSError:
        pass


def part_files(out: Path, part: int) -> list[Path]:
    return sorted(p for kind in KINDS for p in out.glob(f"{kind}-{part_name(part)}-*") if p.is_file())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def prepare(out: str | Path, settings_json: dict, resume: bool, parts: int) -> list[int]:
    """Check the directory and return the parts still to do.

    A directory that already holds a run is refused unless ``resume`` (then its settings must
    match). A complete run resumed is a no-op (``[]``).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} exists and is not a directory")
    existing = out.is_dir() and any(out.iterdir())
    if existing and not resume:
        state = "a complete run" if (out / SUCCESS).exists() else "an unfinished run or other files"
        raise UserError(
            f"--output {out} already holds {state}; pass --resume to continue it, "
            "or choose a new output directory"
        )
    if existing:
        run_json = out / "run.json"
        if not run_json.is_file():
            raise UserError(f"--resume: {out} has no run.json, it is not an augment run directory")
        before = json.loads(run_json.read_text(encoding="utf-8"))
        if before != settings_json:
            diff = sorted(
                k for k in set(before) | set(settings_json) if before.get(k) != settings_json.get(k)
            )
            raise UserError(f"--resume: settings differ from the run in {out}: {', '.join(diff)}")
        if (out / SUCCESS).exists():
            return []
    out.mkdir(parents=True, exist_ok=True)
    (out / ".parts").mkdir(exist_ok=True)
    write_json_atomic(out / "run.json", settings_json)
    for orphan in out.glob("beam-temp-*"):  # a killed runner's temporary shards
        shutil.rmtree(orphan, ignore_errors=True)
    for orphan in [*out.glob("*.tmp"), *(out / ".parts").glob("*.tmp")]:  # a killed atomic write
        orphan.unlink()
    todo = []
    for part in range(parts):
        if part_done(out, part):
            drop_journal(out, part)  # killed between its marker and the journal's deletion
        else:
            for f in part_files(out, part):  # its journal stays: the part's new run replays it
                f.unlink()
            todo.append(part)
    return todo


def part_done(out: Path, part: int) -> bool:
    """A part is done when its marker exists and lists exactly its files, byte for byte."""
    marker = out / ".parts" / f"{part_name(part)}.done"
    if not marker.is_file():
        return False
    try:
        listed = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError):
        return False
    present = {p.name: p for p in part_files(out, part)}
    return set(listed) == set(present) and all(sha256(present[n]) == h for n, h in listed.items())


def mark_done(out: Path, part: int, stats: dict) -> None:
    files = {p.name: sha256(p) for p in part_files(out, part)}
    write_json_atomic(out / ".parts" / f"{part_name(part)}.done", {"files": files, "stats": stats})


def part_stats(out: Path, parts: int) -> list[dict]:
    return [
        json.loads((out / ".parts" / f"{part_name(p)}.done").read_text(encoding="utf-8"))["stats"]
        for p in range(parts)
    ]


def finish(out: Path, stats: dict) -> None:
    write_json_atomic(out / "stats.json", stats)
    (out / SUCCESS).write_text("", encoding="utf-8")
