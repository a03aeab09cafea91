"""Benchmark: one large JSONL file read in splits by several workers (issue #15, item 2).

    python benchmarks/bench_split_input.py [--gb 2] [--runners direct,dask] [--workers 2]
        [--split-mb 64] [--tmp /tmp] [--keep]

Writes a JSONL file of ``--gb`` GB under ``--tmp`` (refused if the disk lacks room for it and a
run's outputs) whose documents the Calculator heuristic rejects (words only, no numbers: no model
work), with 1% bad lines (invalid JSON, no text field, invalid UTF-8), then runs
``toolformer augment --tools calculator`` on it with the tiny test model (tests/tiny_model.py)

* ``direct``: the in-process runner, ``--direct_num_workers N --direct_running_mode multi_processing``;
* ``dask``: ``--runner dask --dask-workers N`` (``--dask_npartitions`` = the file's splits, so a
  bundle is about one split, or ``--dask-npartitions``);

and reports per runner: wall time, documents/s, peak RSS (``VmHWM``, sampled from /proc every
0.2 s) and CPU seconds of the launcher and of each worker process, the ``read`` stage's seconds,
and the counts check (texts + read dead letters == input lines, in stats.json and in the written
shards). ``--mode read`` runs the reading steps alone (MatchFiles -> SplitFiles -> SpreadSplits ->
ReadDocs -> a counter, nothing held or written) on the same runners: the reader's own memory and
speed, apart from the rest of the pipeline (whose GroupByKeys -- DedupeIds, JoinByDoc -- hold
every document: in the launcher on the in-process runner, in the workers on Dask); ``--mode
read+group`` adds one GroupByKey of the documents by id (what DedupeIds does) before the count
(with ``read+group`` the count is of ids, one per document here). The input and the run
directories are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("alpha bravo cedar delta ember fjord grove harbor island jasper kettle lumen meadow nectar "
         "orchid pebble quartz river spruce timber umber violet willow xenon yarrow zephyr the of and "
         "a in to is was for on with as by at from this that which were are be river stone cloud").split()


def write_input(path: Path, target_bytes: int, bad_share: float, seed: int = 0) -> dict:
    """A JSONL file of about ``target_bytes``: documents of 60-600 words (~0.4-4 KB), no digits or
    number words; ``bad_share`` of the lines bad. Returns its line counts."""
    rng = random.Random(seed)
    good = bad = 0
    size = 0
    bad_kinds = [b"{not json at all", b'{"doc_id": "missing-text"}',
                 b'{"doc_id": "latin", "text": "caf\xe9"}']  # invalid JSON, no text, not UTF-8
    with path.open("wb", buffering=8 << 20) as f:
        while size < target_bytes:
            block = []
            for _ in range(1000):
                if rng.random() < bad_share:
                    line = bad_kinds[bad % 3]
                    bad += 1
                else:
                    words = rng.choices(WORDS, k=rng.randint(60, 600))
                    line = json.dumps({"doc_id": f"d{good:09d}", "text": " ".join(words) + "."}).encode()
                    good += 1
                block.append(line)
            data = b"\n".join(block) + b"\n"
            f.write(data)
            size += len(data)
    return {"bytes": size, "lines": good + bad, "good": good, "bad": bad}


class Sampler(threading.Thread):
    """Peak RSS (VmHWM) and CPU seconds of a process and all its descendants, every ``every`` s."""

    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.every, self.stop = pid, every, threading.Event()
        self.procs: dict[int, dict] = {}

    def _children(self) -> dict[int, list[int]]:
        kids: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                kids.setdefault(ppid, []).append(int(entry))
        return kids

    def run(self):
        while not self.stop.is_set():
            kids, todo, tree = self._children(), [self.root], []
            while todo:
                pid = todo.pop()
                tree.append(pid)
                todo += kids.get(pid, [])
            for pid in tree:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                hwm = int(fields.get("VmHWM", "0 kB").split()[0]) / 1024
                cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
                rec = self.procs.setdefault(pid, {"cmd": cmd, "peak_mb": 0.0, "cpu_s": 0.0})
                rec["peak_mb"] = max(rec["peak_mb"], hwm)
                rec["cpu_s"] = max(rec["cpu_s"], cpu)
            self.stop.wait(self.every)


def role(pid: int, rec: dict, root: int) -> str | None:
    cmd = rec["cmd"]
    if pid == root:
        return "launcher"
    if "sdk_worker_main" in cmd or "worker_pool_main" in cmd:
        return "beam worker"
    if "multiprocessing" in cmd and ("spawn_main" in cmd or "forkserver" in cmd):
        return "dask worker"  # the nanny's worker process (the nanny itself runs in the launcher)
    if rec["cpu_s"] < 1:
        return None  # helpers (resource trackers, shells)
    return "other"


def read_only_child(inp: str, runner: str, workers: int, splits: int, group: bool = False) -> None:
    """(In a child process.) The pipeline's reading steps alone; prints the counts."""
    import apache_beam as beam
    from apache_beam.io import fileio
    from apache_beam.metrics.metric import Metrics, MetricsFilter

    from pipelines import dask_runner
    from pipelines.augment import pipeline_options
    from pipelines.inputs import ParseFileFn, SplitFileFn, SpreadSplits
    from pipelines.stages import DEAD

    class Count(beam.DoFn):  # pickled by value (this script is not a module on the workers' path)
        def __init__(self, name):
            self.name = name

        def process(self, _):
            Metrics.counter("bench", self.name).inc()

    if runner == "direct":
        extra = [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
    else:
        extra = ["--runner=dask", f"--dask_npartitions={max(splits, 2 * workers)}"]
    with dask_runner.cluster(extra, workers if runner == "dask" else None) as extra:
        p = beam.Pipeline(options=pipeline_options(extra))
        parsed = (
            p
            | "InputPatterns" >> beam.Create([inp])
            | "MatchFiles" >> fileio.MatchAll()
            | "SplitFiles" >> beam.ParDo(SplitFileFn())
            | "SpreadSplits" >> SpreadSplits()
            | "ReadDocs" >> beam.ParDo(ParseFileFn("text")).with_outputs(DEAD, main="docs")
        )
        docs = parsed.docs
        if group:  # as DedupeIds does: every document through a GroupByKey
            docs = docs | "KeyById" >> beam.Map(lambda d: (d["doc_id"], d)) | "GroupById" >> beam.GroupByKey()
        docs | "CountDocs" >> beam.ParDo(Count("docs"))
        parsed[DEAD] | "CountDead" >> beam.ParDo(Count("dead"))
        result = p.run()
        result.wait_until_finish()
        found = result.metrics().query(MetricsFilter().with_namespace("bench"))["counters"]
        counts = {}
        for c in found:
            counts[c.key.metric.name] = counts.get(c.key.metric.name, 0) + (c.committed or c.attempted or 0)
    print("COUNTS " + json.dumps(counts), flush=True)


def count_lines(folder: Path, prefix: str) -> int:
    total = 0
    for p in folder.glob(f"{prefix}-*.jsonl"):
        with p.open("rb") as f:
            for block in iter(lambda: f.read(8 << 20), b""):
                total += block.count(b"\n")
    return total


def run_one(runner: str, inp: Path, out: Path, model: Path, workers: int, split_mb: int, splits: int,
            mode: str, npartitions: int | None = None) -> dict:
    if mode.startswith("read"):
        out.mkdir()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-read", str(inp), "--runners", runner,
               "--workers", str(workers), "--child-splits", str(npartitions or splits), "--mode", mode]
    else:
        cmd = [str(ROOT / ".venv" / "bin" / "toolformer"), "augment", "--input", str(inp),
               "--output", str(out), "--model", str(model), "--tools", "calculator"]
        if runner == "direct":
            cmd += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
        else:
            parts = npartitions or max(splits, 2 * workers)  # a bundle is (about) one split
            cmd += ["--runner", "dask", "--dask-workers", str(workers), f"--dask_npartitions={parts}"]
    env = {**os.environ, "TOOLFORMER_SPLIT_BYTES": str(split_mb << 20), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    log = (out.parent / f"{out.name}.log").open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    sampler = Sampler(proc.pid)
    sampler.start()
    rc = proc.wait()
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    log.close()
    if rc != 0:
        tail = (out.parent / f"{out.name}.log").read_text()[-3000:]
        raise SystemExit(f"{runner}: toolformer augment exited {rc}\n{tail}")
    procs = {}
    for pid, rec in sampler.procs.items():
        r = role(pid, rec, proc.pid)
        if r and rec["peak_mb"] >= 20:  # not the shells that start the workers
            procs.setdefault(r, []).append({"pid": pid, "peak_mb": round(rec["peak_mb"], 1),
                                            "cpu_s": round(rec["cpu_s"], 1)})
    if mode.startswith("read"):
        text = (out.parent / f"{out.name}.log").read_text()
        counts = json.loads(next(x for x in text.splitlines() if x.startswith("COUNTS "))[7:])
        return {"wall_s": round(wall, 1), "processes": procs, "counts": counts}
    stats = json.loads((out / "stats.json").read_text())
    return {"wall_s": round(wall, 1), "stats": stats, "processes": procs,
            "texts_lines": count_lines(out, "texts"), "error_lines": count_lines(out, "errors")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--runners", default="direct,dask")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--split-mb", type=int, default=64)
    ap.add_argument("--bad-share", type=float, default=0.01)
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--mode", choices=("augment", "read", "read+group"), default="augment")
    ap.add_argument("--dask-npartitions", type=int, help="default: the file's splits")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--child-read", help=argparse.SUPPRESS)
    ap.add_argument("--child-splits", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_read:
        group = args.mode == "read+group"
        read_only_child(args.child_read, args.runners, args.workers, args.child_splits, group)
        return

    work = Path(args.tmp) / f"bench_split_input_{os.getpid()}"
    target = int(args.gb * 1e9)
    free = shutil.disk_usage(args.tmp).free
    if free < 3.5 * target:  # the input, and one run's texts in JSONL and Parquet
        raise SystemExit(f"{args.tmp}: {free / 1e9:.1f} GB free, {3.5 * target / 1e9:.1f} GB needed")
    work.mkdir(parents=True)
    try:
        from tests.tiny_model import build_tiny_model

        model = build_tiny_model(work / "model") if args.mode == "augment" else None
        t0 = time.perf_counter()
        inp = work / "big.jsonl"
        counts = write_input(inp, target, args.bad_share)
        counts["write_s"] = round(time.perf_counter() - t0, 1)
        splits = -(-counts["bytes"] // (args.split_mb << 20))
        report = {"input": {**counts, "splits": splits, "split_mb": args.split_mb}, "cpus": os.cpu_count(),
                  "uptime_before": Path("/proc/loadavg").read_text().strip(), "runs": {}}
        print(json.dumps({"input": report["input"]}), flush=True)
        for runner in args.runners.split(","):
            out = work / f"run-{runner}"
            r = run_one(runner, inp, out, model, args.workers, args.split_mb, splits, args.mode,
                        args.dask_npartitions)
            if args.mode.startswith("read"):
                got = r["counts"]
                r["check"] = {"docs": got.get("docs", 0), "dead": got.get("dead", 0),
                              "input_lines": counts["lines"],
                              "ok": got.get("docs") == counts["good"] and got.get("dead") == counts["bad"]}
            else:
                docs = r["stats"]["documents"]
                read_bad = sum(r["stats"]["bad_records"].values())
                r["check"] = {
                    "texts_written": docs["texts_written"], "docs_bad": docs["docs_bad"],
                    "stats_total": docs["texts_written"] + read_bad,
                    "shard_total": r["texts_lines"] + r["error_lines"],
                    "input_lines": counts["lines"],
                    "ok": docs["texts_written"] == counts["good"] and read_bad == counts["bad"]
                    and r["texts_lines"] + r["error_lines"] == counts["lines"],
                }
                r["read_s"] = r["stats"]["stage_seconds"].get("read")
            r["docs_per_s"] = round(counts["lines"] / r["wall_s"], 1)
            r["loadavg_after"] = Path("/proc/loadavg").read_text().strip()
            summary = {k: v for k, v in r.items() if k != "stats"}
            report["runs"][runner] = summary
            print(json.dumps({runner: summary}), flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
        print("RESULT " + json.dumps(report))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
