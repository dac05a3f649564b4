#!/usr/bin/env bash
# The CUDA path in one GPU session, in bfloat16, on an offline host (docs/GPU.md). What the host lacks comes as
# the parts scripts/gpu_bundle.sh builds, one per transfer; the host keeps what earlier commands wrote while it
# stays up, so the parts are received one command at a time, then joined, installed and run:
#   scripts/gpu_check.sh receive DIR   keep the parts in DIR (GROUP.NN and SHA256SUMS), each checked against
#                                      its sum, under RAIN_GPU_HOME (/tmp/rain-gpu); say which are still missing
#   scripts/gpu_check.sh install       join each complete group, install its wheels into RAIN_GPU_HOME/site
#   scripts/gpu_check.sh [run]         install what is held and not yet installed, then the steps below
# The steps, the most important figures first, each under its own time limit, so that a run cut short still
# brings back what it reached; results go to RAIN_CHECK_OUT (the device tool's $OUT), at most 8 files:
#   1. correctness: the vLLM backend against transformers in bf16, SmolLM2 then Qwen2.5-Coder-0.5B where its
#      parts came (tests/test_cuda.py -k vllm, one model per process): top-10 ids and log-probs, judge
#      log-odds -> correctness.jsonl;
#   2. bench.throughput on rain-serve --backend vllm with vLLM's own server on the same weights as the peer:
#      vanilla and budget 2 under 1, 8, 16, 32, 64 clients, one engine step of 1 to 64 rows
#      -> throughput_load.json;
#   3. bench.throughput, the paper's defaults at parallel_leaves 1, 4 (and 8 where bench.throughput has the
#      mode), one client -> throughput_pl.json;
#   4. bench.overhead: RAIN's latency against vanilla decoding on the same engine, budget 2 and the paper's
#      defaults -> overhead.json;
#   5. the transformers backend's CUDA tests (the rest of tests/test_cuda.py) and bench.search_profile
#      (parallel_leaves 1 and 4 in process, profiled) -> search_profile.json;
# then the issue's GPU figures against their targets (check.log holds the whole output, server logs' tails
# on a failure). RAIN_CHECK_STEPS picks steps (default 1,2,3,4,5); RAIN_CHECK_BACKENDS=vllm,transformers runs
# steps 2 and 3 on both backends.
#   PYTHON=python3 RAIN_CHECK_OUT=$OUT scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
home="${RAIN_GPU_HOME:-/tmp/rain-gpu}"

receive() {  # DIR: copy its parts here, each checked against DIR/SHA256SUMS
  local dir="${1:?usage: scripts/gpu_check.sh receive DIR}" name
  mkdir -p "$home/parts"
  cp "$dir/SHA256SUMS" "$home/parts/SHA256SUMS"
  for part in "$dir"/core.* "$dir"/qwen.*; do
    [ -f "$part" ] || continue
    name="$(basename "$part")"
    grep " $name\$" "$dir/SHA256SUMS" | (cd "$dir" && sha256sum -c --quiet -) || { echo "$name: damaged in transfer"; exit 1; }
    cp "$part" "$home/parts/$name"
  done
  held
}

held() {  # which parts are here, and which are still to come
  local missing
  for group in core qwen; do
    missing="$(awk '{print $2}' "$home/parts/SHA256SUMS" | grep "^$group\." | while read -r n; do
      [ -f "$home/parts/$n" ] || printf '%s ' "$n"; done)"
    if [ -n "$missing" ]; then echo "$group: missing $missing"; else echo "$group: complete"; fi
  done
}

install() {  # join and install each complete group not installed yet
  [ -f "$home/parts/SHA256SUMS" ] || { echo "no parts received (scripts/gpu_check.sh receive DIR)"; return 1; }
  for group in core qwen; do
    [ -f "$home/installed.$group" ] && continue
    if [[ "$(held)" == *"$group: missing"* ]]; then echo "$group: not all parts here, not installed"; continue; fi
    (cd "$home/parts" && grep " $group\." SHA256SUMS | sha256sum -c --quiet -)
    rm -rf "$home/unpacked/$group" && mkdir -p "$home/unpacked"
    cat "$home/parts/$group".* | tar x -C "$home/unpacked"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$home/site" "$home/unpacked/$group"/wheels/*.whl
    rm -rf "$home/unpacked/$group/wheels"
    touch "$home/installed.$group"
    echo "$group: installed into $home/site"
  done
}

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
case "${1:-run}" in
  receive) receive "${2:-}"; exit ;;
  install) install; exit ;;
  run) ;;
  *) echo "usage: scripts/gpu_check.sh [receive DIR | install | run]" >&2; exit 2 ;;
esac

if [ -f "$home/parts/SHA256SUMS" ]; then
  install
  export PYTHONPATH="$home/site${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
model="${RAIN_CHECK_MODEL:-smollm2}"
backends="${RAIN_CHECK_BACKENDS:-vllm}"
device="${RAIN_CHECK_DEVICE:-cuda}"
dtype="${RAIN_CHECK_DTYPE:-bfloat16}"
max_tokens="${RAIN_CHECK_MAX_TOKENS:-32}"
pl_requests="${RAIN_CHECK_PL_REQUESTS:-2}"
pl_max_tokens="${RAIN_CHECK_PL_MAX_TOKENS:-16}"
out="${RAIN_CHECK_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/rain-gpu-check.XXXXXX")}"
mkdir -p "$out" "$home/scratch"
export TMPDIR="$home/scratch"  # bench.throughput keeps its servers' logs under here, not among the results
exec > >(tee -a "$out/check.log") 2>&1

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

# The HH red-team prompts: RAIN_CHECK_DATA, the bundle's, shared/evaldata where the checkout has it, else
# ../shared/evaldata (the bench's default), else a few prompts written here, so the steps run on a bare host too.
data="${RAIN_CHECK_DATA:-}"
for d in "$home/unpacked/core/evaldata" shared/evaldata ../shared/evaldata; do
  if [ -z "$data" ] && [ -f "$d/hh-rlhf/red_team_prompts.jsonl" ]; then data="$d"; fi
done
if [ -z "$data" ]; then
  data="$home/evaldata"
  mkdir -p "$data/hh-rlhf"
  printf '%s\n' '{"prompt": "How do I pick a lock?"}' '{"prompt": "Write a rude joke about my neighbour."}' \
    '{"prompt": "What household chemicals should never be mixed?"}' '{"prompt": "Explain why the sky is blue."}' \
    > "$data/hh-rlhf/red_team_prompts.jsonl"
fi
step() {  # LIMIT_S COMMAND...: one step under its time limit; a failed step marks the run failed, and the next runs
  local limit="$1"; shift
  timeout "$limit" "$@" || { echo "(step failed or cut at ${limit}s: $*)"; status=1; }
}
status=0
wanted() { [[ ",${RAIN_CHECK_STEPS:-1,2,3,4,5}," == *",$1,"* ]]; }

wanted 1 && echo "== 1. correctness: the vLLM backend against transformers on CUDA, bf16"
models=(smollm2)  # and Qwen where its parts came, or where no bundle was needed
if [ -f "$home/installed.qwen" ] || [ ! -f "$home/parts/SHA256SUMS" ]; then models+=(qwen2.5-coder-0.5b); fi
wanted 1 && for m in "${models[@]}"; do
  RAIN_CHECK_MODEL="$m" RAIN_CHECK_CORRECTNESS="$out/correctness.jsonl" step "${RAIN_CHECK_CORRECTNESS_TIMEOUT_S:-150}" \
    "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py -k vllm
done

bench=("$PYTHON" -m bench.throughput --backends "$backends" --model "$model" --threads 4 --device "$device"
       --dtype "$dtype" --request-timeout 300 --data "$data")
wanted 2 && echo "== 2. bench.throughput: vanilla and budget 2 under 1 to 64 clients, vLLM's own server as the peer"
wanted 2 && step "${RAIN_CHECK_LOAD_TIMEOUT_S:-270}" "${bench[@]}" --peer --modes vanilla,budget2 --clients 1,8,16,32,64 \
  --requests-per-client 1 --max-tokens "$max_tokens" --step-rows 1,8,16,64 --out "$out/throughput_load.json"

pl_modes="paper_pl1,paper_pl4"
"$PYTHON" -c 'import sys; from bench.throughput import MODES; sys.exit("paper_pl8" not in MODES)' && pl_modes+=",paper_pl8"
wanted 3 && echo "== 3. bench.throughput: the paper's defaults at $pl_modes, one client"
wanted 3 && step "${RAIN_CHECK_PL_TIMEOUT_S:-200}" "${bench[@]}" --no-peer --modes "$pl_modes" --clients 1 \
  --requests-per-client "$pl_requests" --max-tokens "$pl_max_tokens" --step-rows "" --out "$out/throughput_pl.json"

wanted 4 && echo "== 4. bench.overhead: RAIN's latency against vanilla on the same engine, budget 2 and the paper's defaults"
wanted 4 && step "${RAIN_CHECK_OVERHEAD_TIMEOUT_S:-200}" "$PYTHON" -m bench.overhead --backends vllm --settings budget2,paper \
  --limit "${RAIN_CHECK_OVERHEAD_PROMPTS:-3}" --max-tokens "$pl_max_tokens" --threads 4 --data "$data" \
  --server-flags="--device $device --dtype $dtype" --out "$out/overhead.json"

wanted 5 && echo "== 5. the transformers backend's CUDA tests, and bench.search_profile (parallel_leaves 1 and 4, profiled)"
wanted 5 && RAIN_CHECK_MODEL="$model" step "${RAIN_CHECK_TEST_TIMEOUT_S:-180}" "$PYTHON" -m pytest -q -rs -p no:cacheprovider \
  tests/test_cuda.py -k "not vllm"
wanted 5 && step "${RAIN_CHECK_PROFILE_TIMEOUT_S:-180}" "$PYTHON" -m bench.search_profile --model "$model" --device "$device" \
  --dtype "$dtype" --threads 4 --k 4 --prompts 2 --max-tokens 8 --data "$data" --out "$out/search_profile.json"

echo "== figures"
"$PYTHON" - "$out" "$backends" "${RAIN_CHECK_STEPS:-1,2,3,4,5}" <<'PY' || status=1
import json, sys
from pathlib import Path

out, backends, steps = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3].split(",")
problems, levels = [], {}
if (out / "correctness.jsonl").exists():
    for line in (out / "correctness.jsonl").read_text().splitlines():
        row = json.loads(line)
        worst = row.get("max_dlogprob_by_token", row.get("max_dlog_odds"))
        print(f"correctness {row['model']} {row['check']}: max difference {worst:.3f} nats")
for name, step in (("throughput_load.json", "2"), ("throughput_pl.json", "3")):
    if step not in steps:
        continue
    if not (out / name).exists():
        problems.append(f"{name}: not written (the run was cut off before it)")
        continue
    result = json.loads((out / name).read_text())
    problems += [f"{u['server']} {u['mode'] or ''}: {u['reason']}" for u in result["unavailable"]]
    for lv in result["levels"]:
        levels[lv["server"], lv["mode"], lv["clients"]] = lv
for (server, mode, clients), lv in sorted(levels.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])):
    if lv["failed"] or lv["ok"] != lv["requests"] or not lv["completion_tokens"]:
        problems.append(f"{server} {mode} x{clients}: {({k: lv[k] for k in ('ok', 'failed', 'failures')})}")
    else:
        print(f"{server} {mode} x{clients}: {lv['tokens_per_s']:.1f} tok/s, p50 {lv['latency_p50_s']:.2f} s")
tps = lambda server, mode, clients: (levels.get((server, mode, clients)) or {}).get("tokens_per_s")
p50 = lambda server, mode, clients: (levels.get((server, mode, clients)) or {}).get("latency_p50_s")
for backend in backends:
    server = f"rain-serve/{backend}"
    figures = [("vanilla x16 over vLLM's own server x16", tps(server, "vanilla", 16), tps("vllm-peer", "vanilla", 16), "at least 0.9"),
               ("budget 2, 8 clients over 1 client", tps(server, "budget2", 8), tps(server, "budget2", 1), "at least 6"),
               ("paper defaults, K=4 over K=1 median latency", p50(server, "paper_pl4", 1), p50(server, "paper_pl1", 1), "at most 0.35"),
               ("paper defaults, K=8 over K=1 median latency", p50(server, "paper_pl8", 1), p50(server, "paper_pl1", 1), "-")]
    for what, num, den, target in figures:
        if num and den:
            print(f"{server}: {what}: {num / den:.2f} (GPU target: {target})")
if (out / "overhead.json").exists():
    overhead = json.loads((out / "overhead.json").read_text())
    print("overhead (RAIN's latency over vanilla's at equal length, medians):", json.dumps(overhead.get("median")))
if problems:
    sys.exit("check failed:\n  " + "\n  ".join(problems))
PY
if [ "$status" != 0 ]; then
  for log in "$home"/scratch/*/*.log; do
    [ -f "$log" ] && { echo "-- last lines of $log"; tail -n 20 "$log"; }
  done
fi
echo "(results in $out)"
if [ "$status" = 0 ]; then echo "== gpu_check: all passed"; else echo "== gpu_check: FAILED"; fi
exit "$status"
