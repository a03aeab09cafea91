"""Load run (issue 9 item 5; TESTPLAN F48): N documents through the whole augmentation pipeline with a
fake fast LM and the real Calculator (its isolated worker, the real executor), measuring memory
and checking that the metrics add up.

    python benchmarks/bench_load.py                      # 1,000-document baseline, then 10,000
    python benchmarks/bench_load.py --docs 2000 --baseline 200 --parts 4
    python benchmarks/bench_load.py --docs 100000 --baseline 10000 --runner dask --workers 2
    python benchmarks/bench_load.py --docs 10000 --baseline 0 --resume-check

The fake LM is a one-layer Llama whose next token depends only on the current one, scripted so
that after every comma it writes `` [Calculator(1+2)]`` (a real call; the Calculator answers 3):
model cost is near zero, so the run measures the pipeline itself. 1% of the input lines are bad
records (dead letters). Peak RSS comes from sampling /proc/self/status every 0.2 s; "growth" is
the RSS when the last part finished minus the RSS when the first part finished (parts are
processed one after another, so steady state means flat). Printed ratios compare the big run with
the baseline run measured in the same process.

``--runner dask --workers N``: the same run on Beam's Dask runner, on a ``LocalCluster`` of N
worker processes this script starts (so it can read them): docs/s per worker, and each worker
process's peak RSS (``VmHWM`` of /proc/<pid>/status, read in the worker when the run ends; the
launcher's own RSS is sampled as above; a worker's peak spans every run of the script, as the
cluster serves them all).

``--resume-check``: the journal and resume cost. After the big run, the same input and settings run
again as ``toolformer augment`` in a child process, which is SIGKILLed in its middle part (as soon as
that part's journal holds units: they finish in bursts, after model batches); ``--resume`` then
completes it. Printed:
the uninterrupted wall time, the time to the kill, the resume's wall time, the journal's files, units
and bytes at the kill (and per unit), and whether the resumed run's texts, candidates and dead letters
equal the uninterrupted run's (a check).

Checks (the script exits 1 if one fails):
  documents:  input lines = texts written + bad records (dead letters) + duplicate ids
  candidates: executed = kept + dropped (not useful) + failed, and = candidate records written
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Each token's successor is the next one (cyclic): ", [Calculator(1+2)]" then "," again.
CALC_CHAIN = [",", "Ġ[", "Ca", "l", "c", "u", "la", "t", "or", "(", "1", "+", "2", ")", "]"]


def build_fake_lm(out: Path, chain: list[str] = CALC_CHAIN, scale: float = 3.0) -> Path:
    """A scripted one-layer Llama over the tiny test tokenizer that writes ``, [Calculator(1+2)]``."""
    from tests.tiny_model import build_scripted_model, build_tiny_model

    return build_scripted_model(build_tiny_model(out / "tiny"), out / "fake-lm", chain, scale)


def write_documents(path: Path, n: int, seed: int = 0) -> int:
    """``n`` input lines: 99% arithmetic documents, 1% bad records. Returns the line count."""
    rng = random.Random(seed)
    bad = [b"{not json", b'{"doc_id": "x"}', b'{"text": "  "}', b'{"text": "caf\xe9, 1, 2, 3"}']
    with path.open("wb") as f:
        for i in range(n):
            if i % 100 == 99:
                f.write(bad[(i // 100) % len(bad)] + b"\n")
                continue
            a, b = rng.randint(2, 500), rng.randint(2, 500)
            text = f"Shop {i} sold {a} pens, then {b} more, {a + b} in all."
            f.write(json.dumps({"doc_id": f"d{i:06d}", "text": text}).encode() + b"\n")
    return n


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class RssSampler(threading.Thread):
    """Samples RSS every ``period`` s, and the RSS at the moment each part's marker appears."""

    def __init__(self, out: Path, period: float = 0.2):
        super().__init__(daemon=True)
        self.out, self.period = out, period
        self.peak, self.at_part, self.stop = 0, {}, threading.Event()

    def run(self):
        while not self.stop.is_set():
            rss = rss_kb()
            self.peak = max(self.peak, rss)
            parts = self.out / ".parts"
            if parts.is_dir():
                for marker in parts.glob("*.done"):
                    self.at_part.setdefault(marker.name, rss)
            self.stop.wait(self.period)


def worker_peaks_mb(address: str) -> dict[str, float]:
    """Peak RSS (VmHWM) of each Dask worker process, in MB."""
    import distributed

    def peak() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    with distributed.Client(address) as client:
        return {w: round(v, 1) for w, v in client.run(peak).items()}


def overrides(parts: int) -> list[str]:
    """The run's settings (``augment --override``): the fake LM's call in every window, executed."""
    return [
        "calculator.tau_s=0.5",
        "calculator.k=5",
        "calculator.m=2",
        "calculator.tau_f=0.5",
        "calculator.window=64",
        "calculator.max_call_tokens=16",
        # the fake LM always writes 1+2, which the documents' numbers do not ground: without
        # this every call is dropped before execution and the run measures no tool work
        "calculator.grounded=false",
        "max_batch_tokens=2048",
        f"parts={parts}",
    ]


def run_load(fake_lm: Path, work: Path, n: int, parts: int, extra: list[str] | None = None,
             address: str | None = None) -> dict:
    from pipelines.augment import run_augment
    from pipelines.settings import build_settings

    inp = work / f"docs-{n}.jsonl"
    lines = write_documents(inp, n)
    out = work / f"run-{n}"
    settings = build_settings(None, overrides(parts), model=str(fake_lm), tools=("calculator",))
    sampler = RssSampler(out)
    start_rss = rss_kb()
    sampler.start()
    t0 = time.perf_counter()
    _, stats = run_augment(settings, [str(inp)], str(out), False, list(extra or []))
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    for marker in (out / ".parts").glob("*.done"):  # the last part can finish between two samples
        sampler.at_part.setdefault(marker.name, rss_kb())
    marks = [sampler.at_part[k] for k in sorted(sampler.at_part)]
    docs, calc = stats["documents"], stats["tools"]["Calculator"]
    candidate_rows = sum(1 for p in out.glob("candidates-*.jsonl") for _ in p.open(encoding="utf-8"))
    error_rows = sum(1 for p in out.glob("errors-*.jsonl") for _ in p.open(encoding="utf-8"))
    dropped = calc["executed"] - calc["failed"] - calc["kept"]
    checks = {
        "lines = texts + bad + duplicates": lines
        == docs["texts_written"] + docs["docs_bad"] + docs["docs_duplicate_id"],
        "executed = kept + dropped + failed": calc["executed"] == calc["kept"] + dropped + calc["failed"]
        and dropped >= 0,
        "candidate records = executed": candidate_rows == calc["executed"] == calc["candidates"],
        "dead letters = bad + duplicates + failed": error_rows
        == docs["docs_bad"] + docs["docs_duplicate_id"] + calc["failed"],
    }
    workers = worker_peaks_mb(address) if address else {}
    return {
        "out": out,
        "runner": "dask" if address else "direct",
        "workers": len(workers) or 1,
        "worker_peak_rss_mb": sorted(workers.values()),
        "docs_per_s_per_worker": round(n / wall / (len(workers) or 1), 1),
        "docs": n,
        "parts": parts,
        "wall_s": round(wall, 1),
        "docs_per_s": round(n / wall, 1),
        "start_rss_mb": round(start_rss / 1024, 1),
        "peak_rss_mb": round(sampler.peak / 1024, 1),
        "rss_first_part_mb": round(marks[0] / 1024, 1) if marks else None,
        "rss_last_part_mb": round(marks[-1] / 1024, 1) if marks else None,
        "rss_growth_mb": round((marks[-1] - marks[0]) / 1024, 1) if len(marks) > 1 else None,
        "rss_by_part_mb": [round(m / 1024) for m in marks],
        "in": lines,
        "texts": docs["texts_written"],
        "bad": docs["docs_bad"],
        "executed": calc["executed"],
        "kept": calc["kept"],
        "dropped": dropped,
        "failed": calc["failed"],
        "dead_letters": error_rows,
        "checks": checks,
    }


def records(out: Path) -> dict[str, list[str]]:
    """A run's texts, candidates and dead letters, each as its sorted lines (shard order aside)."""
    return {kind: sorted(line for p in out.glob(f"{kind}-*.jsonl") for line in p.open(encoding="utf-8"))
            for kind in ("texts", "candidates", "errors")}


def resume_check(fake_lm: Path, work: Path, n: int, parts: int, reference: dict, threads: int) -> dict:
    """Kill a child ``toolformer augment`` in its middle part, ``--resume`` it, compare the records."""
    from pipelines import rundir
    from pipelines.augment import run_augment
    from pipelines.settings import build_settings

    inp, out, target = work / f"docs-{n}.jsonl", work / f"resume-{n}", parts // 2
    cmd = [sys.executable, "-m", "commands.cli", "augment", "--input", str(inp), "--output", str(out),
           "--model", str(fake_lm), "--tools", "calculator", "--override", *overrides(parts),
           f"threads={threads}"]  # the child's torch threads as this process's (default: every core)
    journal = Path(rundir.journal_dir(out, target))
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    units = files = size = 0
    while child.poll() is None:
        if journal.is_dir() and all(os.path.exists(rundir.marker(out, part)) for part in range(target)):
            paths = list(journal.glob("*.jsonl"))
            units = sum(p.read_bytes().count(b"\n") for p in paths)
            if units:  # the first units of the part: its units finish in bursts (after model batches)
                os.killpg(child.pid, signal.SIGKILL)
                files, size = len(paths), sum(p.stat().st_size for p in paths)
                break
        time.sleep(0.02)
    child.wait()
    killed_at = time.perf_counter() - t0
    if not files:
        raise SystemExit(f"resume check: the child run ended (exit {child.returncode}) before it could be killed")
    settings = build_settings(None, overrides(parts), model=str(fake_lm), tools=("calculator",))
    t1 = time.perf_counter()
    run_augment(settings, [str(inp)], str(out), True, [])
    resume_s = time.perf_counter() - t1
    return {
        "killed_in_part": target,
        "killed_after_s": round(killed_at, 1),
        "journal_files": files,
        "journal_units": units,
        "journal_bytes": size,
        "journal_bytes_per_unit": round(size / units),
        "resume_s": round(resume_s, 1),
        "checks": {"resumed records = uninterrupted records": records(out) == reference},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=1_000, help="documents in the baseline run (0: none)")
    parser.add_argument(
        "--parts", type=int, default=10, help="parts of the big run (the baseline scales down)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runner", choices=["direct", "dask"], default="direct")
    parser.add_argument("--workers", type=int, default=2, help="--runner dask: worker processes")
    parser.add_argument("--resume-check", action="store_true",
                        help="kill a rerun of the big run in its middle part, --resume it, compare (direct runner)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        fake = build_fake_lm(work)
        extra, address = [], None
        if args.runner == "dask":
            import distributed

            local = stack.enter_context(distributed.LocalCluster(
                n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0"))
            address = local.scheduler_address
            extra = ["--runner=dask", f"--dask_client_address={address}"]
        runs = []
        if args.baseline:
            runs.append(run_load(fake, work, args.baseline, max(2, args.parts * args.baseline // args.docs),
                                 extra, address))
            print("baseline", json.dumps(runs[-1], default=str), flush=True)
        runs.append(run_load(fake, work, args.docs, args.parts, extra, address))
        print("load", json.dumps(runs[-1], default=str), flush=True)
        if args.resume_check:
            big = runs[-1]
            check = resume_check(fake, work, args.docs, args.parts, records(big["out"]), args.threads)
            print("resume", json.dumps(check), flush=True)
            print(f"resume: killed {check['killed_after_s']} s into a run that takes {big['wall_s']} s "
                  f"uninterrupted; --resume took {check['resume_s']} s "
                  f"(kill + resume {(check['killed_after_s'] + check['resume_s']) / big['wall_s']:.2f}x); "
                  f"journal at the kill: {check['journal_units']} units in {check['journal_files']} files, "
                  f"{check['journal_bytes_per_unit']} bytes per unit")
            runs.append(check)
    big = runs[1 if args.baseline else 0]
    if args.baseline:
        base = runs[0]
        print(
            f"ratios vs the {base['docs']}-document baseline: time per document "
            f"{(big['wall_s'] / big['docs']) / (base['wall_s'] / base['docs']):.2f}x, "
            f"peak RSS {big['peak_rss_mb'] / base['peak_rss_mb']:.2f}x "
            f"for {big['docs'] / base['docs']:.0f}x the documents"
        )
    failed = [name for r in runs for name, ok in r["checks"].items() if not ok]
    print("metrics add up" if not failed else f"FAILED checks: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
