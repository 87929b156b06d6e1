"""Prometheus metrics, one registry per runtime (so tests can run several services in one process).

Label values never come straight from a request. Every distinct label value is a new time series held in
memory for the life of the process and sent on every scrape (Prometheus docs, "Instrumentation: Use
labels" and "Metric and label naming": do not use labels for unbounded values), and `/webhook/confluence`
is reachable without credentials when no secret is configured. So an event name is reported only if it is
one Confluence sends (`WEBHOOK_EVENTS`); anything else is `other`, and a request that names none `unknown`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

#: Event names Confluence sends (Atlassian, "Confluence Cloud webhooks" event list and Connect's
#: `avi:confluence:<action>:<type>` names as `app.webhook.normalise_event` spells them; Data Center's
#: "Managing webhooks" event list), after normalisation. The label set of `cv_webhooks_total` is at most
#: these, `other` and `unknown`, times the outcomes.
WEBHOOK_EVENTS = frozenset(
    [f"page_{a}" for a in ("created", "updated", "trashed", "restored", "removed", "moved", "copied", "archived",
                           "unarchived", "children_reordered", "permissions_updated", "restrictions_updated")]
    + [f"{t}_{a}" for t in ("blog", "blogpost")
       for a in ("created", "updated", "trashed", "restored", "removed", "moved", "permissions_updated",
                 "restrictions_updated")]
    + [f"comment_{a}" for a in ("created", "updated", "removed")]
    + [f"attachment_{a}" for a in ("created", "updated", "trashed", "restored", "removed", "archived", "unarchived")]
    + [f"label_{a}" for a in ("added", "removed", "created", "deleted")]
    + [f"space_{a}" for a in ("created", "updated", "removed", "permissions_updated", "logo_updated")]
    + [f"user_{a}" for a in ("created", "removed", "deactivated", "reactivated", "followed")]
    + [f"group_{a}" for a in ("created", "removed")]
    + ["content_permissions_updated", "content_restrictions_updated", "theme_enabled", "login", "logout"]
)  # fmt: skip


def event_label(name: str | None) -> str:
    """The `event` label value for a webhook event name: itself if Confluence sends it, else `other`
    (`unknown` when there is none). Bounded: at most len(WEBHOOK_EVENTS) + 2 values, whatever is sent."""
    if not name:
        return "unknown"
    return name if name in WEBHOOK_EVENTS else "other"


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
        self.search_fallbacks = Counter(
            "cv_search_standby_fallbacks_total",
            "Searches run on the primary although SEARCH_DATABASE_URL is set, by reason",
            ["reason"],
            registry=r,
        )

    def webhook(self, event: str | None, outcome: str) -> None:
        """Count one webhook request. `event` may be anything a caller sent: it is allow-listed here
        (`event_label`); `outcome` must come from our own fixed vocabulary (queued, duplicate, rejected_4xx...)."""
        self.webhooks.labels(event_label(event), outcome).inc()

    def confluence_retry(self, status: int, wait: float) -> None:
        """Hook given to the Confluence client: counts 429s, 5xx and network retries."""
        self.confluence_retries.labels(status=str(status)).inc()
