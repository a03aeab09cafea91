"""Errors a user can cause and fix: printed as one line by the CLI, never as a traceback."""


class UserError(Exception):
    """A mistake in a flag, a file or a record. ``exit_code`` is the CLI's exit status."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


# --- Resources: storage and memory -------------------------------------------------------------


class ResourceExhausted(UserError):
    """The disk or the memory ran out: nothing is wrong with the input, the run can be continued
    once there is room (``--resume`` for augment and finetune). Exit status 4."""

    exit_code = 4


class StorageFull(ResourceExhausted):
    """A file could not be written: disk full, file-size limit or quota. The message names the file."""


class OutOfMemory(ResourceExhausted):
    """The model ran out of memory on a batch that cannot be made smaller (one row)."""


_FULL_ERRNOS = {28: "disk full", 27: "file too large", 122: "disk quota exceeded"}  # ENOSPC, EFBIG, EDQUOT
# What libraries that lose the errno say (safetensors: "File too large (os error 27)").
_FULL_TEXTS = (
    ("no space left on device", "disk full"),
    ("os error 28", "disk full"),
    ("file too large", "file too large"),
    ("os error 27", "file too large"),
    ("disk quota exceeded", "disk quota exceeded"),
    ("os error 122", "disk quota exceeded"),
)


def _chain(exc: BaseException | None):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _file_at_limit(path) -> str | None:
    """``path`` (or, for a folder, a file under it) whose size reached the process's file-size
    limit (RLIMIT_FSIZE), or None. Some writers report such a short write without its errno
    (torch.save: "unexpected pos ..."; numpy: "N requested and M written")."""
    import os

    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY or path is None or "://" in os.fspath(path):
        return None
    path = os.fspath(path)
    if os.path.isfile(path):
        return path if os.path.getsize(path) >= soft else None
    for root, _, files in os.walk(path):
        for name in sorted(files):
            full = os.path.join(root, name)
            try:
                if os.path.getsize(full) >= soft:
                    return full
            except OSError:
                continue
    return None


def _disk_is_full(path) -> bool:
    import os

    if path is None or "://" in os.fspath(path):
        return False
    folder = os.fspath(path)
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        st = os.statvfs(folder or ".")
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)  # under 1 MiB left for unprivileged writers


def storage_full(exc: BaseException, path=None) -> tuple[str, str | None] | None:
    """``(reason, file)`` when ``exc`` (or an exception it was raised from) is a write that failed
    for lack of room: ``reason`` is "disk full", "file too large" or "disk quota exceeded", ``file``
    the file named by the error, else the one at the size limit under ``path``, else ``path``.
    None for any other error. ``path`` (a local file or folder being written) also lets a failure
    that lost its errno be recognised, by asking the system (file-size limit, free space)."""
    reason, named = None, None
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            reason = reason or _FULL_ERRNOS[e.errno]
            named = named or (e.filename and str(e.filename))
        elif reason is None:
            text = str(e).lower()
            reason = next((r for t, r in _FULL_TEXTS if t in text), None)
    at_limit = _file_at_limit(path) if path is not None else None
    if reason is None:
        if at_limit:
            reason = "file too large"
        elif isinstance(exc, (OSError, RuntimeError)) and _disk_is_full(path):
            reason = "disk full"
        else:
            return None
    return reason, named or at_limit or (None if path is None else str(path))


def raise_if_storage_full(exc: BaseException, path=None, then: str = "") -> None:
    """Raise :class:`StorageFull` (one line: the file, the reason, ``then``) from ``exc`` if it is
    a write that failed for lack of room (see :func:`storage_full`); return otherwise."""
    found = storage_full(exc, path)
    if found is not None:
        reason, file = found
        raise StorageFull(f"cannot write {file or 'a file'}: {reason}" + (f"; {then}" if then else "")) from exc


def is_out_of_memory(exc: BaseException) -> bool:
    """A device or CPU out-of-memory error (``torch.OutOfMemoryError``, or a RuntimeError saying
    so: accelerate's ``should_reduce_batch_size`` list, which the fine-tuning retry uses too)."""
    import torch
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(exc, torch.OutOfMemoryError) or should_reduce_batch_size(exc)


def free_memory() -> None:
    """After an out-of-memory error (once its traceback is gone): collect garbage, empty the
    CUDA cache where there is one."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
