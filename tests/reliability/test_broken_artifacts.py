"""Broken artifacts (issue 18): model directories, WikiSearch indexes and fine-tuning checkpoints
that are missing a file, truncated, corrupt or unsafe. Each gives one line naming the file (a
``UserError`` for models and checkpoints; an ``InputError``, then the tool's ``unavailable``
outcome, for an index); no pickle is ever loaded (a malicious one would create a marker file);
a model directory's own code never runs.

    python -m pytest -q -s tests/reliability/test_broken_artifacts.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.conftest import REPO
from toolformer.errors import UserError

FIGURES: dict[str, int] = {}


class Evil:
    """Unpickling this creates ``marker`` (what a malicious pickle in an artifact would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled"))


def one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and len(text) < 600, text
    return text


# --- Model directories --------------------------------------------------------------------------


def _no_tokenizer(d: Path):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).unlink()
    return d


def _truncate(name: str, keep: float = 0.5):
    def mutate(d: Path):
        p = d / name
        p.write_bytes(p.read_bytes()[: int(p.stat().st_size * keep)])
        return p

    return mutate


def _garbage(name: str):
    def mutate(d: Path):
        (d / name).write_bytes(b"\xff" * 100)
        return d / name

    return mutate


def _pickled_weights(d: Path):
    import torch

    (d / "model.safetensors").unlink()
    torch.save({"x": Evil(d.parent / f"{d.name}.MARKER")}, d / "pytorch_model.bin")
    return d


def _custom_code(d: Path):
    config = json.loads((d / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(config))
    (d / "evil.py").write_text(f"open({str(d.parent / (d.name + '.MARKER'))!r}, 'w').write('ran')\n")
    return None  # loads: the built-in class is used, the directory's code is not run


MODEL_CASES = {
    "no_tokenizer": (_no_tokenizer, "has no tokenizer file"),
    "tokenizer_json_truncated": (_truncate("tokenizer.json", 0.01), "tokenizer.json"),
    "safetensors_truncated": (_truncate("model.safetensors"), "model.safetensors: truncated"),
    "safetensors_1_byte": (_truncate("model.safetensors", 0.0001), "model.safetensors"),
    "safetensors_garbage": (_garbage("model.safetensors"), "model.safetensors: header of"),
    "no_weights": (lambda d: (d / "model.safetensors").unlink() or d, "has no .safetensors weights"),
    "pickled_weights_only": (_pickled_weights, "pytorch_model.bin is a pickle, which is never loaded"),
    "config_garbage": (_garbage("config.json"), "config.json"),
    "custom_code_in_config": (_custom_code, None),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_broken_model_directories_fail_in_one_line_naming_the_file(tiny_model_dir, tmp_path, case):
    from toolformer.models import ModelError, load_model

    mutate, expected = MODEL_CASES[case]
    d = tmp_path / case
    shutil.copytree(tiny_model_dir, d)
    named = mutate(d)
    if expected is None:
        model, _ = load_model(str(d), device="cpu")
        assert type(model).__name__ == "LlamaForCausalLM"
    else:
        with pytest.raises(ModelError) as info:
            load_model(str(d), device="cpu")
        msg = one_line(info.value)
        assert expected in msg and str(named) in msg, msg
        assert isinstance(info.value, UserError)
    assert not (tmp_path / f"{case}.MARKER").exists()  # no pickle loaded, no directory code run
    FIGURES["models"] = FIGURES.get("models", 0) + 1


def test_a_broken_model_is_one_line_from_the_cli(tiny_model_dir, tmp_path, capsys):
    from commands.cli import main

    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    _truncate("model.safetensors")(d)
    assert main(["generate", "--model", str(d), "2 + 2 ="]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{d}/model.safetensors: truncated" in err[0], err


# --- WikiSearch indexes -------------------------------------------------------------------------

ARRAYS = ["postings.indptr", "postings.docs", "postings.tf", "doc_len", "ids.offsets", "titles.offsets",
          "texts.offsets"]  # fmt: skip


def _object_array(name: str):
    def mutate(d: Path):
        np.save(d / f"{name}.npy", np.array([Evil(d.parent / f"{d.name}.MARKER")], dtype=object))
        return d / f"{name}.npy"

    return mutate


def _remove(name: str):
    def mutate(d: Path):
        (d / name).unlink()
        return d / name

    return mutate


def _short_array(name: str):
    def mutate(d: Path):  # a valid .npy with one entry too few
        arr = np.load(d / f"{name}.npy")
        np.save(d / f"{name}.npy", arr[:-1])
        return d / f"{name}.npy"

    return mutate


INDEX_CASES = {
    **{f"missing_{a}": (_remove(f"{a}.npy"), "is missing") for a in ARRAYS},
    **{f"truncated_{a}": (_truncate(f"{a}.npy", 0.6), "broken index file") for a in ARRAYS},
    **{f"short_{a}": (_short_array(a), "broken index file") for a in ARRAYS if a != "doc_len"},
    "pickled_postings_docs": (_object_array("postings.docs"), "broken index file"),
    "garbage_tf": (_garbage("postings.tf.npy"), "broken index file"),
    "missing_vocab": (_remove("vocab.json"), "is missing"),
    "vocab_garbage": (_garbage("vocab.json"), "broken index file"),
    "meta_garbage": (_garbage("meta.json"), "broken index file"),
    "texts_bin_truncated": (_truncate("texts.bin"), "truncated?"),
    "missing_titles_bin": (_remove("titles.bin"), "is missing"),
}


@pytest.mark.parametrize("case", sorted(INDEX_CASES))
def test_broken_index_fails_in_one_line_naming_the_file(tiny_index, tmp_path, case):
    from tools.base import CallContext
    from tools.wikisearch import BM25Index, InputError, WikiSearch

    mutate, expected = INDEX_CASES[case]
    d = tmp_path / case
    shutil.copytree(tiny_index, d)
    named = mutate(d)
    with pytest.raises(InputError) as info:
        BM25Index(d)
    msg = one_line(info.value)
    assert expected in msg and str(named) in msg, msg
    # Through the tool: an "unavailable" outcome with the same line, never a crash.
    from tools.base import ToolError

    with pytest.raises(ToolError) as tool_info:
        WikiSearch(index=str(d))("Paris", CallContext())
    assert tool_info.value.reason == "unavailable" and str(named) in tool_info.value.message
    assert not (tmp_path / f"{case}.MARKER").exists()
    FIGURES["indexes"] = FIGURES.get("indexes", 0) + 1


def test_intact_index_still_loads(tiny_index):
    from tools.wikisearch import BM25Index

    index = BM25Index(tiny_index)
    assert index.passage(index.search("Paris capital")[0][0]).title == "Paris"


# --- Fine-tuning checkpoints --------------------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A fine-tuning run that crashed after checkpoint-10 (of 20 steps)."""
    import torch
    from transformers import TrainerCallback

    from finetune.train import run_finetune
    from tests.reliability.finetune_victim import config
    from tests.tiny_model import TRAINING_LINES

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 11:
                raise RuntimeError("simulated crash")

    tmp = tmp_path_factory.mktemp("ft-broken")
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps({"text": TRAINING_LINES[i % 4]}) + "\n" for i in range(30)))
    out = tmp / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_finetune(config(str(data), str(out), str(tiny_model_dir)), callbacks=[Crash()])
    finally:
        torch.set_num_threads(threads)
    assert (out / "checkpoints" / "checkpoint-10" / "checkpoint-complete.json").exists()
    return out


def _flip_middle(p: Path) -> Path:
    """Same size (so the manifest still matches), some bytes in the middle changed."""
    data = bytearray(p.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    p.write_bytes(bytes(data))
    return p


def _same_size_garbage(p: Path) -> Path:
    p.write_bytes(b"\x00" * p.stat().st_size)
    return p


def _evil_rng(p: Path) -> Path:
    """A valid torch archive holding a malicious pickle; the manifest is rewritten to match (what
    an attacker with write access could do): only the restricted unpickler stands in the way."""
    import torch

    torch.save({"python": Evil(p.parents[2] / "rng.MARKER")}, p)
    manifest = p.parent / "checkpoint-complete.json"
    m = json.loads(manifest.read_text())
    m["files"][p.name] = p.stat().st_size
    manifest.write_text(json.dumps(m))
    return p


CHECKPOINT_CASES = {
    "optimizer_bytes_flipped": ("optimizer.pt", _flip_middle, "fails its CRC check"),
    "scheduler_zeroed": ("scheduler.pt", _same_size_garbage, "not a torch zip archive"),
    "rng_state_zeroed": ("rng_state.pth", _same_size_garbage, "not a torch zip archive"),
    "rng_state_malicious_pickle": ("rng_state.pth", _evil_rng, "cannot resume from"),
    "weights_header_zeroed": ("model.safetensors", _same_size_garbage, "broken weights file"),
    "trainer_state_zeroed": ("trainer_state.json", _same_size_garbage, "corrupt checkpoint file"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_corrupt_checkpoint_file_is_one_line_naming_it(
    interrupted_run, tiny_model_dir, tmp_path, case, one_thread
):
    from finetune.checkpoints import CheckpointReadError
    from finetune.train import run_finetune
    from tests.reliability.finetune_victim import config

    name, mutate, expected = CHECKPOINT_CASES[case]
    out = tmp_path / "run"
    shutil.copytree(interrupted_run, out)
    settings = out / "checkpoints" / "run-settings.json"  # the copy is the same run, moved here
    settings.write_text(json.dumps(dict(json.loads(settings.read_text()), output=str(out))))
    data = interrupted_run.parent / "data.jsonl"
    ckpt = out / "checkpoints" / "checkpoint-10"
    named = mutate(ckpt / name)
    with pytest.raises(CheckpointReadError) as info:
        run_finetune(config(str(data), str(out), str(tiny_model_dir), True))
    msg = one_line(info.value)
    assert expected in msg and str(named) in msg and f"delete {ckpt}" in msg, msg
    assert not (out / "rng.MARKER").exists() and not (tmp_path / "rng.MARKER").exists()
    assert not (out / ".lock").exists()  # the lock went with the failed run
    FIGURES["checkpoints"] = FIGURES.get("checkpoints", 0) + 1


# --- No pickle anywhere, no remote code ---------------------------------------------------------

SOURCES = ["toolformer", "tools", "pipelines", "finetune", "beam_runner.py", "benchmarks"]


def _python_files() -> list[Path]:
    files = []
    for s in SOURCES:
        p = REPO / s
        files += [p] if p.is_file() else sorted(p.rglob("*.py"))
    return files


def test_no_unsafe_loader_in_the_source():
    """Every loader in our code: no pickle/dill/joblib/torch.load without weights_only=True, no
    np.load without allow_pickle=False, never trust_remote_code=True."""
    bad = []
    patterns = [
        (re.compile(r"\bpickle\.loads?\(|\bdill\.|\bjoblib\.load|\bcloudpickle\.loads?\("), "unpickling"),
        (re.compile(r"torch\.load\((?![^)]*weights_only=True)"), "torch.load without weights_only=True"),
        (re.compile(r"np\.load\((?![^)]*allow_pickle=False)"), "np.load without allow_pickle=False"),
        (re.compile(r"trust_remote_code\s*=\s*True"), "trust_remote_code=True"),
    ]
    checked = 0
    for f in _python_files():
        text = f.read_text(encoding="utf-8")
        checked += 1
        for line_no, line in enumerate(text.splitlines(), 1):
            for pattern, what in patterns:
                if pattern.search(line):
                    bad.append(f"{f.relative_to(REPO)}:{line_no}: {what}")
    FIGURES["source_files_checked"] = checked
    print("FIGURES broken_artifacts", json.dumps(FIGURES))
    assert bad == []
    # And the loaders pass the safe flags explicitly.
    models = (REPO / "toolformer" / "models.py").read_text()
    assert models.count('"trust_remote_code": False') == 2 and '"use_safetensors"' in models


def test_checkpoint_verification_reads_no_pickle(interrupted_run, monkeypatch):
    """verify_checkpoint checks CRCs and headers only: it never unpickles."""
    import pickle

    from finetune.checkpoints import verify_checkpoint

    def refuse(*a, **k):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    verify_checkpoint(interrupted_run / "checkpoints" / "checkpoint-10")
    assert zipfile.is_zipfile(interrupted_run / "checkpoints" / "checkpoint-10" / "optimizer.pt")
    assert os.path.exists(interrupted_run / "checkpoints" / "checkpoint-10" / "rng_state.pth")
