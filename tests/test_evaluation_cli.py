"""``toolformer evaluate`` end to end: the files it writes and the numbers in its table.

Exact accuracies come from a scripted generator (monkeypatched ``runner.make_generator``); the last
tests run the real inline-tool generator on the tiny model.
"""

import datetime as dt
import json

import matplotlib.image
import pytest

from commands.cli import main
from evaluation import runner
from evaluation.cli import evaluate
from toolformer.errors import UserError
from toolformer.generation import CallRecord, GenerationOutput

MAWPS = [
    {"input": "Joan found 70 seashells. She has 27 left. How many did she give away?", "target": 43.0, "idx": 0},
    {"input": "There were 28 bales. Now there are 54. How many were stacked?", "target": 26.0, "idx": 1},
    {"input": "Three people paid 45 dollars each. What was the bill?", "target": 135.0, "idx": 2},
    {"input": "The recipe wants 8 cups. She put in 2. How many more?", "target": 6.0, "idx": 3},
    {"input": "Not used: beyond --limit.", "target": 1.0, "idx": 4},
]

# (answer without tools), (answer with tools, calls made)
SCRIPT = {
    "0": (" 43 seashells", " [Calculator(70 - 27) -> 43] 43 seashells", [("Calculator", "70 - 27", "43", None)]),
    "1": (" 20", " [Calculator(54 - 28) -> 26] 26", [("Calculator", "54 - 28", "26", None)]),
    "2": (" 135 dollars", " 135 dollars", []),
    "3": (" I don't know", " 5", [("Calculator", "8 -", None, "parse")]),  # failed call, rolled back
}


class ScriptedGenerator:
    def __init__(self, tools, use_tools, seen):
        self.tools, self.use_tools, self.seen = tools, use_tools, seen

    def generate(self, prompts, contexts, batch_size=8, progress=False):
        self.seen.append((list(prompts), list(contexts), sorted(self.tools), self.use_tools))
        outs = []
        for prompt, ctx in zip(prompts, contexts):
            plain, with_tools, calls = SCRIPT[ctx.doc_id]
            text = with_tools if self.use_tools else plain
            records = [CallRecord(*c) for c in calls] if self.use_tools else []
            visible = text.replace(" [Calculator(70 - 27) -> 43]", "").replace(" [Calculator(54 - 28) -> 26]", "")
            outs.append(GenerationOutput(prompt, text, visible, records, num_tokens=5))
        return outs


@pytest.fixture
def scripted(monkeypatch):
    seen = []
    monkeypatch.setattr(runner, "make_generator",
                        lambda model, tok, tools, use_tools, max_new_tokens, style="paper":
                        ScriptedGenerator(tools, use_tools, seen))
    return seen


@pytest.fixture
def mawps_file(tmp_path):
    path = tmp_path / "mawps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in MAWPS))
    return path


def test_table_numbers_with_and_without_tools(tmp_path, tiny_model_dir, mawps_file, scripted, capsys):
    out = tmp_path / "out"
    rc = main(["evaluate", "--task", "math", "--data", str(mawps_file), "--model", str(tiny_model_dir),
               "--limit", "4", "--output", str(out), "--today", "2023-01-30", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    label = tiny_model_dir.name
    assert f"| {label}, no tools | {tiny_model_dir} | none | 4 | 2 | 50.0 | 0.0 | - |" in printed
    assert (f"| {label} + tools | {tiny_model_dir} | Calculator, Calendar | 4 | 3 | 75.0 | 75.0 | "
            "Calculator 3 (1 failed) |") in printed

    results = json.loads((out / "results.json").read_text())
    assert (results["task"], results["format"], results["n_examples"], results["limit"]) == ("math", "mawps", 4, 4)
    assert results["calendar_date"] == "2023-01-30"
    rows = {c["condition"]: c for c in results["conditions"]}
    no_tools, tools = rows[f"{label}, no tools"], rows[f"{label} + tools"]
    assert (no_tools["n"], no_tools["correct"], no_tools["accuracy"], no_tools["tool_call_share"]) == (4, 2, 0.5, 0.0)
    assert (tools["n"], tools["correct"], tools["accuracy"], tools["tool_call_share"]) == (4, 3, 0.75, 0.75)
    assert tools["calls_per_tool"] == {"Calculator": 3} and tools["failed_calls"] == 1
    assert (out / "results.md").read_text().count("\n| ") == 3  # header + 2 rows (after the title line)

    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 8
    first = predictions[4]  # the first with-tools prediction
    assert first["prompt"] == MAWPS[0]["input"] + " The answer is"  # the paper's prompt (App. C)
    assert (first["output"], first["answer"], first["extracted"], first["gold"], first["correct"]) == (
        " [Calculator(70 - 27) -> 43] 43 seashells", " 43 seashells", 43.0, 43.0, True)
    assert first["calls"] == [{"tool": "Calculator", "input": "70 - 27", "result": "43", "error": None}]
    assert [p["correct"] for p in predictions] == [True, False, True, False, True, True, True, False]

    image = matplotlib.image.imread(out / "accuracy.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    # The generator saw the tools only in the with-tools condition, and the Calendar's date.
    (_, _, tools_plain, use_plain), (_, ctx_tools, tools_tools, use_tools) = scripted
    assert (tools_plain, use_plain, tools_tools, use_tools) == ([], False, ["Calculator", "Calendar"], True)
    assert {c.date for c in ctx_tools} == {dt.date(2023, 1, 30)}



def test_calls_to_tools_the_condition_lacks_are_counted_apart(tmp_path, tiny_model_dir, mawps_file, scripted,
                                                              monkeypatch, capsys):
    # The model invents a tool name (as the base model does on LAMA: "FB", "Fauna"): the generator rolls
    # the call back; it is no call of the condition's tools, not a failed one, and not a "call" share.
    monkeypatch.setitem(SCRIPT, "2", (" 135 dollars", " 135 dollars", [("FB", "dollars", None, "unknown tool")]))
    monkeypatch.setitem(SCRIPT, "3", (" 5", " 5", [("FB", "cups", None, "unknown tool"),
                                                  ("Fauna", "x", None, "unknown tool")]))
    out = tmp_path / "out"
    assert main(["evaluate", "--task", "math", "--data", str(mawps_file), "--model", str(tiny_model_dir),
                 "--limit", "4", "--output", str(out), "--today", "2023-01-30", "--no-progress"]) == 0
    assert (f"| {tiny_model_dir.name} + tools | {tiny_model_dir} | Calculator, Calendar | 4 | 3 | 75.0 | 50.0 | "
            "Calculator 2; 3 to unknown tools (FB, Fauna) |") in capsys.readouterr().out
    tools = json.loads((out / "results.json").read_text())["conditions"][1]
    assert (tools["calls_per_tool"], tools["failed_calls"], tools["unknown_tool_calls"], tools["tool_call_share"]) == (
        {"Calculator": 2}, 0, {"FB": 2, "Fauna": 1}, 0.5)


def test_two_models_and_no_tools(tmp_path, tiny_model_dir, mawps_file, scripted):
    out = tmp_path / "out"
    evaluate(task="math", model=[str(tiny_model_dir), str(tiny_model_dir)], data=str(mawps_file), tools=False,
             limit=2, output=str(out), progress=False)
    results = json.loads((out / "results.json").read_text())
    label = tiny_model_dir.name
    assert [(c["condition"], c["correct"], c["n"]) for c in results["conditions"]] == [
        (f"{label}, no tools", 1, 2), (f"{label}#2, no tools", 1, 2)]
    assert results["tools"] == []


def test_dates_pass_each_questions_today_to_the_calendar(tmp_path, tiny_model_dir, monkeypatch):
    seen = []

    class Echo:
        def generate(self, prompts, contexts, batch_size=8, progress=False):
            seen.extend(contexts)
            # Answer with the context's year: right exactly for "What year is it today?"-like questions.
            return [GenerationOutput(p, f" {c.date.year}", f" {c.date.year}", [], 1) for p, c in zip(prompts, contexts)]

    monkeypatch.setattr(runner, "make_generator", lambda *a, **k: Echo())
    out = tmp_path / "dates"
    evaluate(task="dates", model=[str(tiny_model_dir)], limit=40, seed=1, tools=False, output=str(out),
             progress=False)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 40 and len(seen) == 40
    assert [c.date.isoformat() for c in seen] == [p["today"] for p in predictions]
    expected = sum(p["gold"] == [p["today"][:4]] for p in predictions)
    results = json.loads((out / "results.json").read_text())
    assert results["conditions"][0]["correct"] == expected > 0
    assert (results["seed"], results["num_queries"], results["format"]) == (1, 40, "generated")


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--task", "math"], "--task math needs --data PATH"),
    (["evaluate", "--task", "math", "--data", "nope.jsonl"], "data file not found: nope.jsonl"),
    (["evaluate", "--task", "math", "--data", "MAWPS", "--limit", "0"], "--limit must be at least 1"),
    (["evaluate", "--task", "math", "--data", "MAWPS", "--today", "30/01/2023"], "--today must be YYYY-MM-DD"),
    (["evaluate", "--task", "math", "--data", "MAWPS", "--tool-names", "WikiSearch"],
     "--tool-names WikiSearch needs --index DIR"),
    (["evaluate", "--task", "cloze", "--data", "MAWPS"], "--format mawps does not fit --task cloze"),
    (["evaluate", "--data", "MAWPS", "--tool-names"], "--tool-names names no tool"),
    (["evaluate", "--task", "perplexity", "--data", "MAWPS", "--window", "1"], "--window must be at least 2"),
])
def test_user_errors_are_one_line(argv, message, mawps_file, tmp_path, capsys):
    argv = [str(mawps_file) if a == "MAWPS" else a for a in argv] + ["--output", str(tmp_path / "out")]
    assert main(argv) == 2
    assert not (tmp_path / "out").exists()  # nothing written for a run that never started
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_refuses_to_overwrite_an_evaluation(tmp_path, mawps_file, capsys):
    (tmp_path / "results.json").write_text("{}")
    assert main(["evaluate", "--data", str(mawps_file), "--output", str(tmp_path)]) == 2
    assert "already holds an evaluation" in capsys.readouterr().err


def test_end_to_end_on_the_tiny_model(tmp_path, tiny_model_dir, mawps_file):
    """The real inline-tool generator: every file written, numbers consistent with the predictions."""
    out = tmp_path / "run"
    rc = main(["evaluate", "--task", "math", "--data", str(mawps_file), "--model", str(tiny_model_dir),
               "--limit", "3", "--max-new-tokens", "6", "--output", str(out), "--no-progress"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "predictions.jsonl", "results.json",
                                                     "results.md"]
    results = json.loads((out / "results.json").read_text())
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 6
    for cond in results["conditions"]:
        rows = [p for p in predictions if p["condition"] == cond["condition"]]
        assert cond["n"] == len(rows) == 3
        assert cond["correct"] == sum(p["correct"] for p in rows)
        assert cond["tool_call_share"] == sum(bool(p["calls"]) for p in rows) / 3
        assert sum(cond["calls_per_tool"].values()) + sum(cond["unknown_tool_calls"].values()) == sum(
            len(p["calls"]) for p in rows)
        for p in rows:
            assert p["prompt"].endswith(" The answer is")  # the paper's math prompt
            assert "\n" not in p["output"]  # generation stops at a newline
    assert [c["tools"] for c in results["conditions"]] == [False, True]
    assert all(p["calls"] == [] for p in predictions if not p["tools"])


def test_perplexity_end_to_end(tmp_path, tiny_model_dir, tiny_model):
    from evaluation.perplexity import perplexity

    text = "Out of 1400 participants, 400 passed the test. The quick brown fox jumps over the lazy dog. " * 3
    (tmp_path / "held_out.txt").write_text(text)
    out = tmp_path / "ppl"
    assert main(["evaluate", "--task", "perplexity", "--data", str(tmp_path / "held_out.txt"), "--model",
                 str(tiny_model_dir), "--window", "32", "--stride", "16", "--limit", "3", "--output", str(out),
                 "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    [cond] = results["conditions"]
    expected = perplexity(*tiny_model, text, window=32, stride=16, max_windows=3, progress=False)
    assert (cond["windows"], cond["tokens"], results["format"]) == (3, 31 + 16 + 16, "text")
    assert cond["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6)
    assert cond["tools"] is False
    assert f"| {expected.perplexity:.2f} |" in (out / "results.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.png", "results.json", "results.md"]


def test_one_shot_reaches_the_prompts(tmp_path, tiny_model_dir, mawps_file, scripted):
    evaluate(task="math", model=[str(tiny_model_dir)], data=str(mawps_file), limit=1, one_shot=True,
             output=str(tmp_path / "o"), progress=False)
    (plain_prompts, *_), (tool_prompts, *_) = scripted
    assert plain_prompts[0].startswith("Tom had 35 apples") and "[Calculator(" not in plain_prompts[0]
    assert "The answer is [Calculator(35 - 12) -> 23] 23\n\nJoan found 70" in tool_prompts[0]
    assert json.loads((tmp_path / "o" / "results.json").read_text())["one_shot"] is True
    assert (tmp_path / "o" / "results.md").read_text().startswith("# math: mawps.jsonl (one-shot)\n")


def test_date_in_prompt(tmp_path, tiny_model_dir, monkeypatch):
    prompts = []

    class Record:
        def generate(self, ps, contexts, batch_size=8, progress=False):
            prompts.extend(ps)
            return [GenerationOutput(p, "", "", [], 0) for p in ps]

    monkeypatch.setattr(runner, "make_generator", lambda *a, **k: Record())
    saved = tmp_path / "dates.jsonl"
    saved.write_text(json.dumps({"question": "What year is it today?", "answer": "2023", "kind": "year",
                                 "today": "2023-01-30"}) + "\n")
    evaluate(task="dates", model=[str(tiny_model_dir)], data=str(saved), tools=False, date_in_prompt=True,
             progress=False)
    evaluate(task="dates", model=[str(tiny_model_dir)], data=str(saved), tools=False, progress=False)
    evaluate(task="dates", model=[str(tiny_model_dir)], data=str(saved), tools=False, progress=False,
             prompt_style="qa")
    assert prompts == ["Answer the following question: Today is Monday, January 30, 2023. What year is it today?",
                       "Answer the following question: What year is it today?",
                       "Question: What year is it today?\nAnswer:"]


def test_solution_style_generates_several_lines_and_calls(tmp_path, tiny_model_dir, monkeypatch):
    """--prompt-style solution: question + newline, 192 tokens, up to 8 calls, no stop at a newline,
    scored on the number after "The answer is"; refused for tasks it has no prompt for."""
    seen = []

    class Record:
        def __init__(self, generator):
            seen.append(generator.config)

        def generate(self, ps, contexts, batch_size=8, progress=False):
            seen.append(ps)
            return [GenerationOutput(p, t, t, [], 0) for p, t in
                    zip(ps, [" 2 + 3 = 5.\nThe answer is 5.", " The answer is 9, not 5."])]

    real = runner.make_generator
    monkeypatch.setattr(runner, "make_generator", lambda *a, **k: Record(real(*a, **k)))
    data = tmp_path / "m.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": 5}) + "\n" for q in ["Q1?", "Q2?"]))
    out = tmp_path / "o"
    evaluate(task="math", model=[str(tiny_model_dir)], data=str(data), tools=False, prompt_style="solution",
             output=str(out), progress=False)
    config, prompts = seen
    assert (config.max_new_tokens, config.max_calls, config.stop_at_newline, config.top_k_trigger) == (192, 8, False, 1)
    assert prompts == ["Q1?\n", "Q2?\n"]
    preds = [json.loads(line) for line in (out / "predictions.jsonl").open()]
    assert [(p["extracted"], p["correct"]) for p in preds] == [(5.0, True), (9.0, False)]
    with pytest.raises(UserError, match="--prompt-style solution has no prompt for --task dates"):
        evaluate(task="dates", model=[str(tiny_model_dir)], tools=False, prompt_style="solution", progress=False)


def test_qa_task_end_to_end_and_its_default_tools(tmp_path, tiny_model_dir):
    from evaluation.cli import build_tools
    from tools.wikisearch import Passage, build_index

    index = build_index([Passage("1", "Moon", "Apollo 17 left the Moon in December 1972.")], tmp_path / "index")
    # The paper's QA setting: every tool but QA, which would answer the question itself.
    assert sorted(build_tools("qa", None, str(index))) == ["Calculator", "Calendar", "WikiSearch"]
    assert sorted(build_tools("qa", None, None)) == ["Calculator", "Calendar"]
    data = tmp_path / "NQ-open.dev.jsonl"
    data.write_text(json.dumps({"question": "when was the last time anyone was on the moon",
                                "answer": ["December 1972"]}) + "\n")
    out = tmp_path / "qa"
    rc = main(["evaluate", "--task", "qa", "--data", str(data), "--model", str(tiny_model_dir), "--no-tools",
               "--max-new-tokens", "4", "--output", str(out), "--no-progress"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["task"], results["format"], results["n_examples"]) == ("qa", "jsonl", 1)
    (prediction,) = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert prediction["prompt"] == "Answer the following question: when was the last time anyone was on the moon?"
    assert prediction["gold"] == ["December 1972"]
    assert prediction["correct"] is ("december 1972" in " ".join(prediction["extracted"].split()[:20]))
