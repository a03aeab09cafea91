"""Training texts for fine-tuning: read the augmented corpus C* and split it into train and dev.

Run through ``toolformer finetune --data ...`` (see finetune/train.py). ``--data`` takes one or more of

* a pipeline run directory (``toolformer augment`` output): its ``texts-*.jsonl`` shards,
* ``.jsonl`` / ``.json`` files (one JSON object per line, text under ``--text-field``),
* ``.parquet`` files,
* a local Hugging Face dataset directory written by ``Dataset.save_to_disk``.

Bad records (invalid JSON, a missing or non-string text field, an empty text) are skipped with one
warning each naming the file and line; the rest is still read. Only when nothing usable remains is
it an error (a :class:`UserError` naming the files and the field).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from toolformer import runs
from toolformer.call_format import DEFAULT_FORMAT, CallFormat, iter_calls, strip_calls
from toolformer.errors import UserError

log = logging.getLogger(__name__)

RUN_SHARDS = "texts-*.jsonl"


@dataclass
class TextCorpus:
    """Texts read from ``--data`` with what was skipped on the way (reported in finetune.json)."""

    texts: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # "file:line" of each text, for error messages
    skipped: int = 0
    files: list[str] = field(default_factory=list)

    def extend(self, other: TextCorpus) -> None:
        self.texts += other.texts
        self.sources += other.sources
        self.skipped += other.skipped
        self.files += other.files


def data_files(spec: str) -> list[str]:
    """The files one ``--data`` entry stands for (a run dir gives its shards, sorted). A run
    directory or ``.jsonl`` file may be on any Beam file system (``gs://b/run``: toolformer/runs.py)."""
    remote = runs.is_remote(spec)
    if not remote:
        if not Path(spec).exists():
            raise UserError(f"--data {spec}: no such file or directory")
        if Path(spec).is_file():
            return [spec]
    shards = runs.shards(spec, "texts")
    if shards:
        if not runs.is_complete(spec):
            # The pipeline writes _SUCCESS last: without it the shards may be half written.
            raise UserError(f"--data {spec}: pipeline run is incomplete (no {runs.SUCCESS}); "
                            "wait for it to finish or pass the shard files explicitly")
        return shards
    if remote:
        if runs.exists(spec) and spec.endswith((".jsonl", ".json", ".jsonl.gz")):
            return [spec]
        raise UserError(f"--data {spec}: no {RUN_SHARDS} shards of a run there, and not a .jsonl file "
                        "(Parquet files and saved datasets are read from local paths only)")
    if (Path(spec) / "dataset_info.json").exists() or (Path(spec) / "state.json").exists():
        return [spec]
    raise UserError(f"--data {spec}: directory holds neither {RUN_SHARDS} shards nor a saved HF dataset")


def _read_jsonl(path: str, text_field: str) -> TextCorpus:
    """One JSON object per line (local or on a Beam file system; ``.gz`` decompressed)."""
    out = TextCorpus(files=[str(path)])
    first_problem = None
    for n, line in runs.lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            problem = f"{path}:{n}: invalid JSON ({e.msg})"
        else:
            problem = _check_record(record, text_field, f"{path}:{n}")
            if problem is None:
                out.texts.append(record[text_field])
                out.sources.append(f"{path}:{n}")
                continue
        out.skipped += 1
        first_problem = first_problem or problem
        log.warning("skipping %s", problem)
    if not out.texts and first_problem:
        raise UserError(f"no usable texts in {path}: {first_problem}")
    return out


def _check_record(record, text_field: str, where: str) -> str | None:
    if not isinstance(record, dict):
        return f"{where}: record is a {type(record).__name__}, not an object"
    if text_field not in record:
        return f"{where}: no field {text_field!r} (fields: {', '.join(sorted(record)[:8])}); see --text-field"
    if not isinstance(record[text_field], str):
        return f"{where}: field {text_field!r} is a {type(record[text_field]).__name__}, not a string"
    if not record[text_field].strip():
        return f"{where}: field {text_field!r} is empty"
    return None


def _read_table(path: Path, text_field: str) -> TextCorpus:
    """Parquet files and saved HF datasets, through ``datasets`` (column-wise, no per-row JSON)."""
    import datasets

    ds = datasets.load_from_disk(str(path)) if path.is_dir() else datasets.Dataset.from_parquet(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise UserError(f"--data {path}: dataset has splits {list(ds)}, none called 'train'")
        ds = ds["train"]
    if text_field not in ds.column_names:
        raise UserError(f"--data {path}: no column {text_field!r} (columns: {', '.join(ds.column_names)}); "
                        "see --text-field")
    out = TextCorpus(files=[str(path)])
    for n, text in enumerate(ds[text_field]):
        problem = _check_record({text_field: text}, text_field, f"{path} row {n}")
        if problem:
            out.skipped += 1
            log.warning("skipping %s", problem)
            continue
        out.texts.append(text)
        out.sources.append(f"{path} row {n}")
    return out


def read_texts(data: list[str], text_field: str = "text") -> TextCorpus:
    """Read every text under ``data`` (see the module docstring); errors if none is usable."""
    if not data:
        raise UserError("--data: give at least one run directory or data file")
    corpus = TextCorpus()
    for spec in data:
        for path in data_files(spec):
            if not runs.is_remote(path) and (Path(path).is_dir() or path.endswith(".parquet")):
                corpus.extend(_read_table(Path(path), text_field))
            elif path.endswith((".jsonl", ".json", ".jsonl.gz")):
                corpus.extend(_read_jsonl(path, text_field))
            else:
                raise UserError(f"--data {path}: unsupported file type {Path(path).suffix!r} "
                                "(use .jsonl, .json, .parquet or a saved HF dataset directory)")
    if not corpus.texts:
        raise UserError(f"--data {' '.join(data)}: no texts found (empty data)")
    return corpus


def count_calls(text: str, fmt: CallFormat = DEFAULT_FORMAT) -> int:
    return sum(1 for c in iter_calls(text, fmt) if c.ok and c.has_result)


def mix_original(texts: list[str], share: float, seed: int, fmt: CallFormat = DEFAULT_FORMAT) -> list[str]:
    """Add the call-free original of a ``share`` of the texts that hold calls.

    The paper trains on C* only (its texts are C's texts with calls added). Mixing some originals
    back in is an option for keeping plain language modelling intact (paper Table 8 checks it).
    """
    if not 0.0 <= share <= 1.0:
        raise UserError(f"--mix-original {share}: must be between 0 and 1")
    with_calls = [t for t in texts if count_calls(t, fmt)]
    rng = random.Random(seed)
    picked = rng.sample(with_calls, round(share * len(with_calls)))
    return texts + [strip_calls(t, fmt) for t in picked]


def split_train_dev(texts: list[str], dev_share: float, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle with ``seed`` and hold out ``dev_share`` of the texts (at least one when the share > 0)."""
    if not 0.0 <= dev_share < 1.0:
        raise UserError(f"--dev-share {dev_share}: must be in [0, 1)")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_dev = max(1, round(dev_share * len(texts))) if dev_share > 0 else 0
    if n_dev >= len(texts):
        raise UserError(f"--dev-share {dev_share}: {len(texts)} text(s) leave nothing to train on")
    dev = [texts[i] for i in order[:n_dev]]
    train = [texts[i] for i in order[n_dev:]]
    return train, dev
