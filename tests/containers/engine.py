"""A Docker engine of the test's own: its own socket, data root, exec root and pid file.

The data root lives in a cache directory (``DDPM_CONTAINER_CACHE``, default
``~/.cache/ddpm-service/containers``) so that base images and build layers survive
between runs on one machine; everything else (socket, exec root, containerd state) is
in a short temporary directory and goes with the engine. Networking is host only: the
engine is told to make no bridge and to leave iptables and forwarding alone.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

DAEMON_CONFIG = {"bridge": "none", "iptables": False, "ip-forward": False, "ip-masq": False}


class EngineUnavailable(RuntimeError):
    """No Docker engine can run here (the reason says why)."""


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "ddpm-service" / "containers"
    return Path(os.environ.get("DDPM_CONTAINER_CACHE", default))


class Engine:
    """A dockerd started by this process and the ``docker`` client pointed at it."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.run_dir = Path(tempfile.mkdtemp(prefix="ddpm-dk-", dir="/tmp"))
        self.socket = self.run_dir / "docker.sock"
        self.host = f"unix://{self.socket}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None
        self.log_path = self.run_dir / "dockerd.log"

    def start(self, timeout: float = 60) -> None:
        for exe in ("dockerd", "docker"):
            if shutil.which(exe) is None:
                raise EngineUnavailable(f"{exe} not found (apt-get install docker.io)")
        if os.geteuid() != 0:
            raise EngineUnavailable("dockerd needs root here (no rootless set-up)")
        self.cache.mkdir(parents=True, exist_ok=True)
        # One engine per data root at a time: a second run on the machine waits its turn.
        self._lock = open(self.cache / "engine.lock", "w")  # noqa: SIM115
        deadline = time.monotonic() + timeout * 10
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EngineUnavailable(f"{self.cache} is held by another run") from None
                time.sleep(1)
        config = self.run_dir / "daemon.json"
        config.write_text(json.dumps(DAEMON_CONFIG))
        log = open(self.log_path, "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                "dockerd",
                f"--config-file={config}",
                f"--host={self.host}",
                f"--data-root={self.cache / 'docker'}",
                f"--exec-root={self.run_dir / 'exec'}",
                f"--pidfile={self.run_dir / 'dockerd.pid'}",
                "--storage-driver=overlay2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise EngineUnavailable(f"dockerd exited: {self.log_tail()}")
            if self.socket.exists():
                r = self.docker("version", "--format", "{{.Server.Version}}", check=False)
                if r.returncode == 0:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise EngineUnavailable(f"dockerd did not answer in {timeout} s: {self.log_tail()}")
            time.sleep(0.3)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def docker(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 600,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker client against this engine; ``check`` raises with its output."""
        full_env = {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0", **(env or {})}
        r = subprocess.run(
            ["docker", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            input=input,
        )
        if check and r.returncode != 0:
            raise RuntimeError(
                f"docker {' '.join(args)} failed ({r.returncode}): {r.stderr[-3000:]}"
            )
        return r

    def remove(self, kind: str, names: Sequence[str]) -> None:
        """Remove containers or volumes by name, ignoring the ones already gone."""
        if names:
            cmd = ["rm", "-f", "-v"] if kind == "container" else ["volume", "rm", "-f"]
            self.docker(*cmd, *names, check=False, timeout=120)

    def stop(self) -> None:
        """Stop dockerd (it stops its containerd and containers) and free the data root."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
        self._proc = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        # dockerd leaves its host network namespace bind-mounted under the exec root.
        for mount in reversed(_mounts_under(self.run_dir)):
            subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def _mounts_under(path: Path) -> list[str]:
    """Mount points below ``path``, in the order they were mounted."""
    prefix = f"{path}/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return [p for p in points if p.startswith(prefix)]
