"""Prometheus metrics. Workers write counters and histogram buckets into the store's
``stats`` hash (:mod:`app.core.stats`); the API's collector turns them into metric
families on scrape."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from app.core.jobs.names import JOB_STATUSES, KINDS, QUEUE_OF
from app.core.jobs.work import job_images
from app.core.stats import (
    BATCH_BUCKETS,
    QUEUE_BUCKETS,
    RUN_BUCKETS,
    by_checkpoint,
    cumulative_buckets,
)
from app.core.store import JobStore, Outbox

__all__ = ["StoreCollector"]


def _hist(stats: dict[str, float], name: str, buckets: tuple, doc: str) -> HistogramMetricFamily:
    h = HistogramMetricFamily(f"ddpm_{name}", doc, labels=[])
    cumulative = cumulative_buckets(stats, name, buckets)
    pairs = [(b if b == "+Inf" else str(float(b)), n) for b, n in cumulative]
    h.add_metric([], pairs, stats.get(f"{name}_sum", 0.0))
    return h


class StoreCollector(Collector):
    """Reads the shared stats at scrape time (so every API replica reports the same)."""

    def __init__(self, store: JobStore, top_checkpoints: int = 10) -> None:
        self.store = store
        self.top_checkpoints = top_checkpoints
        self.outbox = Outbox(store)

    def collect(self) -> Iterator:
        stats = self.store.stats()
        jobs = CounterMetricFamily(
            "ddpm_jobs", "finished jobs by kind and status", labels=["kind", "status"]
        )
        for kind in KINDS:
            for status in JOB_STATUSES[2:]:
                jobs.add_metric([kind, status], stats.get(f"jobs_finished:{kind}:{status}", 0.0))
        yield jobs
        sub = CounterMetricFamily("ddpm_jobs_submitted", "submitted jobs by kind", labels=["kind"])
        for kind in KINDS:
            sub.add_metric([kind], stats.get(f"jobs_submitted:{kind}", 0.0))
        yield sub
        depth = GaugeMetricFamily("ddpm_queue_depth", "jobs waiting", labels=["queue"])
        depth.add_metric(["gen"], self.store.queue_depth("generate"))
        depth.add_metric(["train"], self.store.queue_depth("train"))
        yield depth
        running = GaugeMetricFamily("ddpm_jobs_running", "jobs running", labels=["queue"])
        running.add_metric(["gen"], len(self.store.running("generate")))
        running.add_metric(["train"], len(self.store.running("train")))
        yield running
        # The autoscaler's signal (deploy/k8s, docs/kubernetes.md): work in images, not jobs.
        backlog = GaugeMetricFamily(
            "ddpm_backlog_images",
            "images of the queued and running jobs (train: steps x batch size x accumulate)",
            labels=["queue"],
        )
        for kind in KINDS:
            requests = self.store.unfinished_requests(kind)
            backlog.add_metric([QUEUE_OF[kind]], sum(job_images(kind, r) for r in requests))
        yield backlog
        requeued = CounterMetricFamily(
            "ddpm_jobs_requeued", "jobs re-queued after their worker was lost", labels=["kind"]
        )
        for kind in KINDS:
            requeued.add_metric([kind], stats.get(f"jobs_requeued:{kind}", 0.0))
        yield requeued
        hooks = CounterMetricFamily(
            "ddpm_webhook_deliveries",
            "webhook delivery attempts by outcome (retry: failed, tried again later)",
            labels=["outcome"],
        )
        for outcome in ("delivered", "retry", "failed"):
            hooks.add_metric([outcome], stats.get(f"webhook_deliveries:{outcome}", 0.0))
        yield hooks
        yield GaugeMetricFamily(
            "ddpm_webhooks_pending",
            "webhook deliveries in the outbox (due, waiting to retry, or being delivered)",
            value=self.outbox.pending(),
        )
        workers = GaugeMetricFamily("ddpm_workers", "live workers (heartbeats)")
        workers.add_metric([], len(self.store.workers()))
        yield workers
        yield CounterMetricFamily(
            "ddpm_images_generated", "images generated", value=stats.get("images_generated", 0.0)
        )
        yield CounterMetricFamily(
            "ddpm_network_calls", "batched network calls", value=stats.get("batch_size_count", 0.0)
        )
        yield _hist(stats, "queue_seconds", QUEUE_BUCKETS, "seconds from submit to start")
        yield _hist(stats, "run_seconds", RUN_BUCKETS, "seconds from start to finish")
        yield _hist(stats, "batch_size", BATCH_BUCKETS, "rows per network call")
        yield from self._per_checkpoint(stats)
        yield from _device_memory(self.store.workers())

    def _per_checkpoint(self, stats: dict[str, float]) -> Iterator:
        """Generation by checkpoint name: the busiest ``metrics_checkpoints`` names, the
        rest as ``_other``."""
        groups = by_checkpoint(stats, self.top_checkpoints, "images_generated")
        images = CounterMetricFamily(
            "ddpm_checkpoint_images_generated",
            "images generated, by checkpoint (the busiest few; the rest: _other)",
            labels=["checkpoint"],
        )
        hists = {
            "queue_seconds": (QUEUE_BUCKETS, "seconds from submit to start, by checkpoint"),
            "run_seconds": (RUN_BUCKETS, "seconds from start to finish, by checkpoint"),
        }
        families = {
            name: HistogramMetricFamily(f"ddpm_checkpoint_{name}", doc, labels=["checkpoint"])
            for name, (_, doc) in hists.items()
        }
        for ckpt, fields in groups.items():
            images.add_metric([ckpt], fields.get("images_generated", 0.0))
            for name, (buckets, _) in hists.items():
                pairs = [(str(b), c) for b, c in cumulative_buckets(fields, name, buckets)]
                families[name].add_metric([ckpt], pairs, fields.get(f"{name}_sum", 0.0))
        yield images
        yield from families.values()


def _device_memory(workers: list[dict]) -> Iterator:
    """CUDA memory each gen worker's engine holds (its heartbeat's figures)."""
    mem = GaugeMetricFamily(
        "ddpm_device_memory_bytes",
        "CUDA memory of a gen worker's device: allocated (in tensors) and reserved (cached)",
        labels=["worker", "device", "kind"],
    )
    for w in workers:
        for kind, value in (w.get("cuda_memory") or {}).items():
            mem.add_metric([str(w.get("name", "?")), str(w.get("device", "?")), kind], value)
    yield mem
