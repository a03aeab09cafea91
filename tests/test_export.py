"""`toolformer export` (toolformer/export.py) on a fabricated run, and the CLI's clean screen (issue #17).

python -m pytest -q tests/test_export.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from toolformer.call_format import strip_calls
from commands.cli import QuietThirdParty, main
from toolformer.export import DEFAULT_LICENSE, export, split_document, tool_schema, trl_messages
from toolformer.insertion import insert_calls

ROOT = Path(__file__).resolve().parents[1]

ORIGINAL_1 = "Out of 1400 participants, 400 (or 29%) passed the test, and 1000 failed."
ORIGINAL_2 = "Pittsburgh is also known as the Steel City."
ORIGINAL_3 = "Lima is the capital of Peru."
P29, P1000 = ORIGINAL_1.index(" 29%"), ORIGINAL_1.index(" 1000")
P_STEEL = ORIGINAL_2.index(" the Steel")
CALLS_1 = [{"tool": "Calculator", "input": "400 / 1400", "result": "0.29", "position": P29},
           {"tool": "Calculator", "input": "1400 - 400", "result": "1000", "position": P1000}]
CALLS_2 = [{"tool": "Calendar", "input": "", "result": "Today is Monday, May 4, 2026.", "position": 0},
           {"tool": "WikiSearch", "input": "Pittsburgh", "result": "the Steel City", "position": P_STEEL}]
TEXT_1, TEXT_2 = insert_calls(ORIGINAL_1, CALLS_1), insert_calls(ORIGINAL_2, CALLS_2)
SETTINGS = {"model": "smollm2-135m", "tools": ["calculator", "calendar", "wikisearch"], "seed": 3,
            "tool_settings": {"calculator": {"tau_f": 0.5, "k": 20}}}

# A chat template that writes the turns back in the call syntax: rendering an export must give
# the run's text again (the mapping loses nothing). Tools, when given, are named in a first line.
TOOLFORMER_TEMPLATE = (
    "{%- if tools %}{{ 'Tools: ' + (tools | map(attribute='function') | map(attribute='name') | join(', ')) }}\n"
    "{% endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}{{ m.content }}"
    "{%- for c in m.tool_calls or [] %} [{{ c.function.name }}({{ c.function.arguments.values() | join('') }})"
    " -> {% endfor %}"
    "{%- elif m.role == 'tool' %}{{ m.content }}]"
    "{%- endif %}"
    "{%- endfor %}"
    "{{- eos_token }}"
)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A finished run: two texts shards (three documents, four kept calls), run.json, stats.json."""
    d = tmp_path / "run"
    d.mkdir()
    (d / ".parts").mkdir()
    _write_jsonl(d / "texts-p0000-00000-of-00002.jsonl", [
        {"doc_id": "d1", "text": TEXT_1, "url": "https://example.org/a", "calls": CALLS_1},
        {"doc_id": "d3", "text": ORIGINAL_3, "calls": []},
    ])
    _write_jsonl(d / "texts-p0000-00001-of-00002.jsonl", [
        {"doc_id": "d2", "text": TEXT_2, "date": "2026-05-04", "calls": CALLS_2},
    ])
    _write_jsonl(d / "candidates-p0000-00000-of-00001.jsonl", [{"doc_id": "d1", "tool": "Calculator"}])
    (d / "run.json").write_text(json.dumps(SETTINGS))
    (d / "stats.json").write_text(json.dumps({"documents": {"texts_written": 3}}))
    (d / "_SUCCESS").write_text("")
    return d


# --- The mapping -------------------------------------------------------------------------------


def test_split_document_gives_the_runs_calls_and_the_original():
    for text, original, calls in ((TEXT_1, ORIGINAL_1, CALLS_1), (TEXT_2, ORIGINAL_2, CALLS_2)):
        doc = split_document(text, "x")
        assert [vars(c) for c in doc.calls] == calls
        assert "".join(doc.pieces) == original == strip_calls(text)


def test_trl_messages_of_a_document_with_calls_in_the_middle_and_at_the_start():
    assert trl_messages(split_document(TEXT_1)) == [
        {"role": "assistant", "content": "Out of 1400 participants, 400 (or", "tool_calls": [
            {"id": "call_0", "type": "function",
             "function": {"name": "Calculator", "arguments": {"expression": "400 / 1400"}}}]},
        {"role": "tool", "tool_call_id": "call_0", "name": "Calculator", "content": "0.29"},
        {"role": "assistant", "content": " 29%) passed the test, and", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "Calculator", "arguments": {"expression": "1400 - 400"}}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "Calculator", "content": "1000"},
        {"role": "assistant", "content": " 1000 failed."},
    ]
    messages = trl_messages(split_document(TEXT_2))
    assert messages[0] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "Calendar", "arguments": {}}}]}
    assert messages[3]["content"] == "the Steel City"
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == {"query": "Pittsburgh"}
    assert "".join(m["content"] for m in messages if m["role"] == "assistant") == ORIGINAL_2
    assert trl_messages(split_document(ORIGINAL_3)) == [{"role": "assistant", "content": ORIGINAL_3}]


def test_a_call_without_result_is_left_out_of_trl_rows():
    text = "Twice 21 is [Calculator(2 * 21)] 42, and [Calculator(1 + 1) -> 2] 2 more."
    messages = trl_messages(split_document(text))
    assert [m["role"] for m in messages] == ["assistant", "tool", "assistant"]
    assert messages[0]["content"] == "Twice 21 is 42, and"
    assert messages[2]["content"] == " 2 more."


def test_tool_schemas():
    assert tool_schema("Calculator") == {"type": "function", "function": {
        "name": "Calculator",
        "description": "Evaluate an arithmetic expression (+, -, *, / and parentheses) and return its value.",
        "parameters": {"type": "object",
                       "properties": {"expression": {"type": "string",
                                                     "description": "the arithmetic expression, e.g. 400 / 1400"}},
                       "required": ["expression"]}}}
    assert tool_schema("Calendar")["function"]["parameters"] == {"type": "object", "properties": {},
                                                                 "required": []}
    for tool, param in (("WikiSearch", "query"), ("QA", "question"), ("MT", "text"), ("Weather", "input")):
        assert tool_schema(tool)["function"]["parameters"]["required"] == [param]


# --- The three formats -------------------------------------------------------------------------


def test_text_export(run_dir, tmp_path, capsys):
    out = tmp_path / "text"
    assert main(["export", str(run_dir), "--format", "text", "--output", str(out)]) == 0
    lines = (out / "data.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"text": TEXT_1}, {"text": ORIGINAL_3}, {"text": TEXT_2}]
    assert sorted(p.name for p in out.iterdir()) == ["data.jsonl"]
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"format": "text", "output": str(out), "documents": 3, "documents_with_calls": 2,
                       "calls": {"Calculator": 2, "WikiSearch": 1, "Calendar": 1}}


def test_hf_export_features_values_and_card(run_dir, tmp_path):
    import datasets
    from datasets import Features, List, Value

    out = tmp_path / "hf"
    assert export(str(run_dir), format="hf", output=str(out), license="cc-by-sa-4.0") == 0
    ds = datasets.load_from_disk(str(out))
    assert ds.features == Features({
        "text": Value("string"), "doc_id": Value("string"),
        "calls": List({"tool": Value("string"), "input": Value("string"), "result": Value("string"),
                       "position": Value("int64")}),
    })
    assert ds.to_list() == [
        {"text": TEXT_1, "doc_id": "d1", "calls": CALLS_1},
        {"text": ORIGINAL_3, "doc_id": "d3", "calls": []},
        {"text": TEXT_2, "doc_id": "d2", "calls": CALLS_2},
    ]
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.startswith('---\nlicense: "cc-by-sa-4.0"\npretty_name: "Toolformer-augmented texts (run)"\n')
    assert f"- run: `{run_dir}`" in card
    assert "- model: `smollm2-135m`" in card and "- tools: calculator, calendar, wikisearch" in card
    assert "- seed: 3" in card and "- documents: 3, 2 with at least one call" in card
    assert "| Calculator | 2 |\n| WikiSearch | 1 |\n| Calendar | 1 |\n| total | 4 |" in card
    assert '"tau_f": 0.5' in card  # the settings from run.json
    assert "Licence of the input documents: **cc-by-sa-4.0**" in card


def test_hf_card_default_licence_and_a_refiltered_run(run_dir, tmp_path):
    (run_dir / "run.json").unlink()  # refilter writes no run.json, its stats.json names the source
    (run_dir / "stats.json").write_text(json.dumps({"source": "runs/r1", "tau_f": {"Calculator": 1.0}}))
    out = tmp_path / "hf"
    export(str(run_dir), format="hf", output=str(out), only_with_calls=True)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.startswith('---\nlicense: "unknown"\n')
    assert f"Licence of the input documents: **{DEFAULT_LICENSE}**" in card
    assert '- re-filtered from `runs/r1` with tau_f {"Calculator": 1.0}' in card
    assert "(only documents with calls were exported)" in card


def test_finetune_reads_an_hf_export(run_dir, tmp_path, tiny_model_dir):
    from finetune.data import read_texts

    out = tmp_path / "hf"
    export(str(run_dir), format="hf", output=str(out))
    assert read_texts([str(out)]).texts == [TEXT_1, ORIGINAL_3, TEXT_2]
    tuned = tmp_path / "tuned"
    assert main(["finetune", "--data", str(out), "--output", str(tuned), "--model", str(tiny_model_dir),
                 "--max-steps", "1", "--batch-size", "2", "--effective-batch-size", "2", "--dev-share", "0",
                 "--max-length", "64", "--save-steps", "10", "--device", "cpu"]) == 0
    assert json.loads((tuned / "finetune.json").read_text())


def test_trl_export_rows_and_jsonl_copy(run_dir, tmp_path):
    import datasets

    out = tmp_path / "trl"
    export(str(run_dir), format="trl", output=str(out), only_with_calls=True)
    ds = datasets.load_from_disk(str(out))
    assert ds.column_names == ["messages", "tools", "doc_id"]
    assert ds["doc_id"] == ["d1", "d2"]  # d3 has no call
    assert ds[0]["messages"] == trl_messages(split_document(TEXT_1))
    assert ds[1]["messages"] == trl_messages(split_document(TEXT_2))
    tools = [tool_schema("Calculator"), tool_schema("WikiSearch"), tool_schema("Calendar")]
    assert ds["tools"] == [tools, tools]  # every tool of the export on every row
    copy = [json.loads(line) for line in (out / "data.jsonl").read_text(encoding="utf-8").splitlines()]
    assert copy == ds.to_list()


def _tiny_chat_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = TOOLFORMER_TEMPLATE
    return tok


def test_trl_rows_render_back_to_the_runs_texts(run_dir, tmp_path, tiny_model_dir):
    import datasets

    out = tmp_path / "trl"
    export(str(run_dir), format="trl", output=str(out))
    tok = _tiny_chat_tokenizer(tiny_model_dir)
    ds = datasets.load_from_disk(str(out))
    rendered = [tok.apply_chat_template(row["messages"], tokenize=False) for row in ds]
    assert rendered == [TEXT_1 + "</s>", ORIGINAL_3 + "</s>", TEXT_2 + "</s>"]
    with_tools = tok.apply_chat_template(ds[0]["messages"], tools=ds[0]["tools"], tokenize=False)
    assert with_tools == "Tools: Calculator, WikiSearch, Calendar\n" + TEXT_1 + "</s>"


def test_one_sft_trainer_step_on_a_trl_export(run_dir, tmp_path, tiny_model_dir):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    out = tmp_path / "trl"
    export(str(run_dir), format="trl", output=str(out))
    train = datasets.load_from_disk(str(out))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before = model.lm_head.weight.detach().clone()
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=3,
                     learning_rate=1e-2, max_length=128, report_to="none", save_strategy="no",
                     logging_steps=1, use_cpu=True, bf16=False, fp16=False, dataloader_num_workers=0,
                     disable_tqdm=True, seed=0)
    tok = _tiny_chat_tokenizer(tiny_model_dir)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok)
    # the rows went through the chat template, with the tools column
    assert tok.decode(trainer.train_dataset[0]["input_ids"]) == (
        "Tools: Calculator, WikiSearch, Calendar\n" + TEXT_1 + "</s>")
    trainer.train()
    assert trainer.state.global_step == 1
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 1 and 0 < losses[0] < 100
    assert not torch.equal(before, model.lm_head.weight.detach())


# --- Bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("make, args, message", [
    (lambda run: (run / "_SUCCESS").unlink(), ["--format", "text"],
     "RUN {run} is not a finished augment run (no _SUCCESS)"),
    (lambda run: None, ["--format", "csv"], "--format 'csv': choose one of trl, text, hf"),
    (lambda run: None, [], "--format missing: choose one of trl, text, hf"),
    (lambda run: (run.parent / "out").mkdir() or (run.parent / "out" / "x").write_text("x"),
     ["--format", "hf"], "--output {out} already exists and is not empty; choose a new directory"),
    (lambda run: (run.parent / "out").write_text("x"), ["--format", "hf"],
     "--output {out} exists and is not a directory"),
])
def test_bad_input_is_one_line_and_non_zero(run_dir, capsys, make, args, message):
    make(run_dir)
    out = run_dir.parent / "out"
    assert main(["export", str(run_dir), *args, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"toolformer export: error: {message.format(run=run_dir, out=out)}\n"
    assert not [p for p in run_dir.parent.iterdir() if ".export-" in p.name]


def test_missing_run_and_missing_output(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--format", "trl", "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"toolformer export: error: RUN {tmp_path / 'nope'}: no such directory\n"
    assert main(["export", str(tmp_path), "--format", "trl"]) == 2
    assert capsys.readouterr().err == "toolformer export: error: --output DIR is required\n"


def test_an_empty_output_directory_is_used(run_dir, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    export(str(run_dir), format="text", output=str(out))
    assert (out / "data.jsonl").exists()


# --- A clean screen (issue #17, item 1) ----------------------------------------------------------

BEAM_NOISE = ("apitools not found", "Resource module is not available")
PAST_KEY_VALUES = "past_key_values"
LIBRARY_BARS = ("Loading weights", "Map:", "Writing model shards")
# toolformer/sampling.py still passes past_key_values= (the fix is listed in issue #17); until it
# does, augment's steps of the demo warn, so that part of the check is expected to fail.
SAMPLING_PENDING = "past_key_values=cache" in (ROOT / "toolformer" / "sampling.py").read_text(encoding="utf-8")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "commands.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_the_demo_prints_no_third_party_noise_by_default(tmp_path, tiny_model_dir):
    proc = _cli("demo", "--output", str(tmp_path / "demo"), "--model", str(tiny_model_dir), "--limit", "4",
                "--finetune-steps", "2", "--eval-limit", "2", "--no-only-with-calls", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "The demo finished" in proc.stdout
    for line in proc.stderr.splitlines():
        assert not any(noise in line for noise in BEAM_NOISE), line
    for bar in LIBRARY_BARS:  # the libraries' own progress bars: ours say the same, with totals
        assert bar not in proc.stderr and bar not in proc.stdout, bar
    deprecated = [line for line in proc.stderr.splitlines() if PAST_KEY_VALUES in line]
    if SAMPLING_PENDING and deprecated:
        pytest.xfail("toolformer/sampling.py still passes past_key_values (issue #17)")
    assert not deprecated


def test_generate_passes_no_deprecated_cache_argument(tiny_model_dir, tmp_path):
    proc = _cli("generate", "--model", str(tiny_model_dir), "--max-new-tokens", "4", "Out of 1400 people",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert PAST_KEY_VALUES not in proc.stderr and "FutureWarning" not in proc.stderr


def test_verbose_shows_the_third_party_lines(run_dir, tmp_path):
    proc = _cli("--verbose", "export", str(run_dir), "--format", "text", "--output", str(tmp_path / "o"),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "apitools not found" in proc.stderr


def test_quiet_filter_drops_only_the_known_lines():
    import logging

    def record(path, msg, level=logging.WARNING):
        return logging.LogRecord("root", level, path, 1, msg, None, None)

    beam = "/venv/site-packages/apache_beam/ml/inference/base.py"
    quiet = QuietThirdParty()
    assert not quiet.filter(record(beam, "Resource module is not available for current platform, memory ..."))
    assert not quiet.filter(record("/venv/site-packages/apache_beam/io/gcp/internal/clients/bigquery/__init__.py",
                                   "apitools not found, and bigquery client libraries are not available ..."))
    assert quiet.filter(record(beam, "Resource module is not available", logging.ERROR))
    assert quiet.filter(record(beam, "some other Beam warning"))
    assert quiet.filter(record("/work/mine.py", "Resource module is not available for current platform"))
