#!/usr/bin/env bash
# The CUDA path in one run, for a machine with one GPU: the CUDA-marked tests, then a K=1 vanilla and
# a K=1 RAIN smoke run in bfloat16. Multi-rank (--tp K) correctness is proven on CPU by tests/test_tp.py.
#   scripts/gpu_check.sh            # uses .venv if there is one, else python3 (needs CUDA torch)
#   PYTHON=/path/python RAIN_CHECK_MODEL=qwen2.5-coder-0.5b scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
model="${RAIN_CHECK_MODEL:-smollm2}"
timeout_s="${RAIN_CHECK_TIMEOUT_S:-240}"

echo "== environment"
"$PYTHON" - <<'PY'
import sys, torch, transformers
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}")
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to this torch: install a CUDA build of torch (scripts/setup.sh does on a GPU host)")
for i in range(torch.cuda.device_count()):
    print(f"cuda:{i} {torch.cuda.get_device_name(i)}, bf16 {torch.cuda.is_bf16_supported()}")
PY
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null || true

status=0
echo "== pytest -m cuda"
RAIN_CHECK_MODEL="$model" timeout "$timeout_s" "$PYTHON" -m pytest -m cuda -q -rs -p no:cacheprovider tests/ || status=1

prompt="Explain in two sentences why the sky is blue."
echo "== vanilla, cuda bfloat16"
timeout "$timeout_s" "$PYTHON" -m rain_core.cli "$prompt" --model "$model" --device cuda --dtype bfloat16 \
  --vanilla --max-tokens 32 || status=1
echo "== RAIN, cuda bfloat16"
timeout "$timeout_s" "$PYTHON" -m rain_core.cli "$prompt" --model "$model" --device cuda --dtype bfloat16 \
  --max-tokens 16 --max-iters 2 --min-iters 2 --seed 0 || status=1

if [ "$status" = 0 ]; then echo "== gpu_check: all passed"; else echo "== gpu_check: FAILED"; fi
exit "$status"
