"""Render deploy/k8s with the real tools and turn a rendered container into what a node runs.

A container's environment and argv are resolved the way Kubernetes does it: image ENV,
then ``envFrom``, then ``env`` (ConfigMaps from the rendered output, Secrets and pod fields
from the caller), with ``$(VAR)`` references expanded as the kubelet expands them.
"""

import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
VENV_BIN = Path(sys.executable).parent


def tool(name) -> str:
    """Return the path of a required tool (the venv's first); fail the test if it is missing."""
    for candidate in (VENV_BIN / name, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(f"{name} is not installed; `pip install -r requirements-dev.txt` brings it")


def kustomize_argv() -> list:
    """Return the argv prefix that renders a kustomization: kustomize if present, else kubectl."""
    if shutil.which("kustomize"):
        return [shutil.which("kustomize"), "build"]
    if shutil.which("kubectl"):
        return [shutil.which("kubectl"), "kustomize"]
    pytest.fail("neither kustomize nor kubectl is installed; deploy/k8s cannot be rendered")


def kustomizations(kind="Kustomization") -> list:
    """Return every directory under deploy/k8s holding a kustomization of this kind."""
    found = []
    for path in sorted(K8S.rglob("kustomization.yaml")):
        if yaml.safe_load(path.read_text()).get("kind", "Kustomization") == kind:
            found.append(path.parent.relative_to(K8S).as_posix())
    return found


@functools.lru_cache(maxsize=None)
def render_text(directory) -> str:
    """Return the rendered YAML of a kustomization directory (absolute, or relative to deploy/k8s)."""
    result = subprocess.run(kustomize_argv() + [str(K8S / directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"rendering {directory} failed:\n{result.stderr}"
    return result.stdout


def render(directory) -> list:
    """Return the rendered objects of a kustomization directory."""
    return [doc for doc in yaml.safe_load_all(render_text(directory)) if doc]


def only(objects, kind, name=None) -> dict:
    """Return the one object of a kind (and name) in a rendered list."""
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def job_spec(obj) -> dict:
    """Return the Job spec of a Job or a CronJob."""
    return obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]


def pod_spec(obj) -> dict:
    """Return the pod spec of a Deployment, Job or CronJob."""
    spec = job_spec(obj) if obj["kind"] in ("Job", "CronJob") else obj["spec"]
    return spec["template"]["spec"]


def workloads(objects) -> list:
    return [o for o in objects if o["kind"] in ("Deployment", "Job", "CronJob")]


def expand(text, env) -> str:
    """Expand ``$(NAME)`` as the kubelet does: unknown names stay as written, ``$$`` is ``$``."""

    def replace(match):
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, text)


def container_env(container, objects, secrets, pod_fields=None, image_env=None) -> dict:
    """Return a container's environment: image ENV, then envFrom, then env, references resolved."""
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    env = dict(image_env or {})
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]])
        else:
            env.update(secrets[source["secretRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
            continue
        ref = var["valueFrom"]
        if "configMapKeyRef" in ref:
            env[var["name"]] = configmaps[ref["configMapKeyRef"]["name"]][ref["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in ref:
            secret, key = secrets[ref["secretKeyRef"]["name"]], ref["secretKeyRef"]["key"]
            if key in secret or not ref["secretKeyRef"].get("optional"):
                env[var["name"]] = secret[key]
        else:
            env[var["name"]] = (pod_fields or {})[ref["fieldRef"]["fieldPath"]]
    return env


def container_argv(container, env) -> list:
    """Return the argv a container runs: its command and args with ``$(VAR)`` expanded."""
    assert container.get("command"), f"container {container['name']} relies on the image's CMD"
    return [expand(part, env) for part in container["command"] + container.get("args", [])]


def dockerfile_instructions() -> list:
    """Return the Dockerfile's (INSTRUCTION, arguments) pairs, continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def final_stage() -> list:
    """Return the instructions of the Dockerfile's last stage (the image that runs)."""
    pairs = dockerfile_instructions()
    start = max(i for i, (instruction, _) in enumerate(pairs) if instruction == "FROM")
    return pairs[start:]


def image_env() -> dict:
    """Return the ENV the image sets, except PATH, which names the image's own venv."""
    env = {}
    for instruction, arguments in final_stage():
        if instruction == "ENV":
            for token in shlex.split(arguments):
                name, _, value = token.partition("=")
                env[name] = value
    env.pop("PATH", None)
    return env


def dockerignore_excludes(path) -> bool:
    """Tell whether .dockerignore keeps a repo-relative path out of the build context."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            pattern = line.lstrip("!").strip("/")
            regex = "".join(
                ".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
                for part in re.split(r"(\*\*|\*|\?)", pattern)
            )
            rules.append((re.compile(regex.replace(".*/", "(.*/)?") + r"\Z"), negate))
    parts = Path(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for regex, negate in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def run_measured(argv, env, cwd, timeout=120):
    """Run argv; return (exit code, stdout, stderr, peak RSS in bytes) of that process alone."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    output = {}
    readers = [
        threading.Thread(target=lambda name=name, stream=stream: output.__setitem__(name, stream.read()))
        for name, stream in (("out", proc.stdout), ("err", proc.stderr))
    ]
    for reader in readers:
        reader.start()
    timer = threading.Timer(timeout, proc.send_signal, [signal.SIGKILL])
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    return proc.returncode, output["out"], output["err"], usage.ru_maxrss * 1024
