"""Helpers of the client tests: service processes, the CLI, /metrics, a lossy TCP proxy."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(data_dir: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a test service: its own key prefix on the session's Redis, the
    CPU, one torch thread (the machine is small and shared)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DDPM_")}
    env |= {
        "DDPM_DATA_DIR": str(data_dir),
        "DDPM_REDIS_URL": redis_url,
        "DDPM_KEY_PREFIX": f"ddpm-client-{uuid.uuid4().hex[:8]}:",
        "DDPM_DEVICE": "cpu",
        "DDPM_TORCH_THREADS": "1",
        "DDPM_PROGRESS_INTERVAL": "0.05",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return env | extra


class Proc:
    """A child process of ours, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.p.kill()
        self.p.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(10)
        self._out.close()


def wait_until(url: str, procs: list[Proc], path: str = "/readyz", timeout: float = 90) -> None:
    """Until ``GET url+path`` answers 200 (each process must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        dead = [p for p in procs if not p.alive()]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(p.log.read_text()[-3000:] for p in procs)
            raise RuntimeError(f"service not ready at {url}{path}:\n{logs}")
        time.sleep(0.2)


def submitted(url: str, kind: str = "generate") -> float:
    """``ddpm_jobs_submitted{kind}`` from /metrics: jobs the service created."""
    text = httpx.get(url + "/metrics", timeout=10).text
    m = re.search(rf'^ddpm_jobs_submitted(?:_total)?\{{kind="{kind}"\}} (\S+)$', text, re.M)
    assert m, text[:2000]
    return float(m.group(1))


def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``ddpm ARGS`` as a child process (the real entry point), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- a TCP proxy that loses answers -----------------------------------------------------------
class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            self._fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip()
    return None


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (the peer reads ECONNRESET)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Proxy:
    """An HTTP/1.1-aware TCP proxy in front of the API, with keep-alive towards the client.

    For each request ``rule(method, path, n)`` (``n``: requests this client connection
    carried before) picks what happens:

    - ``"forward"``: relay the request on a fresh upstream connection, relay its answer
      (event streams chunk by chunk);
    - ``"drop"``/``"reset"``: relay the request, wait until its answer starts (the server
      did the work), then close the client's connection (FIN / RST) instead of answering;
    - ``"reset-now"``: reset the client's connection without forwarding (a pooled
      keep-alive connection that the server had just closed);
    - ``"cut"``: relay an answer but end it (cleanly) after its third chunk;
    - ``("respond", bytes)``: answer with these bytes instead.
    ``seen`` lists (method, path, action) for every request.
    """

    def __init__(self, upstream_port: int, rule: Callable[[str, str, int], object]) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.rule = rule
        self.seen: list[tuple[str, str, object]] = []
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        """Stop listening and drop every open client connection."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        self.sock.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = _Reader(conn)
        n = 0
        try:
            while True:
                head = reader.until(b"\r\n\r\n")
                body = reader.exact(int(_header(head, b"content-length") or 0))
                method, path = head.split(b" ", 2)[:2]
                with self._lock:
                    action = self.rule(method.decode(), path.decode(), n)
                    self.seen.append((method.decode(), path.decode(), action))
                n += 1
                if action == "reset-now":
                    return _reset(conn)
                if isinstance(action, tuple):
                    conn.sendall(action[1])
                    continue
                if not self._relay(conn, head + body, action):
                    return
        except (EOFError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def _relay(self, conn: socket.socket, request: bytes, action: object) -> bool:
        """Relay one exchange; False when the client connection is finished."""
        with socket.create_connection(self.upstream) as up:
            up.sendall(request)
            r = _Reader(up)
            head = r.until(b"\r\n\r\n")
            if action in ("drop", "reset"):
                (_reset if action == "reset" else socket.socket.close)(conn)
                return False
            conn.sendall(head)
            length = _header(head, b"content-length")
            if length is not None:
                conn.sendall(r.exact(int(length)))
                return True
            if (_header(head, b"transfer-encoding") or b"").lower() != b"chunked":
                return False
            chunks = 0
            while True:
                line = r.until(b"\r\n")
                size = int(line.split(b";")[0], 16)
                conn.sendall(line + r.exact(size + 2))
                chunks += 1
                if size == 0:
                    return True
                if action == "cut" and chunks >= 3:
                    conn.sendall(b"0\r\n\r\n")  # a clean end, as a stream lifetime cap ends
                    return True
