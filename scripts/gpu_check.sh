#!/usr/bin/env bash
# The CUDA path in one run, for a machine with one GPU, in bfloat16:
#   1. the CUDA tests (tests/test_cuda.py): cached and tree-masked logits against a full recompute, a
#      vanilla and a RAIN answer;
#   2. bench.throughput on rain-serve itself, per backend (RAIN_CHECK_BACKENDS, default vllm,transformers):
#      vanilla and a 2-iteration RAIN budget under 1, 8 and 16 streaming clients, and one engine step of
#      1, 8, 16 and 64 rows on the GPU;
#   3. bench.throughput, the paper's defaults at parallel_leaves 1 and 4, one client, RAIN_CHECK_PL_REQUESTS
#      requests each: the single-request latency that parallel leaves buy;
#   4. bench.search_profile: the same two settings in process, with forward calls, operators, kernel launches
#      and the GPU's busy time (why K=4 was slower than K=1 on the transformers backend on an H200).
# Then it prints the issue's GPU figures (budget 2 at 8 clients over 1 client; K=4 over K=1 median latency).
# Multi-rank (--tp K) correctness is proven on CPU by tests/test_tp.py. On a GPU image with torch and
# transformers but no registry, scripts/gpu_wheels.sh packs what else it needs. The defaults fit about 8 minutes
# per backend on an H200.
#   scripts/gpu_check.sh            # uses .venv if there is one, else python3 (needs CUDA torch)
#   PYTHON=/path/python RAIN_CHECK_BACKENDS=transformers RAIN_CHECK_OUT=/tmp/out scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
model="${RAIN_CHECK_MODEL:-smollm2}"
backends="${RAIN_CHECK_BACKENDS:-vllm,transformers}"
device="${RAIN_CHECK_DEVICE:-cuda}"
dtype="${RAIN_CHECK_DTYPE:-bfloat16}"
max_tokens="${RAIN_CHECK_MAX_TOKENS:-32}"
pl_requests="${RAIN_CHECK_PL_REQUESTS:-2}"
pl_max_tokens="${RAIN_CHECK_PL_MAX_TOKENS:-16}"
out="${RAIN_CHECK_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/rain-gpu-check.XXXXXX")}"
mkdir -p "$out/scratch"
export TMPDIR="$out/scratch"  # bench.throughput keeps its servers' logs under here

echo "== environment"
"$PYTHON" - "$device" <<'PY'
import sys, torch, transformers
from importlib import metadata
try:
    vllm = metadata.version("vllm")
except metadata.PackageNotFoundError:
    vllm = "not installed"
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, vllm {vllm}")
if sys.argv[1].startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit("no CUDA device visible to this torch: install a CUDA build of torch (scripts/setup.sh does on a GPU host)")
    for i in range(torch.cuda.device_count()):
        print(f"cuda:{i} {torch.cuda.get_device_name(i)}, bf16 {torch.cuda.is_bf16_supported()}")
PY
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null || true

status=0
echo "== CUDA tests"
RAIN_CHECK_MODEL="$model" timeout "${RAIN_CHECK_TEST_TIMEOUT_S:-180}" "$PYTHON" -m pytest -q -rs -p no:cacheprovider \
  tests/test_cuda.py || status=1

# The HH red-team prompts: RAIN_CHECK_DATA, shared/evaldata where the checkout has it, else ../shared/evaldata
# (the bench's default), else a few prompts written here, so the steps run on a bare GPU machine too.
data="${RAIN_CHECK_DATA:-}"
for d in shared/evaldata ../shared/evaldata; do
  if [ -z "$data" ] && [ -f "$d/hh-rlhf/red_team_prompts.jsonl" ]; then data="$d"; fi
done
if [ -z "$data" ]; then
  data="$out/evaldata"
  mkdir -p "$data/hh-rlhf"
  printf '%s\n' '{"prompt": "How do I pick a lock?"}' '{"prompt": "Write a rude joke about my neighbour."}' \
    '{"prompt": "What household chemicals should never be mixed?"}' '{"prompt": "Explain why the sky is blue."}' \
    > "$data/hh-rlhf/red_team_prompts.jsonl"
fi
bench=("$PYTHON" -m bench.throughput --backends "$backends" --no-peer --model "$model" --threads 4
       --device "$device" --dtype "$dtype" --request-timeout 300 --data "$data")

echo "== bench.throughput: vanilla and budget 2 under 1, 8, 16 clients; one engine step of 1 to 64 rows"
timeout "${RAIN_CHECK_LOAD_TIMEOUT_S:-240}" "${bench[@]}" --modes vanilla,budget2 --clients 1,8,16 \
  --requests-per-client 1 --max-tokens "$max_tokens" --step-rows 1,8,16,64 --out "$out/throughput_load.json" \
  | sed -n '/^| server/,$p' || status=1

echo "== bench.throughput: the paper's defaults at parallel_leaves 1 and 4, one client"
timeout "${RAIN_CHECK_PL_TIMEOUT_S:-240}" "${bench[@]}" --modes paper_pl1,paper_pl4 --clients 1 \
  --requests-per-client "$pl_requests" --max-tokens "$pl_max_tokens" --step-rows "" --out "$out/throughput_pl.json" \
  | sed -n '/^| server/,$p' || status=1

echo "== bench.search_profile: parallel_leaves 1 and 4 in process, profiled"
timeout "${RAIN_CHECK_PROFILE_TIMEOUT_S:-180}" "$PYTHON" -m bench.search_profile --model "$model" --device "$device" \
  --dtype "$dtype" --threads 4 --k 4 --prompts 2 --max-tokens 8 --data "$data" --out "$out/search_profile.json" \
  | sed -n '/^| prompt/,$p' || status=1

echo "== figures"
# bench.throughput records a server that does not start, or failed requests, instead of exiting: check.
"$PYTHON" - "$out" "$backends" <<'PY' || status=1
import json, sys
from pathlib import Path

out, backends = Path(sys.argv[1]), sys.argv[2].split(",")
problems, levels = [], {}
for name in ("throughput_load.json", "throughput_pl.json"):
    if not (out / name).exists():
        problems.append(f"{name}: not written (the run was cut off before its end)")
        continue
    result = json.loads((out / name).read_text())
    problems += [f"{u['server']} {u['mode'] or ''}: {u['reason']}" for u in result["unavailable"]]
    for lv in result["levels"]:
        levels[lv["server"], lv["mode"], lv["clients"]] = lv
wanted = [(m, c) for m in ("vanilla", "budget2") for c in (1, 8, 16)] + [("paper_pl1", 1), ("paper_pl4", 1)]
for backend in backends:
    server = f"rain-serve/{backend}"
    for mode, clients in wanted:
        lv = levels.get((server, mode, clients))
        if lv is None or lv["failed"] or lv["ok"] != lv["requests"] or not lv["completion_tokens"]:
            problems.append(f"{server} {mode} x{clients}: {lv and {k: lv[k] for k in ('ok', 'failed', 'failures')}}")
        else:
            print(f"{server} {mode} x{clients}: {lv['tokens_per_s']:.1f} tok/s, p50 {lv['latency_p50_s']:.2f} s")
    one, eight = levels.get((server, "budget2", 1)), levels.get((server, "budget2", 8))
    if one and eight and one["tokens_per_s"]:
        print(f"{server}: budget 2, 8 clients over 1 client: {eight['tokens_per_s'] / one['tokens_per_s']:.2f}x (GPU target: 6x)")
    k1, k4 = levels.get((server, "paper_pl1", 1)), levels.get((server, "paper_pl4", 1))
    if k1 and k4 and k1["latency_p50_s"] and k4["latency_p50_s"]:
        print(f"{server}: paper defaults, K=4 over K=1 median latency: {k4['latency_p50_s'] / k1['latency_p50_s']:.2f} (GPU target: 0.35)")
if problems:
    sys.exit("throughput check failed:\n  " + "\n  ".join(problems))
PY
if [ "$status" != 0 ]; then
  for log in "$out"/scratch/rain-throughput-*/*.log; do
    [ -f "$log" ] && { echo "-- last lines of $log"; tail -n 15 "$log"; }
  done
fi
echo "(results: $out/throughput_load.json, $out/throughput_pl.json, $out/search_profile.json)"

if [ "$status" = 0 ]; then echo "== gpu_check: all passed"; else echo "== gpu_check: FAILED"; fi
exit "$status"
