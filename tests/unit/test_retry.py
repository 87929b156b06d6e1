"""The backoff policy and the queue's retry decision."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from app.errors import ConfluenceAuthError, ConfluenceUnavailable, EmbeddingModelMissing, EmbeddingUnavailable
from app.queue import PageRetry
from app.retry import Backoff, parse_retry_after


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (200, 60.0)])
def test_ceiling_doubles_then_caps(attempt: int, ceiling: float) -> None:
    assert Backoff(base=1.0, cap=60.0).ceiling(attempt) == ceiling


def test_full_jitter_stays_within_ceiling_and_varies() -> None:
    backoff = Backoff(base=1.0, cap=60.0, rng=random.Random(7))
    delays = [backoff.delay(4) for _ in range(200)]
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 150


@pytest.mark.parametrize(("retry_after", "expected"), [(3.0, 3.0), (0.0, 0.0), (500.0, 60.0)])
def test_retry_after_wins_but_is_capped(retry_after: float, expected: float) -> None:
    assert Backoff(base=1.0, cap=60.0).delay(5, retry_after) == expected


@pytest.mark.parametrize(
    ("header", "seconds"), [("7", 7.0), (" 2.5 ", 2.5), ("-3", 0.0), ("soon", None), (None, None)]
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_parse_retry_after_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def _job(attempts: int) -> SimpleNamespace:
    return SimpleNamespace(attempts=attempts)


@pytest.mark.parametrize(
    ("exc", "attempts", "retried"),
    [
        (ConfluenceUnavailable("429"), 0, True),
        (EmbeddingUnavailable("down"), 5, True),
        (RuntimeError("unexpected"), 0, True),
        (ConfluenceAuthError(), 0, False),
        (EmbeddingModelMissing(), 0, False),
        (ConfluenceUnavailable("429"), 11, False),
    ],
)
def test_page_retry_decision(exc: BaseException, attempts: int, retried: bool) -> None:
    decision = PageRetry(max_attempts=12, base=1.0, cap=30.0).get_retry_decision(
        exception=exc, job=_job(attempts)
    )  # type: ignore[arg-type]
    assert (decision is not None) is retried


def test_page_retry_honours_retry_after() -> None:
    decision = PageRetry(max_attempts=5, base=1.0, cap=30.0).get_retry_decision(
        exception=ConfluenceUnavailable("429", retry_after=12.0),
        job=_job(0),  # type: ignore[arg-type]
    )
    assert decision is not None and decision.retry_at is not None
    from datetime import UTC, datetime

    wait = (decision.retry_at - datetime.now(UTC)).total_seconds()
    assert 11.0 <= wait <= 12.5
