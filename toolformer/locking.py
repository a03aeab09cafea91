"""One writer per directory: ``DIR/.lock`` (:class:`DirectoryLock`), taken by ``augment`` on its
run directory and by ``finetune`` on its output directory, on a local path or any Beam file system
(through :mod:`toolformer.runs`)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from toolformer.errors import UserError
from toolformer.runs import delete, exists, is_local, join, read_json, write_json

log = logging.getLogger(__name__)


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
            except FileNotFoundError:  # the folder went away meanwhile: a run that had created it let go
                os.makedirs(self.folder, exist_ok=True)  # and removed it, still empty (release)
                self.created_folder = True
                continue
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
    """``with lock(DIR):`` hold ``DIR``'s one-writer lock (see :class:`DirectoryLock`)."""
    return DirectoryLock(folder, what)
