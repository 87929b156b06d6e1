"""The fake Confluence's endpoints: one render function per REST resource, per product.

Each function runs under the fake's lock and returns the JSON body, shaped like the real response (see
`shared/corpus/api/`), or raises `_HttpError`. Routes are listed per deployment at the bottom; to add an
endpoint, write a render function and add a line there.

Every documented rule the client could trip over is enforced, with its source beside it:
- V2: Confluence Cloud REST API v2 reference, https://developer.atlassian.com/cloud/confluence/rest/v2/
  (OpenAPI at .../rest/v2/swagger.v3.json), cited as `V2 <group>: <operation>`.
- V1: Confluence Cloud REST API v1, https://developer.atlassian.com/cloud/confluence/rest/v1/ (`V1 ...`).
- DC: Confluence Data Center REST API, https://developer.atlassian.com/server/confluence/rest/v920/ and
  https://docs.atlassian.com/ConfluenceServer/rest/latest/ (`DC ...`).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.requests import Request

from tests.fakes.confluence import (
    CONTAINER_TYPES,
    JSON,
    LABELS_INLINE,
    STATUSES,
    FakeConfluence,
    FakeContent,
    _HttpError,
    _iso,
    cql_item,
    page_slice,
)
from tests.fakes.confluence_cql import parse_cql

Render = Callable[[FakeConfluence, Request], JSON]


#: V2 Page: "Get page by id", `status` array enum (the statuses it may come back in).
V2_PAGE_STATUSES = frozenset({"current", "archived", "trashed", "deleted", "historical", "draft"})
#: V2 Blog Post: "Get blog post by id", `status` enum. Blog posts cannot be archived: `archived` is a 400.
V2_BLOGPOST_STATUSES = frozenset({"current", "trashed", "deleted", "historical", "draft"})
#: V2 Page: "Get pages", `status` enum; V2 Blog Post: "Get blog posts", `status` enum.
V2_PAGES_LIST_STATUSES = frozenset({"current", "archived", "deleted", "trashed"})
V2_BLOGPOSTS_LIST_STATUSES = frozenset({"current", "deleted", "trashed"})
#: V2 Page "Get pages" / Blog Post "Get blog posts": `id` array, `maxItems: 250`; the same for `space-id`.
#: V2 Space "Get spaces": `ids` and `keys` arrays, `maxItems: 250`.
V2_MAX_IDS = 250
#: V2 lists: `limit` integer, `minimum: 1`, `maximum: 250`, default 25.
V2_MAX_LIMIT = 250
#: V2 Ancestors: "Get all ancestors of page": `limit` default 25, `maximum: 250`; there is no cursor.
ANCESTORS_MAX_LIMIT = 250
#: V1 Users: "Get multiple users using ids": "Currently API returns 200 results max. If more than 200 ids are
#: passed first 200 will be returned."
USER_BULK_MAX = 200


def _statuses(request: Request, default: tuple[str, ...]) -> tuple[str, ...]:
    """Data Center v1 `status` (comma-separated or repeated).

    DC Content Resource, `GET /rest/api/content/{id}`: "status: list of statuses the content to be found is
    in. Defaults to current is not specified. If set to 'any', content in 'current' and 'trashed' status will
    be fetched." So `any` finds neither archived nor deleted content.
    """
    asked = [s for raw in request.query_params.getlist("status") for s in raw.split(",") if s]
    if "any" in asked:
        return ("current", "trashed")
    return tuple(asked) or default


def _v2_statuses(request: Request, allowed: frozenset[str], default: tuple[str, ...]) -> tuple[str, ...]:
    """A v2 `status` filter: a repeated query parameter (OpenAPI `style: form, explode: true`) whose every
    value is one of the operation's enum; anything else (a comma-joined list included) is a 400."""
    asked = request.query_params.getlist("status")
    bad = [value for value in asked if value not in allowed]
    if bad:
        raise _HttpError(400, f"Invalid value for status: {bad[0]!r} (allowed: {', '.join(sorted(allowed))})")
    return tuple(asked) or default


def _v2_ids(request: Request, name: str) -> list[str]:
    """A v2 id-array filter (comma-separated or repeated), refused past 250 values (`maxItems: 250`)."""
    values = _multi(request, name)
    if len(values) > V2_MAX_IDS:
        raise _HttpError(400, f"{name} accepts at most {V2_MAX_IDS} values, got {len(values)}")
    return values


def _path_id(request: Request) -> str:
    return str(request.path_params["id"])


def _list_body(fake: FakeConfluence, results: list[JSON], next_link: str | None, request: Request) -> JSON:
    links: JSON = {"base": fake.base_url, "context": fake.prefix}
    if next_link is not None:
        links["next"] = next_link
    body: JSON = {"results": results, "_links": links}
    if fake.deployment == "datacenter":
        body |= {
            "start": int(request.query_params.get("start", "0") or 0),
            "limit": fake._limit(request),
            "size": len(results),
        }
    return body


# --- Cloud v2 ---------------------------------------------------------------------------------------------
def _label_objects(item: FakeContent) -> list[JSON]:
    return [{"id": str(1000 + n), "name": name, "prefix": "global"} for n, name in enumerate(item.labels)]


def _v2_item(fake: FakeConfluence, item: FakeContent, *, body: bool, labels: bool = False) -> JSON:
    space = fake._spaces[item.space_key]
    data: JSON = {
        "id": item.id,
        "status": item.status,
        "title": item.title,
        "spaceId": space.id,
        "authorId": item.creator_id,
        "ownerId": item.creator_id,
        "lastOwnerId": None,
        "createdAt": _iso(item.created),
        "version": {
            "number": item.version,
            "createdAt": _iso(item.last_modified),
            "message": "",
            "minorEdit": False,
            "authorId": item.author_id,
        },
        "_links": {
            "webui": fake._webui(item),
            "editui": f"/pages/resumedraft.action?draftId={item.id}",
            "tinyui": f"/x/{item.id}",
        },
    }
    if item.type == "page":
        parent = fake._content.get(item.parent_id or "")
        data |= {"parentId": item.parent_id, "parentType": parent.type if parent else None, "position": 0}
    if body:
        data["body"] = {"storage": {"representation": "storage", "value": item.body}}
    if labels:
        inline = _label_objects(item)[:LABELS_INLINE]
        data["labels"] = {
            "results": inline,
            "meta": {"hasMore": len(item.labels) > LABELS_INLINE, "cursor": None},
            "_links": {},
        }
    return data


def v2_get(content_type: str) -> Render:
    allowed = V2_PAGE_STATUSES if content_type == "page" else V2_BLOGPOST_STATUSES

    def render(fake: FakeConfluence, request: Request) -> JSON:
        statuses = _v2_statuses(request, allowed, ("current", "archived") if content_type == "page" else ("current",))
        item = fake._get(_path_id(request), statuses, content_type)
        data = _v2_item(
            fake,
            item,
            body=request.query_params.get("body-format") == "storage",
            labels=request.query_params.get("include-labels") == "true",
        )
        data["_links"]["base"] = fake.base_url
        return data

    return render


def v2_list(content_type: str) -> Render:
    allowed = V2_PAGES_LIST_STATUSES if content_type == "page" else V2_BLOGPOSTS_LIST_STATUSES
    # "By default, current and archived are used" (pages); blog posts default to current.
    default = ("current", "archived") if content_type == "page" else ("current",)

    def render(fake: FakeConfluence, request: Request) -> JSON:
        ids = set(_v2_ids(request, "id"))
        space_ids = set(_v2_ids(request, "space-id"))
        statuses = _v2_statuses(request, allowed, default)
        items = [
            c
            for c in fake._sorted()
            if c.type == content_type
            and c.status in statuses
            and (not ids or c.id in ids)
            and (not space_ids or fake._spaces[c.space_key].id in space_ids)
        ]
        chunk, next_link = page_slice(fake, request, items, maximum=V2_MAX_LIMIT)
        body = request.query_params.get("body-format") == "storage"
        return _list_body(fake, [_v2_item(fake, c, body=body) for c in chunk], next_link, request)

    return render


def v2_ancestors(content_type: str) -> Render:
    """V2 Ancestors: "Get all ancestors of page" (and of folder, whiteboard, database, embed).

    "Returns all ancestors for a given page by ID in top-to-bottom order (that is, the highest ancestor is the
    first item in the response payload). The number of results is limited by the `limit` parameter and
    additional results (if available) will be available by calling this endpoint with the ID of first
    ancestor in the response payload." `limit`: default 25, maximum 250; no cursor, no `_links.next`. So the
    nearest `limit` ancestors come back, and the type of each is page, whiteboard, database, embed or folder.
    """

    def render(fake: FakeConfluence, request: Request) -> JSON:
        item = fake._get(_path_id(request), STATUSES, content_type)
        try:
            limit = int(request.query_params.get("limit", "25"))
        except ValueError as exc:
            raise _HttpError(400, "limit must be a number") from exc
        if not 1 <= limit <= ANCESTORS_MAX_LIMIT:
            raise _HttpError(400, f"limit must be between 1 and {ANCESTORS_MAX_LIMIT}, got {limit}")
        chain = fake._ancestor_chain(item.id)[-limit:]
        return {"results": [{"id": c.id, "type": c.type} for c in chain], "_links": {"base": fake.base_url}}

    return render


def v2_container(kind: str) -> Render:
    """V2 Folder "Get folder by id" (and Whiteboard, Database, Smart Link "Get ... by id")."""

    def render(fake: FakeConfluence, request: Request) -> JSON:
        item = fake._get(_path_id(request), ("current",), kind)
        parent = fake._content.get(item.parent_id or "")
        return {
            "id": item.id,
            "type": kind,
            "status": item.status,
            "title": item.title,
            "parentId": item.parent_id,
            "parentType": parent.type if parent else None,
            "spaceId": fake._spaces[item.space_key].id,
            "authorId": item.creator_id,
            "ownerId": item.creator_id,
            "createdAt": _iso(item.created),
            "version": {"number": item.version, "createdAt": _iso(item.last_modified), "authorId": item.author_id},
            "_links": {"webui": f"/spaces/{item.space_key}/{CONTAINER_TYPES[kind]}/{item.id}"},
        }

    return render


def v2_labels(content_type: str) -> Render:
    def render(fake: FakeConfluence, request: Request) -> JSON:
        item = fake._get(_path_id(request), STATUSES, content_type)
        chunk, next_link = page_slice(fake, request, _label_objects(item), maximum=V2_MAX_LIMIT)
        return _list_body(fake, chunk, next_link, request)

    return render


def _v2_space(fake: FakeConfluence, key: str) -> JSON:
    space = fake._spaces[key]
    return {
        "id": space.id,
        "key": space.key,
        "name": space.name,
        "type": "global",
        "status": "current",
        "authorId": "acc-1",
        "homepageId": space.homepage_id,
        "description": None,
        "icon": None,
        "_links": {"webui": f"/spaces/{space.key}"},
    }


def v2_spaces(fake: FakeConfluence, request: Request) -> JSON:
    keys, ids = set(_v2_ids(request, "keys")), set(_v2_ids(request, "ids"))
    _v2_statuses(request, frozenset({"current", "archived"}), ("current",))  # V2 Space "Get spaces": status enum
    spaces = [s for s in fake._spaces.values() if (not keys or s.key in keys) and (not ids or s.id in ids)]
    chunk, next_link = page_slice(fake, request, spaces, maximum=V2_MAX_LIMIT)
    return _list_body(fake, [_v2_space(fake, s.key) for s in chunk], next_link, request)


def v2_space(fake: FakeConfluence, request: Request) -> JSON:
    for space in fake._spaces.values():
        if space.id == _path_id(request):
            return _v2_space(fake, space.key)
    raise _HttpError(404, f"No space with id {_path_id(request)}")


def cloud_user_bulk(fake: FakeConfluence, request: Request) -> JSON:
    """V1 Users "Get multiple users using ids": `accountId` repeated; only the first 200 are answered."""
    wanted = _multi(request, "accountId")[:USER_BULK_MAX]
    found = [fake._user(i) for i in wanted if i in fake._users]
    return {"results": found, "start": 0, "limit": len(wanted), "size": len(found), "_links": {}}


# --- v1 (Data Center, and Cloud's search/restrictions/users) ------------------------------------------------
_BOTH = frozenset({"user", "group"})


def _restriction(fake: FakeConfluence, item: FakeContent, expand: frozenset[str] = _BOTH) -> JSON:
    """A v1 read-restriction object, with only the `expand`ed subject buckets (the others are named in
    `_expandable`, as Confluence does)."""
    to = item.restricted_to if item.restricted else None
    users = [fake._user("restricted-owner")] if to == "user" else []
    groups = [{"type": "group", "name": "confidential", "id": "g-1"}] if to == "group" else []
    permissions = getattr(fake, "permissions", None)  # tests.fakes.confluence_permissions, when installed
    subjects_set = permissions.restriction_subjects(item.id) if permissions is not None else None
    if subjects_set is not None:
        users, groups = subjects_set
    link = f"{fake.base_url}/rest/api/content/{item.id}/restriction/byOperation/read"
    subjects: JSON = {"_expandable": {}}
    for kind, found in (("user", users), ("group", groups)):
        if kind in expand:
            subjects[kind] = {"results": found, "start": 0, "limit": 100, "size": len(found)}
        else:
            subjects["_expandable"][kind] = f"/rest/api/content/{item.id}/restriction/byOperation/read/{kind}"
    return {"operation": "read", "restrictions": subjects, "_links": {"self": link}}


def _restriction_expansions(fake: FakeConfluence, request: Request) -> frozenset[str]:
    """Which subject buckets a `restriction/byOperation/read` answer carries.

    DC Content Restrictions, "Get all restrictions for given operation": `expand` "Default value: group"
    (DC ContentRestrictionResource javadoc: "expand - a comma separated list of properties to expand ...
    Default value: group"), so a named-user restriction is invisible unless `restrictions.user` is asked
    for. V1 (Cloud) "Get restrictions for operation": `restrictions.user` and `restrictions.group` are
    "Expanded by default".
    """
    asked = {p.strip() for raw in request.query_params.getlist("expand") for p in raw.split(",") if p.strip()}
    named = {p.removeprefix("restrictions.") for p in asked if p.startswith("restrictions.")}
    if fake.deployment == "cloud":
        return frozenset(named or {"user", "group"})
    return frozenset(named or {"group"})


def _v1_item(fake: FakeConfluence, item: FakeContent, expand: dict[str, frozenset[str]]) -> JSON:
    space = fake._spaces[item.space_key]
    data: JSON = {
        "id": item.id,
        "type": item.type,
        "status": item.status,
        "title": item.title,
        "space": {
            "id": int(space.id),
            "key": space.key,
            "name": space.name,
            "type": "global",
            "status": "current",
            "_links": {"webui": f"/spaces/{space.key}"},
        },
        "version": {
            "by": fake._user(item.author_id),
            "when": _iso(item.last_modified),
            "message": "",
            "number": item.version,
            "minorEdit": False,
            "hidden": False,
        },
        "_links": {
            "webui": fake._webui(item),
            "tinyui": f"/x/{item.id}",
            "self": f"{fake.base_url}/rest/api/content/{item.id}",
        },
    }
    if "history" in expand:
        data["history"] = {
            "latest": True,
            "createdBy": fake._user(item.creator_id),
            "createdDate": _iso(item.created),
        }
    if "body" in expand:
        data["body"] = {"storage": {"value": item.body, "representation": "storage"}}
    if "ancestors" in expand:
        data["ancestors"] = [_v1_item(fake, fake._content[i], {}) for i in fake._ancestor_ids(item.id)]
    if "metadata" in expand:
        labels = [{"prefix": "global", "name": n, "id": str(1000 + k), "label": n} for k, n in enumerate(item.labels)]
        data["metadata"] = {"labels": {"results": labels, "start": 0, "limit": 200, "size": len(labels)}}
    if "restrictions" in expand:
        data["restrictions"] = {"read": _restriction(fake, item, expand["restrictions"])}
    return data


def _expand(request: Request) -> dict[str, frozenset[str]]:
    """`expand` as {top-level property: restriction subjects asked for}.

    Only `restrictions.read.restrictions.user|group` matter below the top level: as for the byOperation
    endpoint, Data Center expands only the `group` bucket unless `user` is named (see
    `_restriction_expansions`); Cloud v1 expands both by default.
    """
    parts = [part for part in request.query_params.get("expand", "").split(",") if part]
    found: dict[str, set[str]] = {}
    for part in parts:
        top, _, rest = part.partition(".")
        bucket = found.setdefault(top, set())
        if top == "restrictions" and rest.startswith("read.restrictions."):
            bucket.add(rest.removeprefix("read.restrictions."))
    return {top: frozenset(subjects) for top, subjects in found.items()}


def _v1_expand(fake: FakeConfluence, request: Request) -> dict[str, frozenset[str]]:
    expand = _expand(request)
    if "restrictions" in expand and not expand["restrictions"]:
        expand["restrictions"] = frozenset({"user", "group"} if fake.deployment == "cloud" else {"group"})
    return expand


def v1_get(fake: FakeConfluence, request: Request) -> JSON:
    from tests.fakes.confluence_content import v1_comment  # a comment is content too (`expand=container`)

    expand = {e for raw in request.query_params.getlist("expand") for e in raw.split(",")}
    if (comment := v1_comment(fake, _path_id(request), expand)) is not None:
        return comment
    item = fake._get(_path_id(request), _statuses(request, ("current",)))
    if item.type not in ("page", "blogpost"):
        raise _HttpError(404, f"No content found with id: {item.id}")
    data = _v1_item(fake, item, _v1_expand(fake, request))
    data["_links"] |= {"base": fake.base_url, "context": fake.prefix}
    return data


def _cql_statuses(request: Request) -> frozenset[str]:
    """Statuses a CQL search covers: current only, unless `cqlcontext` names `contentStatuses`.

    V1 Search "Search content by CQL": `cqlcontext` is "the context to execute a CQL search in ... as JSON"
    with `contentStatuses` (Atlassian developer community, "How to search Confluence pages by content state":
    `cqlcontext={"contentStatuses":["archived"]}`).
    """
    raw = request.query_params.get("cqlcontext")
    if raw is None:
        return frozenset({"current"})
    try:
        context = json.loads(raw)
        statuses = context.get("contentStatuses", ["current"])
    except (ValueError, AttributeError) as exc:
        raise _HttpError(400, f"cqlcontext is not a JSON object: {raw!r}") from exc
    if not isinstance(statuses, list) or not all(s in STATUSES for s in statuses):
        raise _HttpError(400, f"bad contentStatuses in cqlcontext: {statuses!r}")
    return frozenset(statuses)


def v1_search(fake: FakeConfluence, request: Request) -> JSON:
    matches = parse_cql(request.query_params.get("cql", ""))
    statuses = _cql_statuses(request)
    items = [
        c for c in fake._sorted() if c.type in ("page", "blogpost") and c.status in statuses and matches(cql_item(c))
    ]
    from tests.fakes.confluence_content import search_entries  # comments and attachments (`type in (comment, ...)`)

    children = search_entries(fake, matches) if "current" in statuses else []
    chunk, next_link = page_slice(fake, request, [*items, *children])
    expand = _v1_expand(fake, request)
    rendered = [_v1_item(fake, c, expand) if isinstance(c, FakeContent) else c for c in chunk]
    return _list_body(fake, rendered, next_link, request)


def v1_read_restriction(fake: FakeConfluence, request: Request) -> JSON:
    item = fake._get(_path_id(request), STATUSES)
    return _restriction(fake, item, _restriction_expansions(fake, request))


def v1_current_user(fake: FakeConfluence, request: Request) -> JSON:
    return fake._user("bot") | {"displayName": "Indexing bot"}


def dc_spaces(fake: FakeConfluence, request: Request) -> JSON:
    chunk, next_link = page_slice(fake, request, list(fake._spaces.values()))
    results = [{"id": int(s.id), "key": s.key, "name": s.name, "type": "global", "status": "current"} for s in chunk]
    return _list_body(fake, results, next_link, request)


def dc_user(fake: FakeConfluence, request: Request) -> JSON:
    user_id = request.query_params.get("key") or request.query_params.get("username") or ""
    if user_id not in fake._users:
        raise _HttpError(404, f"No user found with key or username {user_id!r}")
    return fake._user(user_id)


def _multi(request: Request, name: str) -> list[str]:
    """A list query parameter, repeated (`?id=1&id=2`) or comma-separated (`?id=1,2`): both are read."""
    return [value for raw in request.query_params.getlist(name) for value in raw.split(",") if value]


CONTENT_ID = "/rest/api/content/{id}"
CLOUD_ROUTES: list[tuple[str, Render]] = [
    ("/api/v2/pages", v2_list("page")),
    ("/api/v2/blogposts", v2_list("blogpost")),
    ("/api/v2/pages/{id}", v2_get("page")),
    ("/api/v2/blogposts/{id}", v2_get("blogpost")),
    ("/api/v2/pages/{id}/ancestors", v2_ancestors("page")),
    *((f"/api/v2/{path}/{{id}}/ancestors", v2_ancestors(kind)) for kind, path in CONTAINER_TYPES.items()),
    *((f"/api/v2/{path}/{{id}}", v2_container(kind)) for kind, path in CONTAINER_TYPES.items()),
    ("/api/v2/pages/{id}/labels", v2_labels("page")),
    ("/api/v2/blogposts/{id}/labels", v2_labels("blogpost")),
    ("/api/v2/spaces", v2_spaces),
    ("/api/v2/spaces/{id}", v2_space),
    ("/rest/api/user/bulk", cloud_user_bulk),
    ("/rest/api/user/current", v1_current_user),
    ("/rest/api/content/search", v1_search),
    (CONTENT_ID + "/restriction/byOperation/read", v1_read_restriction),
]
DC_ROUTES: list[tuple[str, Render]] = [
    ("/rest/api/content/search", v1_search),
    (CONTENT_ID, v1_get),
    (CONTENT_ID + "/restriction/byOperation/read", v1_read_restriction),
    ("/rest/api/space", dc_spaces),
    ("/rest/api/user/current", v1_current_user),
    ("/rest/api/user", dc_user),
]
