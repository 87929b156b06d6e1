"""Reading Confluence REST responses (Cloud v2, Cloud/Data Center v1) into our models, without I/O.

Kept apart from `confluence.py` so the shapes of the two products can be tested against captured responses
directly, and so the client stays about requests, retries and orchestration. Every reader is strict about the
fields we cannot work without (id, title, version) and forgiving about the rest: a field Confluence omits
because it was not expanded becomes an empty default, not a crash.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urljoin, urlsplit

from app.errors import ConfluenceProtocolError
from app.models import ContentType, Page, PageRef, PageStatus

JSON = dict[str, Any]

_STATUSES: frozenset[str] = frozenset({"current", "trashed", "deleted", "archived", "draft", "historical"})


@dataclass(frozen=True, slots=True)
class SpaceInfo:
    """A space as the v2 API names it: pages carry only its id, so key and name need a lookup."""

    id: str
    key: str
    name: str | None


@dataclass(frozen=True, slots=True)
class CloudContent:
    """A Cloud v2 page or blog post before its space, ancestors, author and restrictions are looked up."""

    id: str
    title: str
    status: PageStatus
    content_type: ContentType
    space_id: str
    author_id: str | None
    version: int
    last_modified: datetime
    body_storage: str
    webui: str
    base: str | None
    labels: tuple[str, ...]
    labels_complete: bool


# --- small, strict accessors ------------------------------------------------------------------------------
def as_object(value: Any, what: str) -> JSON:
    """The JSON object `value`, or a protocol error naming `what` was expected."""
    if not isinstance(value, dict):
        raise ConfluenceProtocolError(f"Confluence sent {type(value).__name__} where {what} was expected")
    return cast(JSON, value)


def _get(data: Mapping[str, Any], *path: str) -> Any:
    """`data[path[0]][path[1]]...`, or None as soon as a step is missing or not an object."""
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _required_str(data: Mapping[str, Any], *path: str) -> str:
    value = _get(data, *path)
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return str(value)
    raise ConfluenceProtocolError(f"Confluence response lacks {'.'.join(path)}")


def _optional_str(data: Mapping[str, Any], *path: str) -> str | None:
    value = _get(data, *path)
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return str(value)
    return None


def _required_int(data: Mapping[str, Any], *path: str) -> int:
    value = _get(data, *path)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise ConfluenceProtocolError(f"Confluence response lacks a numeric {'.'.join(path)}")


def results(data: Mapping[str, Any]) -> list[JSON]:
    """The `results` array of a list response (both products use that name)."""
    items = data.get("results")
    if not isinstance(items, list):
        raise ConfluenceProtocolError("Confluence list response lacks a results array")
    return [as_object(item, "a result object") for item in items]


def parse_datetime(value: Any) -> datetime:
    """An ISO-8601 timestamp as a tz-aware datetime; Confluence writes UTC as `Z` or an offset."""
    if not isinstance(value, str) or not value:
        raise ConfluenceProtocolError(f"Confluence sent {value!r} where a timestamp was expected")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfluenceProtocolError(f"Confluence sent an unreadable timestamp {value!r}") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _status(value: Any) -> PageStatus:
    if isinstance(value, str) and value in _STATUSES:
        return cast(PageStatus, value)
    raise ConfluenceProtocolError(f"Confluence sent an unknown content status {value!r}")


def _content_type(value: Any, default: ContentType) -> ContentType:
    if value in ("page", "blogpost"):
        return cast(ContentType, value)
    return default


def web_url(base: str, webui: str) -> str:
    """`base + webui`: Confluence's `_links.webui` is relative to the site base, context path included."""
    return base.rstrip("/") + "/" + webui.lstrip("/") if webui else base


def next_url(data: Mapping[str, Any], base_url: str) -> str | None:
    """The absolute URL of the next page of results, or None on the last page.

    Cloud v2 writes `_links.next` from the host root (`/wiki/api/v2/...`) while v1 and Data Center write it
    relative to the base (`/rest/api/...`), so a link that already starts with the base's path is joined to
    the origin and any other one to the base.
    """
    link = _get(data, "_links", "next")
    if not isinstance(link, str) or not link:
        return None
    if link.startswith(("http://", "https://")):
        return link
    base_path = urlsplit(base_url).path.rstrip("/")
    if base_path and (link == base_path or link.startswith(base_path + "/")):
        return urljoin(base_url, link)
    return base_url.rstrip("/") + "/" + link.lstrip("/")


# --- Cloud v2 ---------------------------------------------------------------------------------------------
def parse_cloud_content(data: Mapping[str, Any], content_type: ContentType) -> CloudContent:
    """A v2 `GET /pages/{id}` or `/blogposts/{id}` body (with `body-format=storage`, `include-labels`)."""
    label_items = _get(data, "labels", "results")
    labels = tuple(str(item["name"]) for item in label_items or () if isinstance(item, dict) and item.get("name"))
    has_more = bool(_get(data, "labels", "meta", "hasMore"))
    return CloudContent(
        id=_required_str(data, "id"),
        title=_required_str(data, "title"),
        status=_status(data.get("status")),
        content_type=content_type,
        space_id=_required_str(data, "spaceId"),
        author_id=_optional_str(data, "version", "authorId") or _optional_str(data, "authorId"),
        version=_required_int(data, "version", "number"),
        last_modified=parse_datetime(_get(data, "version", "createdAt") or data.get("createdAt")),
        body_storage=_optional_str(data, "body", "storage", "value") or "",
        webui=_optional_str(data, "_links", "webui") or "",
        base=_optional_str(data, "_links", "base"),
        labels=labels,
        labels_complete=not has_more,
    )


def parse_label_names(data: Mapping[str, Any]) -> list[str]:
    """Names from a v2 `/pages/{id}/labels` list page."""
    return [str(item["name"]) for item in results(data) if item.get("name")]


def parse_cloud_space(data: Mapping[str, Any]) -> SpaceInfo:
    """A v2 space object."""
    return SpaceInfo(id=_required_str(data, "id"), key=_required_str(data, "key"), name=_optional_str(data, "name"))


def parse_ancestors(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(id, type) of each ancestor from v2 `/{pages|folders|...}/{id}/ancestors`, root first (v2 returns them
    "in top-to-bottom order"). Every type is kept: a folder, whiteboard, database or embed is part of the
    breadcrumb and may carry read restrictions its descendants inherit (v2 Ancestors: `type` enum page,
    whiteboard, database, embed, folder)."""
    return [(_required_str(item, "id"), _optional_str(item, "type") or "page") for item in results(data)]


def parse_titles(data: Mapping[str, Any]) -> dict[str, str]:
    """Id → title from a v2 page list."""
    return {_required_str(item, "id"): _required_str(item, "title") for item in results(data)}


def parse_cloud_refs(
    data: Mapping[str, Any], content_type: ContentType, space_keys: Mapping[str, str]
) -> list[PageRef]:
    """Refs from a v2 `/pages` or `/blogposts` list page; `space_keys` maps space id → key."""
    refs = []
    for item in results(data):
        modified = _get(item, "version", "createdAt")
        refs.append(
            PageRef(
                id=_required_str(item, "id"),
                content_type=content_type,
                version=_required_int(item, "version", "number") if _get(item, "version") else None,
                last_modified=parse_datetime(modified) if modified else None,
                space_key=space_keys.get(str(item.get("spaceId"))),
                title=_optional_str(item, "title"),
            )
        )
    return refs


def build_cloud_page(
    content: CloudContent,
    *,
    space: SpaceInfo,
    base_url: str,
    ancestors: Iterable[str] = (),
    author: str | None = None,
    restricted: bool = False,
    labels: Iterable[str] | None = None,
) -> Page:
    """The Page for a Cloud v2 item once the extra lookups are done."""
    return Page(
        id=content.id,
        title=content.title,
        space_key=space.key,
        space_name=space.name,
        version=content.version,
        last_modified=content.last_modified,
        url=web_url(content.base or base_url, content.webui),
        body_storage=content.body_storage,
        status=content.status,
        content_type=content.content_type,
        author=author,
        author_id=content.author_id,
        labels=tuple(labels) if labels is not None else content.labels,
        ancestors=tuple(ancestors),
        restricted=restricted,
    )


def parse_cloud_users(data: Mapping[str, Any]) -> dict[str, str]:
    """Account id → display name from v1 `/rest/api/user/bulk`."""
    users = {}
    for item in results(data):
        account_id, name = _optional_str(item, "accountId"), _optional_str(item, "displayName")
        if account_id and name:
            users[account_id] = name
    return users


# --- v1 (Data Center, and Cloud's CQL search) --------------------------------------------------------------
def has_read_restrictions(data: Mapping[str, Any]) -> bool:
    """Whether a v1 read-restriction object (`byOperation/read`, or `restrictions.read`) restricts anyone.

    Any user or group named means the page is not readable by everyone who can read its space.
    """
    restrictions = _get(data, "restrictions")
    for kind in ("user", "group"):
        bucket = _get(restrictions, kind)
        if not isinstance(bucket, Mapping):
            continue
        if bucket.get("results") or (isinstance(bucket.get("size"), int) and bucket["size"] > 0):
            return True
    return False


def read_restricted(data: Mapping[str, Any]) -> bool:
    """Like `has_read_restrictions`, for a `restriction/byOperation/read` answer that must carry both the user
    and the group subjects: one that leaves either unexpanded (Data Center expands only groups unless asked)
    cannot tell an open page from one restricted to a named user, so it is a protocol error, never "open"."""
    restrictions = _get(data, "restrictions")
    missing = [kind for kind in ("user", "group") if not isinstance(_get(restrictions, kind), Mapping)]
    if missing:
        raise ConfluenceProtocolError(f"read restrictions came back without their {' and '.join(missing)} subjects")
    return has_read_restrictions(data)


def dc_ancestor_ids(data: Mapping[str, Any]) -> list[str]:
    """Ancestor ids from an expanded v1 content object, root first."""
    return [_required_str(item, "id") for item in _objects(data.get("ancestors"))]


def _objects(value: Any) -> list[JSON]:
    return [cast(JSON, item) for item in value or () if isinstance(item, dict)]


def parse_dc_page(data: Mapping[str, Any], *, base_url: str, ancestors_restricted: bool = False) -> Page:
    """A v1 `GET /rest/api/content/{id}` body, expanded as `ConfluenceClient` asks, as a Page.

    The author is the last editor (`version.by`), like Cloud's `version.authorId`: the person whose change
    the index now reflects. Data Center names users by user key; anonymous edits have none. Expanded read
    restrictions must carry both users and groups (see `read_restricted`); a body without them at all was
    fetched without that expansion and says nothing about restrictions.
    """
    by = _get(data, "version", "by") or {}
    labels = tuple(
        str(item["name"]) for item in _objects(_get(data, "metadata", "labels", "results")) if item.get("name")
    )
    read = _get(data, "restrictions", "read")
    return Page(
        id=_required_str(data, "id"),
        title=_required_str(data, "title"),
        space_key=_required_str(data, "space", "key"),
        space_name=_optional_str(data, "space", "name"),
        version=_required_int(data, "version", "number"),
        last_modified=parse_datetime(_get(data, "version", "when")),
        url=web_url(_optional_str(data, "_links", "base") or base_url, _optional_str(data, "_links", "webui") or ""),
        body_storage=_optional_str(data, "body", "storage", "value") or "",
        status=_status(data.get("status")),
        content_type=_content_type(data.get("type"), "page"),
        author=_optional_str(by, "displayName"),
        author_id=_dc_user_id(by),
        labels=labels,
        ancestors=tuple(_required_str(item, "title") for item in _objects(data.get("ancestors"))),
        restricted=ancestors_restricted or (isinstance(read, Mapping) and read_restricted(read)),
    )


def _dc_user_id(user: Any) -> str | None:
    """Data Center pins users by key (usernames can change); Cloud-style v1 bodies carry an account id."""
    return _optional_str(user, "userKey") or _optional_str(user, "username") or _optional_str(user, "accountId")


def parse_search_refs(data: Mapping[str, Any]) -> list[PageRef]:
    """Refs from v1 `/rest/api/content/search` (expand=version,space), both products."""
    refs = []
    for item in results(data):
        when = _get(item, "version", "when")
        refs.append(
            PageRef(
                id=_required_str(item, "id"),
                content_type=_content_type(item.get("type"), "page"),
                version=_required_int(item, "version", "number") if _get(item, "version", "number") else None,
                last_modified=parse_datetime(when) if when else None,
                space_key=_optional_str(item, "space", "key"),
                title=_optional_str(item, "title"),
            )
        )
    return refs


def parse_dc_space_keys(data: Mapping[str, Any]) -> list[str]:
    """Keys from a v1 `/rest/api/space` list page."""
    return [_required_str(item, "key") for item in results(data)]


def parse_dc_user(data: Mapping[str, Any]) -> str | None:
    """The display name in a v1 `/rest/api/user` body."""
    return _optional_str(data, "displayName")
