"""A fake Confluence (Cloud or Data Center) served over real HTTP on 127.0.0.1, for tests and benchmarks.

It serves exactly the endpoints `app.confluence.ConfluenceClient` calls, with JSON shaped like the real APIs
(modelled on the captures in `shared/corpus/api/`), checks credentials, paginates (25 results per response by
default, so pagination is always exercised), and counts every request so a test can assert how many calls a
code path made. Faults (`fail_next`, `slowness`, `next_link_origin`) are injected deterministically.

It also enforces what Atlassian documents for each endpoint (defaults, maxima, enums, ids per request, URL
length), with the source cited beside each rule in `confluence_api.py`, so a client that relies on something
the real service would refuse fails here too. A fake that is more lenient than Confluence hides bugs: that is
how a page 30 levels deep once read as unrestricted.

    with FakeConfluence("cloud").start() as fake:
        fake.put_page("1", title="Home", body="<p>hi</p>")
        settings = Settings(confluence_base_url=fake.base_url, **fake.credentials)

Run it alone for benchmarks: `python -m tests.fakes.confluence --port 8090 --deployment cloud --pages 500`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote_plus, urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.fakes.confluence_cql import CqlError, CqlItem

JSON = dict[str, Any]
Deployment = Literal["cloud", "datacenter"]
STATUSES = ("current", "trashed", "deleted", "archived")
LABELS_INLINE = 50  # v2 `include-labels` stops here and says `hasMore`
#: Cloud content that can sit in a page tree without being a page (v2 "Ancestors": ancestor `type` is one of
#: page, whiteboard, database, embed, folder), with the v2 collection that serves each.
CONTAINER_TYPES: dict[str, str] = {
    "folder": "folders",
    "whiteboard": "whiteboards",
    "database": "databases",
    "embed": "embeds",
}
#: Longest request target (path + query) served; longer ones get 414. Atlassian documents no figure, but its
#: edge refuses long GETs with 400/414 (CONFCLOUD-76891, `user/bulk` with many account ids); 8 KiB is the
#: common default of the proxies in front of Data Center too.
MAX_URL_BYTES = 8192


@dataclass
class FakeContent:
    """One page or blog post as the fake stores it."""

    id: str
    type: str
    title: str
    body: str
    space_key: str
    parent_id: str | None
    author_id: str
    creator_id: str
    labels: tuple[str, ...]
    restricted: bool
    status: str
    version: int
    created: datetime
    last_modified: datetime
    seq: int
    #: Who the read restriction names when `restricted`: a named user, or a group.
    restricted_to: Literal["user", "group"] = "user"


@dataclass
class _Fault:
    remaining: int
    status: int
    retry_after: float | None
    path_contains: str | None


@dataclass
class _Space:
    id: str
    key: str
    name: str
    homepage_id: str | None = None


@dataclass
class _Counters:
    requests: list[tuple[str, str]] = field(default_factory=list)
    by_query: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _slug(title: str) -> str:
    return quote_plus(title)


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        return int(base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)[1])
    except (ValueError, IndexError) as exc:
        raise _HttpError(400, f"bad cursor {cursor!r}") from exc


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _error(status: int, message: str) -> JSONResponse:
    body = {"statusCode": status, "message": message, "errors": [{"status": status, "title": message}]}
    return JSONResponse(body, status_code=status)


class FakeConfluence:
    """The fake site: state, fault injection, counters, and its HTTP server."""

    def __init__(
        self,
        deployment: Deployment = "cloud",
        *,
        email: str = "bot@example.com",
        api_token: str = "cloud-token",
        pat: str = "dc-pat",
    ) -> None:
        self.deployment: Deployment = deployment
        self.email, self.api_token, self.pat = email, api_token, pat
        #: Seconds added to every request (inside the server, so concurrent requests overlap).
        self.slowness: float = 0.0
        #: The most results one list response carries, whatever `limit` asks (real Confluence caps too).
        self.max_limit: int = 25
        #: When set (e.g. "http://127.0.0.1:9"), every `_links.next` is written absolute on this origin: a
        #: hostile or misconfigured server steering the client, with our credentials, somewhere else.
        self.next_link_origin: str | None = None
        self.port: int = 0
        self._lock = threading.RLock()
        self._content: dict[str, FakeContent] = {}
        self._spaces: dict[str, _Space] = {}
        self._users: dict[str, str] = {}
        self._faults: list[_Fault] = []
        self._counters = _Counters()
        self._seq = 0
        self._next_id = 100_000
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app: ASGIApp = _Gate(self, Starlette(routes=_routes(self)))

    # --- lifecycle ----------------------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        """The context path: Cloud serves the wiki under /wiki."""
        return "/wiki" if self.deployment == "cloud" else ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    @property
    def credentials(self) -> dict[str, str]:
        """Settings keyword arguments that authenticate against this fake."""
        if self.deployment == "cloud":
            return {"confluence_email": self.email, "confluence_api_token": self.api_token}
        return {"confluence_pat": self.pat}

    def start(self, port: int = 0) -> FakeConfluence:
        """Serve on 127.0.0.1 (a free port unless given) from a background thread; returns when listening."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-confluence", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake Confluence did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FakeConfluence:
        return self if self._server is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        """scheme://host:port of the server, without the context path."""
        return f"http://127.0.0.1:{self.port}"

    # --- state --------------------------------------------------------------------------------------------
    def add_space(self, key: str, name: str | None = None, *, homepage: str | None = None) -> None:
        """Create (or rename) a space. With `homepage`, the space gets a home page of that title and, as on
        real Cloud sites (see the corpus's `*.ancestors.v1.json`: every breadcrumb starts at the home page),
        every page later added without a parent becomes its child."""
        with self._lock:
            if key in self._spaces:
                self._spaces[key].name = name or self._spaces[key].name
            else:
                self._spaces[key] = _Space(id=str(98_300 + len(self._spaces)), key=key, name=name or key)
            space = self._spaces[key]
            if homepage is not None and space.homepage_id is None:
                home_id = f"{space.id}0"
                self.put_page(home_id, title=homepage, body="<p>Home</p>", space_key=key)
                space.homepage_id = home_id

    def add_container(
        self,
        content_id: str,
        *,
        title: str,
        space_key: str = "ENG",
        parent_id: str | None = None,
        kind: str = "folder",
        restricted: bool = False,
    ) -> None:
        """A Cloud folder (or whiteboard, database, embed) in the page tree: pages can live under it, it has a
        title and may carry read restrictions, but it is never listed, indexed or fetched as a page."""
        if self.deployment != "cloud" or kind not in CONTAINER_TYPES:
            raise ValueError(f"Cloud only, and kind must be one of {sorted(CONTAINER_TYPES)}")
        now = datetime.now(UTC)
        with self._lock:
            self.add_space(space_key)
            if parent_id is not None and parent_id not in self._content:
                raise KeyError(f"parent {parent_id} does not exist")
            self._seq += 1
            self._content[content_id] = FakeContent(
                id=content_id,
                type=kind,
                title=title,
                body="",
                space_key=space_key,
                parent_id=parent_id if parent_id is not None else self._spaces[space_key].homepage_id,
                author_id="acc-1",
                creator_id="acc-1",
                labels=(),
                restricted=restricted,
                status="current",
                version=1,
                created=now,
                last_modified=now,
                seq=self._seq,
            )

    def add_user(self, account_id: str, display_name: str) -> None:
        with self._lock:
            self._users[account_id] = display_name

    def put_page(
        self,
        page_id: str,
        *,
        title: str,
        body: str,
        space_key: str = "ENG",
        parent_id: str | None = None,
        author_id: str = "acc-1",
        content_type: str = "page",
        labels: Sequence[str] = (),
        restricted: bool = False,
        last_modified: datetime | None = None,
    ) -> int:
        """Create or edit a page (bumping its version, as every edit does); returns the new version.

        Unknown spaces are created; unknown authors get the display name "User <id>".
        """
        if content_type not in ("page", "blogpost"):
            raise ValueError(f"content_type must be page or blogpost, got {content_type!r}")
        when = last_modified or datetime.now(UTC)
        with self._lock:
            self.add_space(space_key)
            self._users.setdefault(author_id, f"User {author_id}")
            old = self._content.get(page_id)
            if parent_id is not None and parent_id not in self._content:
                raise KeyError(f"parent {parent_id} does not exist")
            home = self._spaces[space_key].homepage_id
            if parent_id is None and old is None and home is not None and home != page_id:
                parent_id = home
            elif parent_id is None and old is not None:
                parent_id = old.parent_id
            self._seq += 1
            self._content[page_id] = FakeContent(
                id=page_id,
                type=content_type,
                title=title,
                body=body,
                space_key=space_key,
                parent_id=parent_id if content_type == "page" else None,
                author_id=author_id,
                creator_id=old.creator_id if old else author_id,
                labels=tuple(labels),
                restricted=restricted,
                status=old.status if old else "current",
                version=old.version + 1 if old else 1,
                created=old.created if old else when,
                last_modified=when,
                seq=old.seq if old else self._seq,
            )
            return self._content[page_id].version

    def bulk_pages(self, space_key: str, n: int, body_factory: Callable[[int], str] | None = None) -> list[str]:
        """Add `n` pages to a space quickly (fresh numeric ids); returns their ids."""
        make_body = body_factory or (lambda i: f"<p>Page {i} of {space_key}.</p>")
        ids = []
        with self._lock:
            for i in range(n):
                while str(self._next_id) in self._content:
                    self._next_id += 1
                page_id = str(self._next_id)
                self.put_page(page_id, title=f"{space_key} page {i}", body=make_body(i), space_key=space_key)
                ids.append(page_id)
        return ids

    def set_status(self, page_id: str, status: str) -> None:
        """Trash, archive, mark deleted, or restore ("current"); the version does not change, but the
        modification date does (so CQL `lastmodified` with `cqlcontext` contentStatuses finds it)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        with self._lock:
            self._content[page_id].status = status
            self._content[page_id].last_modified = datetime.now(UTC)

    def delete_page(self, page_id: str) -> None:
        """Purge: the page answers 404 from now on; its children move up to its parent, as in Confluence."""
        with self._lock:
            gone = self._content.pop(page_id)
            for item in self._content.values():
                if item.parent_id == page_id:
                    item.parent_id = gone.parent_id

    def move_page(self, page_id: str, *, space_key: str | None = None, parent_id: str | None = None) -> None:
        """Move a page (and its subtree, across spaces too); Confluence keeps the version but not the date."""
        with self._lock:
            item = self._content[page_id]
            if parent_id is not None:
                if parent_id not in self._content or page_id in self._ancestor_ids(parent_id):
                    raise ValueError(f"cannot move {page_id} under {parent_id}")
                item.parent_id = parent_id
                space_key = space_key or self._content[parent_id].space_key
            elif space_key is not None:
                item.parent_id = None
            if space_key is not None:
                self.add_space(space_key)
                for moved in self._subtree(page_id):
                    moved.space_key = space_key
            item.last_modified = datetime.now(UTC)

    def set_restricted(self, page_id: str, restricted: bool, *, to: Literal["user", "group"] = "user") -> None:
        """Add or lift a read restriction; `to` says whether it names a user or a group."""
        with self._lock:
            self._content[page_id].restricted = restricted
            self._content[page_id].restricted_to = to

    def page(self, page_id: str) -> FakeContent:
        """A copy of one stored page, for assertions."""
        with self._lock:
            return replace(self._content[page_id])

    def page_ids(self, space_key: str | None = None) -> list[str]:
        """Ids of pages and blog posts (not folders and other containers)."""
        with self._lock:
            return [
                i
                for i, c in self._content.items()
                if c.type in ("page", "blogpost") and (space_key is None or c.space_key == space_key)
            ]

    # --- faults and counters ------------------------------------------------------------------------------
    def fail_next(
        self, n: int, status: int = 503, retry_after: float | None = None, path_contains: str | None = None
    ) -> None:
        """The next `n` requests (whose path contains `path_contains`) get `status`, with `Retry-After`
        when given. Faults are checked before credentials, like a gateway's rate limiter."""
        with self._lock:
            self._faults.append(_Fault(n, status, retry_after, path_contains))

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request since the last reset, in arrival order."""
        with self._lock:
            return list(self._counters.requests)

    @property
    def max_in_flight(self) -> int:
        """The most requests the server was handling at once since the last reset."""
        return self._counters.max_in_flight

    def count(self, path_contains: str = "") -> int:
        with self._lock:
            return sum(1 for _, path in self._counters.requests if path_contains in path)

    def queries(self, path_contains: str = "") -> list[str]:
        """Raw query strings of the requests whose path contains `path_contains`, in arrival order."""
        with self._lock:
            pairs = zip(self._counters.requests, self._counters.by_query, strict=True)
            return [query for (_, path), query in pairs if path_contains in path]

    def reset_counters(self) -> None:
        with self._lock:
            self._counters.requests.clear()
            self._counters.by_query.clear()
            self._counters.max_in_flight = self._counters.in_flight

    # --- internals used by the routes ---------------------------------------------------------------------
    def _ancestor_ids(self, page_id: str) -> list[str]:
        """Root first."""
        chain: list[str] = []
        parent = self._content[page_id].parent_id
        while parent is not None and parent in self._content and parent not in chain:
            chain.append(parent)
            parent = self._content[parent].parent_id
        return chain[::-1]

    def _subtree(self, page_id: str) -> Iterator[FakeContent]:
        yield self._content[page_id]
        for child in [c for c in self._content.values() if c.parent_id == page_id]:
            yield from self._subtree(child.id)

    def _get(self, content_id: str, statuses: Sequence[str], content_type: str | None = None) -> FakeContent:
        item = self._content.get(content_id)
        if item is None or item.status not in statuses or (content_type and item.type != content_type):
            raise _HttpError(404, f"No content found with id: {content_id}")
        return item

    def _sorted(self) -> list[FakeContent]:
        return sorted(self._content.values(), key=lambda c: c.seq)

    def _fault_for(self, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and (fault.path_contains is None or fault.path_contains in path):
                fault.remaining -= 1
                return fault
        return None

    def _authorised(self, header: str | None) -> bool:
        if self.deployment == "cloud":
            token = base64.b64encode(f"{self.email}:{self.api_token}".encode()).decode()
            return header == f"Basic {token}"
        return header == f"Bearer {self.pat}"

    def _limit(self, request: Request, *, maximum: int | None = None) -> int:
        """The results to return: `limit` (default 25), served at most `max_limit` at a time.

        With `maximum` (v2 lists: 1..250, OpenAPI `limit` schema `minimum: 1, maximum: 250`) a value outside
        the range is a 400, as Cloud answers; v1 and Data Center silently clamp instead (CONFSERVER-52558).
        """
        try:
            asked = int(request.query_params.get("limit", "25"))
        except ValueError as exc:
            raise _HttpError(400, "limit must be a number") from exc
        if maximum is not None and not 1 <= asked <= maximum:
            raise _HttpError(400, f"limit must be between 1 and {maximum}, got {asked}")
        return max(1, min(asked, self.max_limit))

    def _ancestor_chain(self, content_id: str) -> list[FakeContent]:
        """Every ancestor (pages and containers), root first."""
        return [self._content[i] for i in self._ancestor_ids(content_id)]

    def _user(self, user_id: str) -> JSON:
        name = self._users.get(user_id, f"User {user_id}")
        if self.deployment == "cloud":
            return {
                "type": "known",
                "accountId": user_id,
                "accountType": "atlassian",
                "displayName": name,
                "publicName": name,
            }
        return {"type": "known", "username": user_id, "userKey": user_id, "displayName": name}

    def _webui(self, item: FakeContent) -> str:
        if item.type == "blogpost":
            return f"/spaces/{item.space_key}/blog/{item.created:%Y/%m/%d}/{item.id}/{_slug(item.title)}"
        return f"/spaces/{item.space_key}/pages/{item.id}/{_slug(item.title)}"


class _Gate:
    """ASGI middleware: count, slow down, inject faults, check credentials, then route."""

    def __init__(self, fake: FakeConfluence, app: ASGIApp) -> None:
        self.fake, self.inner = fake, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        fake, counters = self.fake, self.fake._counters
        with fake._lock:
            counters.requests.append((scope["method"], scope["path"]))
            counters.by_query.append(scope.get("query_string", b"").decode("latin-1"))
            counters.in_flight += 1
            counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
        try:
            await self._handle(scope, receive, send)
        finally:
            with fake._lock:
                counters.in_flight -= 1

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        fake = self.fake
        if fake.slowness > 0:
            await asyncio.sleep(fake.slowness)
        with fake._lock:
            fault = fake._fault_for(scope["path"])
        target = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string", b"")) + 1
        if fault is not None:
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
            response: Response = _error(fault.status, f"injected fault {fault.status}")
            response.headers.update(headers or {})
        elif target > MAX_URL_BYTES:
            response = _error(414, f"URI too long ({target} bytes, at most {MAX_URL_BYTES})")
        elif not fake._authorised(Request(scope).headers.get("authorization")):
            response = _error(401, "Unauthorized; scope does not match")
        else:
            await self.inner(scope, receive, send)
            return
        await response(scope, receive, send)


def _handler(fake: FakeConfluence, render: Callable[[FakeConfluence, Request], JSON]) -> Any:
    async def endpoint(request: Request) -> Response:
        try:
            with fake._lock:
                return JSONResponse(render(fake, request))
        except _HttpError as exc:
            return _error(exc.status, exc.message)
        except CqlError as exc:
            return _error(400, f"Could not parse cql: {exc}")

    return endpoint


def _routes(fake: FakeConfluence) -> list[Route]:
    from tests.fakes import confluence_api as api
    from tests.fakes import confluence_content as content

    table = api.CLOUD_ROUTES if fake.deployment == "cloud" else api.DC_ROUTES
    pages = [Route(fake.prefix + path, _handler(fake, render), methods=["GET"]) for path, render in table]
    return pages + content.routes(fake)  # comments, attachments and downloads


def page_slice(
    fake: FakeConfluence, request: Request, items: Sequence[Any], *, maximum: int | None = None
) -> tuple[list[Any], str | None]:
    """One response's worth of `items` and the `_links.next` for the rest (cursor on Cloud, start on DC)."""
    limit = fake._limit(request, maximum=maximum)
    params = {k: v for k, v in request.query_params.multi_items() if k not in ("cursor", "start")}
    if fake.deployment == "cloud":
        start = _offset(request.query_params.get("cursor"))
        more = {"cursor": _cursor(start + limit)}
    else:
        start = int(request.query_params.get("start", "0") or 0)
        more = {"start": str(start + limit)}
    chunk = list(items[start : start + limit])
    if start + limit >= len(items):
        return chunk, None
    query = urlencode([*params.items(), *more.items()])
    path = request.url.path
    if fake.next_link_origin is not None:
        return chunk, f"{fake.next_link_origin}{path}?{query}"
    if "/rest/api/" in path:  # v1 writes `next` relative to the base (context path excluded), v2 does not
        path = path.removeprefix(fake.prefix)
    return chunk, f"{path}?{query}"


def cql_item(item: FakeContent) -> CqlItem:
    return CqlItem(id=item.id, type=item.type, space_key=item.space_key, last_modified=item.last_modified)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a fake site in the foreground (for benchmarks and manual runs) until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--deployment", choices=["cloud", "datacenter"], default="cloud")
    parser.add_argument("--pages", type=int, default=0, help="pages to create in space ENG")
    parser.add_argument("--space", default="ENG")
    parser.add_argument("--slowness", type=float, default=0.0)
    parser.add_argument("--max-limit", type=int, default=25)
    args = parser.parse_args(argv)
    fake = FakeConfluence(args.deployment)
    fake.slowness, fake.max_limit = args.slowness, args.max_limit
    if args.pages:
        fake.bulk_pages(args.space, args.pages)
    with fake.start(args.port):
        print(fake.base_url, flush=True)
        print(" ".join(f"{k.upper()}={v}" for k, v in fake.credentials.items()), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
