"""The layers, one direction (issue #14): every import of every module, function-level imports and
``"module:attr"`` strings (the CLI's lazy commands) included, goes down the table below or stays in
its own package. No upward import, no import between packages of one layer, hence no package cycle.

    0  toolformer   the method core: call format, models, sampling, filtering, insertion,
                    generation, the run-directory format, errors, progress
    1  tools        the tools (their base class, executor, isolation, HTTP), on the core
    2  pipelines    the Beam pipeline (augment)          \\
       finetune     fine-tuning                           } each on tools and the core only
       evaluation   the evaluation harness               /
    3  commands     the CLI, the demo, the augmentation report: on everything
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"toolformer": 0, "tools": 1, "pipelines": 2, "finetune": 2, "evaluation": 2, "commands": 3}
LAZY = re.compile(r"^([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*):[A-Za-z_][A-Za-z0-9_]*$")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import statement and ``"module:attr"`` string in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (m := LAZY.match(node.value)):
            found.append((node.lineno, m.group(1)))
    return found


def violations() -> list[str]:
    bad = []
    for package, layer in LAYERS.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, module in imports(path):
                target = module.split(".")[0]
                if target == package or target not in LAYERS:
                    continue
                if LAYERS[target] >= layer:
                    where = path.relative_to(ROOT).as_posix()
                    kind = "upward" if LAYERS[target] > layer else "sideways"
                    bad.append(f"{where}:{line} imports {module} ({kind}: {package} is layer {layer}, "
                               f"{target} layer {LAYERS[target]})")
    return bad


def test_every_package_is_in_a_layer():
    # every folder of Python code at the top (pipelines/ is a namespace package: no __init__.py)
    packages = {p.parent.name for p in ROOT.glob("*/*.py")} - {"tests", "benchmarks", "scripts"}
    assert packages == set(LAYERS)


def test_imports_go_down_the_layers_only():
    assert violations() == []


@pytest.mark.parametrize("source, expected", [
    ("import tools.base\n", [(1, "tools.base")]),
    ("def f():\n    from pipelines import rundir\n", [(2, "pipelines")]),
    ("COMMANDS = {'x': 'commands.cli:main'}\n", [(1, "commands.cli")]),
    ("from . import x\nimport os\ns = 'not: an import'\n", [(2, "os")]),
])
def test_the_scanner_sees_function_level_and_lazy_imports(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert imports(path) == expected
