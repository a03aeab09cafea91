"""Benchmark: are the Calculator calls the pipeline keeps on real text right?

    python benchmarks/bench_precision.py [--problems 60] [--data ../shared/data/gsm8k/train.jsonl]
        [--settings paper ours] [--set calculator.k=5 ...] [--model DIR] [--run DIR [DIR ...]]
    python benchmarks/bench_precision.py --run DIR --problems 900 --tau-f 0.3 0.5 0.75 1.0   # judge a run, τf raised

Input: GSM8K train problems (question, then the worked solution with its ``<<a*b=c>>`` annotations
removed and ``#### n`` written as ``The answer is n.``; the bundled arithmetic sample where
../shared is absent). The annotations are kept aside, only to judge: a kept call is **right** when
its result equals the result of an annotated step (or of the final answer) whose number ends at or
just after the call (within ``--slack`` characters, default 12: ``48/2 = [Calculator(48 / 2) ->
24] 24`` is right, the same call before "clips in May" is not). The annotators left many written
equations unmarked (``8*45 = 360``, ``365/5 = 73``): a second figure, "with written equations", also
counts as steps the solution's own equations ``a op b ... = c`` whose left side the Calculator
evaluates to ``c`` (the issue's figure, ``precision``, stays the annotated one).

Each setting runs ``toolformer augment`` (the real pipeline, the default model) on the same
problems; per setting it prints kept calls per problem, precision, the share of problems with at
least one right kept call, and diagnostics over all candidates: how many compute a right step
result, how many of those sit just before that number, and the AUC of L- - L+ (right vs wrong).
Settings: ``paper`` (positions before any token, the paper's loss window, no grounding rule, call as
a prefix), ``ours`` (this project's defaults), ``prompt`` (ours, filtered under the few-shot
examples), ``inline``. The last line is a JSON object with ``precision``, ``right_problem_share``,
``kept_per_problem`` and ``problems`` of the last setting, and every setting's figures.
``--run DIR`` judges an existing run instead (e.g. the experiment's) on the problems it holds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
BUNDLED = ROOT / "toolformer" / "data" / "sample_docs.jsonl"
ANNOTATION = re.compile(r"<<([^=<>]*)=([^<>]*)>>")
NUMBER = re.compile(r"-?\$?\s?(\d[\d,]*(?:\.\d+)?|\.\d+)")
_OPERAND = r"\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)%?"
WRITTEN = re.compile(rf"({_OPERAND}(?:\s*[-+*/x\u00d7\u00f7]\s*{_OPERAND})+)\s*=\s*({_OPERAND})")

SETTINGS = {
    "paper": ["calculator.positions=token", "calculator.loss_start=token", "calculator.grounded=false",
              "calculator.filter_context=prefix"],
    "ours": [],
    "inline": ["calculator.filter_context=inline"],
    "prompt": ["calculator.filter_context=prompt"],
}


def as_number(text: str | None) -> Fraction | None:
    if text is None:
        return None
    m = NUMBER.search(str(text))
    if not m:
        return None
    try:
        return round(Fraction(m.group(1).replace(",", "")), 2)
    except (ValueError, ZeroDivisionError):
        return None


def gsm8k_problem(row: dict, doc_id: str) -> dict:
    """A document and its judged steps ``(value, char where the step's number ends)``."""
    text = row["question"].strip() + "\n"
    steps, last = [], 0
    answer = str(row["answer"]).strip()
    final = re.search(r"####\s*(.+)$", answer)
    body = answer[: final.start()].rstrip() if final else answer
    for m in ANNOTATION.finditer(body):
        text += body[last : m.start()]
        after = NUMBER.match(body, m.end())
        end = len(text) + (after.end() - m.end() if after else 0)
        value = as_number(m.group(2))
        if value is not None:
            steps.append((value, end))
        last = m.end()
    text += body[last:]
    if final:
        value = final.group(1).strip()
        text += f"\nThe answer is {value}."
        if as_number(value) is not None:
            steps.append((as_number(value), len(text) - 1))
    return {"doc_id": doc_id, "text": text, "steps": steps,
            "written": written_steps(text, len(row["question"].strip()) + 1)}


def written_steps(text: str, start: int) -> list:
    """The solution's own equations ``a op b ... = c`` (from char ``start``) whose left side evaluates
    to ``c``: ``(c, char where c ends)``, like an annotated step."""
    from tools.calculator import evaluate

    steps = []
    for m in WRITTEN.finditer(text, start):
        if "%" in m.group(0):  # "40% + 20% = 60%": the Calculator reads % as nothing, so no judge by it
            continue
        try:
            value = as_number(evaluate(m.group(1).replace("$", "")))
        except Exception:  # noqa: BLE001 - an equation the Calculator cannot read is not a step
            continue
        if value is not None and value == as_number(m.group(2)):
            steps.append((value, m.end()))
    return steps


def load_problems(path: Path, n: int) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if "question" in row and "answer" in row:
                out.append(gsm8k_problem(row, f"gsm8k-train-{len(out):05d}"))
            elif row.get("kind") == "arithmetic":  # the bundled sample: no annotations to judge by
                out.append({"doc_id": row["doc_id"], "text": row["text"], "steps": [], "written": []})
            if len(out) == n:
                break
    return out


def is_right(cand: dict, steps: list, slack: int) -> bool:
    value = as_number(cand.get("result"))
    return value is not None and any(v == value and 0 <= end - cand["position"] <= slack for v, end in steps)


def computes_step(cand: dict, steps: list) -> bool:
    value = as_number(cand.get("result"))
    return value is not None and any(v == value for v, _ in steps)


def auc(pos: list[float], neg: list[float]) -> float | None:
    if not pos or not neg:
        return None
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def judge(problems: list[dict], cands: list[dict], slack: int) -> dict:
    by_id = {p["doc_id"]: p for p in problems}
    cands = [c for c in cands if c["doc_id"] in by_id and c["tool"] == "Calculator"]
    kept = [c for c in cands if c["kept"]]
    right = [c for c in kept if is_right(c, by_id[c["doc_id"]]["steps"], slack)]
    right_w = [c for c in kept if is_right(c, by_id[c["doc_id"]]["steps"] + by_id[c["doc_id"]].get("written", []), slack)]
    executed = [c for c in cands if c.get("delta") is not None]
    step_results = [c for c in cands if c.get("result") is not None and computes_step(c, by_id[c["doc_id"]]["steps"])]
    placed = [c for c in step_results if is_right(c, by_id[c["doc_id"]]["steps"], slack)]
    n = len(problems)
    return {
        "problems": n,
        "candidates": len(cands),
        "ungrounded_dropped": sum(c.get("dropped") == "ungrounded" for c in cands),
        "kept": len(kept),
        "kept_right": len(right),
        "kept_per_problem": round(len(kept) / n, 4) if n else 0.0,
        "precision": round(len(right) / len(kept), 4) if kept else 0.0,
        "right_problem_share": round(len({c["doc_id"] for c in right}) / n, 4) if n else 0.0,
        "kept_right_with_written": len(right_w),
        "precision_with_written": round(len(right_w) / len(kept), 4) if kept else 0.0,
        "right_problem_share_with_written": round(len({c["doc_id"] for c in right_w}) / n, 4) if n else 0.0,
        "candidates_with_step_result": len(step_results),
        "of_those_placed_right": len(placed),
        "auc_delta_right_vs_wrong": auc(
            [c["delta"] for c in executed if is_right(c, by_id[c["doc_id"]]["steps"], slack)],
            [c["delta"] for c in executed if not is_right(c, by_id[c["doc_id"]]["steps"], slack)],
        ),
        "examples_kept": [
            {"right": is_right(c, by_id[c["doc_id"]]["steps"], slack), "delta": c["delta"],
             "context": by_id[c["doc_id"]]["text"][max(0, c["position"] - 50) : c["position"]] + " " + c["call"]
             .replace("]", f" -> {c['result']}]") + by_id[c["doc_id"]]["text"][c["position"] : c["position"] + 30]}
            for c in kept[:12]
        ],
    }


def shard_records(run: str, kind: str) -> list[dict]:
    """Every record of a run's ``kind`` shards (texts, candidates), read with the project's one shard
    reader (toolformer.runs); a bad line stops the benchmark, naming it."""
    from toolformer import runs

    rows = []
    for path in runs.shards(run, kind):
        for n, record, problem in runs.json_lines(path):
            if problem:
                raise SystemExit(f"{path}: line {n}: {problem}")
            rows.append(record)
    return rows


def read_candidates(run: str) -> list[dict]:
    return shard_records(run, "candidates")


def run_doc_ids(run: str) -> set[str]:
    """Every document a finished run wrote (its texts), with candidates or not: the denominator of
    the share of problems with a right call."""
    return {r["doc_id"] for r in shard_records(run, "texts")}


def run_setting(name: str, problems: list[dict], extra: list[str], workdir: str, threads: int,
                model: str | None = None) -> tuple[list, float]:
    data = os.path.join(workdir, "problems.jsonl")
    if not os.path.exists(data):
        with open(data, "w", encoding="utf-8") as f:
            for p in problems:
                f.write(json.dumps({"doc_id": p["doc_id"], "text": p["text"]}) + "\n")
    out = os.path.join(workdir, name)
    cmd = [sys.executable, "-m", "commands.cli", "augment", "--input", data, "--output", out,
           "--tools", "calculator", *(["--model", model] if model else []), "--override", *SETTINGS[name], *extra, f"threads={threads}"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return read_candidates(out), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", type=int, default=60)
    ap.add_argument("--data", type=Path, default=GSM8K if GSM8K.exists() else BUNDLED)
    ap.add_argument("--settings", nargs="+", default=["paper", "ours"], choices=list(SETTINGS))
    ap.add_argument("--set", nargs="*", default=["calculator.k=5", "calculator.m=5", "lazy_filter=true"],
                    help="overrides for every setting (augment --override)")
    ap.add_argument("--slack", type=int, default=12)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--model", help="the annotating model (default: the pipeline's default model), e.g. a "
                    "fine-tuned round's final_model (self-training)")
    ap.add_argument("--run", nargs="+", help="judge these finished runs (their candidates together, on the "
                    "documents they wrote) instead of running the pipeline")
    ap.add_argument("--workdir", help="keep the runs here (default: a temporary directory)")
    ap.add_argument("--tau-f", nargs="*", type=float, default=[],
                    help="with --run: also judge the run as if filtered at each of these τf (only raising the "
                         "run's own: a kept call stays kept where its exact delta >= τf)")
    args = ap.parse_args()
    problems = load_problems(args.data, args.problems)
    results = {}
    if args.run:
        cands = [c for run in args.run for c in read_candidates(run)]
        ids = set().union(*(run_doc_ids(run) for run in args.run)) or {c["doc_id"] for c in cands}
        problems = [p for p in problems if p["doc_id"] in ids] or problems
        results["run"] = judge(problems, cands, args.slack)
        for tau in args.tau_f:
            if any(c.get("threshold") is not None and tau < c["threshold"] for c in cands):
                raise SystemExit(f"--tau-f {tau}: below the run's own threshold (a rejected call's delta may be "
                                 "an upper bound, lazy_filter): only raising it is exact")
            results[f"run, τf {tau}"] = judge(problems, [{**c, "kept": bool(c["kept"]) and c["delta"] >= tau}
                                                        for c in cands], args.slack)
    else:
        workdir = args.workdir or tempfile.mkdtemp(prefix="bench_precision_")
        os.makedirs(workdir, exist_ok=True)
        for name in args.settings:
            cands, seconds = run_setting(name, problems, args.set, workdir, args.threads, args.model)
            results[name] = {**judge(problems, cands, args.slack), "seconds": round(seconds, 1)}
    print(f"{len(problems)} problems from {args.data}; slack {args.slack} chars")
    print("| setting | kept/problem | precision | problems with a right call | with written equations: precision, "
          "problems | candidates | with a step result | placed right | AUC(delta) | s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        a = r["auc_delta_right_vs_wrong"]
        print(f"| {name} | {r['kept_per_problem']:.3f} | {r['precision']:.2f} ({r['kept_right']}/{r['kept']}) | "
              f"{r['right_problem_share']:.1%} | {r['precision_with_written']:.2f} "
              f"({r['kept_right_with_written']}/{r['kept']}), {r['right_problem_share_with_written']:.1%} | {r['candidates']} | {r['candidates_with_step_result']} | "
              f"{r['of_those_placed_right']} | {'-' if a is None else f'{a:.2f}'} | {r.get('seconds', '-')} |")
    for name, r in results.items():
        print(f"\nkept calls, {name}:")
        for e in r["examples_kept"]:
            print(f"  {'RIGHT' if e['right'] else 'wrong'} {e['delta']:+.2f}  {e['context']!r}")
    last = results[list(results)[-1]]
    summary = {k: last[k] for k in ("precision", "right_problem_share", "kept_per_problem", "problems")}
    summary["settings"] = {n: {k: v for k, v in r.items() if k != "examples_kept"} for n, r in results.items()}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
