"""Permissions for the fake Confluence: space read permissions, groups with members, read restrictions naming
users and groups, in the shapes of both products, plus the brute-force oracle of who may read what.

    perms = FakePermissions.install(fake)
    perms.add_group("g-eng", "engineering", members=["alice"])
    perms.grant_space("ENG", groups=["g-eng"])
    perms.restrict("123", users=["bob"], groups=["g-ops"])
    assert perms.may_read("alice", "123") is False

Shapes (Atlassian REST references):
- Cloud v2 `GET /api/v2/spaces/{id}/permissions`: `{results: [{id, principal: {type: user|group|role, id},
  operation: {key, targetType}}], _links: {next?}}`, cursor-paginated, `limit` 1..250.
- Data Center 9.1+ `GET /rest/api/space/{key}/permissions`: a JSON array of `{operation: {operationKey,
  targetType}, subject: {type: user, userKey} | {type: group, name}, spaceKey, spaceId}` (CONFSERVER-100505);
  older servers (`dc_version < (9, 1)`) answer 404, as the resource does not exist there.
- v1 `GET /rest/api/user/memberof?accountId=|username=`: `{results: [{type: group, name, id?}], start, limit,
  size, _links}`; Cloud `GET /rest/api/user?accountId=`: a user or 404.
- Read restrictions (`/rest/api/content/{id}/restriction/byOperation/read`) are rendered by
  `confluence_api._restriction`, which asks `restriction_subjects` here first.

The oracle `may_read` evaluates the rule on the fake's own tree (its parent links), independently of the
service's code: space permission (user, group, anonymous) AND every restricted content on the root→page path
admits the person (as a user or through a group).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.confluence import JSON, FakeConfluence, _error, _HttpError, page_slice

V2_MAX_LIMIT = 250


@dataclass
class _Group:
    id: str
    name: str
    members: set[str] = field(default_factory=set)


@dataclass
class _Restriction:
    users: set[str]
    groups: set[str]  # group ids


@dataclass
class FakePermissions:
    """Permission state of one fake site. Mutations take the fake's lock, like its own state."""

    fake: FakeConfluence
    groups: dict[str, _Group] = field(default_factory=dict)
    #: space key -> principals holding read: ("user", id) | ("group", group id) | ("anonymous", "")
    space_read: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    restrictions: dict[str, _Restriction] = field(default_factory=dict)
    #: Data Center version: below 9.1 the space permissions resource does not exist (404).
    dc_version: tuple[int, int] = (9, 2)

    @classmethod
    def install(cls, fake: FakeConfluence) -> FakePermissions:
        """Attach to `fake` and add the permission endpoints of its product to its router."""
        perms = cls(fake)
        fake.permissions = perms  # type: ignore[attr-defined]
        router = fake.app.inner.router  # type: ignore[attr-defined]
        for path, render in perms._routes():
            router.routes.insert(0, Route(fake.prefix + path, _endpoint(fake, render), methods=["GET"]))
        return perms

    # --- state --------------------------------------------------------------------------------------------
    def add_group(self, group_id: str, name: str, members: Iterable[str] = ()) -> None:
        with self.fake._lock:
            self.groups[group_id] = _Group(group_id, name, set(members))

    def add_member(self, group_id: str, user: str) -> None:
        with self.fake._lock:
            self.groups[group_id].members.add(user)

    def remove_member(self, group_id: str, user: str) -> None:
        with self.fake._lock:
            self.groups[group_id].members.discard(user)

    def grant_space(
        self, space_key: str, *, users: Iterable[str] = (), groups: Iterable[str] = (), anonymous: bool = False
    ) -> None:
        with self.fake._lock:
            held = self.space_read.setdefault(space_key, set())
            held.update(("user", u) for u in users)
            held.update(("group", g) for g in groups)
            if anonymous:
                held.add(("anonymous", ""))

    def revoke_space(self, space_key: str, *, users: Iterable[str] = (), groups: Iterable[str] = ()) -> None:
        with self.fake._lock:
            held = self.space_read.setdefault(space_key, set())
            held.difference_update({("user", u) for u in users} | {("group", g) for g in groups})

    def restrict(self, content_id: str, *, users: Iterable[str] = (), groups: Iterable[str] = ()) -> None:
        """Set the read restriction of `content_id` (empty users and groups lift it)."""
        with self.fake._lock:
            users, groups = set(users), set(groups)
            if users or groups:
                self.restrictions[content_id] = _Restriction(users, groups)
            else:
                self.restrictions.pop(content_id, None)
            self.fake._content[content_id].restricted = bool(users or groups)

    # --- the oracle ---------------------------------------------------------------------------------------
    def groups_of(self, user: str) -> set[str]:
        return {g.id for g in self.groups.values() if user in g.members}

    def may_read(self, user: str, content_id: str) -> bool:
        """Brute force over the fake's tree: the rule as Atlassian documents it."""
        with self.fake._lock:
            item = self.fake._content[content_id]
            mine = self.groups_of(user)
            held = self.space_read.get(item.space_key, set())
            space_ok = ("anonymous", "") in held or ("user", user) in held or any(("group", g) in held for g in mine)
            if not space_ok:
                return False
            for cid in [*self.fake._ancestor_ids(content_id), content_id]:
                restriction = self.restrictions.get(cid)
                if restriction is not None and user not in restriction.users and not (mine & restriction.groups):
                    return False
            return True

    # --- rendering ----------------------------------------------------------------------------------------
    def restriction_subjects(self, content_id: str) -> tuple[list[JSON], list[JSON]] | None:
        """Users and groups of a restriction set here, in the product's shape; None: not managed here."""
        restriction = self.restrictions.get(content_id)
        if restriction is None:
            return None
        users = [self.fake._user(u) for u in sorted(restriction.users)]
        groups = [self._group(g) for g in sorted(restriction.groups)]
        return users, groups

    def _group(self, group_id: str) -> JSON:
        group = self.groups[group_id]
        if self.fake.deployment == "cloud":
            return {"type": "group", "name": group.name, "id": group.id, "_links": {}}
        return {"type": "group", "name": group.name, "_links": {}}

    def _routes(self) -> list[tuple[str, Any]]:
        if self.fake.deployment == "cloud":
            return [
                ("/api/v2/spaces/{id}/permissions", self._cloud_space_permissions),
                ("/rest/api/user/memberof", self._memberof),
                ("/rest/api/user", self._cloud_user),
            ]
        return [
            ("/rest/api/space/{key}/permissions", self._dc_space_permissions),
            ("/rest/api/user/memberof", self._memberof),
        ]

    def _cloud_space_permissions(self, request: Request) -> Any:
        space_id = str(request.path_params["id"])
        space = next((s for s in self.fake._spaces.values() if s.id == space_id), None)
        if space is None:
            raise _HttpError(404, f"No space with id {space_id}")
        items: list[JSON] = []
        for n, (kind, ident) in enumerate(sorted(self.space_read.get(space.key, set()))):
            principal = {"type": kind, "id": ident} if kind != "anonymous" else {"type": "anonymous"}
            items.append(
                {"id": str(5000 + 2 * n), "principal": principal, "operation": {"key": "read", "targetType": "space"}}
            )
            # other operations are listed too, and must not count as read
            items.append(
                {"id": str(5001 + 2 * n), "principal": principal, "operation": {"key": "create", "targetType": "page"}}
            )
        chunk, next_link = page_slice(self.fake, request, items, maximum=V2_MAX_LIMIT)
        links: JSON = {"base": self.fake.base_url}
        if next_link is not None:
            links["next"] = next_link
        return {"results": chunk, "_links": links}

    def _dc_space_permissions(self, request: Request) -> Any:
        if self.dc_version < (9, 1):
            raise _HttpError(404, "null for uri: /rest/api/space/permissions")
        key = str(request.path_params["key"])
        space = self.fake._spaces.get(key)
        if space is None:
            raise _HttpError(404, f"No space with key : {key}")
        out: list[JSON] = []
        for kind, ident in sorted(self.space_read.get(key, set())):
            base: JSON = {"spaceKey": key, "spaceId": int(space.id)}
            if kind == "user":
                subject: JSON = {"type": "user", "userKey": ident}
            elif kind == "group":
                subject = {"type": "group", "name": self.groups[ident].name}
            else:
                subject = {"type": "anonymous"}
            out.append(base | {"operation": {"targetType": "space", "operationKey": "read"}, "subject": subject})
            out.append(base | {"operation": {"targetType": "page", "operationKey": "create"}, "subject": subject})
        return out

    def _memberof(self, request: Request) -> Any:
        param = "accountId" if self.fake.deployment == "cloud" else "username"
        user = request.query_params.get(param)
        if not user:
            raise _HttpError(400, f"{param} is required")
        if user not in self.fake._users:
            raise _HttpError(404, f"No user found with {param} {user!r}")
        groups = [self._group(g) for g in sorted(self.groups_of(user))]
        chunk, next_link = page_slice(self.fake, request, groups)
        links: JSON = {"base": self.fake.base_url, "context": self.fake.prefix}
        if next_link is not None:
            links["next"] = next_link
        start = int(request.query_params.get("start", "0") or 0)
        return {"results": chunk, "start": start, "limit": len(chunk), "size": len(chunk), "_links": links}

    def _cloud_user(self, request: Request) -> Any:
        account_id = request.query_params.get("accountId") or ""
        if account_id not in self.fake._users:
            raise _HttpError(404, f"No user found with accountId {account_id!r}")
        return self.fake._user(account_id)


def _endpoint(fake: FakeConfluence, render: Any) -> Any:
    async def endpoint(request: Request) -> Response:
        try:
            with fake._lock:
                return JSONResponse(render(request))
        except _HttpError as exc:
            return _error(exc.status, exc.message)

    return endpoint
