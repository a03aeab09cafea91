"""A small experiment: does fine-tuning on texts with calculator calls make a model write calls?

No pipeline output is needed: GSM8K solutions carry ``<<48/2=24>>`` annotations that map directly to
``[Calculator(48/2) -> 24]`` (an annotated stand-in for C*, not the pipeline's sampled and filtered
calls). Then the fine-tuned and the base model continue held-out problems greedily and we count how
often each writes ``[Calculator(``.

    python -m finetune.gsm8k_calls build --gsm8k DATA/gsm8k/train.jsonl --out train.jsonl --limit 600
    toolformer finetune --data train.jsonl --output ft --max-length 128 --batch-size 4 \
        --effective-batch-size 4 --max-steps 40 --save-steps 20 --dev-share 0.015 --learning-rate 2e-4
    python -m finetune.gsm8k_calls rate --gsm8k DATA/gsm8k/test.jsonl --model ft --model smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from toolformer.call_format import neutralize, render_call
from toolformer.models import load_model

ANNOTATION = re.compile(r" ?<<([^<>=]+)=([^<>]+)>>")
CALL_START = "[Calculator("


def annotated_text(question: str, answer: str) -> str:
    """Question and worked solution, each ``<<a*b=c>>`` turned into `` [Calculator(a*b) -> c] ``."""
    solution, _, final = answer.rpartition("####")
    parts, last = [], 0
    for m in ANNOTATION.finditer(solution):
        parts.append(neutralize(solution[last:m.start()]))
        parts.append(" " + render_call("Calculator", m.group(1).strip(), m.group(2).strip()) + " ")
        last = m.end()
    parts.append(neutralize(solution[last:]))
    body = "".join(parts).rstrip()
    return f"{neutralize(question)}\n{body}\nThe answer is {final.strip()}."


def prompts(records: list[dict]) -> tuple[list[str], list[str]]:
    """Two prompt sets per problem: the question alone, and the solution up to its first annotation."""
    free, at_call = [], []
    for r in records:
        free.append(neutralize(r["question"]) + "\n")
        head = r["answer"].split("<<", 1)[0]
        if "<<" in r["answer"]:
            at_call.append(neutralize(r["question"]) + "\n" + neutralize(head).rstrip())
    return free, at_call


@torch.no_grad()
def count_calls(model, tok, texts: list[str], max_new_tokens: int, batch: int = 16) -> int:
    """How many greedy continuations of ``texts`` contain ``[Calculator(``."""
    tok.padding_side = "left"  # decoder-only batch generation continues from the right edge
    hits = 0
    for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], return_tensors="pt", padding=True)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        for row in out[:, enc.input_ids.shape[1]:]:
            hits += CALL_START in tok.decode(row, skip_special_tokens=True)
    return hits


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--gsm8k", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--limit", type=int, default=2000)
    r = sub.add_parser("rate")
    r.add_argument("--gsm8k", required=True)
    r.add_argument("--model", action="append", required=True)
    r.add_argument("--limit", type=int, default=100)
    args = p.parse_args(argv)
    records = [json.loads(line) for line in Path(args.gsm8k).read_text().splitlines()[:args.limit]]
    if args.cmd == "build":
        with open(args.out, "w") as f:
            f.writelines(json.dumps({"doc_id": f"gsm8k-train-{n}", "text": annotated_text(**rec)}) + "\n"
                         for n, rec in enumerate(records))
        print(f"wrote {len(records)} texts to {args.out}")
        return
    free, at_call = prompts(records)
    for spec in args.model:
        model, tok = load_model(spec, device="cpu")
        a = count_calls(model, tok, free, max_new_tokens=64)
        c = count_calls(model, tok, at_call, max_new_tokens=12)
        print(json.dumps({"model": spec, "free_hits": a, "free_prompts": len(free),
                          "at_annotation_hits": c, "at_annotation_prompts": len(at_call)}))


if __name__ == "__main__":
    main()
