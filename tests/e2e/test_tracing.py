"""Tracing end to end: a real ``ddpm serve`` exporting OTLP/HTTP to a receiver in this
test. One request with a W3C ``traceparent`` gives one connected trace across the API
and the worker processes: the request, the job, its queue wait, claim, engine wait,
denoising (a span per batch it took part in), encoding, result storage and finish, in
that order, their durations adding up to the job's recorded times."""

from __future__ import annotations

import gzip
import http.server
import os
import threading
import time
from collections.abc import Iterator

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from serve_helpers import serving
from svc_helpers import ROOT, wait_job
from trace_picture import draw_trace

pytestmark = pytest.mark.timeout(240)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
JOB_SPANS = ["queue", "claim", "engine wait", "denoise", "encode", "store results", "finish"]


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: the spans it was sent, by service."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                req = ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    for rs in req.resource_spans:
                        service = next(
                            a.value.string_value
                            for a in rs.resource.attributes
                            if a.key == "service.name"
                        )
                        for ss in rs.scope_spans:
                            receiver.spans += [(service, s) for s in ss.spans]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_trace(self, trace_id: str) -> list[tuple[str, object]]:
        with self.lock:
            return [(svc, s) for svc, s in self.spans if s.trace_id.hex() == trace_id]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def test_one_request_gives_one_connected_trace_across_processes(tmp_path, receiver):
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with serving(tmp_path, **otel) as (client, data, _proc, _log):
        r = client.post(
            "/generate",
            json={"count": 3, "seed": 2, "steps": 6},
            headers={"traceparent": TRACEPARENT},
        )
        assert r.status_code == 202, r.text
        assert r.json()["trace_id"] == TRACE_ID
        doc = wait_job(client, r.json()["id"], timeout=120)
        assert doc["status"] == "succeeded", doc
        assert doc["trace_id"] == TRACE_ID
        # Spans leave in batches (OTEL_BSP_SCHEDULE_DELAY): wait for the job's last one.
        deadline = time.monotonic() + 30
        while not any(s.name == "generate job" for _, s in receiver.of_trace(TRACE_ID)):
            assert time.monotonic() < deadline, [s.name for _, s in receiver.spans]
            time.sleep(0.1)
        untraced = client.post("/generate", json={"count": 1, "steps": 2}).json()
        assert untraced["trace_id"] and untraced["trace_id"] != TRACE_ID  # a trace of its own
        # A training run: its phases.
        admin = {"Authorization": f"Bearer {(data / 'admin_token').read_text().strip()}"}
        options = {"steps": 4, "batch_size": 4, "warmup": 1, "timesteps": 20, "default_steps": 2,
                   "sample_count": 1, "measure_defaults": "off"}  # fmt: skip
        run = client.post("/train", json={"name": "traced", "options": options}, headers=admin)
        assert run.status_code == 202, run.text
        run = wait_job(client, run.json()["id"], timeout=120)
        assert run["status"] == "succeeded", run
        deadline = time.monotonic() + 30
        while not any(s.name == "train job" for _, s in receiver.of_trace(run["trace_id"])):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    names = [s.name for _, s in receiver.of_trace(run["trace_id"])]
    for name in ("POST /train", "train job", "queue", "claim", "train", "publish", "finish"):
        assert name in names, names

    spans = receiver.of_trace(TRACE_ID)
    if os.environ.get("DDPM_UPDATE_SCREENSHOTS") == "1":  # the README's picture
        draw_trace(spans, ROOT / "docs" / "images" / "trace.png")
    by_name = {s.name: (svc, s) for svc, s in spans}
    by_id = {s.span_id: (svc, s) for svc, s in spans}
    job_svc, job = by_name["generate job"]
    assert job_svc == "ddpm-worker"
    # Up from the job: the API's spans (its server span for the request, the submit)
    # down from the caller's span, whose id the traceparent named.
    up, parent = [], job.parent_span_id
    while parent in by_id:
        svc, span = by_id[parent]
        up.append((svc, span.name))
        parent = span.parent_span_id
    assert parent.hex() == "00f067aa0ba902b7", up
    assert up and {svc for svc, _ in up} == {"ddpm-api"} and ("ddpm-api", "POST /generate") in up
    children = sorted(
        (s for _, s in spans if s.parent_span_id == job.span_id),
        key=lambda s: s.start_time_unix_nano,
    )
    assert [s.name for s in children] == JOB_SPANS
    denoise = by_name["denoise"][1]
    batches = [s for _, s in spans if s.name == "batch"]
    assert batches and all(b.parent_span_id == denoise.span_id for b in batches)
    attrs = [{a.key: a.value for a in b.attributes} for b in batches]
    shape = [(a["ddpm.batch_size"].int_value, a["ddpm.calls"].int_value) for a in attrs]
    assert sum(calls for _, calls in shape) == doc["metrics"]["network_calls"], shape
    assert max(size for size, _ in shape) == doc["metrics"]["max_batch_size"], shape

    def seconds(name: str) -> float:
        s = by_name[name][1]
        return (s.end_time_unix_nano - s.start_time_unix_nano) / 1e9

    m = doc["metrics"]
    assert seconds("queue") == pytest.approx(m["queue_seconds"], abs=0.005)
    assert seconds("engine wait") == pytest.approx(m["wait_seconds"], abs=0.005)
    ran = seconds("denoise") + seconds("encode") + seconds("store results")
    assert ran <= m["run_seconds"] + 0.005 and m["run_seconds"] - ran < 0.05, (ran, m)
    assert all(s.start_time_unix_nano >= job.start_time_unix_nano for s in children)
    assert all(s.end_time_unix_nano <= job.end_time_unix_nano for s in children)
