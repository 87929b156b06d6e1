"""Reads who may read what from Confluence: space permissions, read restrictions, paths, group membership.

Endpoints (both products share the v1 content-restriction and membership resources):

- Space read permission. Cloud: v2 `GET /api/v2/spaces/{id}/permissions`, assignments
  `{principal: {type: user|group|role, id}, operation: {key: read, targetType: space}}` (Atlassian, "REST API v2
  / Space Permissions"). Data Center: `GET /rest/api/space/{key}/permissions`, an array of
  `{operation: {operationKey: read, targetType: space}, subject: {type: user, userKey} | {type: group, name}}`,
  which exists only from Confluence 9.1 on (Atlassian, "Confluence Data Center REST API / Space Permissions");
  an older server answers 404 and we refuse with the version named (the deprecated JSON-RPC
  `getSpacePermissionSets` needs the remote API switched on, and is not used). Space roles (Cloud principal
  type `role`) cannot be expanded to people here: they grant nobody (fail closed), logged as such.
- Read restriction of a content id: v1 `GET /rest/api/content/{id}/restriction/byOperation/read?expand=
  restrictions.user,restrictions.group` (Atlassian, "Content restrictions"). Users by `accountId` (Cloud) or
  `userKey` (DC); groups by `id` (Cloud) or `name` (DC). A list longer than the response carries fails closed.
- Path: Cloud v2 `GET /api/v2/pages/{id}/ancestors` returns at most 25 ancestors per call, top first; the rest
  are the ancestors of the first one returned (Atlassian, "REST API v2 / Ancestors"), so we ask again until a
  short answer. Folders on the path count. Data Center: `expand=ancestors` on the content (complete).
- Membership: `GET /rest/api/user/memberof?accountId=` (Cloud) or `?username=` (DC), paginated by
  start/limit. Neither product sends an event when membership changes, so answers are cached with an expiry
  (`PERMISSION_SYNC_INTERVAL`) and a bound, and re-read on a miss.

Every failure raises `AccessUnavailable` (or lets `ConfluenceUnavailable` through for retries); callers record
the thing as not established, which denies everyone.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

from app.access import ANYONE, Restriction, SpaceAccess, distinct_path, group_principal, person_principals
from app.confluence import ConfluenceClient
from app.errors import ConfluenceError, ConfluenceVectorsError, PageNotFound
from app.models import ContentType

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Cloud's ancestors endpoint returns at most this many per call (its default and documented cap).
ANCESTORS_PAGE = 25
MEMBERSHIP_PAGE = 200
#: v2 collections whose items have an `/ancestors` resource (v2 "Ancestors": page, whiteboard, database,
#: embed, folder), for continuing a path longer than one answer from its topmost ancestor.
CONTAINER_COLLECTIONS = {
    "page": "pages",
    "folder": "folders",
    "whiteboard": "whiteboards",
    "database": "databases",
    "embed": "embeds",
}


class AccessUnavailable(ConfluenceVectorsError):
    """Confluence did not let us establish who may read something: it stays visible to nobody."""


class UnknownPerson(ConfluenceVectorsError):
    """Confluence knows no such user."""


@dataclass(frozen=True, slots=True)
class Person:
    """A resolved searcher: their Confluence id (account id / user key) and principal set."""

    user_id: str
    principals: frozenset[str]


class BoundedTtlCache(Generic[T]):
    """Least-recently-used entries beyond `max_items` are dropped; entries expire after `ttl` seconds."""

    def __init__(self, ttl: float, max_items: int) -> None:
        self.ttl, self.max_items = ttl, max_items
        self._items: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def get(self, key: str) -> T | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return hit[1]

    def put(self, key: str, value: T) -> None:
        self._items[key] = (time.monotonic() + self.ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def _now() -> datetime:
    return datetime.now(UTC)


def _results(data: Any) -> list[dict[str, Any]]:
    items = data.get("results") if isinstance(data, Mapping) else data
    return [item for item in items or () if isinstance(item, dict)]


class PermissionsClient:
    """Permission reads for one Confluence site, over the service's `ConfluenceClient`."""

    def __init__(self, confluence: ConfluenceClient, *, membership_ttl: float = 900.0, max_people: int = 10_000):
        self._c = confluence
        self._people: BoundedTtlCache[Person] = BoundedTtlCache(membership_ttl, max_people)

    @property
    def is_cloud(self) -> bool:
        return self._c.is_cloud

    # --- spaces -------------------------------------------------------------------------------------------
    async def space_access(self, space_key: str) -> SpaceAccess:
        """Who holds read permission on `space_key`. Raises AccessUnavailable when it cannot be read.

        Dated when asked, not when answered: "newer wins" in storage then orders answers by the state they
        saw, so a slow answer to an earlier request never overwrites one to a later request."""
        asked = _now()
        try:
            principals = await (self._cloud_space(space_key) if self.is_cloud else self._dc_space(space_key))
        except (ConfluenceError, PageNotFound) as exc:
            raise AccessUnavailable(f"space {space_key} permissions: {exc}") from exc
        return SpaceAccess(space_key, frozenset(principals), None, asked)

    async def _cloud_space(self, space_key: str) -> set[str]:
        found = _results(await self._c.get_json("v2", "spaces", {"keys": space_key, "limit": "1"}))
        if not found:
            raise AccessUnavailable(f"space {space_key} is not visible to the service account")
        space_id = str(found[0].get("id"))
        principals: set[str] = set()
        async for data in self._c.paginate("v2", f"spaces/{quote(space_id, safe='')}/permissions", {"limit": "250"}):
            for item in _results(data):
                operation = item.get("operation") or {}
                if operation.get("key") != "read" or operation.get("targetType") != "space":
                    continue
                principal = item.get("principal") or {}
                kind, ident = principal.get("type"), principal.get("id")
                if kind == "user" and ident:
                    principals.add(f"user:{ident}")
                elif kind == "group" and ident:
                    principals.add(group_principal(str(ident)))
                elif kind == "anonymous":
                    principals.add(ANYONE)
                else:
                    log.warning(
                        "space permission principal not expandable; it grants nobody here",
                        extra={"space_key": space_key, "principal_type": kind},
                    )
        return principals

    async def _dc_space(self, space_key: str) -> set[str]:
        try:
            body = await self._c.get_any_json("v1", f"space/{quote(space_key, safe='')}/permissions")
        except PageNotFound as exc:
            raise AccessUnavailable(
                "Confluence Data Center older than 9.1 has no space permissions REST API "
                "(/rest/api/space/{key}/permissions); upgrade to 9.1 or later to index with permissions"
            ) from exc
        principals: set[str] = set()
        for item in _results(body):
            operation = item.get("operation") or {}
            if operation.get("operationKey") != "read" or operation.get("targetType") != "space":
                continue
            subject = item.get("subject") or {}
            kind = subject.get("type")
            if kind == "user" and subject.get("userKey"):
                principals.add(f"user:{subject['userKey']}")
            elif kind == "group" and subject.get("name"):
                principals.add(group_principal(str(subject["name"])))
            elif kind == "anonymous":
                principals.add(ANYONE)
            else:  # no subject, or one we cannot expand: it grants nobody (never read as anonymous access)
                log.warning(
                    "space permission subject not expandable; it grants nobody here",
                    extra={"space_key": space_key, "subject_type": kind},
                )
        return principals

    # --- restrictions and paths --------------------------------------------------------------------------
    async def restriction(self, content_id: str) -> Restriction:
        """The read restriction on `content_id` itself (not inherited ones). Raises AccessUnavailable.

        Dated when asked (see `space_access`): a late answer to an earlier request must not win."""
        asked = _now()
        path = f"content/{quote(content_id, safe='')}/restriction/byOperation/read"
        params = {"expand": "restrictions.user,restrictions.group"}
        try:
            data = await self._c.get_json("v1", path, params)
        except (ConfluenceError, PageNotFound) as exc:
            raise AccessUnavailable(f"read restriction of {content_id}: {exc}") from exc
        # Fail closed on any shape we did not ask for: a missing `restrictions` object, or a subject bucket that
        # was not expanded (Confluence then names it only under `_expandable`), says nothing about who is
        # excluded, so it must not read as "no restriction".
        restrictions = data.get("restrictions") if isinstance(data, Mapping) else None
        if not isinstance(restrictions, Mapping):
            raise AccessUnavailable(f"read restriction of {content_id}: answer has no `restrictions` object")
        principals: set[str] = set()
        keys = (("user", "accountId"), ("group", "id")) if self.is_cloud else (("user", "userKey"), ("group", "name"))
        for kind, key in keys:
            bucket = restrictions.get(kind)
            if not isinstance(bucket, Mapping) or not isinstance(bucket.get("results"), list):
                raise AccessUnavailable(f"read restriction of {content_id}: its {kind} list was not expanded")
            items = _results(bucket)
            size = bucket.get("size")
            if isinstance(size, int) and size > len(items):
                raise AccessUnavailable(f"read restriction of {content_id} lists more {kind}s than were returned")
            for item in items:
                ident = item.get(key)
                if not ident:
                    raise AccessUnavailable(f"read restriction of {content_id} names a {kind} without {key}")
                principals.add(f"{kind}:{ident}")
        return Restriction(content_id, bool(principals), frozenset(principals), None, asked)

    async def path(self, page_id: str, content_type: ContentType) -> tuple[str, ...]:
        """Every content id from the space root down to the page itself. Raises AccessUnavailable."""
        if content_type == "blogpost":
            return (page_id,)
        try:
            if self.is_cloud:
                return distinct_path([*await self._cloud_ancestors(page_id), page_id])
            data = await self._c.get_json("v1", f"content/{quote(page_id, safe='')}", {"expand": "ancestors"})
        except (ConfluenceError, PageNotFound) as exc:
            raise AccessUnavailable(f"ancestors of {page_id}: {exc}") from exc
        ancestors = [str(a["id"]) for a in data.get("ancestors") or () if isinstance(a, dict) and a.get("id")]
        return distinct_path([*ancestors, page_id])

    async def space_of(self, content_id: str, kind: ContentType | Literal["folder"]) -> str:
        """The key of the space `content_id` (a page, blog post or Cloud folder) is in now.

        Why: a page moved to another space, or a folder with the pages below it, takes its subtree along, and
        from then on the new space's permissions decide who may read them (Atlassian, "Move and reorder
        pages"); the key stored at the last page job says where it was. Cloud: v2 `GET /{pages|blogposts|
        folders}/{id}` gives `spaceId`, then `GET /spaces/{id}` its key (cached); Data Center: v1
        `GET /rest/api/content/{id}?expand=space`. Raises AccessUnavailable."""
        try:
            if self.is_cloud:
                collection = {"page": "pages", "blogpost": "blogposts", "folder": "folders"}[kind]
                data = await self._c.get_json("v2", f"{collection}/{quote(content_id, safe='')}")
                space_id = data.get("spaceId")
                if space_id is None or str(space_id) == "":
                    raise AccessUnavailable(f"space of {content_id}: Confluence named none")
                return await self._c.space_key_of(str(space_id))
            data = await self._c.get_json("v1", f"content/{quote(content_id, safe='')}", {"expand": "space"})
        except (ConfluenceError, PageNotFound) as exc:
            raise AccessUnavailable(f"space of {content_id}: {exc}") from exc
        space = data.get("space")
        key = space.get("key") if isinstance(space, dict) else None
        if not isinstance(key, str) or not key:
            raise AccessUnavailable(f"space of {content_id}: Confluence named none")
        return key

    async def folder_path(self, folder_id: str) -> tuple[str, ...]:
        """Every content id from the space root down to the folder itself (Cloud: folders are Cloud content,
        v2 `GET /folders/{id}/ancestors`). Raises AccessUnavailable (also on Data Center, which has none)."""
        if not self.is_cloud:
            raise AccessUnavailable(f"folder {folder_id}: Data Center has no folders")
        try:
            return distinct_path([*await self._cloud_ancestors(folder_id, "folders"), folder_id])
        except (ConfluenceError, PageNotFound) as exc:
            raise AccessUnavailable(f"ancestors of folder {folder_id}: {exc}") from exc

    async def _cloud_ancestors(self, page_id: str, collection: str = "pages") -> list[str]:
        chain: list[str] = []
        current = page_id
        for _ in range(1000):  # Confluence has no path this deep; a cycle in its answers must not hang us
            data = await self._c.get_json(
                "v2", f"{collection}/{quote(current, safe='')}/ancestors", {"limit": str(ANCESTORS_PAGE)}
            )
            items = [item for item in _results(data) if item.get("id")]
            batch = [str(item["id"]) for item in items]
            if set(batch) & set(chain):
                raise AccessUnavailable(f"ancestors of {page_id}: Confluence answered a cycle")
            chain = batch + chain
            if len(batch) < ANCESTORS_PAGE:
                return chain
            current = batch[0]
            kind = str(items[0].get("type") or "page")
            if kind not in CONTAINER_COLLECTIONS:
                raise AccessUnavailable(f"ancestors of {page_id}: cannot walk above a {kind}")
            collection = CONTAINER_COLLECTIONS[kind]
        raise AccessUnavailable(f"ancestors of {page_id}: path does not end")

    # --- people -------------------------------------------------------------------------------------------
    async def person(self, identity: str, *, fresh: bool = False) -> Person:
        """The principal set of a Cloud account id or Data Center username (cached; `fresh` re-reads).

        Raises UnknownPerson, or AccessUnavailable when membership cannot be read.
        """
        identity = identity.strip()
        cached = None if fresh else self._people.get(identity)
        if cached is not None:
            return cached
        try:
            user_id = await self._user_id(identity)
            groups = await self._groups(identity)
        except PageNotFound as exc:
            raise UnknownPerson(f"Confluence knows no user {identity!r}") from exc
        except ConfluenceError as exc:
            raise AccessUnavailable(f"group membership of {identity!r}: {exc}") from exc
        person = Person(user_id, person_principals(user_id, groups))
        self._people.put(identity, person)
        return person

    def forget_people(self) -> None:
        """Drop cached membership (the scheduled permission sync does this every interval)."""
        self._people.clear()

    async def _user_id(self, identity: str) -> str:
        if self.is_cloud:
            data = await self._c.get_json("v1", "user", {"accountId": identity})
            return str(data.get("accountId") or identity)
        data = await self._c.get_json("v1", "user", {"username": identity})
        key = data.get("userKey")
        if not key:
            raise AccessUnavailable(f"Data Center user {identity!r} has no user key")
        return str(key)

    async def _groups(self, identity: str) -> list[str]:
        param = "accountId" if self.is_cloud else "username"
        groups: list[str] = []
        params = {param: identity, "limit": str(MEMBERSHIP_PAGE)}
        async for data in self._c.paginate("v1", "user/memberof", params):
            for item in _results(data):
                ident = item.get("id") if self.is_cloud else item.get("name")
                if not ident:
                    raise AccessUnavailable(f"group of {identity!r} without {'id' if self.is_cloud else 'name'}")
                groups.append(str(ident))
        return groups


def restriction_unknown(content_id: str, error: str, asked: datetime | None = None) -> Restriction:
    """The record of a restriction we could not read: denies everyone below it.

    `asked`: when the failed request was sent (default now). Like an answer, a failure is dated by its
    request, so a slow failure (a timeout) never overwrites an answer to a request sent after it."""
    return Restriction(content_id, None, frozenset(), error, asked or _now())


def space_unknown(space_key: str, error: str, asked: datetime | None = None) -> SpaceAccess:
    """The record of a space permission we could not read (see `restriction_unknown` for `asked`)."""
    return SpaceAccess(space_key, None, error, asked or _now())
