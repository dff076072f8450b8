"""OpenTelemetry tracing of jobs, off unless the standard ``OTEL_*`` variables ask for it.

On when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set, or
``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``); off with
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``, and whenever the ``otel``
extra is not installed. Off, every function here is a no-op that costs a branch.

A job's trace crosses processes through its document: the API stores the W3C
``traceparent`` of its request span in the job (``trace``), and the worker that claims
it continues that trace (:mod:`worker.job_trace`). Spans of work whose start and end
are known afterwards (the queue wait, the engine's batches) are recorded with explicit
times, from the same timestamps the job's ``metrics`` are computed from.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "tracing_requested",
    "setup_tracing",
    "shutdown_tracing",
    "enabled",
    "request_span",
    "carrier",
    "trace_id_of",
    "record_span",
    "start_span",
]

log = logging.getLogger("ddpm.tracing")

_provider: Any = None  # the SDK's TracerProvider once set up


def tracing_requested(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces (the OpenTelemetry variables)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    return bool(exporter or endpoint)


def setup_tracing(service: str) -> bool:
    """Install the process's tracer provider for ``service`` (``OTEL_SERVICE_NAME`` wins)
    when tracing is requested and the SDK is installed; whether tracing is on."""
    global _provider
    if _provider is not None:
        return True
    if not tracing_requested():
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_* asks for traces but the otel extra is not installed: no traces")
        return False
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    exporters: list[Any] = []
    for name in filter(None, names):
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            # OTLP over HTTP (protobuf): OTEL_EXPORTER_OTLP_* configure it.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER %r ignored (otlp, console)", name)
    if not exporters:
        return False
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)})
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("tracing on: %s", ", ".join(type(e).__name__ for e in exporters))
    return True


def shutdown_tracing() -> None:
    """Export what is buffered and stop (at process exit)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


def enabled() -> bool:
    return _provider is not None


def _tracer() -> Any:
    from opentelemetry import trace

    return trace.get_tracer("ddpm-service")


def _context(parent: Mapping[str, str] | None) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(dict(parent or {}))


@contextlib.contextmanager
def request_span(
    name: str, headers: Mapping[str, str], attributes: dict[str, Any] | None = None
) -> Iterator[Any]:
    """The span of a request's work: under the server's request span where the framework
    made one (FastAPI does, once a tracer provider is set), else a server span ``name``
    continuing the request's ``traceparent`` (if any). None when tracing is off."""
    if _provider is None:
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    if trace.get_current_span().get_span_context().is_valid:
        with _tracer().start_as_current_span("submit", attributes=attributes) as span:
            yield span
        return
    carrier_in = {k: v for k, v in headers.items() if k.lower() in ("traceparent", "tracestate")}
    with _tracer().start_as_current_span(
        name, context=_context(carrier_in), kind=SpanKind.SERVER, attributes=attributes
    ) as span:
        yield span


def carrier(span: Any) -> dict[str, str] | None:
    """``span``'s context as W3C headers (``traceparent``), to continue it elsewhere."""
    if span is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    out: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(out, context=trace.set_span_in_context(span))
    return out or None


def trace_id_of(stored: Any) -> str | None:
    """The trace id (32 hex digits) of a stored carrier, without the SDK."""
    if not isinstance(stored, dict):
        return None
    parts = str(stored.get("traceparent", "")).split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def start_span(
    name: str,
    parent: Mapping[str, str] | Any | None,
    start: float | None = None,
    attributes: dict[str, Any] | None = None,
) -> Any:
    """A span under ``parent`` (a stored carrier, or a span), started at ``start``
    (``time.time()`` seconds; default now); the caller ends it. None when off."""
    if _provider is None:
        return None
    from opentelemetry import trace

    if parent is None or isinstance(parent, Mapping):
        ctx = _context(parent)  # type: ignore[arg-type]
    else:
        ctx = trace.set_span_in_context(parent)
    return _tracer().start_span(
        name,
        context=ctx,
        start_time=None if start is None else int(start * 1e9),
        attributes=attributes,
    )


def record_span(
    name: str, parent: Any, start: float, end: float, attributes: dict[str, Any] | None = None
) -> Any:
    """A span already over: from ``start`` to ``end`` (``time.time()`` seconds)."""
    span = start_span(name, parent, start, attributes)
    if span is not None:
        span.end(end_time=int(max(end, start) * 1e9))
    return span
