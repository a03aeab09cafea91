"""``toolformer ARGS`` under a resource fault from a chosen moment (the subprocess of test_disk_full
and test_oom): a disk that fills up, or a model that runs out of memory.

    python -m tests.reliability.resource_victim FAULT toolformer-args...

FAULT is

* ``none``: no fault (a reference run through the same entry point);
* ``fsize:LIMIT:WHEN``: no file of the process may grow past LIMIT bytes from WHEN on
  (``RLIMIT_FSIZE``, with SIGXFSZ ignored, so a write past it fails with EFBIG -- the kernel writes
  what fits first: a file may end torn -- instead of killing the process). WHEN is

  - ``start``: from the start (every file: journal, shards, markers, index files);
  - ``sink``: once the first output shard (a Beam file sink's temporary file) is opened, i.e. while
    texts/candidates/errors JSONL and Parquet are written, after the journal;
  - ``parquet``: once the first Parquet shard is opened;
  - ``marker=N``: just before part N's ``.parts/pNNNN.done`` marker is written;
  - ``save=N``: when fine-tuning starts writing checkpoint-N;
  - ``final``: when fine-tuning writes its final model directory;

* ``oom:TOKENS``: every forward pass of the model's decoder over more than TOKENS input tokens
  (rows x width) raises ``torch.OutOfMemoryError`` (:func:`oom_above`).

Nothing else changes: the command runs through ``commands.cli.main`` as from the shell.
"""

from __future__ import annotations

import resource
import signal
import sys


def limit_now(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def arm_file_limit(limit: int, when: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death by signal
    where, _, n = when.partition("=")
    if where == "start":
        limit_now(limit)
    elif where in ("sink", "parquet"):
        from apache_beam.io.filebasedsink import FileBasedSink
        from apache_beam.io.parquetio import _ParquetSink

        sink_class = FileBasedSink if where == "sink" else _ParquetSink
        real_open = sink_class.open

        def open_then_limit(self, temp_path):
            limit_now(limit)
            return real_open(self, temp_path)

        sink_class.open = open_then_limit
    elif where == "marker":
        from pipelines import rundir

        real_mark = rundir.mark_done

        def limit_then_mark(out, part, stats):
            if part == int(n):
                limit_now(limit)
            return real_mark(out, part, stats)

        rundir.mark_done = limit_then_mark
    elif where == "save":
        from transformers import Trainer

        real_save = Trainer._save_checkpoint

        def limit_then_save(self, model, trial):
            if self.state.global_step == int(n):
                limit_now(limit)
            return real_save(self, model, trial)

        Trainer._save_checkpoint = limit_then_save
    elif where == "final":
        import finetune.train as train

        real_final = train.save_final

        def limit_then_final(*args, **kwargs):
            limit_now(limit)
            return real_final(*args, **kwargs)

        train.save_final = limit_then_final
    else:
        raise SystemExit(f"unknown WHEN {when!r}")


class OomLog:
    """What :func:`oom_above` saw: passes that ran and failed, as (rows, tokens)."""

    def __init__(self):
        self.failed: list[tuple[int, int]] = []
        self.largest_ok = 0


def oom_above(tokens: int, log: OomLog | None = None):
    """A replacement for ``LlamaModel.forward`` (the decoder, which every pass runs: scoring,
    sampling, the filter's losses, generation) that raises ``torch.OutOfMemoryError`` for a pass
    over more than ``tokens`` input tokens (rows x width), as a device would past its memory."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaModel

    real = LlamaModel.forward

    def forward(self, input_ids=None, *args, **kwargs):
        ids = input_ids if input_ids is not None else kwargs.get("inputs_embeds")
        if ids is not None:
            rows, size = int(ids.shape[0]), int(ids.shape[0] * ids.shape[1])
            if size > tokens:
                if log is not None:
                    log.failed.append((rows, size))
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate 2.00 GiB (test fault: a pass of {rows} rows, "
                    f"{size} tokens > {tokens})"
                )
            if log is not None:
                log.largest_ok = max(log.largest_ok, size)
        return real(self, input_ids, *args, **kwargs)

    return forward


def main() -> int:
    fault, *argv = sys.argv[1:]
    kind, _, spec = fault.partition(":")
    if kind == "fsize":
        limit, _, when = spec.partition(":")
        arm_file_limit(int(limit), when)
    elif kind == "oom":
        from transformers.models.llama.modeling_llama import LlamaModel

        LlamaModel.forward = oom_above(int(spec))
    elif kind != "none":
        raise SystemExit(f"unknown FAULT {fault!r}")
    import torch

    torch.set_num_threads(1)
    from commands.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
