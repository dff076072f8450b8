"""What the container suite asks the engine for is what the compose files say (no engine
needed): the translation in stack.py, checked service by service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .engine import Engine
from .stack import REDIS_PORT, Stack, order, remap_ports, seconds

PORTS = {REDIS_PORT: 16379, 8000: 18000, 5555: 15555}


@pytest.fixture
def stack(project: dict[str, Any], tmp_path: Path) -> Iterator[Stack]:
    engine = Engine(tmp_path)  # never started: only its socket path is used
    st = Stack(engine, project, name="spec", ports=PORTS, services=list(project["services"]))
    yield st
    engine.stop()


def test_durations_dependencies_and_ports() -> None:
    assert seconds("6m") == 360 and seconds("1m30s") == 90 and seconds("500ms") == 0.5
    with pytest.raises(ValueError):
        seconds("6 minutes")
    services = {"api": {"depends_on": {"redis": {}}}, "redis": {}, "w": {"depends_on": ["api"]}}
    assert order(services) == ["redis", "api", "w"]
    with pytest.raises(ValueError, match="cycle"):
        order({"a": {"depends_on": ["b"]}, "b": {"depends_on": ["a"]}})
    assert remap_ports(["ddpm", "api", "--port", "8000"], PORTS)[-1] == "18000"
    assert remap_ports("redis://redis:6379/0", PORTS) == "redis://redis:16379/0"
    assert remap_ports("--port=5555 --max=8000x", PORTS) == "--port=15555 --max=8000x"


def test_each_container_is_its_compose_service(stack: Stack, project: dict[str, Any]) -> None:
    for name, svc in project["services"].items():
        body = stack.create_spec(name)
        assert body["Image"] == svc["image"]
        assert body["HostConfig"]["NetworkMode"] == "host"
        assert body["HostConfig"]["RestartPolicy"]["Name"] == svc["restart"]
        env = dict(e.split("=", 1) for e in body["Env"])
        assert set(env) == set(svc.get("environment", {})), name
        hc = svc["healthcheck"]
        assert body["Healthcheck"]["Retries"] == hc["retries"]
        assert body["Healthcheck"]["Interval"] == seconds(hc["interval"]) * 1e9
        targets = {m["Target"] for m in body["HostConfig"]["Mounts"]}
        assert targets == {v.split(":")[1] for v in svc.get("volumes", [])}
        if "stop_grace_period" in svc:
            assert body["StopTimeout"] == seconds(svc["stop_grace_period"])
            assert body["StopSignal"] == svc["stop_signal"]
        if name == "redis":
            assert body["Cmd"] == [*svc["command"], "--port", "16379"]
            assert "redis-cli -p 16379" in body["Healthcheck"]["Test"][1]
        else:
            # The only change to a command: a listening port moved to a free one.
            assert len(body["Cmd"]) == len(svc["command"])
            assert env["DDPM_REDIS_URL"] == "redis://redis:16379/0"
    assert stack.volumes == [f"spec_{v}" for v in ("redis-data", "data")]
