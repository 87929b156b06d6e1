"""The HTTP service: webhook, search, status, health and metrics, with an optional in-process worker."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import __version__
from app.api_auth import status_caller
from app.config import Settings
from app.errors import ConfluenceVectorsError
from app.gauges import StateGauges
from app.mcp_server import mount_http as mount_mcp
from app.routes_access import router as access_router
from app.routes_search import router as search_router
from app.runtime import Runtime
from app.status import status_report, without_page_details
from app.tasks import run_worker_forever
from app.webhook import router as webhook_router

log = logging.getLogger(__name__)

_READY_CACHE_SECONDS = 5.0


def create_app(settings: Settings, *, worker: bool = True, bind_host: str = "127.0.0.1") -> FastAPI:
    """The ASGI app. `worker=True` runs a queue worker in the same process (the `serve` default)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            runtime = await Runtime.open(settings)
        except ConfluenceVectorsError as exc:
            # Said once, plainly, before the server framework's own traceback of the failed start.
            log.error(f"start refused: {exc}")
            raise
        app.state.runtime = runtime
        app.state.bind_host = bind_host
        app.state.ready_cache = {}
        worker_task: asyncio.Task[None] | None = None
        if worker:
            worker_task = asyncio.create_task(run_worker_forever(runtime, name="serve-worker"))
        try:
            async with mcp_sessions.run():  # the MCP transport's task group (mcp SDK: mounting in another app)
                yield
        finally:
            if worker_task is not None:
                worker_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await worker_task
            await runtime.close()

    # /docs and /redoc from assets shipped in the `fastapi-offline` package, not a CDN (FastAPI's "Self-hosting
    # JavaScript and CSS for docs" recipe): the docs work on a machine without internet.
    app = FastAPIOffline(
        title="confluence-vectors",
        version=__version__,
        description="Keeps a Postgres/pgvector index of a Confluence wiki in sync, live.",
        lifespan=lifespan,
    )
    app.include_router(webhook_router)
    app.include_router(search_router)
    app.include_router(access_router)  # /access/explain (issue 12), token-protected like /status
    mcp_sessions = mount_mcp(  # /mcp, behind the same token as /search
        app, lambda: app.state.runtime, bind_host=bind_host, token_required=settings.api_token is not None
    )

    state_gauges = StateGauges()

    @app.get("/healthz", summary="Process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Dependencies reachable", responses={503: {"description": "Not ready"}})
    async def readyz(request: Request) -> JSONResponse:
        rt: Runtime = request.app.state.runtime
        cache: dict[str, tuple[float, dict[str, Any]]] = request.app.state.ready_cache
        checks = {
            "postgres": lambda: _check_postgres(rt),
            "queue": lambda: _check_queue(rt),
            "ollama": rt.embedder.check_model,
            "confluence": rt.confluence.check_credentials,
        }
        results = await asyncio.gather(*(_cached(cache, name, check) for name, check in checks.items()))
        body = dict(zip(checks, results, strict=True))
        ready = all(r["ok"] for r in results)
        return JSONResponse({"ready": ready, "checks": body}, status_code=200 if ready else 503)

    @app.get("/status", summary="What the index holds (per-page entries for operators only)")
    async def status(request: Request, operator: Annotated[bool, Depends(status_caller)]) -> dict[str, Any]:
        report = await status_report(request.app.state.runtime)
        return dataclasses.asdict(report) if operator else without_page_details(report)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        rt: Runtime = request.app.state.runtime
        await state_gauges.refresh(rt)  # cheap, rate-limited, never raises (app.gauges)
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _cached(
    cache: dict[str, tuple[float, dict[str, Any]]], name: str, check: Callable[[], Awaitable[Any]]
) -> dict[str, Any]:
    hit = cache.get(name)
    if hit and time.monotonic() - hit[0] < _READY_CACHE_SECONDS:
        return hit[1]
    try:
        await asyncio.wait_for(check(), timeout=5.0)
        result: dict[str, Any] = {"ok": True}
    except Exception as exc:
        # The text can name hosts, ports, users and server messages; /readyz needs no credentials, so the
        # caller gets "unavailable" and the operator gets the reason in the log.
        log.warning("readiness check failed", extra={"check": name, "error": f"{type(exc).__name__}: {exc}"[:500]})
        result = {"ok": False, "error": "unavailable"}
    cache[name] = (time.monotonic(), result)
    return result


async def _check_postgres(rt: Runtime) -> None:
    async with rt.pool.connection() as conn:
        await conn.execute("SELECT 1")


async def _check_queue(rt: Runtime) -> None:
    if not await rt.queue.check_connection_async():
        raise RuntimeError("procrastinate tables missing")
