"""Typed settings end to end (issue #14): a dataclass parameter of a command is one flag per field,
``--config FILE`` (JSON, or YAML) holds any of them, flags override it, ``--print-config`` prints
the effective settings. ``toolformer finetune`` is built from :class:`FinetuneConfig` alone."""

import dataclasses
import inspect
import json
import typing
from typing import Literal

import pytest

import finetune.train as train
from commands.cli import build_parser, main
from finetune.train import FinetuneConfig
from toolformer.errors import UserError


@dataclasses.dataclass
class Opts:
    """Options of a sample command.

    Attributes:
        names: the names.
        mode: which mode.
        fast: go fast.
        steps: how many steps.
        rate: a rate that is
            described on two lines.
        tags: some tags.
    """

    names: list[str]
    mode: Literal["a", "b"] = "a"
    fast: bool = False
    steps: int | None = None
    rate: float = 0.5
    tags: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.rate < 0:
            raise UserError(f"--rate {self.rate}: must not be negative")


def sample(opts: Opts | None = None, label: str = "x", extra_args: list[str] | None = None) -> int:
    """Do a sample thing.

    Args:
        opts: the options.
        label: a plain parameter next to them.
    """
    return 0


def finetune_parser():
    return build_parser("finetune", train.finetune)


def flags(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def test_every_finetune_config_field_is_a_flag_with_help():
    parser = finetune_parser()
    by_dest = {a.dest: a for a in parser._actions}
    hints = typing.get_type_hints(FinetuneConfig)
    for field in dataclasses.fields(FinetuneConfig):
        flag = "--" + field.name.replace("_", "-")
        assert flag in flags(parser), f"FinetuneConfig.{field.name} is not a flag of toolformer finetune"
        assert by_dest[field.name].help, f"FinetuneConfig.{field.name} has no help (its Attributes: line)"
        if hints[field.name] is bool:
            assert "--no-" + flag[2:] in flags(parser)
    # one source of truth: the command restates no field
    assert set(inspect.signature(train.finetune).parameters) == {"config", "settings"}
    assert {"--config", "--print-config"} <= flags(parser)


def test_flags_build_the_dataclass_with_its_defaults():
    ns = finetune_parser().parse_args(["--data", "a", "--data", "b", "--output", "o", "--lora-dropout", "0.1",
                                       "--max-grad-norm", "0.5", "--logging-steps", "3", "--no-only-with-calls",
                                       "--lr-schedule", "cosine"])
    assert vars(ns) == {"config": FinetuneConfig(data=["a", "b"], output="o", lora_dropout=0.1, max_grad_norm=0.5,
                                                 logging_steps=3, only_with_calls=False, lr_schedule="cosine")}
    with pytest.raises(SystemExit):
        finetune_parser().parse_args(["--data", "a", "--output", "o", "--lr-schedule", "nope"])


def test_generic_dataclass_parameter():
    parser = build_parser("sample", sample)
    ns, extra = parser.parse_known_args(["--names", "p", "--fast", "--tags", "t1", "--tags", "t2", "--label", "y",
                                         "--runner=Direct"])
    assert vars(ns) == {"opts": Opts(names=["p"], fast=True, tags=["t1", "t2"]), "label": "y"}
    assert extra == ["--runner=Direct"]
    help_text = parser.format_help()
    assert "described on two lines. (default: 0.5)" in " ".join(help_text.split())
    assert "--print-opts" in help_text and "--opts FILE" in help_text
    with pytest.raises(UserError, match=r"^--names is required: the names\.$"):
        parser.parse_args([])
    with pytest.raises(UserError, match="--rate -1.0: must not be negative"):
        parser.parse_args(["--names", "p", "--rate", "-1"])


def test_config_file_then_flags_override_it(tmp_path):
    cfg = tmp_path / "ft.json"
    cfg.write_text(json.dumps({"data": ["runs/r1"], "output": "models/x", "max_steps": 100, "lora": True,
                               "lora-dropout": 0.05, "learning_rate": 1, "device": None}))
    ns = finetune_parser().parse_args(["--config", str(cfg), "--max-steps", "7", "--no-lora", "--data", "runs/r2"])
    assert ns.config == FinetuneConfig(data=["runs/r2"], output="models/x", max_steps=7, lora=False,
                                       lora_dropout=0.05, learning_rate=1.0)
    assert isinstance(ns.config.learning_rate, float)


def test_yaml_config_file(tmp_path):
    pytest.importorskip("yaml")
    cfg = tmp_path / "ft.yaml"
    cfg.write_text("data: [runs/r1]\noutput: models/x\nfinal_weights: last\nmax_grad_norm: 0.3\n")
    ns = finetune_parser().parse_args(["--config", str(cfg)])
    assert ns.config == FinetuneConfig(data=["runs/r1"], output="models/x", final_weights="last", max_grad_norm=0.3)


@pytest.mark.parametrize("content, message", [
    ({"data": ["d"], "output": "o", "lora_dropuot": 0.1},
     "--config {file}: unknown key 'lora_dropuot' (did you mean 'lora_dropout'?)"),
    ({"data": ["d"], "output": "o", "max_steps": "100"}, "--config {file}: max_steps: expected int, got \"100\""),
    ({"data": ["d"], "output": "o", "lora": 1}, "--config {file}: lora: expected bool, got 1"),
    ({"data": "d", "output": "o"}, "--config {file}: data: expected list[str], got \"d\""),
    ({"data": ["d"], "output": "o", "final_weights": "first"},
     "--config {file}: final_weights: expected one of last, best, got \"first\""),
    ({"data": ["d"]}, "--output is required (neither a flag nor in {file}): directory for the fine-tuned model"),
    ({"data": ["d"], "output": "o", "warmup_share": 1.5}, "--warmup-share 1.5: must be in [0, 1)"),
    ([1, 2], "--config {file}: expected an object of settings (name: value), got list"),
])
def test_config_file_errors_are_one_line(tmp_path, capsys, content, message):
    cfg = tmp_path / "ft.json"
    cfg.write_text(json.dumps(content))
    assert main(["finetune", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"toolformer finetune: error: {message.format(file=cfg)}"), err
    assert len(err.splitlines()) == 1


def test_unreadable_config_files(tmp_path, capsys):
    assert main(["finetune", "--config", str(tmp_path / "none.json")]) == 2
    assert capsys.readouterr().err.strip() == f"toolformer finetune: error: --config {tmp_path / 'none.json'}: no such file"
    bad = tmp_path / "bad.json"
    bad.write_text("{bad")
    assert main(["finetune", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"toolformer finetune: error: --config {bad}: not valid JSON (") and "\n" not in err


def test_print_config_is_a_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["finetune", "--data", "runs/r1", "--output", "models/x", "--max-steps", "9", "--lora", "--print-config"])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    expected = FinetuneConfig(data=["runs/r1"], output="models/x", max_steps=9, lora=True)
    assert json.loads(printed) == dataclasses.asdict(expected)
    saved = tmp_path / "saved.json"
    saved.write_text(printed)
    assert finetune_parser().parse_args(["--config", str(saved)]).config == expected


def test_the_command_runs_with_the_built_config(tmp_path, monkeypatch, capsys):
    seen = []

    def fake_run(cfg):
        seen.append(cfg)
        return {"steps": cfg.max_steps, "final_metrics": {"train_loss": 1.0}}

    monkeypatch.setattr(train, "run_finetune", fake_run)
    cfg = tmp_path / "ft.json"
    cfg.write_text(json.dumps({"data": ["d"], "output": "o", "lora_dropout": 0.2, "logging_steps": 1}))
    assert main(["finetune", "--config", str(cfg), "--max-grad-norm", "0.25"]) == 0
    assert seen[-1] == FinetuneConfig(data=["d"], output="o", lora_dropout=0.2, logging_steps=1, max_grad_norm=0.25)
    # Python callers (commands/demo.py) pass the fields as keyword arguments, or a config and overrides
    assert train.finetune(data=["d"], output="o", max_steps=3) == 0
    assert seen[-1] == FinetuneConfig(data=["d"], output="o", max_steps=3)
    assert train.finetune(seen[-1], lora=True) == 0
    assert seen[-1] == FinetuneConfig(data=["d"], output="o", max_steps=3, lora=True)
    # as tests/reliability/test_disk_full.py calls it
    assert train.finetune(**vars(finetune_parser().parse_args(["--data", "d", "--output", "o"]))) == 0
    assert seen[-1] == FinetuneConfig(data=["d"], output="o")
    with pytest.raises(UserError, match="--data is required"):
        train.finetune(output="o")
