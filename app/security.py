"""Who may talk to us: webhook authenticity, re-delivery detection, and the API token.

Every comparison of a secret is constant time (`hmac.compare_digest` on bytes), and no secret, token or
signature is ever logged or put in an error message: messages say *which* check failed, never the values.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app.config import Settings
from app.errors import WebhookRejected

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature"
#: Atlassian Cloud's delivery id: unique per delivery and unchanged across its retries. Data Center sends
#: none. `X-Request-Id` is deliberately not used: proxies stamp a fresh one on every hop and retry, which
#: would make every re-delivery look new.
DELIVERY_ID_HEADERS = ("X-Atlassian-Webhook-Identifier",)
#: Digests are kept at least this long, whatever the dedupe window, so pruning never outruns a check.
MIN_RETENTION_SECONDS = 86_400


# --- webhooks -----------------------------------------------------------------------------------------------
def _bytes(value: str) -> bytes:
    """Header values arrive as latin-1-decoded `str`; `compare_digest` refuses non-ASCII `str`, not bytes."""
    return value.encode("utf-8", "surrogateescape")


def signature_for(body: bytes, secret: str) -> str:
    """The `X-Hub-Signature` value Confluence Data Center sends for `body` (HMAC-SHA256 of the raw body)."""
    return "sha256=" + hmac.new(_bytes(secret), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secret: str) -> bool:
    """True when `header` is the HMAC-SHA256 of the raw `body` under `secret`, as `sha256=<hex>` or bare hex.

    Any other algorithm prefix is refused rather than guessed at: a downgrade to SHA-1 is not ours to accept.
    """
    if not header or not secret:
        return False
    given = header.strip()
    algorithm, sep, digest = given.partition("=")
    if sep:
        if algorithm.strip().lower() != "sha256":
            return False
        given = digest.strip()
    expected = hmac.new(_bytes(secret), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(_bytes(given.lower()), expected.encode("ascii"))


def verify_token(given: str | None, expected: str) -> bool:
    """Constant-time equality of a presented token with the configured one; an empty one never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(_bytes(given), _bytes(expected))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup that works for Starlette's `Headers` and for a plain dict alike."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, candidate in headers.items():
        if key.lower() == wanted:
            return candidate
    return None


def authenticate_webhook(body: bytes, headers: Mapping[str, str], query_token: str | None, settings: Settings) -> None:
    """Accept the delivery if any configured check passes; raise `WebhookRejected(401)` otherwise.

    Either check suffices because the two products differ: Data Center signs (`WEBHOOK_SECRET`), Cloud REST
    hooks cannot, so they carry a token in the URL (`WEBHOOK_TOKEN`). With neither configured there is
    nothing to check (the operator chose a private network), and every delivery is accepted.
    """
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    token = settings.webhook_token.get_secret_value() if settings.webhook_token else None
    if not secret and not token:
        return
    signature = _header(headers, SIGNATURE_HEADER)
    if secret and verify_signature(body, signature, secret):
        return
    if token and verify_token(query_token, token):
        return
    problems = []
    if secret:
        problems.append(f"{SIGNATURE_HEADER} {'does not match the body' if signature else 'is missing'}")
    if token:
        problems.append(f"the `token` query parameter {'is wrong' if query_token else 'is missing'}")
    raise WebhookRejected("unauthenticated webhook: " + " and ".join(problems), status_code=401)


def delivery_digest(body: bytes, headers: Mapping[str, str]) -> str:
    """A key that is the same for a delivery and its re-deliveries: Atlassian's delivery id when sent, else
    the body's SHA-256 (Data Center bodies carry the event's timestamp, so distinct events differ).

    Hashed and prefixed either way, so the key has a fixed size and an id can never collide with a body.
    """
    for name in DELIVERY_ID_HEADERS:
        value = _header(headers, name)
        if value and value.strip():
            return "id:" + hashlib.sha256(_bytes(value.strip())).hexdigest()
    return "body:" + hashlib.sha256(body).hexdigest()


async def recently_seen(conn: AsyncConnection[Any], digests: Sequence[str], window_seconds: int) -> set[str]:
    """Which of `digests` were accepted within the last `window_seconds` (0 disables deduplication).

    Takes the caller's connection: the webhook intake checks, defers and remembers a whole batch in one
    transaction, so a delivery is marked seen exactly when its job is committed.
    """
    if window_seconds <= 0 or not digests:
        return set()
    cur = await conn.execute(
        """SELECT digest FROM cv_deliveries
           WHERE digest = ANY(%s) AND received_at > now() - make_interval(secs => %s)""",
        (list(digests), window_seconds),
    )
    return {row[0] for row in await cur.fetchall()}


async def remember_deliveries(conn: AsyncConnection[Any], digests: Sequence[str]) -> None:
    """Record accepted deliveries: one upsert per batch, all the webhook path pays (pruning is the tick's)."""
    if not digests:
        return
    await conn.execute(
        """INSERT INTO cv_deliveries (digest) SELECT DISTINCT d FROM unnest(%s::text[]) AS d ORDER BY d
           ON CONFLICT (digest) DO UPDATE SET received_at = now()""",
        (sorted(digests),),  # one lock order for every batch: concurrent batches wait, never deadlock
    )


async def prune_deliveries(pool: AsyncConnectionPool, *, window_seconds: int = 0) -> None:
    """Drop digests past retention so the table stays small; run by the periodic tick, not per webhook.

    Retention is the longer of `window_seconds` and a day: a range delete on the `received_at` index.
    """
    retention = max(window_seconds, MIN_RETENTION_SECONDS)
    async with pool.connection() as conn:
        await conn.execute(
            "DELETE FROM cv_deliveries WHERE received_at < now() - make_interval(secs => %s)", (retention,)
        )


# --- API token ----------------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether `host` (an address, `localhost`, or `[v6]`) is only reachable from this machine.

    `0.0.0.0`, `::` and any other name are not: binding them exposes the service to the network.
    """
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.split("%", 1)[0]  # IPv6 zone id
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@dataclass(frozen=True, slots=True)
class Exposure:
    """Where the server listens, decided once at start-up."""

    bind_host: str

    @property
    def public(self) -> bool:
        return not is_loopback(self.bind_host)


def configure_exposure(app: FastAPI, host: str) -> Exposure:
    """Tell `require_api_token` which address the server binds. Kept on `app.state`, so two apps in one
    process (tests, a reindex side-car) each have their own."""
    exposure = Exposure(bind_host=host)
    app.state.exposure = exposure
    return exposure


def _exposure(request: Request) -> Exposure | None:
    state = request.app.state
    exposure = getattr(state, "exposure", None)
    if isinstance(exposure, Exposure):
        return exposure
    bind_host = getattr(state, "bind_host", None)  # what `create_app` records
    return Exposure(bind_host) if isinstance(bind_host, str) else None


def _settings(request: Request) -> Settings:
    runtime = getattr(request.app.state, "runtime", None)
    settings = getattr(runtime, "settings", None)
    if not isinstance(settings, Settings):
        raise HTTPException(status_code=503, detail="the service is starting")
    return settings


async def require_api_token(request: Request) -> None:
    """FastAPI dependency guarding endpoints that return wiki content (`Depends(require_api_token)`).

    With `API_TOKEN` set, every request needs `Authorization: Bearer <API_TOKEN>`, loopback included. Without
    it, only a loopback client of a loopback-bound server gets in; anything else is refused (403) with the
    reason, because an unauthenticated content endpoint on a network address leaks the wiki. An app that
    never said where it binds is treated as exposed. Note that a reverse proxy on this machine makes every
    client look like loopback: put `API_TOKEN` on any server behind one.
    """
    settings = _settings(request)
    if settings.api_token is not None:
        scheme, _, credentials = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise HTTPException(
                status_code=401,
                detail="missing bearer token: send `Authorization: Bearer <API_TOKEN>`",
                headers={"WWW-Authenticate": 'Bearer realm="confluence-vectors"'},
            )
        if not verify_token(credentials.strip(), settings.api_token.get_secret_value()):
            client = request.client.host if request.client else None
            log.warning("api token rejected", extra={"client": client, "path": request.url.path})
            raise HTTPException(
                status_code=401,
                detail="invalid bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="confluence-vectors", error="invalid_token"'},
            )
        return

    exposure = _exposure(request)
    if exposure is None or exposure.public:
        raise HTTPException(
            status_code=403,
            detail="API_TOKEN is not set and the server is not bound to a loopback address: "
            "set API_TOKEN to serve wiki content over the network",
        )
    client = request.client.host if request.client else None
    if client is None or not is_loopback(client):
        raise HTTPException(
            status_code=403,
            detail="API_TOKEN is not set: only clients on this machine may read wiki content",
        )
