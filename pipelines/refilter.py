"""``toolformer refilter``: new tau_f thresholds (and grounding rules) on a finished run's
candidates, without recomputing anything.

    toolformer refilter runs/r1 runs/r1-tau1 --tau-f calculator=1.0

Reads and writes through the run directory's file systems (pipelines/rundir.py), so ``RUN`` and
``OUTPUT`` may be local paths or Beam file system URLs, as for ``toolformer augment --output``.
"""

from __future__ import annotations

import json
import os

from pipelines import rundir
from pipelines.sinks import _text_row, parquet_schemas, to_json
from pipelines.stages import merge_document
from toolformer.call_format import strip_calls
from toolformer.errors import UserError
from toolformer.filtering import keep_if_useful


def _read_jsonl(paths: list[str]) -> list[dict]:
    """Every record of the shards; a bad line stops refilter, naming it (nothing is written yet)."""
    rows = []
    for path in paths:
        try:
            for n, row, problem in rundir.json_lines(path):
                if problem is not None:
                    raise UserError(f"{path} line {n}: {problem}")
                rows.append(row)
        except (OSError, EOFError) as e:  # a truncated or corrupt .gz shard
            raise UserError(f"{path}: {e}") from None
    return rows


def _parquet_bytes(table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def check_settled(cands: list[dict], new_tau: dict[str, float], src: str) -> None:
    """Refuse a tau_f that candidates settled by lazy filtering cannot answer.

    Such a candidate (no error, ``loss_no_result`` null) holds L- = L(eps), an upper bound of the
    true L-, so its delta is an upper bound too: it stays rejected under any tau_f above that bound,
    and below it the true L- would be needed.
    """
    for tool, tau in sorted(new_tau.items()):
        bounds = [
            c["delta"]
            for c in cands
            if c["tool"] == tool and c["error"] is None and c["loss_no_result"] is None
        ]
        if bounds and max(bounds) >= tau:
            raise UserError(
                f"--tau-f {tool}={tau}: {src} was filtered lazily (lazy_filter) and {len(bounds)} {tool} "
                f"candidates hold only an upper bound of L-; tau_f must be above {max(bounds):.6f}, "
                "or rerun augment without lazy_filter"
            )


def apply_grounding(cands: list[dict], texts: dict[str, str], rules: dict[str, bool], src: str) -> None:
    """``refilter --grounded TOOL=true|false``: switch the no-answers-from-the-future rule per tool.

    true: a candidate whose input is not written before it (judged on its document's text before the
    call, :meth:`tools.base.Tool.grounded`) is ``dropped`` and not kept; false: dropped candidates come
    back -- possible only where their losses were computed (a run made without the rule)."""
    from tools.base import tool_class

    for tool, required in sorted(rules.items()):
        mine = [c for c in cands if c["tool"] == tool]
        if not required:
            lost = [c for c in mine if c.get("dropped") == "ungrounded" and c.get("loss_plus") is None]
            if lost:
                raise UserError(f"--grounded {tool}=false: {src} dropped {len(lost)} {tool} candidates before the "
                                "filter, so they have no losses; rerun augment with TOOL.grounded=false")
            for c in mine:
                c["dropped"] = None
            continue
        try:
            checker = tool_class(tool).__new__(tool_class(tool))  # the rule needs no tool resources
        except KeyError as e:
            raise UserError(f"--grounded: {e.args[0]}") from None
        for c in mine:
            c["grounded"] = bool(checker.grounded(c["input"], texts.get(c["doc_id"], "")[: c["position"]]))
            if not c["grounded"]:
                c["dropped"], c["kept"] = "ungrounded", False


def refilter(run: str, output: str, tau_f: list[str] | None = None, grounded: list[str] | None = None) -> int:
    """Apply new tau_f thresholds to a finished run's candidates, without recomputing anything.

    Args:
        run: a finished augment run directory (holds _SUCCESS); a local path or a Beam file system
            URL, as for augment --output.
        output: a new directory for the re-filtered texts, candidates, stats.json and _SUCCESS
            (a local path or a Beam file system URL).
        tau_f: new thresholds as TOOL=VALUE (tool names as in the candidates, e.g. Calculator=1.0);
            tools not named keep their threshold.
        grounded: TOOL=true|false: require (or not) that a call's input is written before it (the
            Calculator's numbers, MT's text); false needs a run whose candidates were all filtered.
    """
    import pyarrow as pa

    from pipelines.augment import output_dir  # not at the top: pipelines.augment imports this module


    src, out = output_dir(run, "RUN"), output_dir(output, "OUTPUT")
    if not rundir.exists(rundir.join(src, rundir.SUCCESS)):
        raise UserError(f"{src} is not a finished augment run (no {rundir.SUCCESS})")
    if rundir.is_local(out) and os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--output {out} exists and is not a directory")
    if rundir.has_files(out):
        raise UserError(f"--output {out} already exists and is not empty; choose a new directory")
    new_tau: dict[str, float] = {}
    for item in tau_f or []:
        tool, sep, value = item.partition("=")
        try:
            new_tau[tool] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise UserError(f"--tau-f {item!r}: expected TOOL=NUMBER, e.g. Calculator=1.0")
    cands = _read_jsonl(rundir.match(rundir.join(src, "candidates-*.jsonl")))
    texts = _read_jsonl(rundir.match(rundir.join(src, "texts-*.jsonl")))
    unknown = set(new_tau) - {c["tool"] for c in cands}
    if unknown:
        raise UserError(f"--tau-f names tools with no candidates in {src}: {', '.join(sorted(unknown))}")
    check_settled(cands, new_tau, src)
    rules: dict[str, bool] = {}
    for item in grounded or []:
        tool, sep, value = item.partition("=")
        if not sep or value.lower() not in ("true", "false"):
            raise UserError(f"--grounded {item!r}: expected TOOL=true or TOOL=false, e.g. Calculator=true")
        rules[tool] = value.lower() == "true"
    by_doc: dict[str, list[dict]] = {}
    for c in cands:
        if c["tool"] in new_tau or c["tool"] in rules:
            c["threshold"] = new_tau.get(c["tool"], c["threshold"])
            c["kept"] = c["error"] is None and c.get("loss_plus") is not None and keep_if_useful(
                c["loss_plus"], c["loss_minus"], c["threshold"])
    if rules:
        apply_grounding(cands, {t["doc_id"]: strip_calls(t["text"]) for t in texts}, rules, src)
    for c in cands:
        by_doc.setdefault(c["doc_id"], []).append(c)
    new_texts = []
    for t in texts:
        doc = {k: v for k, v in t.items() if k != "calls"}
        doc["text"] = strip_calls(t["text"])  # the inserted calls come out; the document is neutralised
        new_texts.append(merge_document(doc, by_doc.get(t["doc_id"], [])))
    rundir.mkdirs(out)
    texts_schema, cands_schema = parquet_schemas()
    for kind, rows, schema, to_row in (
        ("texts", new_texts, texts_schema, _text_row),
        ("candidates", cands, cands_schema, lambda r: r),
    ):
        name = f"{kind}-p0000-00000-of-00001"
        rundir.write_bytes(
            rundir.join(out, f"{name}.jsonl"), "".join(to_json(r) + "\n" for r in rows).encode("utf-8")
        )
        table = pa.Table.from_pylist([to_row(r) for r in rows], schema=schema)
        rundir.write_bytes(rundir.join(out, f"{name}.parquet"), _parquet_bytes(table))
    kept: dict[str, int] = {}
    for c in cands:
        kept[c["tool"]] = kept.get(c["tool"], 0) + int(c["kept"])
    stats = {
        "source": src,
        "tau_f": new_tau,
        "kept": kept,
        "texts_written": len(new_texts),
        "texts_with_calls": sum(bool(t["calls"]) for t in new_texts),
    }
    rundir.finish(out, stats)
    print(json.dumps(stats, indent=2))
    return 0
