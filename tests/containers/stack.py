"""The compose stack run as containers, from the compose files themselves.

Compose v2 is not installable here (and Compose v1 does not read ``!reset``), so this
does what ``docker compose up`` does through the Docker Engine API: for each service,
in ``depends_on`` order, a container with the compose file's image, command,
environment, named volumes, user, healthcheck, restart policy, stop signal and grace
period. One thing differs, the network: every container is on the host network, so the
services share one loopback and each listening port (6379, 8000, 5555) moves to a free
one; the port options in the commands, healthchecks and URLs follow it.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from .engine import Engine

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
REDIS_PORT = 6379


def seconds(value: str | int | float) -> float:
    """A compose duration (``1m30s``, ``6m``, ``500ms``) in seconds."""
    if isinstance(value, int | float):
        return float(value)
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a compose duration: {value!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def order(services: dict[str, Any]) -> list[str]:
    """Service names with each one after the services it depends on."""
    done: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in path:
            raise ValueError(f"depends_on cycle: {' -> '.join(path + (name,))}")
        for dep in services[name].get("depends_on", {}):
            visit(dep, path + (name,))
        done.append(name)

    for name in services:
        visit(name, ())
    return done


def remap_ports(value: Any, ports: dict[int, int]) -> Any:
    """``value`` with each container port of ``ports`` replaced where it is a port: after
    ``:``, ``=`` or ``--port ``."""
    if isinstance(value, str):
        for old, new in ports.items():
            value = re.sub(rf"(?<=[:=])({old})\b|(?<=--port )({old})\b", str(new), value)
        return value
    if isinstance(value, list):
        # An exec-form command: ["--port", "8000"] as two items.
        return [
            str(ports[int(v)])
            if i
            and value[i - 1] in ("--port", "-p")
            and isinstance(v, str)
            and v.isdigit()
            and int(v) in ports
            else remap_ports(v, ports)
            for i, v in enumerate(value)
        ]
    if isinstance(value, dict):
        return {k: remap_ports(v, ports) for k, v in value.items()}
    return value


def _redis_on(port: int, spec: dict[str, Any]) -> dict[str, Any]:
    """Redis listens on its default port without an option: give it one, and its CLI."""
    spec = dict(spec)
    spec["command"] = [*spec.get("command", ["redis-server"]), "--port", str(port)]
    if "healthcheck" in spec:
        hc = dict(spec["healthcheck"])
        hc["test"] = [t.replace("redis-cli", f"redis-cli -p {port}") for t in hc["test"]]
        spec["healthcheck"] = hc
    return spec


def _healthcheck(hc: dict[str, Any]) -> dict[str, Any]:
    test = hc["test"]
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    out: dict[str, Any] = {"Test": test}
    for key, api in (("interval", "Interval"), ("timeout", "Timeout")):
        if key in hc:
            out[api] = int(seconds(hc[key]) * 1e9)
    if "start_period" in hc:
        out["StartPeriod"] = int(seconds(hc["start_period"]) * 1e9)
    if "retries" in hc:
        out["Retries"] = int(hc["retries"])
    return out


def _environment(env: Any) -> list[str]:
    if isinstance(env, list):
        return [str(e) for e in env]
    return [f"{k}={'' if v is None else v}" for k, v in (env or {}).items()]


@dataclass
class Container:
    service: str
    name: str
    spec: dict[str, Any]


@dataclass
class Stack:
    """The services of a merged compose project, as containers named ``<project>-<svc>-1``."""

    engine: Engine
    project: dict[str, Any]
    name: str
    ports: dict[int, int]
    services: list[str]
    containers: dict[str, Container] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._api = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.engine.socket)),
            base_url="http://docker",
            timeout=60,
        )

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = self._api.request(method, path, **kw)
        if r.status_code >= 300:
            raise RuntimeError(f"docker API {method} {path}: {r.status_code} {r.text[:2000]}")
        return r.json() if r.content else None

    def create_spec(self, service: str) -> dict[str, Any]:
        """The Engine API's create body for ``service``, from its compose definition."""
        spec = remap_ports(self.project["services"][service], self.ports)
        if spec.get("image", "").startswith("redis:"):
            spec = _redis_on(self.ports[REDIS_PORT], spec)
        mounts = []
        for v in spec.get("volumes", []):
            source, target = v.split(":")[:2]
            if source in self.project.get("volumes", {}):
                source = f"{self.name}_{source}"
                if source not in self.volumes:
                    self.volumes.append(source)
                mounts.append({"Type": "volume", "Source": source, "Target": target})
            else:
                mounts.append({"Type": "bind", "Source": source, "Target": target})
        command = spec.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        body: dict[str, Any] = {
            "Image": spec["image"],
            "Env": _environment(spec.get("environment")),
            "Labels": {
                "com.docker.compose.project": self.name,
                "com.docker.compose.service": service,
            },
            "HostConfig": {
                "NetworkMode": "host",
                # Compose's service names resolve as on its network.
                "ExtraHosts": [f"{s}:127.0.0.1" for s in self.project["services"]],
                "RestartPolicy": {"Name": spec.get("restart", "no")},
                "Mounts": mounts,
            },
        }
        if command:
            body["Cmd"] = command
        if "user" in spec:
            body["User"] = str(spec["user"])
        if "healthcheck" in spec:
            body["Healthcheck"] = _healthcheck(spec["healthcheck"])
        if "stop_signal" in spec:
            body["StopSignal"] = spec["stop_signal"]
        if "stop_grace_period" in spec:
            body["StopTimeout"] = int(seconds(spec["stop_grace_period"]))
        if "shm_size" in spec:
            body["HostConfig"]["ShmSize"] = spec["shm_size"]
        return body

    def up(self, healthy_timeout: float = 180) -> None:
        """Create and start every service, waiting for ``service_healthy`` dependencies."""
        for service in order({s: self.project["services"][s] for s in self.services}):
            for dep, cond in self.project["services"][service].get("depends_on", {}).items():
                if (cond or {}).get("condition") == "service_healthy":
                    self.wait_healthy([dep], healthy_timeout)
            name = f"{self.name}-{service}-1"
            body = self.create_spec(service)
            for v in self.volumes:
                if self.engine.docker("volume", "inspect", v, check=False).returncode:
                    self._call("POST", "/volumes/create", json={"Name": v})
            self._call("POST", "/containers/create", params={"name": name}, json=body)
            self.containers[service] = Container(service, name, body)
            self._call("POST", f"/containers/{name}/start")

    def inspect(self, service: str) -> dict[str, Any]:
        return self._call("GET", f"/containers/{self.containers[service].name}/json")

    def health(self, service: str) -> str:
        state = self.inspect(service)["State"]
        return state.get("Health", {}).get("Status", state["Status"])

    def wait_healthy(self, services: list[str], timeout: float) -> dict[str, float]:
        """Seconds until each of ``services`` reported ``healthy``."""
        t0 = time.monotonic()
        took: dict[str, float] = {}
        while len(took) < len(services):
            for s in services:
                if s not in took and self.health(s) == "healthy":
                    took[s] = time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                states = {s: self.health(s) for s in services}
                logs = {s: self.logs(s)[-1500:] for s in services if s not in took}
                raise AssertionError(f"not healthy in {timeout} s: {states}\n{logs}")
            time.sleep(0.5)
        return took

    def logs(self, service: str) -> str:
        r = self.engine.docker("logs", self.containers[service].name, check=False, timeout=60)
        return r.stdout + r.stderr

    def pid(self, service: str) -> int:
        return int(self.inspect(service)["State"]["Pid"])

    def exec(self, service: str, *cmd: str) -> str:
        name = self.containers[service].name
        return self.engine.docker("exec", name, *cmd, timeout=120).stdout

    def down(self) -> None:
        self.engine.remove("container", [c.name for c in self.containers.values()])
        self.engine.remove("volume", self.volumes)
        self._api.close()
