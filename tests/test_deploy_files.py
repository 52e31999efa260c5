"""Offline checks of the deployment files in deploy/.

Linters: hadolint on both Dockerfiles, kubernetes-validate (strict, its bundled schemas) on deploy/k8s,
yamllint on the compose file and the manifests, `nginx -t` on nginx.conf where nginx is installed.
Consistency, parsed here: ports, probes, selectors, Redis URLs, the export mount and image tags agree
across compose, Kubernetes, nginx and the Dockerfiles; every `paddle-lane serve|worker` command parses
with the serving CLI's flags; gunicorn.conf.py is loaded and run with a stub app.
Nothing here builds an image or needs a Docker daemon or a cluster."""
from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BIN = Path(sys.executable).parent
DOCKERFILES = ["Dockerfile", "Dockerfile.gpu"]
# Oldest and newest Kubernetes checked; the manifests use apps/v1, autoscaling/v2 and policy/v1 only.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
API_PORT = 8000
MODEL_DIR = "/models/export"
BACKENDS = ["onnxruntime", "paddle-inference", "dygraph"]


def tool(name: str) -> str:
    """A linter installed beside the running interpreter (the project's venv), or skip."""
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {BIN} (it comes with the project's test dependencies)")
    return str(path)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)


# ---------------------------------------------------------------- the serving CLI, as specified

class _Strict(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def cli_parser() -> argparse.ArgumentParser:
    """`paddle-lane serve` and `paddle-lane worker` with exactly their flags; no abbreviations."""
    parser = _Strict(prog="paddle-lane", allow_abbrev=False)
    verbs = parser.add_subparsers(dest="verb", required=True)
    serve = verbs.add_parser("serve", allow_abbrev=False)
    serve.add_argument("--model", required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int)
    serve.add_argument("--redis")
    serve.add_argument("--backend", choices=BACKENDS)
    serve.add_argument("--max-batch", type=int, default=4)
    serve.add_argument("--max-wait-ms", type=float, default=5)
    serve.add_argument("--max-queue", type=int, default=64)
    serve.add_argument("--timeout-s", type=float, default=30)
    serve.add_argument("--max-upload-mb", type=float, default=20)
    worker = verbs.add_parser("worker", allow_abbrev=False)
    worker.add_argument("--model", required=True)
    worker.add_argument("--redis", required=True)
    worker.add_argument("--backend", choices=BACKENDS)
    worker.add_argument("--max-batch", type=int, default=4)
    return parser


def parse_command(argv: list[str]) -> argparse.Namespace:
    assert argv and argv[0] == "paddle-lane", f"not a paddle-lane command: {argv}"
    return cli_parser().parse_args(argv[1:])


# ---------------------------------------------------------------- Dockerfiles

def dockerfile_stages(name: str) -> list[list[tuple[str, str]]]:
    """Stages of a Dockerfile, each a list of (INSTRUCTION, arguments), continuations joined, comments out.
    Instructions before the first FROM (global ARGs) form stage 0's prefix."""
    stages: list[list[tuple[str, str]]] = [[]]
    current = ""
    for line in (DEPLOY / name).read_text().splitlines():
        text = line.strip()
        if text.startswith("#") or (not text and not current):
            continue
        if text.endswith("\\"):
            current += text[:-1] + " "
            continue
        current += text
        word, _, rest = current.partition(" ")
        current = ""
        if word.upper() == "FROM" and any(i == "FROM" for i, _ in stages[-1]):
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages


def instructions(stage: list[tuple[str, str]], kind: str) -> list[str]:
    return [rest for instr, rest in stage if instr == kind]


def stage_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for rest in instructions(stage, "ENV"):
        for item in shlex.split(rest):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def global_args(name: str) -> dict[str, str]:
    args = {}
    for instr, rest in dockerfile_stages(name)[0]:
        if instr == "FROM":
            break
        if instr == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    return args


def from_image(name: str, stage: list[tuple[str, str]]) -> str:
    """The image a stage starts from, with global ARGs put in."""
    image = instructions(stage, "FROM")[0].split()[0]
    return re.sub(r"\$\{?(\w+)\}?", lambda m: global_args(name)[m.group(1)], image)


def expand(text: str, env: dict[str, str]) -> str:
    """$VAR, ${VAR} and $(VAR) replaced from env; an unknown variable is an error."""
    def value(m):
        key = m.group(1) or m.group(2) or m.group(3)
        assert key in env, f"{key} is used but never set (in {text!r})"
        return env[key]
    return re.sub(r"\$\((\w+)\)|\$\{(\w+)\}|\$(\w+)", value, text)


def cmd_argv(name: str) -> list[str]:
    """The final stage's CMD as argv, with `sh -c "exec ..."` opened and its variables put in."""
    stage = dockerfile_stages(name)[-1]
    (cmd,) = instructions(stage, "CMD")
    assert cmd.startswith("["), f"{name}: CMD must be exec form"
    argv = json.loads(cmd)
    if argv[:2] == ["sh", "-c"]:
        assert len(argv) == 3 and argv[2].startswith("exec "), f"{name}: sh -c must exec the command (signals)"
        argv = shlex.split(expand(argv[2][len("exec "):], stage_env(stage)))
    return argv


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint(name):
    hadolint = tool("hadolint")
    result = run([hadolint, "--no-color", "--failure-threshold", "warning", str(DEPLOY / name)])
    assert result.returncode == 0, f"hadolint {name}:\n{result.stdout}{result.stderr}"
    # An ignored rule says why, on the same line.
    for m in re.finditer(r"#\s*hadolint ignore=(\S+)(.*)", (DEPLOY / name).read_text()):
        assert len(m.group(2).strip()) > 10, f"{name}: `hadolint ignore={m.group(1)}` without a reason"


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path):
    """The threshold in use does fail on warnings (an unpinned base and an unpinned apt install)."""
    hadolint = tool("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\n")
    result = run([hadolint, "--no-color", "--failure-threshold", "warning", str(bad)])
    assert result.returncode != 0 and "DL3006" in result.stdout, result.stdout


def test_cpu_dockerfile_structure():
    stages = dockerfile_stages("Dockerfile")
    assert len(stages) == 2, "builder and runtime stages"
    builder, final = stages
    assert instructions(builder, "FROM")[0].split()[-1] == "builder"
    # The venv is copied across, so both stages run the same Python (3.11, the lock's).
    assert from_image("Dockerfile", builder) == from_image("Dockerfile", final)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", from_image("Dockerfile", final))
    runs = " && ".join(instructions(builder, "RUN"))
    steps = [r"python -m venv /opt/venv", r"pip install -r requirements\.lock",
             r"pip install --no-deps -r requirements-nodeps\.lock", r"pip install --no-deps \.(\s|$)"]
    positions = [re.search(step, runs) for step in steps]
    assert all(positions), f"builder misses one of {steps}: {runs}"
    assert [p.start() for p in positions] == sorted(p.start() for p in positions), "install order"
    assert "/opt/venv/bin" in stage_env(builder)["PATH"] and "/opt/venv/bin" in stage_env(final)["PATH"]
    assert any(c.startswith("--from=builder /opt/venv /opt/venv") for c in instructions(final, "COPY"))
    for stage in stages:
        env = stage_env(stage)
        assert env.get("PYTHONDONTWRITEBYTECODE") == "1" and env.get("PYTHONUNBUFFERED") == "1"
    assert instructions(final, "EXPOSE") == [str(API_PORT)]
    (health,) = instructions(final, "HEALTHCHECK")
    assert "urllib.request" in health and f"127.0.0.1:{API_PORT}/healthz" in health and "curl" not in health
    assert cmd_argv("Dockerfile")[:2] == ["paddle-lane", "serve"]


def test_gpu_dockerfile_structure():
    (stage,) = dockerfile_stages("Dockerfile.gpu")
    lock = (ROOT / "requirements.lock").read_text()
    pin = re.search(r"^paddlepaddle==(\S+)$", lock, re.M).group(1)
    base = from_image("Dockerfile.gpu", stage)
    # A tag of the shape Paddle documents (its registry, CUDA, cuDNN and TensorRT in the tag), cited in deploy/README.md
    assert re.fullmatch(r"ccr-2vdh3abv-pub\.cnc\.bj\.baidubce\.com/paddlepaddle/paddle:[\d.]+-gpu-cuda[\d.]+-cudnn[\d.]+-trt[\d.]+",
                        base), base
    assert base in (DEPLOY / "README.md").read_text(), "deploy/README.md cites the base tag"
    assert "must be supported" in (DEPLOY / "Dockerfile.gpu").read_text() and "CUDA" in (DEPLOY / "Dockerfile.gpu").read_text()
    runs = " && ".join(instructions(stage, "RUN"))
    # The lock's Paddle version as paddlepaddle-gpu from Paddle's index, checked after the install; Python 3.11 asserted.
    assert re.search(r'pip install "paddlepaddle-gpu==\$\{pin\}" -i "\$\{PADDLE_INDEX\}"', runs), runs
    assert "sys.version_info[:2] == (3, 11)" in runs and "m.version('paddlepaddle-gpu')" in runs
    assert re.search(r"paddlepaddle\.org\.cn/packages/stable/cu\d+/", (DEPLOY / "Dockerfile.gpu").read_text())
    # The CPU paddlepaddle line is filtered out of the lock, and only that line.
    m = re.search(r"grep -v '([^']+)' requirements\.lock > (\S+)", runs)
    assert m, "requirements.lock is filtered with grep -v"
    dropped = [line for line in lock.splitlines() if re.search(m.group(1), line)]
    assert dropped == [f"paddlepaddle=={pin}"], dropped
    steps = [r'pip install "paddlepaddle-gpu==', rf"pip install -r {re.escape(m.group(2))}",
             r"pip install --no-deps -r requirements-nodeps\.lock", r"m\.version\('paddlepaddle-gpu'\)",
             r"sh pip-check\.sh", r"pip install --no-deps \.(\s|$)"]
    positions = [re.search(step, runs) for step in steps]
    assert all(positions) and [p.start() for p in positions] == sorted(p.start() for p in positions), runs
    env = stage_env(stage)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1" and env.get("PYTHONUNBUFFERED") == "1"
    (health,) = instructions(stage, "HEALTHCHECK")
    assert "PADDLE_LANE_REDIS" in health and "PADDLE_LANE_REDIS" in env
    assert cmd_argv("Dockerfile.gpu")[:2] == ["paddle-lane", "worker"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_user_and_entrypoint(name):
    final = dockerfile_stages(name)[-1]
    users = instructions(final, "USER")
    assert users, f"{name}: no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{name}: USER must be a numeric non-root id (runAsNonRoot)"
    assert any(f"--uid {uid}" in r for r in instructions(final, "RUN")), f"{name}: user {uid} is not created"
    # compose and Kubernetes give whole commands (`paddle-lane ...`): an ENTRYPOINT would prefix them.
    assert not instructions(final, "ENTRYPOINT")
    for deployment in k8s_kind("Deployment"):
        if component(deployment) in ("api", "worker"):
            assert pod_spec(deployment)["securityContext"]["runAsUser"] == int(uid)


def dockerignore_rules(name: str) -> list[str]:
    path = DEPLOY / f"{name}.dockerignore"
    assert path.exists(), f"{path.name} missing (BuildKit reads it for -f deploy/{name})"
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def dockerignore_excludes(rules: list[str], path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matches a path or one of its parents."""
    excluded = False
    for rule in rules:
        negate, pattern = rule.startswith("!"), rule.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copy_sources_exist_and_are_in_the_context(name):
    rules = dockerignore_rules(name)
    assert dockerignore_excludes(rules, ".venv/bin/python") and dockerignore_excludes(rules, "runs/x/model.pdparams")
    assert dockerignore_excludes(rules, "paddle_lane/__pycache__/cli.cpython-311.pyc")
    sources = []
    for stage in dockerfile_stages(name):
        for copy in instructions(stage, "COPY"):
            words = [w for w in copy.split() if not w.startswith("--")]
            if "--from=" not in copy:
                sources += words[:-1]
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"{name}: COPY {source}: not in the repo"
        files = [path] if path.is_file() else [
            p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        for file in files[:50]:
            rel = file.relative_to(ROOT).as_posix()
            assert not dockerignore_excludes(rules, rel), f"{name}: {rel} is copied but excluded from the context"


# ---------------------------------------------------------------- Kubernetes

def k8s_docs() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_kind(kind: str) -> list[dict]:
    return [doc for doc in k8s_docs() if doc["kind"] == kind]


def component(doc: dict) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def the_deployment(comp: str) -> dict:
    (found,) = [d for d in k8s_kind("Deployment") if component(d) == comp]
    return found


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container_port(deployment: dict, port) -> int:
    """A probe's or Service's port (number or name) as the container port number it means."""
    ports = [p for c in pod_spec(deployment)["containers"] for p in c.get("ports", [])]
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in ports], f"port {port} is not a container port"
        return port
    (found,) = [p["containerPort"] for p in ports if p.get("name") == port]
    return found


def configmap_env(deployment: dict) -> dict[str, str]:
    env = {}
    maps = {c["metadata"]["name"]: c["data"] for c in k8s_kind("ConfigMap")}
    for container in pod_spec(deployment)["containers"]:
        for source in container.get("envFrom", []):
            name = source["configMapRef"]["name"]
            assert name in maps, f"envFrom names ConfigMap {name}, which is not in deploy/k8s"
            env.update(maps[name])
        for var in container.get("env", []):
            env[var["name"]] = var.get("value", "")
    return env


def k8s_commands() -> dict[str, list[str]]:
    """component -> the paddle-lane argv of its container, with $(VAR) put in from its ConfigMap."""
    out = {}
    for deployment in k8s_kind("Deployment"):
        (container,) = pod_spec(deployment)["containers"]
        argv = container.get("command", []) + container.get("args", [])
        if argv[:1] == ["paddle-lane"]:
            env = configmap_env(deployment)
            out[component(deployment)] = [expand(a, env) for a in argv]
    return out


def test_kubernetes_validate():
    validate = tool("kubernetes-validate")
    files = sorted(str(p) for p in K8S.glob("*.yaml"))
    assert len(files) >= 8
    for version in K8S_VERSIONS:
        result = run([validate, "--strict", "--kubernetes-version", version, *files])
        assert result.returncode == 0, f"kubernetes {version}:\n{result.stdout}{result.stderr}"
        assert result.stdout.count("passed") == len(k8s_docs()), result.stdout


def test_kubernetes_validate_is_strict(tmp_path):
    """An unknown field fails: the check above validates against the schemas, offline."""
    validate = tool("kubernetes-validate")
    doc = yaml.safe_load((K8S / "api-service.yaml").read_text())
    doc["spec"]["ports"][0]["targetPorts"] = 8000
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = run([validate, "--strict", "--kubernetes-version", K8S_VERSIONS[-1], str(bad)])
    assert result.returncode != 0 and "targetPorts" in result.stdout + result.stderr, result.stdout


def test_yamllint():
    yamllint = tool("yamllint")
    result = run([yamllint, "--strict", "-f", "parsable", "-c", str(ROOT / ".yamllint"),
                  str(DEPLOY / "docker-compose.yml"), str(K8S)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_k8s_labels_and_selectors():
    docs = k8s_docs()
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "paddle-lane", doc["metadata"]["name"]
    deployments = k8s_kind("Deployment")
    assert sorted(component(d) for d in deployments) == ["api", "redis", "worker"]
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(selector, labels), deployment["metadata"]["name"]
        assert labels["app.kubernetes.io/component"] == component(deployment)
        # No Deployment's selector takes another one's pods.
        for other in deployments:
            if other is not deployment:
                assert not selects(selector, other["spec"]["template"]["metadata"]["labels"])
    services = k8s_kind("Service")
    for comp in ("api", "redis"):
        deployment = the_deployment(comp)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (service,) = [s for s in services if selects(s["spec"]["selector"], labels)]
        for port in service["spec"]["ports"]:
            container_port(deployment, port["targetPort"])
    worker_labels = the_deployment("worker")["spec"]["template"]["metadata"]["labels"]
    assert not [s for s in services if selects(s["spec"]["selector"], worker_labels)], "workers serve no port"
    # Every Service selects some pods.
    for service in services:
        assert any(selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
                   for d in deployments), service["metadata"]["name"]


def test_k8s_api():
    api = the_deployment("api")
    assert api["spec"]["replicas"] == 2
    (container,) = pod_spec(api)["containers"]
    assert container_port(api, container["readinessProbe"]["httpGet"]["port"]) == API_PORT
    assert container_port(api, container["livenessProbe"]["httpGet"]["port"]) == API_PORT
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    args = parse_command(k8s_commands()["api"])
    assert args.verb == "serve" and args.port == API_PORT and args.host == "0.0.0.0" and args.model == MODEL_DIR
    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][key])
    assert pod_spec(api)["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    (service,) = [s for s in k8s_kind("Service") if component(s) == "api"]
    assert service["spec"]["type"] == "ClusterIP"
    assert [(p["port"], container_port(api, p["targetPort"])) for p in service["spec"]["ports"]] == [(80, API_PORT)]
    # Pods end after gunicorn's graceful stop.
    gunicorn = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    assert pod_spec(api)["terminationGracePeriodSeconds"] > gunicorn["graceful_timeout"] > args.timeout_s


def test_k8s_worker_gpu():
    worker = the_deployment("worker")
    (container,) = pod_spec(worker)["containers"]
    for key in ("requests", "limits"):
        assert int(container["resources"][key]["nvidia.com/gpu"]) == 1
    spec = pod_spec(worker)
    assert spec.get("nodeSelector") and any(t["key"] == "nvidia.com/gpu" for t in spec.get("tolerations", []))
    assert spec["securityContext"]["runAsNonRoot"] is True
    args = parse_command(k8s_commands()["worker"])
    # No --backend: the default follows what the export holds (Paddle Inference on a GPU for a full export)
    assert args.verb == "worker" and args.model == MODEL_DIR and args.backend is None
    assert container["image"].endswith("-gpu")
    assert pod_spec(the_deployment("api"))["containers"][0]["image"].endswith("-cpu")


def test_k8s_hpa_and_pdb():
    api = the_deployment("api")
    (hpa,) = k8s_kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", api["metadata"]["name"])
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    # HPA utilisation is relative to the request: the api must request CPU.
    assert "cpu" in pod_spec(api)["containers"][0]["resources"]["requests"]
    (pdb,) = k8s_kind("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 < hpa["spec"]["minReplicas"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    for deployment in k8s_kind("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(selector, labels) == (deployment is api or component(deployment) == "api")


def test_k8s_config_volumes_and_redis():
    (pvc,) = k8s_kind("PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "paddle-lane-models"
    (configmap,) = k8s_kind("ConfigMap")
    assert "deploy.yml" in (K8S / "configmap.yaml").read_text(), "the deploy.yml placeholder comment"
    for key in ("PADDLE_LANE_MAX_BATCH", "PADDLE_LANE_MAX_WAIT_MS", "PADDLE_LANE_MAX_QUEUE", "PADDLE_LANE_TIMEOUT_S",
                "PADDLE_LANE_MAX_UPLOAD_MB", "PADDLE_LANE_REDIS", "PADDLE_LANE_MODEL"):
        assert key in configmap["data"], key
        assert isinstance(configmap["data"][key], str)
    assert "PADDLE_LANE_BACKEND" not in configmap["data"], "the backend follows the export"
    assert configmap["data"]["PADDLE_LANE_MODEL"] == MODEL_DIR
    # The Redis URL names the redis Service and its port.
    redis = the_deployment("redis")
    (service,) = [s for s in k8s_kind("Service") if component(s) == "redis"]
    m = re.fullmatch(r"redis://([\w.-]+):(\d+)/\d+", configmap["data"]["PADDLE_LANE_REDIS"])
    assert m and m.group(1) == service["metadata"]["name"]
    assert int(m.group(2)) in [p["port"] for p in service["spec"]["ports"]]
    assert container_port(redis, service["spec"]["ports"][0]["targetPort"]) == 6379
    for comp in ("api", "worker"):
        spec = pod_spec(the_deployment(comp))
        volumes = {v["name"]: v for v in spec["volumes"]}
        (container,) = spec["containers"]
        for mount in container["volumeMounts"]:
            assert mount["name"] in volumes
        (models,) = [m for m in container["volumeMounts"] if m["mountPath"] == MODEL_DIR]
        assert models["readOnly"] is True
        claim = volumes[models["name"]]["persistentVolumeClaim"]
        assert claim["claimName"] == pvc["metadata"]["name"] and claim["readOnly"] is True
        # A read-only root file system needs $HOME writable: paddleseg creates ~/.paddleseg on import.
        if container["securityContext"].get("readOnlyRootFilesystem"):
            home = stage_env(dockerfile_stages("Dockerfile")[-1])["HOME"]
            assert home in [m["mountPath"] for m in container["volumeMounts"]]
            assert "/tmp" in [m["mountPath"] for m in container["volumeMounts"]]
        assert ":latest" not in container["image"] and ":" in container["image"]


# ---------------------------------------------------------------- docker-compose

def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def compose_api_services() -> list[str]:
    return [name for name, svc in compose()["services"].items() if svc.get("command", [None, None])[1:2] == ["serve"]]


def test_compose_services_and_dependencies():
    services = compose()["services"]
    apis = compose_api_services()
    assert apis == ["api1", "api2"]

    def healthy_deps(name):
        deps = services[name].get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        return {dep for dep, cond in deps.items() if cond.get("condition") == "service_healthy"}

    assert healthy_deps("nginx") == set(apis)
    for name in apis + ["worker"]:
        assert healthy_deps(name) == {"redis"}
    # Every service waited on as healthy has a healthcheck.
    for name in services:
        for dep in healthy_deps(name):
            assert services[dep].get("healthcheck", {}).get("test"), f"{dep} has no healthcheck"
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert services["redis"]["image"] == pod_spec(the_deployment("redis"))["containers"][0]["image"]
    for name in apis:
        test = " ".join(services[name]["healthcheck"]["test"])
        assert f"127.0.0.1:{API_PORT}/readyz" in test
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["nginx"]["ports"] == ["8080:80"]
    assert services["nginx"]["volumes"] == ["./nginx.conf:/etc/nginx/nginx.conf:ro"]
    for svc in services.values():
        assert re.fullmatch(r"[\w./-]+:(?!latest$)[\w.-]+", svc["image"]), svc["image"]


def test_compose_app_services_build_and_mount():
    doc = compose()
    services = doc["services"]
    app_services = compose_api_services() + ["worker"]
    for name in app_services:
        svc = services[name]
        context = (DEPLOY / svc["build"]["context"]).resolve()
        assert context == ROOT and (context / svc["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert svc["volumes"] == [f"models:{MODEL_DIR}:ro"]
        assert svc["image"] == pod_spec(the_deployment("api"))["containers"][0]["image"]
    assert "models" in doc["volumes"]
    # Image tags carry the package's version.
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    for deployment in k8s_kind("Deployment"):
        image = pod_spec(deployment)["containers"][0]["image"]
        if image.startswith("paddle-lane:"):
            assert image.split(":")[1].startswith(version + "-"), f"{image}: tag is not of version {version}"


def test_compose_commands_reach_redis():
    services = compose()["services"]
    for name in compose_api_services() + ["worker"]:
        args = parse_command(services[name]["command"])
        assert args.model == MODEL_DIR
        host = re.fullmatch(r"redis://([\w.-]+):6379/\d+", args.redis)
        assert host and host.group(1) in services, f"{name}: --redis {args.redis}"
        if args.verb == "serve":
            assert args.host == "0.0.0.0" and args.port == API_PORT
    assert parse_command(services["worker"]["command"]).verb == "worker"


# ---------------------------------------------------------------- commands everywhere

def all_commands() -> list[tuple[str, list[str]]]:
    found = [(f"compose {name}", svc["command"]) for name, svc in compose()["services"].items()
             if svc.get("command", [None])[0] == "paddle-lane"]
    found += [(f"k8s {comp}", argv) for comp, argv in k8s_commands().items()]
    found += [(name, cmd_argv(name)) for name in DOCKERFILES]
    return found


def test_every_command_uses_the_cli_flags():
    commands = all_commands()
    verbs = sorted(where.split()[0] + ":" + argv[1] for where, argv in commands)
    assert verbs == ["Dockerfile.gpu:worker", "Dockerfile:serve", "compose:serve", "compose:serve",
                     "compose:worker", "k8s:serve", "k8s:worker"]
    for where, argv in commands:
        try:
            args = parse_command(argv)
        except ValueError as err:
            pytest.fail(f"{where}: {shlex.join(argv)}: {err}")
        assert args.model == MODEL_DIR, where
        if args.verb == "serve":
            assert args.host == "0.0.0.0" and args.port == API_PORT, f"{where}: a container listens on 0.0.0.0"


PROJECT_CLI_CHECK = """
import json, sys
from paddle_lane.cli import main as cli
if not hasattr(cli, "build_parser"):
    sys.exit("no build_parser")
for where, argv in json.load(sys.stdin):
    try:
        args = cli.build_parser().parse_args(argv[1:])
    except SystemExit:
        sys.exit(f"{where}: paddle_lane.cli.main rejects {argv}")
    assert args.verb == argv[1], where
"""


def test_every_command_parses_with_the_project_cli():
    """The same commands against the project's own parser (drift between the two fails). In a child
    process: importing paddle_lane.cli.main holds SIGTERM in the importing process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = run([sys.executable, "-c", PROJECT_CLI_CHECK], input=json.dumps(all_commands()), env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("argv", [
    ["paddle-lane", "serve", "--model", "/m", "--max-bach", "4"],          # typo
    ["paddle-lane", "serve", "--model", "/m", "--max-b", "4"],             # abbreviation
    ["paddle-lane", "worker", "--model", "/m"],                            # no --redis
    ["paddle-lane", "worker", "--model", "/m", "--redis", "r", "--port", "1"],  # serve-only flag
    ["paddle-lane", "serve", "--model", "/m", "--backend", "tensorrt"],
    ["paddle-lane", "serve", "--model", "/m", "--workers", "$(PADDLE_LANE_WORKERS)"],  # unexpanded
    ["paddle-lane", "infer", "--model", "/m"],
])
def test_cli_parser_rejects(argv):
    with pytest.raises(ValueError):
        parse_command(argv)


def test_k8s_variables_are_all_defined():
    for deployment in k8s_kind("Deployment"):
        env = configmap_env(deployment)
        for container in pod_spec(deployment)["containers"]:
            for arg in container.get("command", []) + container.get("args", []):
                for var in re.findall(r"\$\((\w+)\)", arg):
                    assert var in env, f"{deployment['metadata']['name']}: $({var}) is not in its ConfigMap"


# ---------------------------------------------------------------- nginx

def nginx_parse(text: str) -> list:
    """nginx.conf as nested [name, args, children-or-None]."""
    token = re.compile(r"\s+|#[^\n]*|\"((?:\\.|[^\"\\])*)\"|'((?:\\.|[^'\\])*)'|([{};])|([^\s{};\"'#]+)")
    root: list = []
    stack, words, pos = [root], [], 0
    while pos < len(text):
        m = token.match(text, pos)
        assert m, f"nginx.conf: cannot read at {text[pos:pos + 30]!r}"
        pos = m.end()
        dq, sq, punct, word = m.groups()
        if punct == ";":
            assert words, "empty directive"
            stack[-1].append([words[0], words[1:], None])
            words = []
        elif punct == "{":
            node = [words[0], words[1:], []]
            stack[-1].append(node)
            stack.append(node[2])
            words = []
        elif punct == "}":
            assert not words and len(stack) > 1, "unbalanced }"
            stack.pop()
        elif dq is not None or sq is not None or word is not None:
            words.append(next(w for w in (dq, sq, word) if w is not None))
    assert len(stack) == 1 and not words, "unterminated block or directive"
    return root


def nginx_children(tree: list, name: str, *args: str) -> list:
    (found,) = [node[2] for node in tree
                if node[0] == name and node[2] is not None and list(args) == node[1][:len(args)]]
    return found


def nginx_values(tree: list, name: str) -> list[list[str]]:
    return [node[1] for node in tree if node[0] == name and node[2] is None]


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    return int(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60}[m.group(2)]


def test_nginx_conf():
    tree = nginx_parse((DEPLOY / "nginx.conf").read_text())
    nginx_children(tree, "events")
    http = nginx_children(tree, "http")
    upstream = nginx_children(http, "upstream", "api")
    servers = [args[0] for args in nginx_values(upstream, "server")]
    hosts = [s.split(":")[0] for s in servers]
    ports = {int(s.split(":")[1]) for s in servers}
    assert hosts == compose_api_services(), "upstream servers are the compose API services"
    assert ports == {API_PORT} == {container_port(the_deployment("api"), "http")}
    assert not [n for n in upstream if n[0] in ("least_conn", "ip_hash", "hash", "random")], "round robin"
    services = compose()["services"]
    upload_mb = {parse_command(services[h]["command"]).max_upload_mb for h in hosts}
    assert nginx_values(http, "client_max_body_size") == [[f"{int(upload_mb.pop())}m"]]
    timeout_s = {parse_command(services[h]["command"]).timeout_s for h in hosts}.pop()
    server = nginx_children(http, "server")
    assert nginx_values(server, "listen")[0][0] == services["nginx"]["ports"][0].split(":")[1]
    assert seconds(nginx_values(server, "proxy_read_timeout")[0][0]) > timeout_s
    assert seconds(nginx_values(server, "proxy_send_timeout")[0][0]) > 0
    assert seconds(nginx_values(server, "proxy_connect_timeout")[0][0]) < timeout_s
    retry = nginx_values(server, "proxy_next_upstream")[0]
    assert {"error", "timeout", "http_503"} <= set(retry)
    assert 2 <= int(nginx_values(server, "proxy_next_upstream_tries")[0][0]) <= len(servers)
    # Upstream keep-alive: HTTP/1.1 with the Connection header cleared, closed by nginx before gunicorn does.
    assert nginx_values(server, "proxy_http_version") == [["1.1"]]
    assert ["Connection", ""] in nginx_values(server, "proxy_set_header")
    gunicorn = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))
    assert seconds(nginx_values(upstream, "keepalive_timeout")[0][0]) < gunicorn["keepalive"]
    locations = {tuple(n[1]): n[2] for n in server if n[0] == "location"}
    for location in [("=", "/healthz"), ("=", "/readyz"), ("=", "/metrics"), ("/v1/",)]:
        assert nginx_values(locations[location], "proxy_pass") == [["http://api"]], location
        inner = nginx_values(locations[location], "proxy_next_upstream")
        assert not inner or {"error", "timeout", "http_503"} <= set(inner[0]), location


def test_nginx_parser_catches_errors():
    with pytest.raises(AssertionError):
        nginx_parse("http { server { listen 80; }")
    with pytest.raises(AssertionError):
        nginx_parse("events { } }")
    assert nginx_parse("a 'b c' \"d;\";")[0] == ["a", ["b c", "d;"], None]


def write_nginx_test_conf(tmp_path: Path, text: str) -> Path:
    """nginx.conf text with its temp paths in tmp_path (no root needed), written to tmp_path/nginx.conf."""
    temp = "".join(f"    {kind}_temp_path {tmp_path}/{kind}_temp;\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = tmp_path / "nginx.conf"
    conf.write_text(text.replace("http {\n", "http {\n" + temp, 1))
    return conf


def test_nginx_t(tmp_path):
    """`nginx -t` on a copy: upstream names become loopback addresses (nginx resolves them while testing)
    and temp paths go into tmp_path, so it needs neither the compose network nor root."""
    nginx = shutil.which("nginx")
    if not nginx:
        pytest.skip("nginx is not installed on this machine: `nginx -t` not run (test_nginx_conf parses the file)")
    text = (DEPLOY / "nginx.conf").read_text()
    for i, host in enumerate(compose_api_services()):
        text, n = re.subn(rf"\bserver\s+{host}:", f"server 127.0.0.{i + 1}:", text)
        assert n == 1
    conf = write_nginx_test_conf(tmp_path, text)
    result = run([nginx, "-t", "-p", f"{tmp_path}/", "-e", "stderr", "-c", str(conf),
                  "-g", f"pid {tmp_path}/nginx.pid;"])
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# ---------------------------------------------------------------- gunicorn

def load_gunicorn_conf(monkeypatch, **env) -> dict:
    for key in ("PADDLE_LANE_BIND", "PADDLE_LANE_WORKERS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))


def test_gunicorn_conf(monkeypatch):
    from gunicorn.config import KNOWN_SETTINGS

    conf = load_gunicorn_conf(monkeypatch)
    assert conf["bind"] == "127.0.0.1:8000" and conf["workers"] == 2
    assert conf["worker_class"] == "uvicorn_worker.UvicornWorker"
    assert conf["preload_app"] is False
    assert conf["accesslog"] == "-"
    assert conf["timeout"] > 0 and conf["graceful_timeout"] > 30 and conf["keepalive"] > 0
    # Every name the file sets is a gunicorn setting (a misspelt one would be ignored silently).
    known = {s.name for s in KNOWN_SETTINGS}
    names = {k for k, v in conf.items() if not k.startswith("_") and not callable(v) and type(v).__name__ != "module"}
    assert names <= known, names - known

    conf = load_gunicorn_conf(monkeypatch, PADDLE_LANE_BIND="0.0.0.0:9000", PADDLE_LANE_WORKERS="3")
    assert conf["bind"] == "0.0.0.0:9000" and conf["workers"] == 3


STUB_APP = '''
def app_from_env():
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": scope["path"].encode()})
    return app
'''


def test_gunicorn_runs_with_the_conf(tmp_path):
    """gunicorn -c deploy/gunicorn.conf.py "MODULE:app_from_env()" serves, with a stub app in place of
    paddle_lane.serve.app, and stops on SIGTERM."""
    gunicorn = tool("gunicorn")
    pytest.importorskip("uvicorn_worker")
    (tmp_path / "stub_app.py").write_text(STUB_APP)
    port = free_port()
    env = {**os.environ, "PADDLE_LANE_BIND": f"127.0.0.1:{port}", "PADDLE_LANE_WORKERS": "1",
           "PYTHONPATH": str(tmp_path)}
    log = tmp_path / "gunicorn.log"
    with open(log, "w") as out:
        # Started with an empty signal mask: this process may hold SIGTERM (importing paddle_lane.cli.main does),
        # and a child inherits that.
        argv = [gunicorn, "-c", str(DEPLOY / "gunicorn.conf.py"), "stub_app:app_from_env()"]
        start = f"import os, signal; signal.pthread_sigmask(signal.SIG_SETMASK, []); os.execv({argv[0]!r}, {argv!r})"
        proc = subprocess.Popen([sys.executable, "-c", start], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, body = time.monotonic() + 20, None
        while body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    body = response.read()
            except OSError:
                assert proc.poll() is None, f"gunicorn exited:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"gunicorn did not answer:\n{log.read_text()}"
                time.sleep(0.2)
        assert body == b"/healthz"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log.read_text()
        text = log.read_text()
        assert "uvicorn_worker.UvicornWorker" in text or "Using worker: uvicorn" in text, text
        assert "GET /healthz" in text, "access log on stdout"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---------------------------------------------------------------- the README

def test_deploy_readme_names_every_file():
    readme = (DEPLOY / "README.md").read_text()
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.name != "README.md" and "__pycache__" not in p.parts]
    for path in files:
        assert path.name in readme, f"deploy/README.md does not mention {path.relative_to(DEPLOY)}"
    assert "tests/test_deploy_files.py" in readme


# ---------------------------------------------------------------- one set of numbers across the files

def mib(quantity: str) -> float:
    """A Kubernetes memory quantity (Mi, Gi, M, G) or a Redis one (mb, gb) in MiB."""
    m = re.fullmatch(r"(\d+)(Mi|Gi|M|G|mb|gb)", str(quantity))
    assert m, quantity
    factor = {"Mi": 1, "Gi": 1024, "mb": 1, "gb": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}[m.group(2)]
    return int(m.group(1)) * factor


def redis_option(argv: list[str], name: str) -> str:
    assert f"--{name}" in argv, f"redis-server without --{name}: {argv}"
    return argv[argv.index(f"--{name}") + 1]


def test_no_command_pins_a_backend():
    """A --format paddle export (PP-LiteSeg's) has no model.onnx: a hard-coded --backend onnxruntime crash-loops.
    Without --backend the default follows what the export holds."""
    for where, argv in all_commands():
        assert "--backend" not in argv, f"{where}: {argv}"
    assert "PADDLE_LANE_BACKEND" not in (DEPLOY / "Dockerfile.gpu").read_text().split("HEALTHCHECK")[0].split("ENV HOME")[-1]


def test_redis_memory_holds_the_queue():
    """Redis holds up to max_queue requests of up to max_upload_mb, and their answers (an overlay JPEG or PNG of
    a full frame: under 4 MiB): maxmemory covers that, refuses rather than evicts, and fits the container."""
    env = configmap_env(the_deployment("api"))
    need = int(env["PADDLE_LANE_MAX_QUEUE"]) * (float(env["PADDLE_LANE_MAX_UPLOAD_MB"]) + 4)
    (container,) = pod_spec(the_deployment("redis"))["containers"]
    k8s_args = container["args"]
    compose_args = compose()["services"]["redis"]["command"]
    services = compose()["services"]
    compose_api = parse_command(services[compose_api_services()[0]]["command"])
    compose_need = compose_api.max_queue * (compose_api.max_upload_mb + 4)
    for argv, needed in ((k8s_args, need), (compose_args, compose_need)):
        assert redis_option(argv, "maxmemory-policy") == "noeviction"
        assert mib(redis_option(argv, "maxmemory")) >= needed, (argv, needed)
    assert mib(container["resources"]["limits"]["memory"]) >= 1.25 * mib(redis_option(k8s_args, "maxmemory"))


def test_tmp_holds_the_spooled_uploads():
    """Uploads over 1 MiB are spooled to /tmp while read: workers x max_queue x max_upload_mb at most."""
    api = the_deployment("api")
    env = configmap_env(api)
    need = int(env["PADDLE_LANE_WORKERS"]) * int(env["PADDLE_LANE_MAX_QUEUE"]) * float(env["PADDLE_LANE_MAX_UPLOAD_MB"])
    for deployment in (api, the_deployment("worker")):
        spec = pod_spec(deployment)
        (container,) = spec["containers"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for mount in container["volumeMounts"]:
            if "emptyDir" in volumes[mount["name"]]:
                assert "sizeLimit" in volumes[mount["name"]]["emptyDir"], f"{mount['mountPath']} has no sizeLimit"
    (tmp,) = [m for m in pod_spec(api)["containers"][0]["volumeMounts"] if m["mountPath"] == "/tmp"]
    limit = {v["name"]: v for v in pod_spec(api)["volumes"]}[tmp["name"]]["emptyDir"]["sizeLimit"]
    assert mib(limit) >= need, (limit, need)


def probe_command(probe: dict) -> list[str]:
    argv = probe["exec"]["command"]
    assert argv[:2] == ["python3", "-c"], argv
    return [sys.executable, "-c", argv[2]]


def test_worker_probes_read_the_heartbeat(tmp_path):
    """The worker Deployment's probes pass on a fresh heartbeat file and fail on a stale or missing one."""
    worker = the_deployment("worker")
    (container,) = pod_spec(worker)["containers"]
    env = configmap_env(worker)
    from paddle_lane.serve.queue import HEARTBEAT_ENV
    path = env[HEARTBEAT_ENV]
    assert path.startswith("/tmp/") and "/tmp" in [m["mountPath"] for m in container["volumeMounts"]]
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 120
    beat = tmp_path / "heartbeat"
    for kind in ("startupProbe", "livenessProbe"):
        argv = probe_command(container[kind])
        probe_env = {**os.environ, HEARTBEAT_ENV: str(beat)}
        assert subprocess.run(argv, env=probe_env, capture_output=True, timeout=30).returncode != 0, "missing file"
        beat.touch()
        assert subprocess.run(argv, env=probe_env, capture_output=True, timeout=30).returncode == 0, "fresh"
        os.utime(beat, (time.time() - 120, time.time() - 120))
        assert subprocess.run(argv, env=probe_env, capture_output=True, timeout=30).returncode != 0, "stale"
        beat.unlink()


def test_keepalive_has_one_source():
    """nginx's upstream keepalive_timeout is below gunicorn's keepalive, which `paddle-lane serve` (the command
    compose and Kubernetes run) and gunicorn.conf.py both take from KEEPALIVE_S."""
    from paddle_lane.serve.server import gunicorn_options
    from paddle_lane.serve.settings import KEEPALIVE_S, ServeSettings
    served = gunicorn_options("127.0.0.1", 8000, 1, ServeSettings(model="x"))["keepalive"]
    conf = runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))["keepalive"]
    tree = nginx_parse((DEPLOY / "nginx.conf").read_text())
    upstream = nginx_children(nginx_children(tree, "http"), "upstream", "api")
    nginx_keepalive = seconds(nginx_values(upstream, "keepalive_timeout")[0][0])
    assert served == conf == KEEPALIVE_S > nginx_keepalive, (served, conf, nginx_keepalive)


def test_gunicorn_control_socket_is_off():
    from paddle_lane.serve.server import gunicorn_options
    from paddle_lane.serve.settings import ServeSettings
    from gunicorn.config import KNOWN_SETTINGS
    assert "control_socket_disable" in {s.name for s in KNOWN_SETTINGS}
    assert gunicorn_options("127.0.0.1", 8000, 1, ServeSettings(model="x"))["control_socket_disable"] is True
    assert runpy.run_path(str(DEPLOY / "gunicorn.conf.py"))["control_socket_disable"] is True


NGINX_OWN_ERRORS = (400, 404, 408, 413, 500, 502, 503, 504)


def test_nginx_own_errors_are_json():
    tree = nginx_parse((DEPLOY / "nginx.conf").read_text())
    server = nginx_children(nginx_children(tree, "http"), "server")
    pages = {int(args[0]): args[1] for args in nginx_values(server, "error_page")}
    assert set(NGINX_OWN_ERRORS) <= set(pages)
    named = {tuple(n[1]): n[2] for n in server if n[0] == "location"}
    upload_mb = int(parse_command(compose()["services"][compose_api_services()[0]]["command"]).max_upload_mb)
    for code in NGINX_OWN_ERRORS:
        body = named[(pages[code],)]
        assert nginx_values(body, "default_type") == [["application/json"]], code
        (ret,) = nginx_values(body, "return")
        assert int(ret[0]) == code
        message = json.loads(ret[1].replace("\\n", ""))["error"]
        assert message
        if code == 413:
            assert f"{upload_mb} MB" in message


def test_nginx_answers_its_errors_in_json(tmp_path):
    """The real nginx with this nginx.conf, its upstreams on loopback ports nothing listens on: 502, 404 and
    413 come back as JSON {"error": ...}."""
    nginx = shutil.which("nginx")
    if not nginx:
        pytest.skip("nginx is not installed on this machine")
    text = (DEPLOY / "nginx.conf").read_text()
    for i, host in enumerate(compose_api_services()):
        text, n = re.subn(rf"\bserver\s+{host}:\d+", f"server 127.0.0.1:{free_port()}", text)
        assert n == 1
    port = free_port()
    text = re.sub(r"listen 80;", f"listen 127.0.0.1:{port};", text)
    conf = write_nginx_test_conf(tmp_path, text.replace("access_log /dev/stdout json;", "access_log off;"))
    proc = subprocess.Popen([nginx, "-p", f"{tmp_path}/", "-e", "stderr", "-c", str(conf),
                             "-g", f"pid {tmp_path}/nginx.pid; daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        import httpx
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
                time.sleep(0.2)
        upload_mb = int(parse_command(compose()["services"][compose_api_services()[0]]["command"]).max_upload_mb)
        answers = {502: httpx.get(f"{url}/readyz", timeout=30),
                   404: httpx.get(f"{url}/nowhere", timeout=30),
                   413: httpx.post(f"{url}/v1/segment", content=b"\0" * ((upload_mb + 1) * 2**20),
                                   headers={"content-type": "image/jpeg"}, timeout=30)}
        for code, r in answers.items():
            assert r.status_code == code, (code, r.status_code, r.text[:200])
            assert r.headers["content-type"] == "application/json", (code, r.headers)
            assert r.json()["error"], (code, r.text)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
