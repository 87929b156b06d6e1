"""Prometheus metrics, one registry per runtime (so tests can run several services in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.webhooks = Counter(
            "cv_webhooks_total", "Webhook requests by event and outcome", ["event", "outcome"], registry=r
        )
        self.webhook_batch = Histogram(
            "cv_webhook_batch_size",
            "Webhooks stored per intake transaction (group commit)",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=r,
        )
        self.jobs = Counter("cv_jobs_total", "Page jobs by outcome", ["outcome"], registry=r)
        self.queue_depth = Gauge("cv_queue_jobs", "Jobs in the queue by status", ["status"], registry=r)
        self.stage_seconds = Histogram(
            "cv_stage_seconds", "Latency of pipeline stages", ["stage"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.chunks = Counter("cv_chunks_total", "Chunks by fate (embedded, reused, deleted)", ["fate"], registry=r)
        self.confluence_retries = Counter(
            "cv_confluence_retries_total",
            "Confluence requests retried, by status code",
            ["status"],
            registry=r,
        )
        self.pages = Gauge("cv_pages", "Pages in the state table by status", ["status"], registry=r)

    def confluence_retry(self, status: int, wait: float) -> None:
        """Hook given to the Confluence client: counts 429s, 5xx and network retries."""
        self.confluence_retries.labels(status=str(status)).inc()
