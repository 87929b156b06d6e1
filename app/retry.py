"""The one backoff policy: exponential with full jitter, capped, and `Retry-After` honoured when given.

Used by the Confluence client and the embedder for in-call retries, and by the queue for job retries, so every
wait in the service follows the same rule (AWS "Exponential Backoff and Jitter", full-jitter variant).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before attempt `attempt + 1`, given that `attempt` attempts (1-based) have failed."""

    base: float = 1.0
    cap: float = 60.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the jittered wait after `attempt` failures: base * 2**(attempt-1), capped."""
        exponent = max(0, attempt - 1)
        if exponent > 60:  # 2**60 overflows any sane cap; avoid huge floats
            return self.cap
        return float(min(self.cap, self.base * (2**exponent)))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep. A server's `Retry-After` wins (capped), else uniform(0, ceiling)."""
        if retry_after is not None and retry_after >= 0:
            return float(min(retry_after, self.cap))
        return self.rng.uniform(0.0, self.ceiling(attempt))


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds; both products send delta-seconds. HTTP-dates are read too."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from datetime import datetime
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds)
