"""deploy/k8s: each overlay renders (``kubectl kustomize``), every object validates against
the Kubernetes schemas offline (``kubernetes-validate``), and the workloads run what
docker-compose.yml runs: the same images, commands, environment, probes, volumes and grace
periods, read from the compose files, so that the two cannot drift."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redis
import yaml

from app.api.metrics import StoreCollector
from app.core.settings import Settings
from app.core.store import JobStore

from .compose import ROOT, load

K8S = ROOT / "deploy" / "k8s"
EXAMPLE = K8S / "base" / "secrets.env.example"
# The compose files of each overlay.
OVERLAYS = {"gpu": ("docker-compose.yml",), "cpu": ("docker-compose.yml", "docker/compose.cpu.yml")}
SERVICES = ("redis", "api", "worker-gen", "worker-train")
# The schemas kubectl's own version speaks, and the newest the package has.
SCHEMA_VERSIONS = ("1.32.0", kubernetes_validate.latest_version())
# Custom resources: not in the Kubernetes schemas (checked by test_scaledobject_structure).
NO_SCHEMA = {"keda.sh/v1alpha1": {"ScaledObject"}}
WORKLOADS = {"Deployment", "StatefulSet"}


def _kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is not installed: CI must render the Kubernetes manifests")
        pytest.skip("kubectl is not installed: the Kubernetes manifests are not rendered")
    return exe


def _secret_keys() -> list[str]:
    return [
        line.split("=", 1)[0]
        for line in EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def _sentinel(key: str) -> str:
    return f"<secret:{key}>"


def _kustomize(tree: Path, overlay: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_kubectl(), "kustomize", str(tree / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _copy_tree(dest: Path) -> Path:
    """deploy/k8s without a secrets.env of the checkout's own."""
    return Path(shutil.copytree(K8S, dest, ignore=shutil.ignore_patterns("secrets.env")))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Each overlay's objects, rendered as a user would: secrets.env filled in from the
    example (each secret's value names it, so the tests can follow it)."""
    tree = _copy_tree(tmp_path_factory.mktemp("k8s") / "k8s")
    (tree / "base" / "secrets.env").write_text(
        "".join(f"{k}={_sentinel(k)}\n" for k in _secret_keys())
    )
    out = {}
    for overlay in OVERLAYS:
        res = _kustomize(tree, overlay)
        assert res.returncode == 0, res.stderr
        out[overlay] = [o for o in yaml.safe_load_all(res.stdout) if o]
    return out


def _one(objects: list[dict], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def _named(objects: list[dict], kind: str, prefix: str) -> dict[str, Any]:
    """A generated ConfigMap or Secret: its name is ``prefix-<hash of the contents>``."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(prefix)]
    assert len(found) == 1, (kind, prefix)
    return found[0]


def _workload(objects: list[dict], name: str) -> dict[str, Any]:
    (w,) = [o for o in objects if o["kind"] in WORKLOADS and o["metadata"]["name"] == name]
    return w


def _seconds(duration: str | None) -> float:
    """A compose duration ("1m30s", "20s", "6m") in seconds; 0 for none."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration or "")
    assert "".join(n + u for n, u in parts) == (duration or ""), duration
    return sum(float(n) * units[u] for n, u in parts)


def test_overlays_render_the_whole_deployment(rendered: dict) -> None:
    for overlay, objects in rendered.items():
        kinds = sorted((o["kind"], o["metadata"]["name"].split("-")[0]) for o in objects)
        assert kinds == sorted(
            [("Namespace", "ddpm"), ("ConfigMap", "ddpm"), ("Secret", "ddpm"),
             ("PersistentVolumeClaim", "ddpm"), ("Service", "api"), ("Service", "redis"),
             ("StatefulSet", "redis"), ("Deployment", "api"), ("Deployment", "worker"),
             ("Deployment", "worker"), ("PodDisruptionBudget", "api"),
             ("PodDisruptionBudget", "worker"), ("NetworkPolicy", "default"),
             ("NetworkPolicy", "redis"), ("NetworkPolicy", "api"), ("ScaledObject", "worker")]
        ), overlay  # fmt: skip
        for o in objects:
            if o["kind"] != "Namespace":
                assert o["metadata"]["namespace"] == "ddpm", (overlay, o["kind"])


def test_rendering_refuses_without_secrets_and_none_is_committed(tmp_path: Path) -> None:
    res = _kustomize(_copy_tree(tmp_path / "k8s"), "gpu")
    assert res.returncode != 0 and "secrets.env" in res.stderr
    # The example holds the keys only; the filled-in file is ignored by git.
    keys = _secret_keys()
    assert keys == ["DDPM_REDIS_PASSWORD", "DDPM_ADMIN_TOKEN", "DDPM_API_KEYS"]
    assert all(line.endswith("=") for line in EXAMPLE.read_text().splitlines() if "=" in line)
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/k8s/base/secrets.env"], cwd=ROOT, timeout=30
    )
    assert ignored.returncode == 0


def test_external_redis_component_removes_only_the_redis_objects(
    rendered: dict, tmp_path: Path
) -> None:
    tree = _copy_tree(tmp_path / "k8s")
    (tree / "base" / "secrets.env").write_text(EXAMPLE.read_text())
    with (tree / "overlays" / "gpu" / "kustomization.yaml").open("a") as f:
        f.write("components:\n  - ../../components/external-redis\n")
    res = _kustomize(tree, "gpu")
    assert res.returncode == 0, res.stderr
    got = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(res.stdout) if o}
    full = {(o["kind"], o["metadata"]["name"]) for o in rendered["gpu"]}
    redis_objects = {("StatefulSet", "redis"), ("Service", "redis"), ("NetworkPolicy", "redis")}
    # The Secret's hashed name differs (other contents): compare the rest.
    assert {x for x in got if x[0] != "Secret"} == {
        x for x in full - redis_objects if x[0] != "Secret"
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_objects_validate_against_the_kubernetes_schemas(
    rendered: dict, overlay: str, version: str
) -> None:
    skipped = []
    for o in rendered[overlay]:
        if o["kind"] in NO_SCHEMA.get(o["apiVersion"], ()):
            skipped.append(o["kind"])
            continue
        kubernetes_validate.validate(o, version, strict=True)  # raises on any error
    assert skipped == ["ScaledObject"]  # no other object goes without a schema


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaledobject_structure(rendered: dict, overlay: str, redis_url: str) -> None:
    """KEDA's ScaledObject, which the Kubernetes schemas lack: the HPA behaviour it hands on
    validates as the HPA's own, it targets worker-gen, and its query reads a gauge that
    the API's collector exports."""
    objects = rendered[overlay]
    so = _one(objects, "ScaledObject", "worker-gen")
    spec = so["spec"]
    assert set(spec) <= {
        "scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval",
        "cooldownPeriod", "advanced", "triggers",
    }  # fmt: skip
    assert spec["scaleTargetRef"] == {"name": "worker-gen"}
    _one(objects, "Deployment", "worker-gen")
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "worker-gen"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker-gen"},
            "minReplicas": max(1, spec["minReplicaCount"]),
            "maxReplicas": spec["maxReplicaCount"],
            "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        },
    }
    kubernetes_validate.validate(hpa, SCHEMA_VERSIONS[0], strict=True)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert set(meta) == {"serverAddress", "query", "threshold", "activationThreshold"}
    assert all(isinstance(v, str) for v in meta.values())  # KEDA's metadata: strings only
    assert float(meta["threshold"]) > 0 and float(meta["activationThreshold"]) >= 0
    # max(): every API replica reports the same store, so sum() would count it n times.
    m = re.fullmatch(r"max\((\w+)\{queue=\"(\w+)\", namespace=\"(\w+)\"\}\)", meta["query"])
    assert m, meta["query"]
    metric, queue, namespace = m.groups()
    assert namespace == so["metadata"]["namespace"]
    store = JobStore(redis.Redis.from_url(redis_url, decode_responses=True), f"k8s-{uuid.uuid4()}:")
    exported = {
        (f.name, s.labels.get("queue")) for f in StoreCollector(store).collect() for s in f.samples
    }
    assert (metric, queue) in exported


def _env_of(container: dict, objects: list[dict]) -> dict[str, str]:
    """A container's environment as (name, value), with a secret's value as its sentinel."""
    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref:
            data = _one(objects, "ConfigMap", ref["configMapRef"]["name"])["data"]
            env |= data
        else:
            secret = _one(objects, "Secret", ref["secretRef"]["name"])
            env |= {k: _sentinel(k) for k in secret["data"]}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == _named(objects, "Secret", "ddpm-secrets-")["metadata"]["name"]
            env[e["name"]] = _sentinel(ref["key"])
    return env


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' ``$(VAR)`` references in args, filled in from the container's env."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def _probe_command(test: list[str]) -> list[str]:
    """A compose healthcheck test as an exec probe: CMD runs as is, CMD-SHELL in sh -c."""
    if test[0] == "CMD":
        return test[1:]
    assert test[0] == "CMD-SHELL" and len(test) == 2
    return ["sh", "-c", test[1]]


def _dockerfile_user(name: str) -> int:
    (user,) = re.findall(r"^USER (\d+)", (ROOT / "docker" / name).read_text(), re.M)
    return int(user)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_run_what_compose_runs(rendered: dict, overlay: str) -> None:
    """Images, commands, environment (names, and values but for the secrets), probes,
    volumes, grace periods, users and GPUs of each workload equal its compose service's."""
    objects = rendered[overlay]
    # Compose with .env's secrets set to the same sentinels as secrets.env: every other
    # value is the compose file's default.
    project = load(*OVERLAYS[overlay], env={k: _sentinel(k) for k in _secret_keys()})
    config = _named(objects, "ConfigMap", "ddpm-config-")["data"]
    for name in SERVICES:
        svc = project["services"][name]
        w = _workload(objects, name)
        pod = w["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["image"] == svc["image"], name
        assert "command" not in c, name  # compose's command replaces CMD, as args do
        env = _env_of(c, objects)
        assert env == {k: str(v) for k, v in svc["environment"].items()}, name
        assert _expand(c["args"], env) == svc["command"], name

        hc = svc["healthcheck"]
        exec_cmd = _probe_command(hc["test"])
        interval, timeout = _seconds(hc["interval"]), _seconds(hc["timeout"])
        grace_checks = math.ceil(_seconds(hc.get("start_period")) / interval)
        probes = {k: c[k] for k in ("startupProbe", "livenessProbe", "readinessProbe") if k in c}
        assert {"startupProbe", "livenessProbe"} <= set(probes), name
        for kind, p in probes.items():
            assert p["exec"]["command"] == exec_cmd, (name, kind)
            assert (p["periodSeconds"], p["timeoutSeconds"]) == (interval, timeout), (name, kind)
            want = hc["retries"] + (grace_checks if kind == "startupProbe" else 0)
            assert p["failureThreshold"] == want, (name, kind)
        # A Service routes to it: then it is ready only while healthy.
        routed = any(
            o["kind"] == "Service" and o["spec"]["selector"] == w["spec"]["selector"]["matchLabels"]
            for o in objects
        )
        assert routed == ("readinessProbe" in probes), name

        # Volumes: compose's named volumes, at the same paths.
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])
        }
        templates = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for spec in svc["volumes"]:
            volume, path = spec.split(":")
            assert path in mounts, (name, spec)
            if volume == "data":  # shared by the API and both workers
                pvc = _one(objects, "PersistentVolumeClaim", claims[mounts[path]])
                assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
            else:
                assert mounts[path] == volume and volume in templates, (name, spec)

        # The kubelet waits as long as compose does: longer than the warm shutdown.
        if "stop_grace_period" in svc:
            grace = pod["terminationGracePeriodSeconds"]
            assert grace == _seconds(svc["stop_grace_period"]), name
            soft = float(
                config.get("DDPM_SOFT_SHUTDOWN_TIMEOUT")
                or Settings.model_fields["soft_shutdown_timeout"].default
            )
            assert grace > soft, name

        if name != "redis":
            dockerfile = "Dockerfile.api" if name == "api" else "Dockerfile.worker"
            assert pod["securityContext"]["runAsUser"] == _dockerfile_user(dockerfile), name
        wants_gpu = bool(svc.get("deploy", {}).get("resources", {}).get("reservations"))
        limits = c.get("resources", {}).get("limits", {})
        assert limits.get("nvidia.com/gpu") == (1 if wants_gpu else None), name
        assert c.get("resources", {}).get("requests", {}).get("nvidia.com/gpu") == limits.get(
            "nvidia.com/gpu"
        ), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_what_the_services_need(rendered: dict, overlay: str) -> None:
    """Ingress is denied by default; Redis admits the deployment's own pods (all of which
    need it), the API its port."""
    objects = rendered[overlay]
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}

    def labels(name: str) -> dict[str, str]:
        return _workload(objects, name)["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict, name: str) -> bool:
        return selector.get("matchLabels", {}).items() <= labels(name).items()

    (rule,) = policies["redis"]["ingress"]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    (source,) = rule["from"]
    assert set(source) == {"podSelector"}  # this namespace only
    for name in ("api", "worker-gen", "worker-train"):
        assert selects(source["podSelector"], name), name
    assert selects(policies["redis"]["podSelector"], "redis")

    (rule,) = policies["api"]["ingress"]
    (port,) = _workload(objects, "api")["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert rule["ports"] == [{"port": port["containerPort"], "protocol": "TCP"}]
    assert selects(policies["api"]["podSelector"], "api")
