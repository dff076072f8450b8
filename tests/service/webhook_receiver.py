"""A real HTTP receiver of webhooks on 127.0.0.1 for the tests: it verifies every delivery
with the ``standardwebhooks`` package and answers as a script of replies says."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass
class Received:
    """One request as the receiver saw it."""

    id: str
    event: str
    body: dict[str, Any]
    verified: bool
    at: float
    answered: int | str


@dataclass
class Receiver:
    """``replies``: per webhook-id, the answers to its attempts in order (an int status, a
    (status, headers) pair, ``"drop"`` to close the connection unanswered, ``"hold"`` to
    wait for :attr:`release` first); then 200. ``delay``: seconds each answer takes."""

    secret: str
    replies: dict[str, list[Any]] = field(default_factory=dict)
    default_replies: list[Any] = field(default_factory=list)
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    held: threading.Event = field(default_factory=threading.Event)
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                wid = self.headers.get("webhook-id", "")
                try:
                    Webhook(receiver.secret).verify(body, dict(self.headers.items()))
                    verified = True
                except Exception:
                    verified = False
                with receiver.lock:
                    n = sum(1 for r in receiver.received if r.id == wid)
                    script = receiver.replies.get(wid, receiver.default_replies)
                    reply = script[n] if n < len(script) else 200
                    receiver.in_flight[wid] = receiver.in_flight.get(wid, 0) + 1
                    receiver.max_in_flight[wid] = max(
                        receiver.max_in_flight.get(wid, 0), receiver.in_flight[wid]
                    )
                    receiver.received.append(
                        Received(
                            wid,
                            self.headers.get("ddpm-webhook-event", ""),
                            json.loads(body),
                            verified,
                            time.monotonic(),
                            reply if isinstance(reply, int | str) else reply[0],
                        )
                    )
                try:
                    if receiver.delay:
                        time.sleep(receiver.delay)
                    if reply == "hold":
                        receiver.held.set()
                        receiver.release.wait(30)
                        reply = 200
                    if reply == "drop":
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    status, headers = reply if isinstance(reply, tuple) else (reply, {})
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the dispatcher went away mid-answer
                finally:
                    with receiver.lock:
                        receiver.in_flight[wid] -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook?token=abc"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def of(self, wid: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.id == wid]

    def wait_for(self, predicate, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"receiver timed out: {self.received}"
            time.sleep(0.02)
