"""`POST /webhook/confluence`: validate, authenticate, store the job durably, answer. Nothing else.

Confluence sends three shapes (see the corpus): Data Center `{"event", "page": {"id": 123}}`; Cloud REST hooks
without any `event` and `page.id` as a string (the event is in our URL's `event` query parameter, one hook per
event); Cloud Connect with `page.id` as a number. We only need the page id: the worker fetches the truth.
The one read made here: a comment event that names only its comment is resolved to its page first
(`_comment_page`), because jobs are keyed by page.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from app.access_jobs import defer_folder_refresh, defer_space_refresh
from app.comments import comment_container, indexed_comment_page
from app.deliveries import delivery_digest, recently_seen
from app.errors import DatabaseUnavailable, WebhookRejected
from app.intake import Delivery
from app.permission_events import (
    CONTENT_PERMISSION_EVENTS,
    FOLDER_EVENT_PREFIX,
    SPACE_PERMISSION_EVENTS,
    FolderEvent,
    SpacePermissionEvent,
    content_object,
    folder_object,
    space_key_of,
)
from app.queue import PageJobRequest
from app.webhook_auth import authenticate_webhook

log = logging.getLogger(__name__)


class _DirectRoute(APIRoute):
    """A documented route whose endpoint gets the bare `Request` and returns its own `Response`.

    FastAPI's handler resolves dependencies, validates parameters and serialises the return value on every
    call; this endpoint uses none of that (it reads its body and query itself, to the byte limit) and is the
    hot path under a webhook burst: measured 74 → 54 us per request in-process (a bare FastAPI 202: 40 us).
    OpenAPI still describes it from the decorator.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            response: Response = await endpoint(request)
            return response

        return handler


router = APIRouter(route_class=_DirectRoute)

#: Events about content other than pages and blog posts: acknowledged, not acted on.
_IGNORED_PREFIXES = ("space_", "user_", "group_", "theme_", "login", "logout")
#: Comment and attachment events re-index their container page, whose job converges its comments and files.
_CHILD_KEYS = ("comment", "attachment", "attachments")
_CONTAINER_KEYS = ("container", "parent", "attachedTo", "page", "blogpost", "content")
_CONTENT_KEYS = (("page", "page"), ("blogpost", "blogpost"), ("blog", "blogpost"))
_MAX_ID_LENGTH = 32
#: What an event name may hold once normalised: Confluence's are `page_updated`, Connect's `avi:...` forms.
_EVENT_NAME = re.compile(r"[a-z0-9_:.\-]{1,100}")


@dataclass(frozen=True, slots=True)
class PageEvent:
    """What a webhook tells us: which content may have changed, and what Confluence called the event."""

    event: str
    page_id: str
    content_type: str


@dataclass(frozen=True, slots=True)
class CommentEvent:
    """A comment event that names the comment but not its page (Data Center sends `{"comment": {"id": 1}}`):
    the page is looked up before the job is stored (`_comment_page`)."""

    event: str
    comment_id: str


@dataclass(frozen=True, slots=True)
class Ignored:
    event: str
    reason: str


def normalise_event(name: str) -> str:
    """`page_updated`, or Connect's `avi:confluence:updated:page` → `page_updated`; lower case, stripped."""
    name = name.strip().lower()
    if name.startswith("avi:confluence:"):
        parts = name.split(":")
        if len(parts) >= 4:
            return f"{parts[3]}_{parts[2]}"
    return name


def parse_event(
    body: bytes, event_param: str | None
) -> PageEvent | SpacePermissionEvent | FolderEvent | CommentEvent | Ignored:
    """Read a webhook body. Raises WebhookRejected (400 not JSON, 422 no usable page id)."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WebhookRejected(f"body is not JSON: {exc}", status_code=400) from exc
    except ValueError as exc:  # int() refuses over sys.get_int_max_str_digits() digits (4,300; CVE-2020-10735)
        raise WebhookRejected("body is not usable JSON: a number has too many digits", status_code=400) from exc
    except RecursionError as exc:  # json's scanner recurses once per nested array or object
        raise WebhookRejected("body is not usable JSON: nested too deeply", status_code=400) from exc
    if not isinstance(payload, dict):
        raise WebhookRejected("body must be a JSON object", status_code=422)

    raw_event = payload.get("event") if isinstance(payload.get("event"), str) else event_param
    if raw_event is None and isinstance(payload.get("eventType"), str):  # Forge product events
        raw_event = payload["eventType"]
    event = normalise_event(raw_event) if raw_event else ""
    if event and not _EVENT_NAME.fullmatch(event):  # it becomes a job argument and a log field
        raise WebhookRejected(
            f"event name must be at most {_EVENT_MAX} letters, digits or `_:.-` characters", status_code=422
        )
    if event in SPACE_PERMISSION_EVENTS:  # who may read a space changed (app.permission_events)
        key = space_key_of(payload)
        if key is None:
            raise WebhookRejected("space permission event without `space.key`", status_code=422)
        return SpacePermissionEvent(event, key)
    folder = folder_object(event, payload)  # a folder on pages' paths moved or changed its restriction
    if folder is not None:
        return FolderEvent(event, _page_id(folder))
    if event.startswith(FOLDER_EVENT_PREFIX):
        raise WebhookRejected("folder event without a `folder` (or `content`) object", status_code=422)
    if event in CONTENT_PERMISSION_EVENTS:  # a restriction changed: the page job re-reads it (no re-embed)
        found = content_object(payload)
        if found is None:
            raise WebhookRejected("permission event without a `content` (or `page`) object", status_code=422)
        return PageEvent(event, _page_id(found[0]), found[1])
    if event.startswith(_IGNORED_PREFIXES):
        return Ignored(event, "not a page or blog post event")
    if event.startswith(("comment_", "attachment_")) or (not event and any(k in payload for k in _CHILD_KEYS)):
        return _container_event(event, payload)
    if event.startswith("label_"):
        content = payload.get("labeled") or payload.get("page") or payload.get("blogpost")
        if not isinstance(content, dict):
            return Ignored(event, "label event without a page")

    for key, content_type in _CONTENT_KEYS:
        content = payload.get(key)
        if isinstance(content, dict):
            page_id = _page_id(content)
            kind = content.get("contentType") if isinstance(content.get("contentType"), str) else content_type
            return PageEvent(event or f"{content_type}_updated", page_id, "blogpost" if kind == "blogpost" else "page")
    if event.startswith("label_") and isinstance(payload.get("labeled"), dict):
        return PageEvent(event, _page_id(payload["labeled"]), "page")
    raise WebhookRejected("no page: expected a `page` (or `blogpost`) object with an `id`", status_code=422)


def _container_event(event: str, payload: dict[str, Any]) -> PageEvent | CommentEvent | Ignored:
    """A comment or attachment event as an event of the page (or blog post) it belongs to: Cloud and Data
    Center put that page in the child's `parent`/`container` (or beside it as `page`). A comment event
    naming only its comment becomes a CommentEvent (its page is looked up); an attachment event without its
    page is acknowledged and left to the page's next job."""
    found = [payload.get(key) for key in _CHILD_KEYS]
    holders: list[dict[str, Any]] = [
        c for item in found for c in (item if isinstance(item, list) else [item]) if isinstance(c, dict)
    ]
    for holder in [*holders, payload]:
        for key in _CONTAINER_KEYS:
            content = holder.get(key)
            if isinstance(content, dict) and content.get("id", content.get("idAsString")) is not None:
                kind = content.get("contentType") or content.get("type") or key
                if kind in ("comment", "attachment"):
                    continue
                name = event or ("comment_updated" if "comment" in payload else "attachment_updated")
                return PageEvent(name, _page_id(content), "blogpost" if kind in ("blogpost", "blog") else "page")
    comment = payload.get("comment")
    named = isinstance(comment, dict) and comment.get("id", comment.get("idAsString")) is not None
    if isinstance(comment, dict) and named and (event.startswith("comment_") or not event):
        return CommentEvent(event or "comment_updated", _page_id(comment))
    return Ignored(event or "comment", "no page named for this comment or attachment")


def _page_id(content: dict[str, Any]) -> str:
    """The content id as a canonical string of ASCII digits, at most `_MAX_ID_LENGTH` of them whether it came
    as a JSON number (Data Center, Connect) or a string (Cloud REST). Raises WebhookRejected(422) otherwise.

    `str.isdigit` alone is not enough: it accepts `²` and Arabic-Indic digits, which no Confluence id holds.
    The number's size is checked before it is turned into text, so a huge integer costs nothing.
    """
    value = content.get("id", content.get("idAsString"))
    if isinstance(value, bool) or value is None:
        raise WebhookRejected("`page.id` is missing", status_code=422)
    if isinstance(value, int):
        if value <= 0:
            raise WebhookRejected("`page.id` must be positive", status_code=422)
        if value >= 10**_MAX_ID_LENGTH:
            raise WebhookRejected(f"`page.id` is longer than {_MAX_ID_LENGTH} digits", status_code=422)
        return str(value)
    if isinstance(value, str):
        digits = value.strip()
        if len(digits) > _MAX_ID_LENGTH:
            raise WebhookRejected(f"`page.id` is longer than {_MAX_ID_LENGTH} digits", status_code=422)
        if digits.isascii() and digits.isdigit():
            canonical = digits.lstrip("0")
            if not canonical:  # "0", "000": no content has id 0, as for the number 0
                raise WebhookRejected("`page.id` must be positive", status_code=422)
            return canonical
    raise WebhookRejected("`page.id` must be a number or a string of digits", status_code=422)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise WebhookRejected(f"body larger than {limit} bytes", status_code=413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise WebhookRejected(f"body larger than {limit} bytes", status_code=413)
        chunks.append(chunk)
    return b"".join(chunks)


#: Query parameters, read by hand (see `confluence_webhook`) and documented here for the OpenAPI schema.
_EVENT_MAX, _TOKEN_MAX = 100, 500
_QUERY_PARAMETERS = (
    ("event", _EVENT_MAX, "Event name for Cloud REST hooks, which do not put it in the body"),
    ("token", _TOKEN_MAX, "Shared token (Cloud REST hooks, which cannot sign)"),
)


def _query_parameter(request: Request, name: str, max_length: int) -> str | None:
    value = request.query_params.get(name)
    if value is not None and len(value) > max_length:
        raise WebhookRejected(f"query parameter `{name}` is longer than {max_length} characters", status_code=422)
    return value


@router.post(
    "/webhook/confluence",
    status_code=202,
    summary="Receive a Confluence webhook",
    responses={
        200: {"description": "Ignored or duplicate delivery"},
        400: {"description": "Body is not JSON"},
        401: {"description": "Missing or invalid signature / token"},
        413: {"description": "Body too large"},
        422: {"description": "No usable page id, or a query parameter too long"},
        503: {"description": "The job could not be stored; retry later"},
    },
    openapi_extra={
        "parameters": [
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": description,
                "schema": {"type": "string", "maxLength": max_length},
            }
            for name, max_length, description in _QUERY_PARAMETERS
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
            "description": "The webhook as Confluence sends it (Cloud or Data Center shape)",
        },
    },
)
async def confluence_webhook(request: Request) -> JSONResponse:
    """Validate, authenticate, hand the delivery to the intake, answer (why the bare `Request`: `_DirectRoute`)."""
    rt = request.app.state.runtime
    settings = rt.settings
    metrics = rt.metrics
    event: str | None = None
    try:
        event = _query_parameter(request, "event", _EVENT_MAX)
        token = _query_parameter(request, "token", _TOKEN_MAX)
        body = await _read_body(request, settings.max_body_bytes)
        authenticate_webhook(body, request.headers, token, settings)
        parsed = parse_event(body, event)
    except WebhookRejected as exc:
        metrics.webhook(normalise_event(event) if event else None, f"rejected_{exc.status_code}")
        return JSONResponse({"status": "rejected", "reason": str(exc)}, status_code=exc.status_code)

    if isinstance(parsed, SpacePermissionEvent):
        return await _space_permission_event(rt, parsed)
    if isinstance(parsed, FolderEvent):
        return await _folder_event(rt, parsed)
    if isinstance(parsed, Ignored):
        metrics.webhook(parsed.event, "ignored")
        return JSONResponse({"status": "ignored", "reason": parsed.reason}, status_code=200)
    url_event = normalise_event(event) if event else None  # part of the dedupe key (app.deliveries)
    digest = delivery_digest(body, request.headers, url_event)
    comment_only = isinstance(parsed, CommentEvent)
    if isinstance(parsed, CommentEvent):
        # A re-delivery costs no Confluence read: checked before the lookup (the intake checks again when
        # storing, in its transaction, so two copies racing here still make one job).
        if await _seen(rt, digest):
            metrics.webhook(parsed.event, "duplicate")
            return JSONResponse({"status": "duplicate"}, status_code=200)
        resolved = await _comment_page(rt, parsed)
        if isinstance(resolved, JSONResponse):
            return resolved
        parsed = resolved

    delivery = Delivery(PageJobRequest(parsed.page_id, parsed.content_type, parsed.event), digest)
    try:
        outcome = await rt.intake.submit(delivery)
    except Exception as exc:  # never a 202 for unstored work
        metrics.webhook(parsed.event, "unavailable")
        if isinstance(exc, DatabaseUnavailable):
            log.error("cannot store webhook job", extra={"page_id": parsed.page_id, "error": str(exc)})
            reason = "the job queue is unreachable; retry later"
        else:
            log.exception("cannot store webhook job", extra={"page_id": parsed.page_id})
            reason = f"the job could not be stored ({type(exc).__name__})"
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503, headers={"Retry-After": "5"})
    metrics.webhook(parsed.event, outcome)
    if comment_only:  # never name the page the service account found: see `_COMMENT_ACCEPTED`
        return JSONResponse(_COMMENT_ACCEPTED, status_code=202)
    if outcome == "duplicate":
        return JSONResponse({"status": "duplicate", "page_id": parsed.page_id}, status_code=200)
    return JSONResponse({"status": "queued", "page_id": parsed.page_id, "event": parsed.event}, status_code=202)


#: The one answer to a comment-only event, whether its page was found and queued or nothing knows the comment
#: (logged, and counted as `unresolved` in the metrics). Its page is looked up with the service account, which
#: reads restricted pages too: an answer naming the page, or differing between known and unknown ids, would
#: let anyone who can post to the webhook (it may run without WEBHOOK_SECRET on a private network) map
#: comment ids to pages they may not read.
_COMMENT_ACCEPTED = {"status": "accepted", "reason": "the comment's page is queued when Confluence names it"}


async def _seen(rt: Any, digest: str) -> bool:
    """Whether this delivery was accepted within DEDUPE_WINDOW_SECONDS (`app.deliveries.recently_seen`).
    False when the database cannot say: the intake then answers for the store."""
    try:
        async with rt.pool.connection() as conn:
            return digest in await recently_seen(conn, [digest], rt.settings.dedupe_window_seconds)
    except Exception as exc:
        log.warning("cannot check for a re-delivery", extra={"error": repr(exc)})
        return False


#: Seconds a webhook waits for Confluence to name a comment's page (retries included) before answering 503.
_RESOLVE_TIMEOUT = 10.0


async def _comment_page(rt: Any, parsed: CommentEvent) -> PageEvent | JSONResponse:
    """The page a comment-only event is about: Confluence's answer (`app.comments.comment_container`), else
    the page whose rows hold the comment (a removed comment: that page's job drops its rows). Neither: a 202
    `_COMMENT_ACCEPTED` all the same, logged and counted `unresolved` — nothing of the comment is indexed, so
    nothing can go stale. Confluence unreachable
    or slow: 503 with Retry-After, never a 202 for work not stored. Why here and not in a job: the job queue
    is keyed by page, and this lookup is one read for a rare shape of event."""
    try:
        found = await asyncio.wait_for(comment_container(rt.confluence, parsed.comment_id), _RESOLVE_TIMEOUT)
        if found is None:
            found = await indexed_comment_page(rt.pool, rt.settings.physical_table, parsed.comment_id)
    except Exception as exc:
        rt.metrics.webhook(parsed.event, "unavailable")
        log.warning("cannot look up a comment's page", extra={"comment_id": parsed.comment_id, "error": repr(exc)})
        body = {"status": "unavailable", "reason": "the comment's page could not be looked up; retry later"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    if found is None:
        rt.metrics.webhook(parsed.event, "unresolved")
        log.warning(
            "cannot resolve comment's page: Confluence shows no such comment and no indexed page holds it",
            extra={"comment_id": parsed.comment_id, "event": parsed.event},
        )
        return JSONResponse(_COMMENT_ACCEPTED, status_code=202)
    return PageEvent(parsed.event, found[0], found[1])


async def _space_permission_event(rt: Any, parsed: SpacePermissionEvent) -> JSONResponse:
    """Queue a re-read of the space's read permission; 503 when it cannot be stored (Confluence may retry)."""
    return await _access_job(rt, parsed.event, "space_key", parsed.space_key, defer_space_refresh)


async def _folder_event(rt: Any, parsed: FolderEvent) -> JSONResponse:
    """Queue a re-read of a folder's restriction and path (its pages follow); 503 when it cannot be stored."""
    return await _access_job(rt, parsed.event, "folder_id", parsed.folder_id, defer_folder_refresh)


async def _access_job(
    rt: Any, event: str, key_name: str, key: str, defer: Callable[[Any, str], Awaitable[bool]]
) -> JSONResponse:
    """202 once the access job for `key` is stored (or joins one waiting); never a 202 for unstored work."""
    try:
        queued = await defer(rt, key)
    except Exception:
        rt.metrics.webhooks.labels(event, "unavailable").inc()
        log.exception("cannot store access job", extra={key_name: key})
        body = {"status": "unavailable", "reason": "the job could not be stored; retry later"}
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    outcome = "queued" if queued else "duplicate"
    rt.metrics.webhooks.labels(event, outcome).inc()
    return JSONResponse({"status": outcome, key_name: key, "event": event}, status_code=202)
