"""A tool added from outside the repository: by ``module:Class``, by entry point, and on the CLI.

Run: python -m pytest -q tests/test_external_tool.py

How a user adds a tool (also in tools/base.py's docstring): subclass ``tools.Tool``, set ``name``
and implement ``__call__(input, context) -> str`` (raise ``ToolError`` on failure); give it a
prompt (``prompt_template`` or a file); then either pass ``--tools mypkg.mymod:MyTool`` /
``get_tool("mypkg.mymod:MyTool")``, or declare it in the package's metadata under the entry-point
group ``toolformer.tools`` so ``available_tools()`` finds it after ``pip install``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tools import CallContext, ToolError, ToolExecutor, available_tools, get_tool

PLUGIN = textwrap.dedent('''
    import random

    from tools import Tool, ToolError


    class Weather(Tool):
        """A user's tool, living outside the repository."""

        name = "Weather"

        def __init__(self, default: str = "sunny"):
            self.default = default

        @property
        def prompt_template(self):
            return ("Your task is to add calls to a Weather API to a piece of text. "
                    "You can call the API by writing [Weather(city)].\\n\\nInput: {input}\\nOutput:")

        def __call__(self, input, context):
            if not input.strip():
                raise ToolError("parse", "which city?")
            return f"{self.default} in {input.strip()} on {context.date}"

        def accepts(self, document, rng: random.Random):
            return "weather" in document.get("text", "")
''')


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    (tmp_path / "my_weather_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_tool_by_module_and_class(plugin_dir):
    import datetime as dt

    tool = get_tool("my_weather_plugin:Weather", default="rainy")
    ctx = CallContext(date=dt.date(2023, 1, 30))
    assert tool("Paris", ctx) == "rainy in Paris on 2023-01-30"
    assert tool.prompt("It rains.").endswith("Input: It rains.\nOutput:")
    assert "Weather" in available_tools()  # registered on load
    assert get_tool("weather")("Oslo", ctx) == "sunny in Oslo on 2023-01-30"  # now found by name
    outcome = ToolExecutor({"Weather": tool}).execute("Weather", " ", ctx)
    assert (outcome.error, outcome.message) == ("parse", "which city?")


def test_tool_by_entry_point(plugin_dir):
    dist = plugin_dir / "my_weather_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-weather-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[toolformer.tools]\nweather = my_weather_plugin:Weather\n")
    code = (
        "from tools import available_tools, get_tool; "
        "print(available_tools()); print(get_tool('Weather').default)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_dir), *sys.path]))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert out.splitlines() == ["['Calculator', 'Calendar', 'MT', 'QA', 'Weather', 'WikiSearch']", "sunny"]


def test_tool_on_the_command_line(plugin_dir):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_dir), *sys.path]))
    toolformer = Path(sys.executable).parent / "toolformer"
    proc = subprocess.run(
        [
            str(toolformer),
            "call",
            "[Weather(Lisbon)]",
            "--tools",
            "my_weather_plugin:Weather",
            "--date",
            "2024-02-29",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "sunny in Lisbon on 2024-02-29\n", "")


def test_bad_plugin_specs_are_clear_errors(plugin_dir):
    with pytest.raises(KeyError, match="cannot load tool 'no_such_module:X'"):
        get_tool("no_such_module:X")
    with pytest.raises(KeyError, match="is not a Tool subclass"):
        get_tool("my_weather_plugin:random")
    with pytest.raises(ToolError):
        get_tool("my_weather_plugin:Weather")("", CallContext())
