"""The backoff policy and the queue's retry decision."""

from __future__ import annotations

import random

import pytest

from app.config import Settings
from app.errors import ConfluenceAuthError, ConfluenceUnavailable, EmbeddingModelMissing, EmbeddingUnavailable
from app.queue import INDEX_PAGE, RECONCILE, plan_retry
from app.retry import Backoff, parse_retry_after
from tests.conftest import make_settings


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


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), (" 2.5 ", 2.5), ("-3", 0.0), ("soon", None), (None, None)])
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_parse_retry_after_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def _settings(max_attempts: int = 12) -> Settings:
    return make_settings(job_max_attempts=max_attempts, retry_base_seconds=1.0, retry_max_seconds=30.0)


@pytest.mark.parametrize(
    ("exc", "attempts", "retried"),
    [
        (ConfluenceUnavailable("429"), 1, True),
        (EmbeddingUnavailable("down"), 6, True),
        (RuntimeError("unexpected"), 1, True),
        (ConfluenceAuthError(), 1, False),
        # A service fault (missing model, 401) is not the page's: retried, never final, however long it lasts.
        (EmbeddingModelMissing(), 1, True),
        (EmbeddingModelMissing(), 100, True),
        (ConfluenceUnavailable("429"), 11, True),
        (ConfluenceUnavailable("429"), 12, False),
    ],
)
def test_plan_retry_decision(exc: BaseException, attempts: int, retried: bool) -> None:
    delay = plan_retry(exc, attempts=attempts, settings=_settings())
    assert (delay is not None) is retried


def test_plan_retry_is_full_jitter_within_the_ceiling() -> None:
    settings = _settings()
    backoff = Backoff(base=1.0, cap=30.0, rng=random.Random(3))
    delays = [plan_retry(EmbeddingUnavailable("down"), attempts=4, settings=settings, rng=backoff) for _ in range(300)]
    assert all(d is not None and 0.05 <= d <= 8.0 for d in delays)
    assert len({round(d or 0, 6) for d in delays}) > 200, "full jitter: delays spread over [0, ceiling]"


def test_plan_retry_honours_retry_after_capped() -> None:
    settings = _settings()
    assert plan_retry(ConfluenceUnavailable("429", retry_after=12.0), attempts=1, settings=settings) == 12.0
    assert plan_retry(ConfluenceUnavailable("429", retry_after=500.0), attempts=1, settings=settings) == 30.0


def test_index_page_task_has_no_procrastinate_retry() -> None:
    """procrastinate's retry re-queues the failed row and collides with a waiting job of the page; the page
    task schedules its own follow-up instead (app.jobs), so no retry strategy may be attached."""
    from app.tasks import build_queue

    queue = build_queue("postgresql://127.0.0.1:9/none", _settings())
    assert queue.tasks[INDEX_PAGE].retry_strategy is None


def test_every_queue_built_in_a_process_registers_the_same_task_names() -> None:
    """A second App in one process (tests, a CLI command beside a worker) once registered `cv:cv:index_page`,
    because procrastinate's `add_tasks_from` renamed a module-level blueprint's tasks in place."""
    from app.tasks import build_queue

    queues = [build_queue("postgresql://127.0.0.1:9/none", _settings()) for _ in range(3)]
    # procrastinate's own `builtin:` tasks keep its naming quirk; ours are the `cv:` ones.
    names = [{name for name in queue.tasks if not name.startswith("builtin:")} for queue in queues]
    assert names[0] == names[1] == names[2]
    assert {INDEX_PAGE, RECONCILE, "cv:tick", "cv:permission_sync", "cv:refresh_space_access"} <= names[0]
    assert not any(name.startswith("cv:cv:") for name in names[0])


def test_backoff_is_tenacitys_full_jitter_wait() -> None:
    """`Backoff` is tenacity's `wait_random_exponential` (same window per attempt), so the loops that pass it
    as `wait=` and the job-level delays follow one rule."""
    from tenacity import RetryCallState
    from tenacity.wait import wait_random_exponential

    backoff = Backoff(base=0.5, cap=20.0)
    assert isinstance(backoff, wait_random_exponential)
    reference = wait_random_exponential(multiplier=0.5, max=20.0)
    for attempt in range(1, 80):
        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        state.attempt_number = attempt
        assert backoff.ceiling(attempt) == min(reference.max, 0.5 * 2 ** (attempt - 1))
        assert 0.0 <= backoff(state) <= backoff.ceiling(attempt)


def test_backoff_as_a_tenacity_wait_honours_retry_after_and_reraises() -> None:
    """As a tenacity `wait=`: a failure's `retry_after` wins (capped), jitter otherwise, `floor` respected;
    with `reraise=True` the last failure itself reaches the caller, not tenacity's RetryError."""
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

    waits: list[float] = []
    failures = iter([ConfluenceUnavailable("429", retry_after=3.0), ConfluenceUnavailable("429", retry_after=500.0)])
    policy = Retrying(
        retry=retry_if_exception_type(ConfluenceUnavailable),
        stop=stop_after_attempt(4),
        wait=Backoff(base=1.0, cap=30.0, floor=0.25, rng=random.Random(1)),
        sleep=waits.append,
        reraise=True,
    )

    def call() -> None:
        raise next(failures, EmbeddingUnavailable("down"))

    with pytest.raises(EmbeddingUnavailable):  # not retried: a different type, raised as itself
        policy(call)
    assert waits == [3.0, 30.0]
    waits.clear()
    with pytest.raises(ConfluenceUnavailable):
        Retrying(
            retry=retry_if_exception_type(ConfluenceUnavailable),
            stop=stop_after_attempt(3),
            wait=Backoff(base=0.001, cap=0.002, floor=0.25),
            sleep=waits.append,
            reraise=True,
        )(lambda: (_ for _ in ()).throw(ConfluenceUnavailable("503")))
    assert waits == [0.25, 0.25]
