"""Who may read wiki content over HTTP: the API bearer token, or loopback when no token is configured.

Guards every endpoint that returns page text (`/search`, `/status`, the MCP app). The token check is
`app.credentials.verify_token` (constant time); refusals say why, never with the presented value.
"""

from __future__ import annotations

import ipaddress
import logging

from fastapi import HTTPException, Request

from app.config import Settings
from app.credentials import verify_token

log = logging.getLogger(__name__)


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


def _bind_host(request: Request) -> str | None:
    """The address the server binds, as `app.api.create_app` records it on `app.state` (per app, so two apps
    in one process, as in tests, each have their own); None when the app never said."""
    bind_host = getattr(request.app.state, "bind_host", None)
    return bind_host if isinstance(bind_host, str) else None


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

    bind_host = _bind_host(request)
    if bind_host is None or not is_loopback(bind_host):
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


def is_operator(request: Request) -> bool:
    """Whether the caller may see per-page operational detail (`/status` lists of page ids, titles, errors and
    attachment file names), which names pages a person-scoped app's users may not read (issue 12: results,
    counts and errors never reveal a page the person cannot read, not even through `/status`).

    True for `Authorization: Bearer <OPERATOR_TOKEN>` (constant-time compare), and for a service with neither
    `API_TOKEN` nor `OPERATOR_TOKEN` (then `require_api_token` admits loopback clients of a loopback-bound
    server only: someone on the operator's machine, who can run the CLI `status` anyway). The API token alone
    is never enough: every app holds it, including those answering for a person.
    """
    settings = _settings(request)
    if settings.operator_token is None:
        return settings.api_token is None
    scheme, _, credentials = (request.headers.get("authorization") or "").partition(" ")
    return scheme.lower() == "bearer" and verify_token(credentials.strip(), settings.operator_token.get_secret_value())


async def status_caller(request: Request) -> bool:
    """FastAPI dependency of `/status`: admits the operator token or whoever `require_api_token` admits, and
    says whether the caller is an operator (`is_operator`), i.e. sees per-page detail. Raises HTTPException
    401/403 as `require_api_token` does."""
    if _settings(request).operator_token is not None and is_operator(request):
        return True
    await require_api_token(request)
    return is_operator(request)


async def require_operator(request: Request) -> None:
    """FastAPI dependency of operator-only routes (`/access/explain`): the operator token, or, on a service with
    neither token, a loopback client as `require_api_token` admits it. The API token alone is refused (403):
    person-scoped apps hold it, and "who may read page X" names pages their users may not read.
    Raises HTTPException 401/403.
    """
    if _settings(request).operator_token is not None and is_operator(request):
        return
    await require_api_token(request)
    if not is_operator(request):
        raise HTTPException(
            status_code=403,
            detail="operator-only: send `Authorization: Bearer <OPERATOR_TOKEN>` (or use `confluence-vectors "
            "explain-access` on the server)",
        )
