"""``toolformer generate`` (commands/generate.py): JSON output, streaming one prompt, showing or
hiding the calls, and its one-line user errors. The decoding itself: tests/test_generation*.py."""

from __future__ import annotations

import json

import pytest
from transformers import LogitsProcessorList

from tests.test_generation import CALL, PROMPT, Fixed, Scripted, make, plain
from toolformer.generation import ToolGenerator


def test_cli_json_and_no_tools(tiny_model_dir, capsys):
    from commands.cli import main

    prompts = ["Out of 1400 participants", "Today is the first"]
    assert main(["generate", "--model", str(tiny_model_dir), "--device", "cpu", "--json", "--no-tools",
                 "--max-new-tokens", "8", *prompts]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["prompt"] for r in records] == prompts
    assert all(r["calls"] == [] and r["num_tokens"] <= 8 for r in records)


def test_cli_streams_one_prompt(tiny_model_dir, tiny_model, capsys):
    from commands.cli import main

    assert main(["generate", "--model", str(tiny_model_dir), "--device", "cpu", "--no-tools",
                 "--max-new-tokens", "8", "Today is the first"]) == 0
    expected = plain(tiny_model, ["Today is the first"], max_new_tokens=8)[0].text
    assert capsys.readouterr().out == "Today is the first" + expected + "\n"


@pytest.mark.parametrize("show", [True, False])
def test_cli_shows_or_hides_calls(tiny_model_dir, tiny_model, capsys, monkeypatch, show):
    from commands import generate as generation
    from commands.cli import main

    scripted = Scripted(tiny_model[1], {PROMPT: CALL})
    monkeypatch.setattr(generation, "ToolGenerator", lambda *a, **k: ToolGenerator(
        *a, **k, logits_processor=LogitsProcessorList([scripted])))
    flag = "--show-calls" if show else "--hide-calls"
    assert main(["generate", "--model", str(tiny_model_dir), "--device", "cpu", "--tools",
                 "tests.test_generation:Fixed", "--max-new-tokens", "30", flag, PROMPT]) == 0
    printed = capsys.readouterr().out
    gen, _ = make(tiny_model, {"Calculator": Fixed()}, {PROMPT: CALL}, max_new_tokens=30)
    out = gen.generate([PROMPT])[0]
    assert out.text.startswith(" [Calculator(400 / 1400) -> 0.29]")
    assert printed == PROMPT + (out.text if show else out.text_without_calls) + "\n"


@pytest.mark.parametrize("args,message", [
    (["--date", "30/01/2023"], "--date must be YYYY-MM-DD"),
    (["--tools", "NoSuchTool"], "unknown tool"),
    (["--max-new-tokens", "0"], "max_new_tokens"),
])
def test_cli_user_errors(tiny_model_dir, capsys, args, message):
    from commands.cli import main

    assert main(["generate", "--model", str(tiny_model_dir), *args, "hello"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
