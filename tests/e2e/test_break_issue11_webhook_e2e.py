"""Trying to break issue 11's comment-only webhook path (`app.webhook._comment_page`), which makes a Confluence
read inside the webhook request: over real HTTP against the running service and the fake Confluence.

What is attacked: an unauthenticated caller using the lookup to probe which comment ids exist or to make us
call Confluence; hostile ids (huge, negative, zero, strings, floats, nested junk) reaching a 500 or a lookup;
a slow Confluence holding the request unbounded; signed replays multiplying lookups.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Api, running
from tests.fakes.confluence import FakeConfluence
from tests.fakes.confluence_content import content_of

SECRET = "hmac-secret-for-break-tests-0123456789"


@pytest.fixture()
def signed_api(env: dict[str, str], tmp_path: Path) -> Iterator[Api]:
    """The service with a webhook signing secret and a replay window, as a Data Center operator runs it."""
    with running(Api({**env, "WEBHOOK_SECRET": SECRET, "DEDUPE_WINDOW_SECONDS": "300"}, tmp_path / "s.log")) as s:
        yield s  # type: ignore[misc]


def post(api: Api, payload: dict[str, Any] | bytes, *, signed: bool) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"content-type": "application/json"}
    if signed:
        headers["X-Hub-Signature"] = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return httpx.post(f"{api.url}/webhook/confluence", content=body, headers=headers, timeout=30)


def comment_lookups(confluence: FakeConfluence, comment_id: str | None = None) -> int:
    """Requests the comment lookup makes (DC `content/{id}`, Cloud `footer-comments/{id}` and
    `inline-comments/{id}`), for `comment_id` only when given (the worker's page reads are not counted)."""
    return sum(
        1
        for _, path in confluence.requests
        if ("/content/" in path or "-comments/" in path) and (comment_id is None or path.endswith(f"/{comment_id}"))
    )


@pytest.mark.parametrize("confluence", ["datacenter"], indirect=True)
def test_unauthenticated_comment_events_cannot_probe_or_reach_confluence(
    signed_api: Api, confluence: FakeConfluence
) -> None:
    """An unsigned comment-only event is refused before the lookup: same status and body for an existing and a
    missing comment id (no oracle), and not one request reaches Confluence (no amplification)."""
    confluence.put_page("9101", title="Secret plans", body="<p>Hidden.</p>", space_key="ENG")
    existing = content_of(confluence).add_comment("9101", "<p>Probe me.</p>")
    confluence.reset_counters()
    answers = [
        post(signed_api, {"event": "comment_created", "comment": {"id": int(existing)}}, signed=False),
        post(signed_api, {"event": "comment_created", "comment": {"id": 987654321}}, signed=False),
    ]
    assert [a.status_code for a in answers] == [401, 401], [a.text for a in answers]
    assert answers[0].json() == answers[1].json()
    assert comment_lookups(confluence) == 0, confluence.requests

    # The signed event does resolve (the path under test is live), proving the 401 above was the guard.
    signed = post(signed_api, {"event": "comment_created", "comment": {"id": int(existing)}}, signed=True)
    assert signed.status_code == 202 and signed.json()["status"] == "accepted", signed.text
    assert comment_lookups(confluence) >= 1, confluence.requests


HOSTILE_IDS: list[Any] = [
    10**40,  # longer than any Confluence id
    -5,
    0,
    "0",
    "000",
    "-7",
    "12ab",
    "١٢٣",  # Arabic-Indic digits: str.isdigit() says yes
    1.5,
    1e30,
    True,
    None,
    [],
    {"id": 5},
    ["1", "2"],
    "9" * 5000,
]


@pytest.mark.parametrize("confluence", ["datacenter", "cloud"], indirect=True)
def test_hostile_comment_ids_get_4xx_or_unresolved_never_500(api: Api, confluence: FakeConfluence) -> None:
    """Each hostile id is a 4xx with a reason or a 202 "accepted" (nothing knows it), in bounded time, never a 500."""
    for value in HOSTILE_IDS:
        start = time.monotonic()
        answer = api.webhook({"event": "comment_removed", "comment": {"id": value}})
        took = time.monotonic() - start
        assert took < 15, f"{value!r} took {took:.1f} s"
        assert answer.status_code < 500, (value, answer.status_code, answer.text)
        body = answer.json()
        if answer.status_code >= 400:
            assert body.get("reason"), (value, body)
        else:
            assert body.get("status") in ("accepted", "ignored"), (value, answer.status_code, body)


@pytest.mark.parametrize("confluence", ["datacenter"], indirect=True)
def test_comment_id_zero_is_refused_like_the_number_zero(api: Api, confluence: FakeConfluence) -> None:
    """No Confluence content has id 0: the string form must get the integer form's 422, not a Confluence call."""
    assert api.webhook({"event": "comment_removed", "comment": {"id": 0}}).status_code == 422
    confluence.reset_counters()
    answer = api.webhook({"event": "comment_removed", "comment": {"id": "000"}})
    assert answer.status_code == 422, answer.text
    assert comment_lookups(confluence) == 0, confluence.requests


@pytest.mark.parametrize("confluence", ["datacenter"], indirect=True)
def test_slow_confluence_bounds_the_comment_lookup(api: Api, confluence: FakeConfluence) -> None:
    """Confluence slower than the lookup budget: 503 with Retry-After within about the budget (10 s), not a hang
    and not a 202 for unstored work."""
    confluence.put_page("9102", title="Slow", body="<p>Slow.</p>", space_key="ENG")
    comment = content_of(confluence).add_comment("9102", "<p>Eventually.</p>")
    confluence.slowness = 30.0
    try:
        start = time.monotonic()
        answer = httpx.post(
            f"{api.url}/webhook/confluence",
            json={"event": "comment_created", "comment": {"id": int(comment)}},
            timeout=40,
        )
        took = time.monotonic() - start
    finally:
        confluence.slowness = 0.0
    assert answer.status_code == 503 and answer.headers.get("retry-after"), answer.text
    assert took < 15, f"the webhook held the request {took:.1f} s"


@pytest.mark.parametrize("confluence", ["datacenter"], indirect=True)
def test_replayed_comment_event_costs_one_lookup(signed_api: Api, confluence: FakeConfluence) -> None:
    """A captured signed delivery replayed N times inside the dedupe window: the first is queued, the others
    are duplicates, and Confluence sees one lookup, not N."""
    confluence.put_page("9103", title="Replay", body="<p>Replay.</p>", space_key="ENG")
    comment = content_of(confluence).add_comment("9103", "<p>Again and again.</p>")
    body = json.dumps({"event": "comment_created", "comment": {"id": int(comment)}}).encode()
    confluence.reset_counters()
    statuses = [post(signed_api, body, signed=True).json()["status"] for _ in range(10)]
    assert statuses[0] == "accepted" and set(statuses[1:]) == {"duplicate"}, statuses
    lookups = comment_lookups(confluence, comment)
    assert lookups == 1, f"{lookups} lookups of comment {comment} for 10 identical deliveries"


@pytest.mark.parametrize("confluence", ["datacenter"], indirect=True)
def test_a_burst_of_comment_events_stays_under_the_confluence_concurrency_cap(
    api: Api, confluence: FakeConfluence
) -> None:
    """24 comment-only events at once while Confluence takes 1 s a request: the lookups share the client's
    gate (CONFLUENCE_MAX_CONCURRENCY, 4, plus the in-process worker's share of the same gate), so Confluence
    never sees the burst's width; every answer is a 202 or a 503 with Retry-After, none hangs past the budget."""
    confluence.put_page("9104", title="Burst", body="<p>Burst.</p>", space_key="ENG")
    comments = [content_of(confluence).add_comment("9104", f"<p>Comment {i}.</p>") for i in range(24)]
    confluence.reset_counters()
    confluence.slowness = 1.0

    def send(comment: str) -> tuple[int, str | None, float]:
        start = time.monotonic()
        answer = httpx.post(
            f"{api.url}/webhook/confluence",
            json={"event": "comment_created", "comment": {"id": int(comment)}},
            timeout=40,
        )
        return answer.status_code, answer.headers.get("retry-after"), time.monotonic() - start

    try:
        with ThreadPoolExecutor(len(comments)) as pool:
            answers = list(pool.map(send, comments))
    finally:
        confluence.slowness = 0.0
    assert confluence.max_in_flight <= 4, f"{confluence.max_in_flight} Confluence requests at once"
    assert all(status == 202 or (status == 503 and retry) for status, retry, _ in answers), answers
    assert max(took for _, _, took in answers) < 15, answers


@pytest.mark.parametrize("confluence", ["datacenter"], indirect=True)
def test_an_open_webhook_does_not_map_comment_ids_to_pages(api: Api, confluence: FakeConfluence) -> None:
    confluence.put_page("9105", title="Board minutes", body="<p>Minutes.</p>", space_key="ENG", restricted=True)
    existing = content_of(confluence).add_comment("9105", "<p>Confidential.</p>")
    found = api.webhook({"event": "comment_created", "comment": {"id": int(existing)}})
    missing = api.webhook({"event": "comment_created", "comment": {"id": 987654322}})
    assert "9105" not in found.text, found.text
    assert (found.status_code, found.json().get("status")) == (missing.status_code, missing.json().get("status"))
