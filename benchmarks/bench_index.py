"""WikiSearch index benchmark: build time, peak memory, load time and query latency.

    python benchmarks/bench_index.py --sizes 100000 1000000 --baseline-size 20000

Synthetic passages (``--words`` words each, Zipf-distributed over a 200k-word vocabulary, like
real text). Every size runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own.
The baseline is rank-bm25's ``BM25Okapi`` (what the issue names) at ``--baseline-size``, measured
in the same run; our index is measured at the same size so the ratios compare like with like.

Measured 2026-11-23 on the shared 2-core CPU dev machine (other jobs running, so wall times are
noisy; 60 words per passage, 5-word Zipf queries, top-1):

    impl        passages   build s  load s  peak RSS MB  index MB  query ms p50    p99
    rank-bm25      20000      2.86       -          148         -        103.82  126.52
    ours           20000      3.33    0.05          121      12.3          0.41    8.99
    ours          100000     33.65    0.10          175      57.2          2.54   12.10
    ours         1000000    130.78    0.10          803     547.6         52.50  133.98

    at 20000 passages, rank-bm25 / ours: build 0.9x, query p50 251x

(The 100k build ran while the machine was busiest; an earlier run gave 16.8 s.) Real data: the
114,698 "store" passages of /work/shared/data/corpus index in 23 s (peak RSS 275 MB, 110 MB on
disk); 300 NQ-open questions take 7.5 ms p50 / 16.8 ms p99.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VOCAB = 200_000


def synthetic_passages(n: int, words: int, seed: int = 0):
    from tools.wikisearch import Passage

    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(VOCAB)])
    for start in range(0, n, 10_000):
        m = min(10_000, n - start)
        ids = np.minimum(rng.zipf(1.1, size=(m, words)) - 1, VOCAB - 1)
        for j in range(m):
            yield Passage(str(start + j), "", " ".join(vocab[ids[j]]))


def queries(count: int, seed: int = 1) -> list[str]:
    """Five words drawn like the passages' words: like real questions, most queries hold a few very
    common words (long posting lists) besides rarer ones."""
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.1, size=(count, 5)) - 1, VOCAB - 1)
    return [" ".join(f"w{i}" for i in row) for row in ids]


def _latency(fn, qs: list[str]) -> dict:
    times = []
    for q in qs:
        start = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - start)
    times.sort()
    return {"median_ms": 1e3 * times[len(times) // 2], "p99_ms": 1e3 * times[int(len(times) * 0.99)]}


def measure_ours(n: int, words: int, n_queries: int) -> dict:
    from tools.wikisearch import BM25Index, build_index

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        start = time.perf_counter()
        build_index(synthetic_passages(n, words), out / "index")
        build_s = time.perf_counter() - start
        build_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        index = BM25Index(out / "index")
        load_s = time.perf_counter() - start
        lat = _latency(lambda q: index.search(q, 1), queries(n_queries))
        size_mb = sum(p.stat().st_size for p in (out / "index").iterdir()) / 2**20
        return {
            "impl": "ours",
            "passages": n,
            "build_s": build_s,
            "load_s": load_s,
            "peak_rss_mb": build_rss / 1024,
            "rss_growth_mb": (build_rss - base_rss) / 1024,
            "index_mb": size_mb,
            **lat,
        }
    finally:
        shutil.rmtree(out)


def measure_rank_bm25(n: int, words: int, n_queries: int) -> dict:
    from rank_bm25 import BM25Okapi

    from tools.wikisearch import tokenize

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    bm25 = BM25Okapi([tokenize(p.text) for p in synthetic_passages(n, words)])
    build_s = time.perf_counter() - start
    build_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    lat = _latency(lambda q: int(np.argmax(bm25.get_scores(tokenize(q)))), queries(n_queries))
    return {
        "impl": "rank-bm25",
        "passages": n,
        "build_s": build_s,
        "load_s": float("nan"),
        "peak_rss_mb": build_rss / 1024,
        "rss_growth_mb": (build_rss - base_rss) / 1024,
        "index_mb": float("nan"),
        **lat,
    }


def _run_child(impl: str, n: int, words: int, n_queries: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        impl,
        str(n),
        "--words",
        str(words),
        "--queries",
        str(n_queries),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--baseline-size", type=int, default=20_000)
    parser.add_argument("--words", type=int, default=60)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, n = args.child[0], int(args.child[1])
        fn = measure_ours if impl == "ours" else measure_rank_bm25
        print(json.dumps(fn(n, args.words, args.queries)))
        return
    rows = [
        _run_child("rank-bm25", args.baseline_size, args.words, min(args.queries, 50)),
        _run_child("ours", args.baseline_size, args.words, args.queries),
    ]
    base, same = rows
    for n in args.sizes:
        rows.append(_run_child("ours", n, args.words, args.queries))
    header = (
        f"{'impl':<10}{'passages':>10}{'build s':>10}{'load s':>8}{'peak RSS MB':>13}"
        f"{'RSS growth MB':>15}{'index MB':>10}{'query ms p50':>14}{'p99':>9}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['impl']:<10}{r['passages']:>10}{r['build_s']:>10.2f}{r['load_s']:>8.2f}{r['peak_rss_mb']:>13.0f}"
            f"{r['rss_growth_mb']:>15.0f}{r['index_mb']:>10.1f}{r['median_ms']:>14.2f}{r['p99_ms']:>9.2f}"
        )
    print(
        f"\nat {args.baseline_size} passages, rank-bm25 / ours: "
        f"build {base['build_s'] / same['build_s']:.1f}x, "
        f"query p50 {base['median_ms'] / same['median_ms']:.0f}x, "
        f"RSS growth {base['rss_growth_mb'] / max(same['rss_growth_mb'], 1):.1f}x"
    )


if __name__ == "__main__":
    main()
