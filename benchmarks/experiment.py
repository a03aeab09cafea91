"""The experiment: does a model fine-tuned on its own kept calls beat its base on real math sets?

    python benchmarks/experiment.py [--docs 2000] [--output experiment_out] [--shared ../shared/data]
        [--mawps-limit N] [--gsm8k-limit 500] [--ppl-windows 40] [--steps ...] [--skip-eval]

One command for the whole method on real data (``make experiment`` runs it with the defaults):

1. **Input**: the first ``--docs`` GSM8K *train* problems, each written as one document: the question,
   then the worked solution with its ``<<a*b=c>>`` annotations removed and ``#### n`` written as
   ``The answer is n.`` (GSM8K's annotations are used only to judge precision, step 3, never to train).
2. **Augment** with the pipeline (``toolformer augment``, Calculator, this project's defaults; the
   settings are printed and saved). Resumable: an interrupted run goes on with ``--resume`` semantics.
3. **Precision** of the kept calls (``benchmarks/bench_precision.py``'s judge).
4. **Fine-tune** the base model on the run's texts with kept calls (``toolformer finetune``; only texts
   with calls, best checkpoint by dev perplexity); the model is a plain HF directory, ``DIR/final_model``.
5. **Evaluate** base and fine-tuned, each with and without tools, zero-shot with the paper's prompts:
   all of MAWPS, ``--gsm8k-limit`` GSM8K test problems; both again one-shot (``--one-shot``); GSM8K
   once more with ``--prompt-style solution`` (the model writes a worked solution with several calls;
   beyond the paper); and WikiText-2 perplexity with tools disabled.
6. **Report**: ``DIR/summary.md`` (the table, the time each step took), ``DIR/summary.json`` and
   ``DIR/accuracy.png``.
7. **Self-training, round 2** (beyond the paper; its Limitations section proposes it), with
   ``--round2-docs N``: the round-1 model annotates the next N GSM8K train documents
   (``DIR/round2/augment-tuned``; with ``--round2-compare-base`` the base model annotates the same
   documents too, ``DIR/round2/augment-base``: the two annotators side by side), then the *base* model
   is fine-tuned on round 1's and round 2's kept calls (``DIR/round2/final_model``) and evaluated
   like the round-1 model (label ``tuned-r2``).

Each step is skipped when its output is complete, so a re-run after an interruption continues.
Artifacts stay in ``--output`` (default ``experiment_out/``, ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_precision import judge, load_problems, read_candidates  # noqa: E402

PY = sys.executable
BASE = "smollm2-135m"


def sh(args: list[str], log: Path, env: dict | None = None) -> float:
    """Run a toolformer command, its output appended to ``log``; returns the seconds it took."""
    print("$", " ".join(args), flush=True)
    t0 = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ " + " ".join(args) + "\n")
        f.flush()
        proc = subprocess.run([PY, "-m", "commands.cli", *args], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                              env=env)
    if proc.returncode != 0:
        sys.exit(f"experiment: step failed ({' '.join(args[:1])}, exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def write_docs(problems: list[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps({"doc_id": p["doc_id"], "text": p["text"]}) + "\n")


def results_of(path: Path) -> list[dict]:
    return json.loads((path / "results.json").read_text())["conditions"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--output", type=Path, default=ROOT / "experiment_out")
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--augment-set", nargs="*", default=["calculator.k=20", "calculator.m=2", "calculator.tau_f=0.3",
                    "lazy_filter=true"], help="augment --override settings (chosen on 40 other problems, see README)")
    ap.add_argument("--workers", type=int, default=1, help="Beam direct-runner worker processes")
    ap.add_argument("--finetune-args", default="--learning-rate 5e-5 --max-steps 40 --effective-batch-size 8 "
                    "--batch-size 8 --save-steps 5 --max-length 512 --dev-share 0.15",
                    help='toolformer finetune flags, one string: --finetune-args="--learning-rate 1e-4 ..."')
    ap.add_argument("--mawps-limit", type=int, default=None, help="default: all 2,065")
    ap.add_argument("--gsm8k-limit", type=int, default=500)
    ap.add_argument("--one-shot-limit", type=int, default=None,
                    help="evaluate the one-shot conditions on the first N problems of each set only")
    ap.add_argument("--ppl-windows", type=int, default=40)
    ap.add_argument("--no-one-shot", action="store_true")
    ap.add_argument("--sets", nargs="+", default=["mawps", "mawps-one-shot", "gsm8k", "gsm8k-one-shot", "gsm8k-solution",
                                                 "wikitext-ppl"],
                    help="evaluations to run (two processes may split them: each set is its own step)")
    ap.add_argument("--steps", nargs="+", default=["augment", "finetune", "eval-base", "eval-tuned", "summary"],
                    choices=["augment", "finetune", "eval-base", "eval-tuned", "summary"],
                    help="steps to run (the base model's evaluation needs no fine-tuning: run it alongside)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the augment and evaluate steps")
    ap.add_argument("--parts", type=int, default=1, help="augment --parts (a killed run keeps its finished parts)")
    ap.add_argument("--round2-docs", type=int, default=0,
                    help="self-training: the round-1 model annotates the next N documents (0: no round 2)")
    ap.add_argument("--round2-compare-base", action="store_true",
                    help="round 2: the base model annotates the same documents too (an A/B of the annotators)")
    ap.add_argument("--round2-finetune-args", default=None, help="default: --finetune-args")
    args = ap.parse_args()
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    log = out / "experiment.log"
    (out / "times").mkdir(exist_ok=True)  # one file per step: steps may run in two processes at once
    times: dict[str, float] = {f.stem: json.loads(f.read_text()) for f in sorted((out / "times").glob("*.json"))}

    def step(name: str, done: bool, fn) -> None:
        if done:
            print(f"[{name}] done already, skipped")
            return
        times[name] = round(fn(), 1)
        times.update({f.stem: json.loads(f.read_text()) for f in (out / "times").glob("*.json")})
        (out / "times" / f"{name}.json").write_text(json.dumps(times[name]))

    gsm_train = args.shared / "gsm8k" / "train.jsonl"
    problems = load_problems(gsm_train, args.docs)
    docs = out / "docs.jsonl"
    if not docs.exists():
        write_docs(problems, docs)

    run = out / "augment"
    model = out / "final_model"
    if "eval-base" in args.steps and "augment" not in args.steps:
        evaluate(args, out, log, times, step, [BASE])
        if args.steps == ["eval-base"]:
            return
    workers = ["--direct_num_workers", str(args.workers), "--direct_running_mode", "multi_processing"] \
        if args.workers > 1 else []
    def augment(docs_file: Path, dest: Path, model_spec: str) -> float:
        return sh(["augment", "--input", str(docs_file), "--output", str(dest), "--tools", "calculator",
                   "--model", model_spec, *(["--resume"] if (dest / "run.json").exists() else []),
                   "--parts", str(args.parts), "--override", *args.augment_set, f"threads={args.threads}",
                   *workers], log)

    step("augment", (run / "_SUCCESS").exists() or "augment" not in args.steps, lambda: augment(docs, run, BASE))
    precision = judge(problems, read_candidates(str(run)), slack=12)
    (out / "precision.json").write_text(json.dumps(precision, indent=1))
    stats = json.loads((run / "stats.json").read_text())
    print(f"kept {precision['kept']} calls on {precision['problems']} problems, precision {precision['precision']:.2f}, "
          f"right call in {precision['right_problem_share']:.1%} of problems")

    step("finetune", (model / "finetune.json").exists() or "finetune" not in args.steps, lambda: sh(
        ["finetune", "--data", str(run), "--output", str(model), *shlex.split(args.finetune_args)], log))
    if "eval-base" in args.steps and "augment" in args.steps:
        evaluate(args, out, log, times, step, [BASE])
    if "eval-tuned" in args.steps:
        evaluate(args, out, log, times, step, [str(model)])
    round2 = {}
    if args.round2_docs:
        round2 = self_train(args, out, log, times, step, augment, run, model)
    if "summary" in args.steps:
        tables = {}
        for d in sorted((out / "eval").glob("*/*")):
            if (d / "results.json").exists():
                # other models are directories called final_model too: say which (eval/<set>/<label>)
                names = {"tuned": "round-1 model", "tuned-r2": "round-2 model", "tuned-900": "round-1 model, 900 docs"}
                rename = str if d.name == "base" else (
                    lambda c, n=names.get(d.name, d.name): c.replace("final_model", n))
                tables.setdefault(d.parent.name, []).extend(
                    {**c, "condition": rename(c["condition"])} for c in results_of(d))
        write_summary(out, args, stats, precision, tables, times, round2)


def self_train(args, out: Path, log: Path, times: dict, step, augment, run1: Path, model1: Path) -> dict:
    """Round 2: the round-1 model annotates new documents; the base model is fine-tuned on both rounds."""
    r2 = out / "round2"
    r2.mkdir(exist_ok=True)
    problems = load_problems(args.shared / "gsm8k" / "train.jsonl", args.docs + args.round2_docs)[args.docs:]
    docs = r2 / "docs.jsonl"
    if not docs.exists():
        write_docs(problems, docs)
    annotators = {"tuned": str(model1), **({"base": BASE} if args.round2_compare_base else {})}
    precision = {}
    for label, spec in annotators.items():
        dest = r2 / f"augment-{label}"
        step(f"round2 augment {label}", (dest / "_SUCCESS").exists(), lambda: augment(docs, dest, spec))
        precision[label] = judge(problems, read_candidates(str(dest)), slack=12)
        p = precision[label]
        print(f"round 2, annotated by the {label} model: {p['candidates']} candidates, kept {p['kept']}, "
              f"precision {p['precision']:.2f}, right call in {p['right_problem_share']:.1%} of documents")
    (r2 / "precision.json").write_text(json.dumps(precision, indent=1))
    model2 = r2 / "final_model"
    step("round2 finetune", (model2 / "finetune.json").exists(), lambda: sh(
        ["finetune", "--data", str(run1), str(r2 / "augment-tuned"), "--output", str(model2),
         *shlex.split(args.round2_finetune_args or args.finetune_args)], log))
    if "eval-tuned" in args.steps:
        evaluate(args, out, log, times, step, [str(model2)], label="tuned-r2")
    return precision


def evaluate(args, out: Path, log: Path, times: dict, step, models: list[str], label: str | None = None) -> None:
    """Each evaluation of ``models`` (one label each) into ``out/eval/<set>/<label>``."""
    label = label or ("base" if models == [BASE] else "tuned")

    evals = {
        "mawps": ["--task", "math", "--data", str(args.shared / "mawps" / "tora" / "test.jsonl"),
                  *(["--limit", str(args.mawps_limit)] if args.mawps_limit else [])],
        "gsm8k": ["--task", "math", "--data", str(args.shared / "gsm8k" / "test.jsonl"),
                  "--limit", str(args.gsm8k_limit)],
        # beyond the paper: the model writes its worked solution, several calls (README, Evaluation)
        "gsm8k-solution": ["--task", "math", "--data", str(args.shared / "gsm8k" / "test.jsonl"),
                           "--limit", str(args.gsm8k_limit), "--prompt-style", "solution"],
    }
    threads = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for name, task in evals.items():
        for shot in ([False] if args.no_one_shot or name.endswith("-solution") else [False, True]):
            key = name + ("-one-shot" if shot else "")
            if key not in args.sets:
                continue
            dest = out / "eval" / key / label
            limit = ["--limit", str(args.one_shot_limit)] if shot and args.one_shot_limit else []
            step(f"eval {key} {label}", (dest / "results.json").exists(), lambda: sh(
                ["evaluate", *task, *limit, "--model", *models, "--output", str(dest), "--no-progress",
                 "--tool-names", "Calculator", *(["--one-shot"] if shot else [])], log, threads))
    ppl = out / "eval" / "wikitext-ppl" / label
    step(f"eval perplexity {label}", (ppl / "results.json").exists() or "wikitext-ppl" not in args.sets, lambda: sh(
        ["evaluate", "--task", "perplexity", "--data", str(args.shared / "wikitext" / "wiki.test.raw"),
         "--limit", str(args.ppl_windows), "--model", *models, "--output", str(ppl), "--no-progress"],
        log, threads))


def rows_table(rows: list[dict]) -> list[str]:
    """The Markdown table of evaluation rows (eval, condition, n, accuracy, call share, perplexity)."""
    lines = ["| eval | condition | n | accuracy | outputs with a call | perplexity |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
        share = "-" if r["tool_call_share"] is None else f"{100 * r['tool_call_share']:.0f}%"
        ppl = "-" if r["perplexity"] is None else f"{r['perplexity']:.2f}"
        lines.append(f"| {r['eval']} | {r['condition']} | {r['n']} | {acc} | {share} | {ppl} |")
    return lines


def write_summary(out: Path, args, stats: dict, precision: dict, tables: dict, times: dict,
                  round2: dict | None = None) -> None:
    rows = []
    for key, conds in tables.items():
        for c in conds:
            rows.append({"eval": key, "condition": c["condition"], "n": c["n"], "accuracy": c.get("accuracy"),
                         "tool_call_share": c.get("tool_call_share"), "perplexity": c.get("perplexity")})
    lines = [f"# Experiment: {args.docs} GSM8K train documents, Calculator", "",
             f"Kept {precision['kept']} calls ({precision['kept_per_problem']:.3f} per document), precision "
             f"{precision['precision']:.2f}, a right call in {precision['right_problem_share']:.1%} of documents.", "",
             *[f"Round 2 ({args.round2_docs} more documents), annotated by the {label} model: {p['candidates']} "
               f"candidates, kept {p['kept']} ({p['kept_per_problem']:.3f} per document), precision "
               f"{p['precision']:.2f}, a right call in {p['right_problem_share']:.1%} of documents." + "\n"
               for label, p in (round2 or {}).items()],
             *rows_table(rows)]
    lines += ["", "Seconds per step: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()),
              f"Total: {sum(times.values()) / 60:.1f} min"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"precision": precision, "augment_stats": stats, "rows": rows,
                                                  "round2_precision": round2 or {}, "times": times},
                                                 indent=1, default=str))
    print("\n".join(lines))
    plot(out, rows)


def plot(out: Path, rows: list[dict], title: str = "base vs fine-tuned, with and without the Calculator") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = [r for r in rows if r["accuracy"] is not None]
    evals = list(dict.fromkeys(r["eval"] for r in acc))
    conds = list(dict.fromkeys(r["condition"] for r in acc))
    fig, ax = plt.subplots(figsize=(1.6 + 1.9 * len(evals), 3.6))
    width = 0.8 / max(1, len(conds))
    for k, cond in enumerate(conds):
        ys = [next((100 * r["accuracy"] for r in acc if r["eval"] == e and r["condition"] == cond), 0) for e in evals]
        ax.bar([i + k * width for i in range(len(evals))], ys, width, label=cond)
    ax.set_xticks([i + width * (len(conds) - 1) / 2 for i in range(len(evals))], evals)
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)


if __name__ == "__main__":
    main()
