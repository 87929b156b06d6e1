"""Comments and attachments for the fake Confluence (`tests.fakes.confluence`), shaped like the real APIs.

Cloud REST v2: `GET /api/v2/{pages|blogposts}/{id}/footer-comments` and `/inline-comments`, the root
comments only (`body-format` decides whether `body.storage` is present; inline comments carry
`resolutionStatus` and `properties.inlineOriginalSelection`); replies through
`GET /api/v2/footer-comments/{comment-id}/children` and `/inline-comments/{comment-id}/children` ("Returns the
children footer/inline comments of specific comment": `ChildrenCommentModel` and `InlineCommentChildrenModel`,
each with `parentCommentId`; `cursor`, `limit` 1-250, `body-format`); one comment by
`GET /api/v2/footer-comments/{comment-id}` or `/inline-comments/{comment-id}` (with `pageId` or
`blogPostId`: the container); `GET /api/v2/{pages|blogposts}/{id}/attachments` (`mediaType`,
`fileSize`, `version`, `downloadLink`; current attachments only). Data Center REST v1:
`GET /rest/api/content/{id}/child/comment` (expansions `body.storage`, `version`, `history`,
`extensions.inlineProperties`, `extensions.resolution`; footer/inline in `extensions.location`; replies only
with `depth=all`), a comment through `GET /rest/api/content/{comment-id}` (`expand=container`: the page or
blog post it is on; 404 once it is removed) and
`GET /rest/api/content/{id}/child/attachment` (`metadata.mediaType`, `extensions.fileSize`,
`_links.download` relative to the base). Both serve the bytes at `/download/attachments/{page}/{file}`.
Lists are cursor- (Cloud) or start- (DC) paginated like every other list of the fake.

    content = content_of(fake)
    content.add_attachment("1", "spec.pdf", "application/pdf", pdf_bytes)
    content.add_comment("1", "<p>Looks good</p>", author_id="u1")
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.confluence import FakeConfluence, page_slice
from tests.fakes.confluence_cql import CqlItem

JSON = dict[str, Any]
V2_MAX_LIMIT = 250  # v2 list endpoints: `limit` 1..250 (OpenAPI schema of each comment/attachment list)


@dataclass
class FakeComment:
    id: str
    page_id: str
    kind: Literal["footer", "inline"]
    body: str
    author_id: str
    version: int = 1
    created: datetime = field(default_factory=lambda: datetime(2024, 5, 2, 9, 30, tzinfo=UTC))
    resolution: str = "open"  # inline: open | reopened | resolved | dangling
    selection: str | None = None  # inline: the page text the comment is anchored to
    status: str = "current"
    parent_id: str | None = None  # a reply's parent comment (same page, same kind)
    modified: datetime = field(default_factory=lambda: datetime.now(UTC))  # CQL `lastmodified`, `version.when`


@dataclass
class FakeAttachment:
    id: str
    page_id: str
    title: str
    media_type: str
    data: bytes
    version: int = 1
    status: str = "current"  # current | trashed
    modified: datetime = field(default_factory=lambda: datetime.now(UTC))  # CQL `lastmodified`, `version.when`


@dataclass
class ContentStore:
    """The fake's comments and attachments; tests change them between jobs."""

    comments: dict[str, FakeComment] = field(default_factory=dict)
    attachments: dict[str, FakeAttachment] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(900_001))

    def add_comment(
        self,
        page_id: str,
        body: str,
        *,
        author_id: str = "comment-author",
        kind: Literal["footer", "inline"] = "footer",
        selection: str | None = None,
        resolution: str = "open",
    ) -> str:
        comment_id = str(next(self._ids))
        self.comments[comment_id] = FakeComment(comment_id, page_id, kind, body, author_id, resolution=resolution,
                                                selection=selection)  # fmt: skip
        return comment_id

    def add_reply(self, parent_id: str, body: str, *, author_id: str = "comment-author") -> str:
        """A reply to comment `parent_id` (or to a reply): on the same page, of the same kind. Replies to an
        inline comment carry its resolution status, as the thread they belong to."""
        parent = self.comments[parent_id]
        comment_id = str(next(self._ids))
        self.comments[comment_id] = FakeComment(comment_id, parent.page_id, parent.kind, body, author_id,
                                                resolution=parent.resolution, parent_id=parent_id)  # fmt: skip
        return comment_id

    def edit_comment(self, comment_id: str, body: str) -> None:
        comment = self.comments[comment_id]
        comment.body, comment.version, comment.modified = body, comment.version + 1, datetime.now(UTC)

    def remove_comment(self, comment_id: str) -> None:
        del self.comments[comment_id]

    def add_attachment(self, page_id: str, title: str, media_type: str, data: bytes) -> str:
        attachment_id = f"att{next(self._ids)}"
        self.attachments[attachment_id] = FakeAttachment(attachment_id, page_id, title, media_type, data)
        return attachment_id

    def update_attachment(self, attachment_id: str, data: bytes) -> None:
        """A new version of the file (same id, version + 1), as an upload over it does."""
        attachment = self.attachments[attachment_id]
        attachment.data, attachment.version = data, attachment.version + 1
        attachment.modified = datetime.now(UTC)

    def set_attachment_status(self, attachment_id: str, status: str) -> None:
        self.attachments[attachment_id].status = status

    def remove_attachment(self, attachment_id: str) -> None:
        del self.attachments[attachment_id]

    def of_page(self, page_id: str) -> tuple[list[FakeComment], list[FakeAttachment]]:
        comments = [c for c in self.comments.values() if c.page_id == page_id and c.status == "current"]
        files = [a for a in self.attachments.values() if a.page_id == page_id and a.status == "current"]
        return comments, files


def content_of(fake: FakeConfluence) -> ContentStore:
    """The fake's content store (created on first use)."""
    store = getattr(fake, "content", None)
    if store is None:
        store = ContentStore()
        fake.content = store  # type: ignore[attr-defined]
    return store


def routes(fake: FakeConfluence) -> list[Route]:
    """The comment, attachment and download routes for `fake`'s deployment, under its context path."""
    content_of(fake)
    p = fake.prefix
    download = Route(p + "/download/attachments/{page}/{name:path}", _download(fake), methods=["GET"])
    if fake.deployment == "cloud":
        table = [
            *(f"/api/v2/{c}/{{id}}/{kind}-comments" for c in ("pages", "blogposts") for kind in ("footer", "inline")),
            *(f"/api/v2/{c}/{{id}}/attachments" for c in ("pages", "blogposts")),
        ]
        comments = [
            Route(p + f"/api/v2/{kind}-comments/{{id}}{tail}", _comment_json(fake, kind, render), methods=["GET"])
            for kind in ("footer", "inline")
            for tail, render in (("/children", _v2_children), ("", _v2_one_comment))
        ]
        return [Route(p + path, _json(fake, _v2), methods=["GET"]) for path in table] + comments + [download]
    return [
        Route(p + "/rest/api/content/{id}/child/comment", _json(fake, _dc_comments), methods=["GET"]),
        Route(p + "/rest/api/content/{id}/child/attachment", _json(fake, _dc_attachments), methods=["GET"]),
        download,
    ]


def _json(fake: FakeConfluence, render: Any) -> Any:
    async def endpoint(request: Request) -> Response:
        with fake._lock:
            page_id = str(request.path_params["id"])
            if page_id not in {item.id for item in fake._sorted()}:
                return JSONResponse({"statusCode": 404, "message": f"No content with id {page_id}"}, status_code=404)
            return JSONResponse(render(fake, request, page_id))

    return endpoint


def _comment_json(fake: FakeConfluence, kind: str, render: Any) -> Any:
    """A v2 endpoint of one comment: 404 unless `{id}` is a current comment of that kind (a footer comment's
    id under `/inline-comments/` is not found, as on Cloud)."""

    async def endpoint(request: Request) -> Response:
        with fake._lock:
            comment = content_of(fake).comments.get(str(request.path_params["id"]))
            if comment is None or comment.kind != kind or comment.status != "current":
                message = f"No {kind} comment with id {request.path_params['id']}"
                return JSONResponse({"errors": [{"status": 404, "title": message}]}, status_code=404)
            return JSONResponse(render(fake, request, comment))

    return endpoint


def _v2_children(fake: FakeConfluence, request: Request, parent: FakeComment) -> JSON:
    with_body = request.query_params.get("body-format") == "storage"
    replies = [c for c in content_of(fake).comments.values() if c.parent_id == parent.id and c.status == "current"]
    items = [_v2_comment(c, with_body) for c in replies]
    chunk, next_link = page_slice(fake, request, items, maximum=V2_MAX_LIMIT)
    return _body(fake, chunk, next_link, request)


def _v2_one_comment(fake: FakeConfluence, request: Request, comment: FakeComment) -> JSON:
    container = fake._get(comment.page_id, ("current", "archived", "trashed", "draft"))
    item = _v2_comment(comment, request.query_params.get("body-format") == "storage")
    item.pop("pageId")
    item["blogPostId" if container.type == "blogpost" else "pageId"] = comment.page_id
    return item


def v1_comment(fake: FakeConfluence, comment_id: str, expand: set[str]) -> JSON | None:
    """`GET /rest/api/content/{id}` when `id` is a current comment (None otherwise: the content route goes on
    with pages); `container` (the page or blog post) when expanded. Called by the fake's content route."""
    comment = content_of(fake).comments.get(comment_id)
    if comment is None or comment.status != "current":
        return None
    item: JSON = {"id": comment.id, "type": "comment", "status": "current", "title": f"Re: {comment.page_id}"}
    if "container" in expand:
        page = fake._get(comment.page_id, ("current", "archived", "trashed", "draft"))
        item["container"] = {"id": page.id, "type": page.type, "status": page.status, "title": page.title}
    item["_links"] = {"base": fake.base_url, "context": fake.prefix, "self": f"/rest/api/content/{comment.id}"}
    return item


def search_entries(fake: FakeConfluence, matches: Callable[[CqlItem], bool]) -> list[JSON]:
    """Current comments and attachments matching a v1 CQL search, as "Search content by CQL" lists them
    (`type`, `container` — the page or blog post —, `version.when`); the fake's search adds them to pages."""
    store = content_of(fake)
    entries: list[JSON] = []
    children: list[FakeComment | FakeAttachment] = [*store.comments.values(), *store.attachments.values()]
    for child in children:
        kind = "comment" if isinstance(child, FakeComment) else "attachment"
        page = fake._content.get(child.page_id)
        if child.status != "current" or page is None:
            continue
        if not matches(CqlItem(id=child.id, type=kind, space_key=page.space_key, last_modified=child.modified)):
            continue
        entries.append({
            "id": child.id,
            "type": kind,
            "status": "current",
            "title": child.title if isinstance(child, FakeAttachment) else f"Re: {page.title}",
            "container": {"id": page.id, "type": page.type, "status": page.status, "title": page.title},
            "version": {"number": child.version, "when": child.modified.isoformat()},
        })  # fmt: skip
    return entries


def _body(fake: FakeConfluence, results: list[JSON], next_link: str | None, request: Request) -> JSON:
    links: JSON = {"base": fake.base_url, "context": fake.prefix}
    if next_link is not None:
        links["next"] = next_link
    body: JSON = {"results": results, "_links": links}
    if fake.deployment == "datacenter":
        start = int(request.query_params.get("start", "0") or 0)
        body |= {"start": start, "limit": fake._limit(request), "size": len(results)}
    return body


def _v2(fake: FakeConfluence, request: Request, page_id: str) -> JSON:
    comments, files = content_of(fake).of_page(page_id)
    path = request.url.path
    with_body = request.query_params.get("body-format") == "storage"
    if path.endswith("/attachments"):
        items = [_v2_attachment(fake, a) for a in files]
    else:
        kind = "inline" if path.endswith("/inline-comments") else "footer"
        items = [_v2_comment(c, with_body) for c in comments if c.kind == kind and c.parent_id is None]
    chunk, next_link = page_slice(fake, request, items, maximum=V2_MAX_LIMIT)
    return _body(fake, chunk, next_link, request)


def _v2_comment(c: FakeComment, with_body: bool) -> JSON:
    item: JSON = {
        "id": c.id,
        "status": "current",
        "title": f"Re: {c.page_id}",
        "pageId": c.page_id,
        "version": {"number": c.version, "authorId": c.author_id, "createdAt": c.created.isoformat()},
        **({"parentCommentId": c.parent_id} if c.parent_id is not None else {}),
        "body": {"storage": {"value": c.body, "representation": "storage"}} if with_body else {},
        "_links": {"webui": f"/spaces/X/pages/{c.page_id}?focusedCommentId={c.id}"},
    }
    if c.kind == "inline":
        item["resolutionStatus"] = c.resolution
        item["properties"] = {"inlineMarkerRef": f"marker-{c.id}", "inlineOriginalSelection": c.selection or ""}
    return item


def _link(a: FakeAttachment) -> str:
    return f"/download/attachments/{a.page_id}/{quote(a.title)}?version={a.version}&api=v2"


def _v2_attachment(fake: FakeConfluence, a: FakeAttachment) -> JSON:
    return {
        "id": a.id,
        "status": a.status,
        "title": a.title,
        "pageId": a.page_id,
        "mediaType": a.media_type,
        "fileSize": len(a.data),
        "version": {"number": a.version},
        "downloadLink": _link(a),
        "_links": {"download": _link(a), "webui": f"/pages/viewpageattachments.action?pageId={a.page_id}"},
    }


def _dc_comments(fake: FakeConfluence, request: Request, page_id: str) -> JSON:
    comments, _ = content_of(fake).of_page(page_id)
    expand = {e for raw in request.query_params.getlist("expand") for e in raw.split(",")}
    if request.query_params.get("depth") != "all":  # `depth=all` adds the replies to the root comments
        comments = [c for c in comments if c.parent_id is None]
    items = []
    for c in comments:
        item: JSON = {"id": c.id, "type": "comment", "status": "current", "title": f"Re: {c.page_id}"}
        if "body.storage" in expand:
            item["body"] = {"storage": {"value": c.body, "representation": "storage"}}
        if "version" in expand:
            item["version"] = {"number": c.version}
        if "ancestors" in expand:  # a reply's ancestors are the comments above it, root first
            item["ancestors"] = [{"id": a, "type": "comment", "status": "current"} for a in _comment_chain(fake, c)]
        if "history" in expand:
            creator = fake._user(c.author_id)
            item["history"] = {"createdBy": creator, "createdDate": c.created.isoformat()}
        extensions: JSON = {"location": c.kind}
        if c.kind == "inline" and "extensions.inlineProperties" in expand:
            extensions["inlineProperties"] = {"originalSelection": c.selection or "", "markerRef": f"m-{c.id}"}
        if c.kind == "inline" and "extensions.resolution" in expand:
            extensions["resolution"] = {"status": c.resolution}
        item["extensions"] = extensions
        items.append(item)
    chunk, next_link = page_slice(fake, request, items)
    return _body(fake, chunk, next_link, request)


def _comment_chain(fake: FakeConfluence, comment: FakeComment) -> list[str]:
    """Ids of the comments above `comment`, root first."""
    chain: list[str] = []
    parent = comment.parent_id
    while parent is not None and parent not in chain:
        chain.insert(0, parent)
        above = content_of(fake).comments.get(parent)
        parent = above.parent_id if above is not None else None
    return chain


def _dc_attachments(fake: FakeConfluence, request: Request, page_id: str) -> JSON:
    _, files = content_of(fake).of_page(page_id)
    items = [
        {
            "id": a.id,
            "type": "attachment",
            "status": a.status,
            "title": a.title,
            "metadata": {"mediaType": a.media_type},
            "extensions": {"mediaType": a.media_type, "fileSize": len(a.data)},
            "version": {"number": a.version},
            "_links": {"download": _link(a)},
        }
        for a in files
    ]
    chunk, next_link = page_slice(fake, request, items)
    return _body(fake, chunk, next_link, request)


def _download(fake: FakeConfluence) -> Any:
    async def endpoint(request: Request) -> Response:
        page_id, name = str(request.path_params["page"]), unquote(str(request.path_params["name"]))
        with fake._lock:
            found = [
                a
                for a in content_of(fake).attachments.values()
                if a.page_id == page_id and a.title == name and a.status == "current"
            ]
        if not found:
            return JSONResponse({"statusCode": 404, "message": "attachment not found"}, status_code=404)
        return Response(found[0].data, media_type=found[0].media_type)

    return endpoint
