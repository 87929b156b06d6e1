"""`GET /search` through a real ASGI app on real Postgres: auth, validation, response shape; and the
webhook dedupe records the route relies on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from app.api_auth import require_api_token
from app.config import Settings
from app.deliveries import prune_deliveries, recently_seen, remember_deliveries
from app.errors import EmbeddingUnavailable
from app.routes_search import router
from tests.conftest import make_settings
from tests.integration.test_search import load_corpus
from tests.unit._embed import FakeQueryEmbedder

API_TOKEN = "api-token-for-tests-0123"


@dataclass
class FakeRuntime:
    pool: Any
    embedder: Any
    settings: Settings
    search_db: Any = None

    def __post_init__(self) -> None:
        from app.replica import SearchDatabase

        self.search_db = SearchDatabase(self.pool, None, max_lag=self.settings.search_replica_max_lag)


def build_app(
    pool: Any,
    settings: Settings,
    *,
    bind: str | None = "127.0.0.1",
    embedder: Any = None,
    as_service_account: bool = True,
) -> FastAPI:
    """The search router on a bare app. These tests are about the HTTP contract, so by default unnamed searches
    run as the service account (SEARCH_SERVICE_IDENTITY); who sees what is tests/e2e/test_permissions_e2e.py's."""
    if as_service_account and settings.search_service_identity is None:
        settings = settings.model_copy(update={"search_service_identity": "service-account"})
    app = FastAPI()
    app.include_router(router)

    @app.get("/other", dependencies=[Depends(require_api_token)])
    async def other() -> dict[str, str]:
        return {"ok": "yes"}

    app.state.runtime = FakeRuntime(pool=pool, embedder=embedder or FakeQueryEmbedder(), settings=settings)
    if bind is not None:
        app.state.bind_host = bind  # what app.api.create_app records
    return app


async def client_for(app: FastAPI, client_host: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(client_host, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture()
async def loaded_pool(pool: Any) -> AsyncIterator[Any]:
    await load_corpus(pool)
    yield pool


async def test_token_required_when_configured(loaded_pool: Any) -> None:
    app = build_app(loaded_pool, make_settings(api_token=API_TOKEN))
    async with await client_for(app) as client:
        r = await client.get("/search", params={"q": "vpn"})
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        r = await client.get("/search", params={"q": "vpn"}, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
        assert API_TOKEN not in r.text
        r = await client.get("/search", params={"q": "vpn"}, headers={"Authorization": f"Basic {API_TOKEN}"})
        assert r.status_code == 401
        # bad parameters without a token: still 401, nothing about the index leaks
        r = await client.get("/search", params={"k": "1000"})
        assert r.status_code == 401
        r = await client.get("/search", params={"q": "vpn"}, headers={"Authorization": f"Bearer {API_TOKEN}"})
        assert r.status_code == 200
        r = await client.get("/search", params={"q": "vpn"}, headers={"Authorization": f"bearer  {API_TOKEN} "})
        assert r.status_code == 200


async def test_response_shape(loaded_pool: Any) -> None:
    app = build_app(loaded_pool, make_settings(api_token=API_TOKEN))
    async with await client_for(app) as client:
        r = await client.get(
            "/search",
            params={"q": "  restore a postgres database backup ", "k": 3, "mode": "vector"},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )
    assert r.status_code == 200
    body = r.json()
    assert body["query"] == "restore a postgres database backup" and body["mode"] == "vector"
    assert len(body["results"]) == 3
    top = body["results"][0]
    assert set(top) == {
        "score",
        "text",
        "page_id",
        "title",
        "url",
        "space_key",
        "header_path",
        "version",
        "last_modified",
    }
    assert top["page_id"] == "107" and top["space_key"] == "OPS" and top["version"] == 3
    assert top["url"].endswith("/pages/107") and top["header_path"] == "Restore"


async def test_filters_and_default_mode(loaded_pool: Any) -> None:
    app = build_app(loaded_pool, make_settings())
    async with await client_for(app) as client:
        r = await client.get("/search", params={"q": "ERR-4711"})
        assert r.status_code == 200 and r.json()["mode"] == "hybrid"
        assert "ERR-4711" in r.json()["results"][0]["text"]
        r = await client.get("/search", params={"q": "policy", "space": "HR", "label": "policy", "k": 100})
        results = r.json()["results"]
        assert results and all(x["space_key"] == "HR" for x in results)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "   "}, "blank"),
        ({"q": "x" * 1001}, "q"),
        ({"q": "vpn", "k": "0"}, "k"),
        ({"q": "vpn", "k": "101"}, "k"),
        ({"q": "vpn", "k": "ten"}, "k"),
        ({"q": "vpn", "mode": "fuzzy"}, "mode"),
        ({"q": "vpn", "space": "S" * 256}, "space"),
        ({"q": "vpn", "label": "l" * 256}, "label"),
    ],
)
async def test_invalid_parameters_are_422_with_a_reason(pool: Any, params: dict[str, str], fragment: str) -> None:
    app = build_app(pool, make_settings())
    async with await client_for(app) as client:
        r = await client.get("/search", params=params)
    assert r.status_code == 422
    assert fragment in r.text


async def test_limits_are_inclusive(loaded_pool: Any) -> None:
    app = build_app(loaded_pool, make_settings())
    async with await client_for(app) as client:
        for params in ({"q": "x" * 1000, "k": "1"}, {"q": "vpn", "k": "100", "space": "S" * 255}):
            r = await client.get("/search", params=params)
            assert r.status_code == 200, r.text


async def test_no_token_loopback_only(pool: Any) -> None:
    settings = make_settings()
    # loopback bind, loopback client: allowed
    async with await client_for(build_app(pool, settings)) as client:
        assert (await client.get("/search", params={"q": "vpn"})).status_code == 200
        assert (await client.get("/other")).status_code == 200
    # loopback bind, remote client (e.g. through a tunnel): refused
    async with await client_for(build_app(pool, settings), client_host="10.1.2.3") as client:
        r = await client.get("/search", params={"q": "vpn"})
        assert r.status_code == 403 and "API_TOKEN" in r.json()["detail"]
    # public bind: refused even from loopback, with the reason
    for bind in ("0.0.0.0", "10.0.0.7", None):
        async with await client_for(build_app(pool, settings, bind=bind)) as client:
            r = await client.get("/search", params={"q": "vpn"})
            assert r.status_code == 403 and "API_TOKEN" in r.json()["detail"]
            assert (await client.get("/other")).status_code == 403


async def test_bind_host_recorded_by_create_app_is_honoured(pool: Any) -> None:
    app = build_app(pool, make_settings(), bind=None)
    app.state.bind_host = "127.0.0.1"  # what app.api.create_app sets
    async with await client_for(app) as client:
        assert (await client.get("/search", params={"q": "vpn"})).status_code == 200
    app.state.bind_host = "0.0.0.0"
    async with await client_for(app) as client:
        assert (await client.get("/search", params={"q": "vpn"})).status_code == 403


async def test_token_configured_public_bind(loaded_pool: Any) -> None:
    app = build_app(loaded_pool, make_settings(api_token=API_TOKEN), bind="0.0.0.0")
    async with await client_for(app, client_host="203.0.113.9") as client:
        assert (await client.get("/search", params={"q": "vpn"})).status_code == 401
        r = await client.get("/search", params={"q": "vpn"}, headers={"Authorization": f"Bearer {API_TOKEN}"})
        assert r.status_code == 200 and r.json()["results"]


async def test_embedding_server_down_is_503(pool: Any) -> None:
    class DownEmbedder:
        async def aget_query_embedding(self, query: str) -> list[float]:
            raise EmbeddingUnavailable("ollama unreachable")

    app = build_app(pool, make_settings(), embedder=DownEmbedder())
    async with await client_for(app) as client:
        r = await client.get("/search", params={"q": "vpn"})
    assert r.status_code == 503 and r.headers["retry-after"]


# --- delivery dedupe records --------------------------------------------------------------------------------
async def _seen(pool: Any, digest: str, window: int) -> bool:
    async with pool.connection() as conn:
        return digest in await recently_seen(conn, [digest, "body:unrelated"], window)


async def _remember(pool: Any, *digests: str) -> None:
    async with pool.connection() as conn:
        await remember_deliveries(conn, list(digests))


async def test_recently_seen_and_remember(pool: Any) -> None:
    assert not await _seen(pool, "body:abc", 300)
    await _remember(pool, "body:abc", "body:abc")  # the same digest twice in one batch is one row
    assert await _seen(pool, "body:abc", 300)
    assert not await _seen(pool, "body:abc", 0)  # window 0 disables dedupe
    assert not await _seen(pool, "body:other", 300)

    async with pool.connection() as conn:
        await conn.execute("UPDATE cv_deliveries SET received_at = now() - interval '10 minutes'")
    assert not await _seen(pool, "body:abc", 300)  # outside the window
    assert await _seen(pool, "body:abc", 3600)
    await _remember(pool, "body:abc", "body:new")  # upsert refreshes the time
    assert await _seen(pool, "body:abc", 300) and await _seen(pool, "body:new", 300)


async def test_prune_drops_old_rows_only(pool: Any) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            """INSERT INTO cv_deliveries (digest, received_at) VALUES
               ('old', now() - interval '2 days'), ('recent', now() - interval '2 hours')"""
        )
    await _remember(pool, "new")
    await prune_deliveries(pool)
    async with pool.connection() as conn:
        rows = await (await conn.execute("SELECT digest FROM cv_deliveries ORDER BY digest")).fetchall()
    assert [r[0] for r in rows] == ["new", "recent"]
    # a dedupe window longer than the default retention keeps its rows
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO cv_deliveries (digest, received_at) VALUES ('week', now() - interval '3 days')")
    await _remember(pool, "new2")
    await prune_deliveries(pool, window_seconds=7 * 86400)
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT count(*) FROM cv_deliveries WHERE digest = 'week'")).fetchone()
    assert row is not None and row[0] == 1


async def test_a_search_that_names_no_person_is_refused_with_a_reason(loaded_pool: Any) -> None:
    """With no SEARCH_SERVICE_IDENTITY, a search must say whose it is: never the service account's view by
    default (it can read private spaces and restricted pages)."""
    app = build_app(loaded_pool, make_settings(), as_service_account=False)
    async with await client_for(app) as client:
        r = await client.get("/search", params={"q": "deploy"})
    assert r.status_code == 400, r.text
    assert "X-Confluence-User" in r.text


async def test_hnsw_ef_search_setting_reaches_the_search(loaded_pool: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """HNSW_EF_SEARCH is the floor the route's searches walk the HNSW graph with (ef_search_for's `least`)."""
    import app.search as search_module

    seen: list[int] = []
    real = search_module.ef_search_for

    def spy(limit: int, *, filtered: bool = False, least: int = search_module.DEFAULT_EF_SEARCH) -> int:
        seen.append(least)
        return real(limit, filtered=filtered, least=least)

    monkeypatch.setattr(search_module, "ef_search_for", spy)
    async with await client_for(build_app(loaded_pool, make_settings(hnsw_ef_search=321))) as client:
        for mode in ("vector", "hybrid"):
            r = await client.get("/search", params={"q": "vpn", "mode": mode})
            assert r.status_code == 200 and r.json()["results"]
    assert seen == [321, 321]
