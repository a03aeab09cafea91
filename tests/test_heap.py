"""toolformer.heap: freed large blocks stay in the process (no page faults on reuse)."""

import json
import os
import platform
import subprocess
import sys

import pytest

from toolformer import heap

# What the setting changes, at the C library: a freed 64 MiB block is reused, not mapped afresh.
# (PyTorch's tensors come from this malloc; how much they gain depends on their pattern of sizes,
# measured in benchmarks/bench_augment.py: see toolformer/heap.py.)
PROBE = r"""
import ctypes, json, resource
from toolformer.heap import keep_freed_memory
kept = keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
n = 64 * 2**20  # 16,384 pages of 4 KiB
p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
p = libc.malloc(n); ctypes.memset(p, 1, n)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
libc.free(p)
print(json.dumps({"kept": kept, "faults": faults}))
"""


def probe(env_value: str) -> dict:
    env = {**os.environ, heap.ENV: env_value}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_freed_large_tensor_is_reused_without_page_faults():
    off, on = probe("0"), probe("1")
    assert off["kept"] is False and on["kept"] is True
    assert off["faults"] >= 16_000  # unmapped when freed: every page faults in again
    assert on["faults"] < 200       # kept in the heap and reused


def test_keep_freed_memory_is_once_per_process_and_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(heap, "_done", None)
    monkeypatch.setenv(heap.ENV, "off")
    assert heap.keep_freed_memory() is False
    monkeypatch.setenv(heap.ENV, "1")
    assert heap.keep_freed_memory() is False  # decided once per process
    monkeypatch.setattr(heap, "_done", True)
    assert heap.keep_freed_memory() is True
