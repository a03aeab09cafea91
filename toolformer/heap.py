"""Keep freed memory in the process for reuse: no page faults on every large CPU tensor.

PyTorch's CPU tensors come from the C library's allocator (``posix_memalign``); there is no caching
allocator on the CPU. glibc serves a block above its mmap threshold (128 KiB at first, raised as
blocks are freed, to at most 32 MiB) with a fresh ``mmap`` and unmaps it when freed, so such a
tensor -- a scoring pass's activations, a layer of the sampling pool's KV storage -- is page-faulted
in again, 4 KiB at a time, each time it is allocated (~1 s per GB on this VM). PyTorch's CPU
performance guide recommends preloading jemalloc or tcmalloc for this; with glibc,
:func:`keep_freed_memory` does it in-process with ``mallopt``: large blocks come from the heap and
freed memory stays there, so the next tensor that fits in a freed block reuses its pages
(``tests/test_heap.py``: a freed 64 MiB block is reused with no page fault; without the setting
all 16,384 pages fault in again). How much PyTorch's tensors gain depends on their sizes fitting.

Measured (``benchmarks/bench_augment.py --docs 6 --threads 1 --windows 16 --skip-naive``, after an
untimed warm-up over the same documents; 4 runs with the same scoring and sampling work): the
sampling stage took 4.99 / 3.91 / 3.68 / 3.35 s before (faster as glibc's threshold crept up),
3.22 / 3.12 / 3.12 s with the heap kept; scoring 3.96 / 3.61 / 3.64 / 3.49 s, then 3.54 / 3.52 /
3.44 s. The cost: the process does not hand freed memory back to the OS, so its resident size
stays at its peak (what a long-running worker reaches anyway).

Called by ``load_model`` for a model on the CPU. ``TOOLFORMER_KEEP_HEAP=0`` leaves malloc as it is;
on a C library other than glibc (musl, macOS) it does nothing and says so in the log.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

ENV = "TOOLFORMER_KEEP_HEAP"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
LIMIT = 2**31 - 1  # mallopt takes an int: the largest threshold it accepts

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process; whether they are set."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get(ENV, "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    if platform.libc_ver()[0] != "glibc":
        log.info("not glibc: large CPU tensors are left to the C library's malloc as it is")
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, LIMIT) == 1 and libc.mallopt(M_TRIM_THRESHOLD, LIMIT) == 1
    except (OSError, AttributeError) as e:
        log.warning("cannot tune malloc (%s): large CPU tensors page-fault on every allocation", e)
        return False
    if not ok:
        log.warning("glibc refused mallopt: large CPU tensors page-fault on every allocation")
    _done = ok
    return ok
