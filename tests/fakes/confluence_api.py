"""The fake Confluence's endpoints: one render function per REST resource, per product.

Each function runs under the fake's lock and returns the JSON body, shaped like the real response (see
`shared/corpus/api/`), or raises `_HttpError`. Routes are listed per deployment at the bottom.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request

from tests.fakes.confluence import (
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


def _statuses(request: Request, default: tuple[str, ...]) -> tuple[str, ...]:
    asked = [s for raw in request.query_params.getlist("status") for s in raw.split(",") if s]
    if "any" in asked:
        return STATUSES
    return tuple(asked) or default


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
        data |= {"parentId": item.parent_id, "parentType": "page" if item.parent_id else None, "position": 0}
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
    def render(fake: FakeConfluence, request: Request) -> JSON:
        item = fake._get(_path_id(request), _statuses(request, ("current", "archived")), content_type)
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
    def render(fake: FakeConfluence, request: Request) -> JSON:
        ids = set(_multi(request, "id"))
        space_ids = set(_multi(request, "space-id"))
        statuses = _statuses(request, ("current", "archived"))
        items = [
            c
            for c in fake._sorted()
            if c.type == content_type
            and c.status in statuses
            and (not ids or c.id in ids)
            and (not space_ids or fake._spaces[c.space_key].id in space_ids)
        ]
        chunk, next_link = page_slice(fake, request, items)
        body = request.query_params.get("body-format") == "storage"
        return _list_body(fake, [_v2_item(fake, c, body=body) for c in chunk], next_link, request)

    return render


def v2_ancestors(fake: FakeConfluence, request: Request) -> JSON:
    item = fake._get(_path_id(request), STATUSES, "page")
    return {"results": [{"id": i, "type": "page"} for i in fake._ancestor_ids(item.id)], "_links": {}}


def v2_labels(content_type: str) -> Render:
    def render(fake: FakeConfluence, request: Request) -> JSON:
        item = fake._get(_path_id(request), STATUSES, content_type)
        chunk, next_link = page_slice(fake, request, _label_objects(item))
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
        "homepageId": None,
        "description": None,
        "icon": None,
        "_links": {"webui": f"/spaces/{space.key}"},
    }


def v2_spaces(fake: FakeConfluence, request: Request) -> JSON:
    keys, ids = set(_multi(request, "keys")), set(_multi(request, "ids"))
    spaces = [s for s in fake._spaces.values() if (not keys or s.key in keys) and (not ids or s.id in ids)]
    chunk, next_link = page_slice(fake, request, spaces)
    return _list_body(fake, [_v2_space(fake, s.key) for s in chunk], next_link, request)


def v2_space(fake: FakeConfluence, request: Request) -> JSON:
    for space in fake._spaces.values():
        if space.id == _path_id(request):
            return _v2_space(fake, space.key)
    raise _HttpError(404, f"No space with id {_path_id(request)}")


def cloud_user_bulk(fake: FakeConfluence, request: Request) -> JSON:
    wanted = _multi(request, "accountId")
    found = [fake._user(i) for i in wanted if i in fake._users]
    return {"results": found, "start": 0, "limit": len(wanted), "size": len(found), "_links": {}}


# --- v1 (Data Center, and Cloud's search/restrictions/users) ------------------------------------------------
def _restriction(fake: FakeConfluence, item: FakeContent) -> JSON:
    users = [fake._user("restricted-owner")] if item.restricted else []
    return {
        "operation": "read",
        "restrictions": {
            "user": {"results": users, "start": 0, "limit": 100, "size": len(users)},
            "group": {"results": [], "start": 0, "limit": 100, "size": 0},
        },
        "_links": {"self": f"{fake.base_url}/rest/api/content/{item.id}/restriction/byOperation/read"},
    }


def _v1_item(fake: FakeConfluence, item: FakeContent, expand: set[str]) -> JSON:
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
        data["ancestors"] = [_v1_item(fake, fake._content[i], set()) for i in fake._ancestor_ids(item.id)]
    if "metadata" in expand:
        labels = [
            {"prefix": "global", "name": n, "id": str(1000 + k), "label": n}
            for k, n in enumerate(item.labels)
        ]
        data["metadata"] = {"labels": {"results": labels, "start": 0, "limit": 200, "size": len(labels)}}
    if "restrictions" in expand:
        data["restrictions"] = {"read": _restriction(fake, item)}
    return data


def _expand(request: Request) -> set[str]:
    return {part.split(".")[0] for part in request.query_params.get("expand", "").split(",") if part}


def v1_get(fake: FakeConfluence, request: Request) -> JSON:
    item = fake._get(_path_id(request), _statuses(request, ("current",)))
    data = _v1_item(fake, item, _expand(request))
    data["_links"] |= {"base": fake.base_url, "context": fake.prefix}
    return data


def v1_search(fake: FakeConfluence, request: Request) -> JSON:
    matches = parse_cql(request.query_params.get("cql", ""))
    items = [c for c in fake._sorted() if c.status == "current" and matches(cql_item(c))]
    chunk, next_link = page_slice(fake, request, items)
    expand = _expand(request)
    return _list_body(fake, [_v1_item(fake, c, expand) for c in chunk], next_link, request)


def v1_read_restriction(fake: FakeConfluence, request: Request) -> JSON:
    return _restriction(fake, fake._get(_path_id(request), STATUSES))


def v1_current_user(fake: FakeConfluence, request: Request) -> JSON:
    return fake._user("bot") | {"displayName": "Indexing bot"}


def dc_spaces(fake: FakeConfluence, request: Request) -> JSON:
    chunk, next_link = page_slice(fake, request, list(fake._spaces.values()))
    results = [
        {"id": int(s.id), "key": s.key, "name": s.name, "type": "global", "status": "current"} for s in chunk
    ]
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
    ("/api/v2/pages/{id}/ancestors", v2_ancestors),
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
