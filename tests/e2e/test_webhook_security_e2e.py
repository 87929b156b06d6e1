"""Only real webhooks get in, re-deliveries make no second job, and no secret reaches a log."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Db, page_body
from tests.e2e.harness import Api, running, wait_until
from tests.e2e.test_pipeline_e2e import indexed
from tests.fakes.confluence import FakeConfluence

SECRET = "hmac-secret-for-tests-0123456789"
TOKEN = "url-token-for-tests-9876543210"
API_TOKEN = "api-bearer-for-tests-5555"


@pytest.fixture()
def secured(env: dict[str, str], tmp_path: Path) -> Iterator[Api]:
    secured_env = {
        **env,
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_TOKEN": TOKEN,
        "API_TOKEN": API_TOKEN,
        "DEDUPE_WINDOW_SECONDS": "300",
        "MAX_BODY_BYTES": "4096",
    }
    with running(Api(secured_env, tmp_path / "secured.log")) as service:
        yield service  # type: ignore[misc]


def sign(body: bytes, *, prefix: bool = True) -> str:
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}" if prefix else digest


def post(api: Api, body: bytes, headers: dict[str, str] | None = None, **params: str) -> httpx.Response:
    return httpx.post(
        f"{api.url}/webhook/confluence",
        content=body,
        headers={"content-type": "application/json", **(headers or {})},
        params=params or None,
        timeout=10,
    )


def test_signatures_tokens_replays_and_limits(secured: Api, confluence: FakeConfluence, db: Db) -> None:
    confluence.put_page("6001", title="Signed", body=page_body(1, 2), space_key="ENG")
    body = json.dumps({"event": "page_created", "page": {"id": 6001}}).encode()

    assert post(secured, body).status_code == 401  # neither signature nor token
    assert post(secured, body, {"X-Hub-Signature": "sha256=" + "0" * 64}).status_code == 401
    assert post(secured, body, token="wrong").status_code == 401
    tampered = body.replace(b"6001", b"6002")
    assert post(secured, tampered, {"X-Hub-Signature": sign(body)}).status_code == 401

    first = post(secured, body, {"X-Hub-Signature": sign(body)})
    assert first.status_code == 202, first.text
    replay = post(secured, body, {"X-Hub-Signature": sign(body, prefix=False)})
    assert replay.status_code == 200 and replay.json()["status"] == "duplicate"
    wait_until(lambda: indexed(db, "6001"), what="signed page indexed")

    cloud_body = json.dumps({"page": {"id": "6003"}}).encode()
    confluence.put_page("6003", title="Cloud hook", body=page_body(1, 1), space_key="ENG")
    assert post(secured, cloud_body, event="page_created", token=TOKEN).status_code == 202
    wait_until(lambda: indexed(db, "6003"), what="token page indexed")
    too_long = post(secured, cloud_body, event="x" * 101, token=TOKEN)  # query parameters are checked by hand
    assert too_long.status_code == 422 and "`event`" in too_long.json()["reason"]

    too_big = json.dumps({"event": "page_created", "page": {"id": 6004}, "pad": "x" * 5000}).encode()
    assert post(secured, too_big, {"X-Hub-Signature": sign(too_big)}).status_code == 413

    search = httpx.get(f"{secured.url}/search", params={"q": "canary"}, timeout=10)
    assert search.status_code == 401
    authed = httpx.get(
        f"{secured.url}/search", params={"q": "canary"}, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30
    )
    assert authed.status_code == 200 and authed.json()["results"]
    assert httpx.get(f"{secured.url}/healthz", timeout=5).status_code == 200  # health stays open

    logs = secured.logs()
    for secret in (SECRET, TOKEN, API_TOKEN):
        assert secret not in logs
