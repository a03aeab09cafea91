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

``DIR`` is a local path or any Beam file system URL (``gs://``, ``s3://``, ...): every operation
here goes through ``apache_beam.io.filesystems.FileSystems``, so the launcher needs no access to
the workers' disks. On an object store a folder is only a key prefix: one that holds no objects
is the same as a missing one, and there is nothing to create or remove apart from the objects.
Small JSON files (run.json, markers, stats.json) are written whole or not at all: on the local
file system through a ``.tmp`` file renamed into place, on an object store by the store itself
(an object appears when its upload is closed); see :func:`write_json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from toolformer.errors import UserError, raise_if_storage_full

log = logging.getLogger(__name__)

KINDS = ("texts", "candidates", "errors")
SUCCESS = "_SUCCESS"
JOURNAL = ".journal"
PARTS = ".parts"
RAW = CompressionTypes.UNCOMPRESSED  # never (de)compress by file name: we hash and copy bytes
# After a write that failed for lack of room (StorageFull): what a resume keeps and redoes.
RESUME_HINT = (
    "free space (or raise the file-size limit), then rerun with --resume: finished parts are kept, "
    "nothing half-written counts as done"
)


def part_name(part: int) -> str:
    return f"p{part:04d}"


# --- File system helpers (any Beam file system) ------------------------------------------------


def join(base: str | Path, *names: str) -> str:
    return FileSystems.join(str(base), *names)


def is_local(path: str | Path) -> bool:
    """The launcher's own file system (no URL scheme): real folders, an atomic rename."""
    return FileSystems.get_scheme(str(path)) is None


def match(pattern: str, limit: int | None = None) -> list[str]:
    """Files matching ``pattern`` (``*`` stays inside one folder level, ``**`` crosses them)."""
    [result] = FileSystems.match([pattern], None if limit is None else [limit])
    return sorted(m.path for m in result.metadata_list)


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def has_files(folder: str | Path) -> bool:
    """Whether anything is stored under ``folder``; empty and missing are the same (on an object
    store a folder is a key prefix and exists only while it has objects)."""
    return bool(match(join(folder, "**"), limit=1))


def delete(paths: list[str]) -> None:
    if paths:
        FileSystems.delete(paths)


def delete_folder(folder: str) -> None:
    """Delete ``folder`` and everything in it (nothing happens if it is missing)."""
    if is_local(folder):  # a real folder, possibly empty: LocalFileSystem deletes it recursively
        if exists(folder):
            delete([folder])
    else:  # an object store: the objects under the prefix (the "folder" goes with them)
        delete(match(join(folder, "**")))


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=RAW) as f:
        return f.read()


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path).decode("utf-8"))


def write_bytes(path: str, data: bytes) -> None:
    """Write a file in place (not atomic on the local file system; see :func:`write_json`).
    A write that fails for lack of room raises :class:`~toolformer.errors.StorageFull` naming it."""
    try:
        with FileSystems.create(path, compression_type=RAW) as f:
            f.write(data)
    except Exception as e:
        raise_if_storage_full(e, path, RESUME_HINT)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON so that a reader sees the old file, the new one, or none, never a
    torn one.

    Local file system: write ``PATH.tmp``, then rename it over ``PATH`` (an atomic replace on
    POSIX); a kill mid-write leaves only the ``.tmp``, which :func:`prepare` deletes.
    Any other file system (object stores: gs://, s3://, ...): write ``PATH`` directly. An object
    store has no atomic rename (Beam's rename is copy + delete), but creating an object is atomic:
    the upload becomes visible, whole, only when it is closed, and a killed upload leaves nothing.
    (HDFS has neither guarantee, nor a rename onto an existing file; a torn marker there is
    unreadable JSON and its part is redone, as a missing one would be.)
    """
    path = str(path)
    body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")
    if is_local(path):
        tmp = path + ".tmp"
        write_bytes(tmp, body)
        FileSystems.rename([tmp], [path])
    else:
        write_bytes(path, body)


def mkdirs(folder: str) -> None:
    """Create ``folder`` if the file system has folders (a no-op on an object store)."""
    if not exists(folder):
        try:
            FileSystems.mkdirs(folder)
        except OSError:
            if not exists(folder):  # not merely created by someone else meanwhile
                raise


def sha256(path: str | Path) -> str:
    """The file's sha256, read in 1 MiB blocks (a shard may be larger than memory)."""
    h = hashlib.sha256()
    with FileSystems.open(str(path), compression_type=RAW) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def basename(path: str) -> str:
    return FileSystems.split(path)[1]


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
    """stats.json, then ``_SUCCESS`` last: a run with ``_SUCCESS`` is complete."""
    write_json(join(out, "stats.json"), stats)
    write_bytes(join(out, SUCCESS), b"")


# --- One writer per directory ------------------------------------------------------------------

LOCK = ".lock"
#: A lock held by another host (whose pid cannot be checked from here) is stale once its
#: heartbeat (the lock file's mtime on a local or network disk, ``heartbeat`` in the object on a
#: store) is older than this; the holder refreshes it every ``HEARTBEAT_S``.
STALE_AFTER_S = float(os.environ.get("TOOLFORMER_LOCK_STALE_S", 15 * 60))
HEARTBEAT_S = 60.0


def _proc_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), or None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[19]) if fields[0] != "Z" else -1  # field 22 of the line; -1: a zombie


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether process ``pid`` of this host still runs (a zombie, or a pid reused by a process
    started at another time, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    ticks = _proc_start_ticks(pid)
    if ticks == -1:
        return False
    return not (start_ticks is not None and ticks is not None and ticks != start_ticks)


class DirectoryLock:
    """One writer per run directory: ``DIR/.lock`` records the holder's pid, host and start time.

    **Local (and network-mounted) paths**: the lock file is created with ``O_CREAT | O_EXCL`` and
    held with ``fcntl.flock`` for the holder's lifetime; the kernel drops the flock when the
    process dies, however it dies. A second writer finds the file, cannot take the flock and is
    refused with one line naming the holder. A lock file whose flock is free is taken over (one
    log line says so) when its holder is gone: a pid on this host that is dead (or a zombie, or
    reused by a later process: its start time differs), or, for a holder on another host, a
    heartbeat (the file's mtime, refreshed every minute) older than ``STALE_AFTER_S``. Two
    would-be takers race for the flock of the same inode, so only one wins; the winner checks
    that the path still names that inode (the holder may have released and unlinked it meanwhile).
    Guaranteed: never two holders on one host; across hosts on NFS too, where flock is carried
    by the lock manager (Linux >= 2.6.12); on a mount without working locks (``nolock``) two
    hosts are kept apart only by the pid/heartbeat record, not atomically.

    **Other Beam file systems** (gs://, s3://, ...): there is no exclusive create or lock through
    ``FileSystems``, so the lock is advisory: the lock object is read, written if absent or stale,
    and read back after a pause to see whose it is. Guaranteed: a run that starts while another
    holds a live lock is refused, and a crashed holder's lock is taken over (dead pid on this
    host, or no heartbeat for ``STALE_AFTER_S``). Not guaranteed: two launchers starting within
    the same second may both pass; do not start two runs on one bucket path at once.
    """

    def __init__(self, folder: str | Path, what: str = "augment"):
        self.folder = str(folder)
        self.path = join(self.folder, LOCK)
        self.what = what
        self.fd: int | None = None
        self.created_folder = False
        self._stop = None

    # -- the record ------------------------------------------------------------------------
    def _record(self) -> dict:
        import socket
        import sys
        import time

        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start_ticks": _proc_start_ticks(os.getpid()),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "heartbeat": time.time(),
            "command": self.what,
            "argv": " ".join(sys.argv)[:500],
        }

    def _holder(self, rec: dict) -> str:
        return (
            f"{rec.get('command', 'a run')} pid {rec.get('pid')} on host {rec.get('host')} "
            f"since {rec.get('started')}"
        )

    def _gone(self, rec: dict, heartbeat: float) -> bool:
        import socket
        import time

        if rec.get("host") == socket.gethostname() and isinstance(rec.get("pid"), int):
            return not pid_alive(rec["pid"], rec.get("start_ticks"))
        return time.time() - heartbeat > STALE_AFTER_S

    def _refuse(self, rec: dict) -> None:
        raise UserError(
            f"{self.folder} is in use by {self._holder(rec)} (lock {self.path}); "
            "wait for it to finish, or delete the lock file if that process is gone"
        )

    # -- acquire / release -----------------------------------------------------------------
    def acquire(self) -> DirectoryLock:
        if is_local(self.folder):
            if os.path.exists(self.folder) and not os.path.isdir(self.folder):
                raise UserError(f"--output {self.folder} exists and is not a directory")
            if not os.path.isdir(self.folder):
                os.makedirs(self.folder, exist_ok=True)
                self.created_folder = True
            self._acquire_local()
        else:
            self._acquire_remote()
        self._start_heartbeat()
        return self

    def _acquire_local(self) -> None:
        import time

        try:
            import fcntl
        except ImportError:  # not POSIX: O_EXCL and the pid record only
            fcntl = None
        for attempt in range(50):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
                created = True
            except FileExistsError:
                try:
                    fd = os.open(self.path, os.O_RDWR)
                except FileNotFoundError:  # released meanwhile: try again
                    continue
                created = False
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        if created and self._flock_soon(fcntl, fd):
                            pass  # a taker looked at our fresh (still empty) file and let go
                        else:
                            rec = self._read_local(fd) or {"command": "another run"}
                            self._refuse(rec)
                if not created:
                    st = os.fstat(fd)
                    try:
                        same = os.stat(self.path).st_ino == st.st_ino
                    except FileNotFoundError:
                        same = False
                    if not same:  # released and unlinked while we waited: start again
                        os.close(fd)
                        continue
                    rec = self._read_local(fd)
                    if rec is None:  # being written right now, or its writer died mid-write
                        if attempt < 20:
                            os.close(fd)
                            time.sleep(0.1)
                            continue
                        rec = {"command": "an unreadable lock"}
                    elif not self._gone(rec, st.st_mtime):
                        self._refuse(rec)
                    log.warning(
                        "taking over the lock %s of %s: that process is gone", self.path, self._holder(rec)
                    )
                body = json.dumps(self._record()).encode() + b"\n"
                os.ftruncate(fd, 0)
                os.pwrite(fd, body, 0)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
            return
        raise UserError(f"could not take the lock {self.path} (it keeps changing); is another run starting?")

    @staticmethod
    def _flock_soon(fcntl, fd: int) -> bool:
        import time

        for _ in range(200):
            time.sleep(0.005)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
        return False

    @staticmethod
    def _read_local(fd: int) -> dict | None:
        try:
            data = os.pread(fd, 1 << 16, 0)
            rec = json.loads(data.decode("utf-8"))
            return rec if isinstance(rec, dict) else None
        except (OSError, ValueError):
            return None

    def _acquire_remote(self) -> None:
        import time

        if exists(self.path):
            try:
                rec = read_json(self.path)
            except (OSError, ValueError):
                rec = {"command": "an unreadable lock", "heartbeat": 0}
            if not self._gone(rec, float(rec.get("heartbeat", 0))):
                self._refuse(rec)
            log.warning("taking over the lock %s of %s: that process is gone", self.path, self._holder(rec))
        mine = self._record()
        write_json(self.path, mine)
        time.sleep(1.0)  # let a concurrent writer's object land, then see who won
        try:
            now = read_json(self.path)
        except (OSError, ValueError):
            now = {}
        key = ("pid", "host", "started")
        if [now.get(k) for k in key] != [mine[k] for k in key]:
            self._refuse(now)
        self.fd = -1

    def _start_heartbeat(self) -> None:
        import threading
        import time

        stop = threading.Event()
        self._stop = stop

        def beat():
            while not stop.wait(HEARTBEAT_S):
                try:
                    if self.fd is not None and self.fd >= 0:
                        os.utime(self.fd) if os.utime in os.supports_fd else os.utime(self.path)
                    elif self.fd == -1:
                        write_json(self.path, dict(read_json(self.path), heartbeat=time.time()))
                except (OSError, ValueError):
                    pass

        threading.Thread(target=beat, name=f"lock-heartbeat {self.path}", daemon=True).start()

    def release(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self.fd is None:
            return
        try:
            if self.fd >= 0:
                try:
                    os.unlink(self.path)  # before the flock goes: no one takes over a live lock
                finally:
                    os.close(self.fd)
                if self.created_folder:
                    try:
                        os.rmdir(self.folder)  # only if still empty (a run that failed early)
                    except OSError:
                        pass
            else:
                delete([self.path])
        except OSError as e:
            log.warning("could not remove the lock %s: %s", self.path, e)
        finally:
            self.fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock(folder: str | Path, what: str = "augment") -> DirectoryLock:
    """``with rundir.lock(DIR):`` hold ``DIR``'s one-writer lock (see :class:`DirectoryLock`)."""
    return DirectoryLock(folder, what)
