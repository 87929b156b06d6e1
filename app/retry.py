"""The one backoff policy: exponential with full jitter, capped, and `Retry-After` honoured when given.

`Backoff` IS a tenacity wait strategy: tenacity's `wait_random_exponential(multiplier=base, max=cap)`, the
"Full Jitter" algorithm of the AWS Architecture Blog's "Exponential Backoff and Jitter" (a wait drawn from
uniform(0, min(cap, base * 2**(attempt-1)))), with three additions tenacity's own class lacks:

* a server's `Retry-After` (RFC 9110 section 10.2.3), carried by the failure as its `retry_after` seconds
  (`app.errors.RetryableError`, the Confluence client's transient failure), wins over the jitter, capped;
* a `floor`, so a retry never comes back instantly;
* its own `random.Random`, which tests seed to replay the exact waits (tenacity draws from the module-level
  `random`).

The in-call retry loops (the Confluence client, the embedder, the database retries of a failing page job,
the worker's restarts) pass it to tenacity as `wait=`. The queue's job-level delays are not loops, they are
one number each (the follow-up job's `scheduled_at`: `app.queue.plan_retry`, `app.access_jobs.recheck_delay`),
so those call `delay(attempt, retry_after)` directly: the same rule either way.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from tenacity import RetryCallState
from tenacity.wait import wait_exponential, wait_random_exponential


class Backoff(wait_random_exponential):
    """How long to wait before attempt `attempt + 1`, given that `attempt` attempts (1-based) have failed.

    `base` and `cap` and `floor` are seconds. As a tenacity `wait=`, the attempt number is tenacity's and the
    `Retry-After` is read from the failed attempt's exception (`retry_after` attribute, seconds, or absent).
    """

    def __init__(
        self, base: float = 1.0, cap: float = 60.0, *, floor: float = 0.0, rng: random.Random | None = None
    ) -> None:
        super().__init__(multiplier=base, max=cap)
        self.base, self.cap, self.floor = base, cap, floor
        self.rng = rng or random.Random()

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the jittered wait after `attempt` failures: base * 2**(attempt-1), capped
        (tenacity's `wait_exponential`, overflow handled there)."""
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]  # only attempt_number is read
        state.attempt_number = max(1, attempt)
        return float(wait_exponential.__call__(self, state))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep. A server's `Retry-After` wins (capped), else uniform(0, ceiling); at least `floor`."""
        if retry_after is not None and retry_after >= 0:
            wait = float(min(retry_after, self.cap))
        else:
            wait = self.rng.uniform(0.0, self.ceiling(attempt))
        return max(self.floor, wait)

    def __call__(self, retry_state: RetryCallState) -> float:
        """tenacity's hook: the wait after the attempt `retry_state` just failed."""
        outcome = retry_state.outcome
        failure = outcome.exception() if outcome is not None and outcome.failed else None
        retry_after = getattr(failure, "retry_after", None)
        seconds = float(retry_after) if isinstance(retry_after, int | float) else None
        return self.delay(retry_state.attempt_number, seconds)


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds; both products send delta-seconds. HTTP-dates are read too."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds)
