import subprocess
import sys
from typing import Literal

import pytest

from commands.cli import COMMANDS, _resolve, build_parser, main


def sample(prompts: list[str], steps: int | None = None, mode: Literal["a", "b"] = "a", fast: bool = False,
           name: str = "x") -> int:
    """Do a sample thing.

    Args:
        prompts: the prompts.
        steps: how many steps.
        mode: which mode.
        fast: go fast.
        name: a name that is
            described on two lines.
    """
    return 0


def test_parser_is_built_from_the_signature_and_docstring():
    parser = build_parser("sample", sample)
    ns = parser.parse_args(["p1", "p2", "--steps", "3", "--mode", "b", "--fast"])
    assert vars(ns) == {"prompts": ["p1", "p2"], "steps": 3, "mode": "b", "fast": True, "name": "x"}
    assert vars(parser.parse_args(["p", "--no-fast"]))["fast"] is False
    help_text = parser.format_help()
    assert "Do a sample thing." in help_text and "described on two lines." in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["p", "--mode", "c"])


def test_every_registered_command_resolves_and_has_help():
    for name, target in COMMANDS.items():
        fn = _resolve(target)
        parser = build_parser(name, fn)
        assert parser.description, f"{name} has no docstring summary"


def test_user_errors_are_one_line_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "commands.cli", "fetch-model", "--model", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "toolformer fetch-model: error: unknown model name 'nope'; known: smollm2-135m, gemma3-270m"


def test_unknown_command_and_bad_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["fetch-model", "--no-such-flag"])
    assert e.value.code == 2
    assert main([]) == 2
    assert main(["--help"]) == 0
