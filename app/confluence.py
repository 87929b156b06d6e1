"""The one way the service talks to Confluence: Cloud (v2 API + a little v1) and Data Center (v1 API).

Everything the pipeline needs from Confluence goes through `ConfluenceClient`, so timeouts, the concurrency
limit, retries with `Retry-After` and the translation of HTTP failures into our error tree happen in exactly
one place. Response shapes are read by `app.confluence_parse`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit

import httpx
from cachetools import TTLCache
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.stop import stop_base

from app.config import Deployment, Settings
from app.confluence_parse import (
    JSON,
    CloudContent,
    SpaceInfo,
    as_object,
    build_cloud_page,
    dc_ancestor_ids,
    next_url,
    parse_ancestors,
    parse_cloud_content,
    parse_cloud_refs,
    parse_cloud_space,
    parse_cloud_users,
    parse_dc_page,
    parse_dc_space_keys,
    parse_dc_user,
    parse_label_names,
    parse_search_refs,
    parse_titles,
    read_restricted,
    results,
)
from app.errors import (
    ConfluenceAuthError,
    ConfluenceCredentialsRejected,
    ConfluenceProtocolError,
    ConfluenceUnavailable,
    PageNotFound,
)
from app.models import ContentType, Page, PageRef
from app.retry import Backoff, parse_retry_after

log = logging.getLogger(__name__)

Params = dict[str, str] | list[tuple[str, str | int | float | bool | None]]
RetryHook = Callable[[int, float], None]
Sleep = Callable[[float], Awaitable[None]]

#: v2 lists accept at most 250 ids (`id`/`space-id`/`keys` `maxItems: 250`) and 250 results per request
#: (`limit` maximum 250); v1 search and user bulk are kept smaller so the URL stays well below proxy limits.
V2_BATCH = 250
CQL_BATCH = 100
SPACE_BATCH = 100
#: v1 `user/bulk` answers at most 200 ids ("If more than 200 ids are passed first 200 will be returned").
USER_BATCH = 100
#: Long GETs are refused by Atlassian's edge with 400/414 (CONFCLOUD-76891: `user/bulk` with many account ids,
#: which may be up to 128 characters each): id lists are cut so the query string stays under this many bytes.
QUERY_BUDGET = 6000
KINDS: tuple[tuple[str, ContentType], ...] = (("pages", "page"), ("blogposts", "blogpost"))
#: Statuses asked for when fetching one item, so trashed or archived content comes back (and is deleted from
#: the index) instead of looking like a 404. v2 takes `status` as a repeated parameter whose values must be
#: in the operation's enum: "Get page by id" allows current, archived, trashed, deleted, historical, draft;
#: "Get blog post by id" current, trashed, deleted, historical, draft (blog posts are never archived, and
#: asking for `archived` is a 400).
FETCH_STATUSES: dict[ContentType, tuple[str, ...]] = {
    "page": ("current", "archived", "trashed", "deleted"),
    "blogpost": ("current", "trashed", "deleted"),
}
#: v2 "Get all ancestors of page": `limit` default 25, maximum 250, no cursor; more are had by asking again
#: from the highest ancestor returned.
ANCESTORS_LIMIT = 250
#: The v2 collection serving each kind of tree node an ancestor list can name (v2 Ancestors: type is one of
#: page, whiteboard, database, embed, folder).
ANCESTOR_KINDS: dict[str, str] = {
    "page": "pages",
    "folder": "folders",
    "whiteboard": "whiteboards",
    "database": "databases",
    "embed": "embeds",
}
#: Statuses of content gone from the index's point of view, for CQL `cqlcontext` (reconciliation).
GONE_STATUSES = ("trashed", "deleted", "archived")
#: Cache bounds: entries, and seconds before an entry (a miss included) is asked again.
CACHE_SIZE = 20_000
NAME_TTL = 600.0
#: Read restrictions of ancestors are served from cache for at most this long (a page's own restrictions are
#: always read fresh): a restriction added to a parent without any webhook reaching this process is seen by
#: its descendants' next jobs within this window.
RESTRICTION_TTL = 60.0
#: CQL dates are read in the calling user's profile time zone, which we cannot know: the query is widened
#: by a day (more than any UTC offset) and the exact cut is made on our side.
CQL_TZ_SLACK = timedelta(days=1)


def _cache(ttl: float, clock: Callable[[], float], size: int = CACHE_SIZE) -> TTLCache[str, Any]:
    """A bounded cache whose entries expire (least recently used evicted first): names and restrictions change
    rarely, but do change, and a long-lived worker must not grow with the wiki."""
    return TTLCache(maxsize=size, ttl=ttl, timer=clock)


class _BearerAuth(httpx.Auth):
    """Data Center personal access token; its repr never shows the token."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Any:
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(<hidden>)"


class DownloadTooLarge(Exception):
    """A download passed its byte cap (`seen` is what arrived or was declared before we stopped)."""

    def __init__(self, seen: int, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes (at least {seen})")
        self.seen, self.limit = seen, limit


class DownloadUndecodable(Exception):
    """A download whose `Content-Encoding` we cannot decode within the byte cap (an unknown or stacked
    encoding, or a corrupt compressed stream): the file is skipped, like a corrupt one."""


def _bounded_decoder(encoding: str) -> Any:
    """A zlib decompressor for the response's `Content-Encoding` (None for identity).

    Why not httpx's own decoding: it inflates one network read at a time without a limit, so a 64 KiB read of a
    gzip bomb becomes ~64 MiB before any cap is checked. `zlib`'s `max_length` lets `_download_once` inflate
    only up to the cap. gzip and deflate are the codings HTTP servers apply to arbitrary files (RFC 9110
    section 8.4.1); `32 + MAX_WBITS` reads both the gzip and the zlib ("deflate") wrappers.
    Raises DownloadUndecodable for any other coding (br, zstd, stacked codings such as "gzip, gzip")."""
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return None
    if coding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(32 + zlib.MAX_WBITS)
    raise DownloadUndecodable(f"unsupported Content-Encoding {encoding!r}")


class _Transient(Exception):
    """One failed attempt that may succeed if repeated (internal to `ConfluenceClient._with_retries`)."""

    def __init__(self, status: int, retry_after: float | None, detail: str) -> None:
        super().__init__(detail)
        self.status, self.retry_after, self.detail = status, retry_after, detail


class _RetryAfterBeyond(stop_base):
    """tenacity stop rule: a `Retry-After` longer than `cap` seconds is not slept through; the error goes up
    with that delay, so the job queue, not a worker slot, does the waiting."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        failure = outcome.exception() if outcome is not None else None
        return isinstance(failure, _Transient) and failure.retry_after is not None and failure.retry_after > self.cap


def _batches(items: Sequence[str], size: int, budget: int = QUERY_BUDGET, per_item: int = 3) -> Iterable[Sequence[str]]:
    """`items` cut into runs of at most `size`, each run's URL-encoded length (plus `per_item` bytes of
    separator or parameter name per item) within `budget` bytes, so no request is refused for its length."""
    batch: list[str] = []
    used = 0
    for item in items:
        cost = len(quote(item, safe="")) + per_item
        if batch and (len(batch) >= size or used + cost > budget):
            yield batch
            batch, used = [], 0
        batch.append(item)
        used += cost
    if batch:
        yield batch


_MISSING: Any = object()
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> str:
    """scheme://host:port of `url` (RFC 6454 origin, default port made explicit, host lower-cased)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = None  # an unparsable port never equals ours
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def _cql_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class ConfluenceClient:
    """An async client for one Confluence site; use one per worker and close it (`async with`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        on_retry: RetryHook | None = None,
        sleep: Sleep = asyncio.sleep,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` (seconds, monotonic) times the caches' expiry; tests pass their own to step past it."""
        self._cloud = settings.deployment == Deployment.CLOUD
        self._base = settings.confluence_base_url
        self._max_retries = settings.confluence_max_retries
        self._backoff = backoff or Backoff(base=0.5, cap=settings.confluence_max_backoff)
        self._on_retry, self._sleep = on_retry, sleep
        self._gate = asyncio.Semaphore(settings.confluence_max_concurrency)
        self._fix = "CONFLUENCE_EMAIL and CONFLUENCE_API_TOKEN" if self._cloud else "CONFLUENCE_PAT"
        if not settings.confluence_base_url:  # name every missing setting, not only the credentials
            self._fix = "CONFLUENCE_BASE_URL and CONFLUENCE_EMAIL + CONFLUENCE_API_TOKEN (Cloud) or CONFLUENCE_PAT"
        self._http = httpx.AsyncClient(
            auth=self._auth(settings),
            timeout=httpx.Timeout(settings.confluence_timeout),
            transport=transport,
            headers={"Accept": "application/json"},
        )
        self._origin = _origin(self._base)
        self._users: TTLCache[str, str | None] = _cache(NAME_TTL, clock)
        self._spaces: TTLCache[str, SpaceInfo] = _cache(NAME_TTL, clock, size=2_000)
        self._titles: TTLCache[str, str] = _cache(NAME_TTL, clock)
        self._restrictions: TTLCache[str, bool] = _cache(RESTRICTION_TTL, clock)

    def _auth(self, settings: Settings) -> httpx.Auth | None:
        if self._cloud and settings.confluence_email and settings.confluence_api_token:
            return httpx.BasicAuth(settings.confluence_email, settings.confluence_api_token.get_secret_value())
        if not self._cloud and settings.confluence_pat:
            return _BearerAuth(settings.confluence_pat.get_secret_value())
        return None

    def __repr__(self) -> str:
        kind = "cloud" if self._cloud else "datacenter"
        return f"ConfluenceClient({self._base!r}, {kind})"

    async def __aenter__(self) -> ConfluenceClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- public API ---------------------------------------------------------------------------------------
    async def get_page(self, page_id: str, content_type: ContentType | None = None) -> Page:
        """The page or blog post as Confluence has it now, in whatever status (trashed pages included).

        Raises PageNotFound when it is gone (purged) or invisible to us. Without `content_type` a Cloud
        lookup tries pages, then blog posts, because webhooks do not always say which one changed.
        """
        if not self._cloud:
            return await self._dc_page(page_id)
        if content_type is not None:
            return await self._cloud_page(page_id, content_type)
        try:
            return await self._cloud_page(page_id, "page")
        except PageNotFound:
            return await self._cloud_page(page_id, "blogpost")

    async def resolve_users(self, ids: Iterable[str]) -> dict[str, str]:
        """Display names for Cloud account ids / Data Center user keys (or usernames); unknown ids omitted.

        Answers, misses included, are cached (bounded, for `NAME_TTL` seconds), so a backfill asks once per
        author and a renamed or newly visible user is seen again within minutes.
        """
        unique = {i for i in ids if i}
        names: dict[str, str | None] = {}
        for user_id in unique:
            cached = self._users.get(user_id, _MISSING)
            if cached is not _MISSING:
                names[user_id] = cached
        wanted = sorted(unique - names.keys())
        if wanted and self._cloud:
            for batch in _batches(wanted, USER_BATCH, per_item=len("&accountId=")):
                found = await self._cloud_users(batch)
                names.update({i: found.get(i) for i in batch})
        elif wanted:
            answers = await asyncio.gather(*(self._dc_user(i) for i in wanted))
            names.update(zip(wanted, answers, strict=True))
        for user_id in wanted:
            self._users[user_id] = names[user_id]
        return {i: name for i in unique if (name := names.get(i)) is not None}

    def invalidate(self, content_id: str) -> None:
        """Forget what is cached about one page, folder or blog post: its read restriction and its title.

        Called when an event says they may have changed (a move, a restriction or permission change, an
        edit): a page's own restriction is always read fresh, but its descendants take their ancestors'
        restrictions from this cache. Other processes' caches expire within `RESTRICTION_TTL`.
        """
        self._restrictions.pop(content_id, None)
        self._titles.pop(content_id, None)

    async def iter_gone(self, since: datetime) -> AsyncIterator[PageRef]:
        """Pages and blog posts trashed, deleted or archived at or after `since` (for reconciliation).

        Purged content is in no list at all: only a webhook or an existence check of held ids finds it.
        """
        cut = _aware(since)
        context = json.dumps({"contentStatuses": list(GONE_STATUSES)}, separators=(",", ":"))
        async for ref in self._cql_refs(self._listing_cql(None, cut), cqlcontext=context):
            if ref.last_modified is None or ref.last_modified >= cut:
                yield ref

    async def iter_pages(
        self, space_keys: Sequence[str] | None = None, *, since: datetime | None = None
    ) -> AsyncIterator[PageRef]:
        """Every current page and blog post (of these spaces; all when None), yielded as each page arrives.

        `since` keeps only content modified at or after it; that needs CQL (v1 search, both products).
        """
        if space_keys is not None and not space_keys:
            return
        if since is None and self._cloud:
            async for ref in self._cloud_refs(space_keys):
                yield ref
            return
        cut = _aware(since) if since is not None else None
        async for ref in self._cql_refs(self._listing_cql(space_keys, cut)):
            if cut is None or ref.last_modified is None or ref.last_modified >= cut:
                yield ref

    async def existing_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are current pages or blog posts we can still see (for deletes without a webhook)."""
        unique = sorted(set(ids))
        found: set[str] = set()
        if self._cloud:
            for batch in _batches(unique, V2_BATCH):
                params = {"id": ",".join(batch), "status": "current", "limit": str(V2_BATCH)}
                for kind in ("pages", "blogposts"):
                    async for data in self._paginate(self._v2(kind), params):
                        found.update(str(item.get("id")) for item in results(data))
        else:
            for batch in _batches(unique, CQL_BATCH):
                cql = f"type in (page, blogpost) and id in ({', '.join(map(_cql_quote, batch))})"
                async for ref in self._cql_refs(cql):
                    found.add(ref.id)
        return found & set(unique)

    async def check_credentials(self) -> None:
        """Fail fast at startup: ConfluenceAuthError if our credentials are refused (or we are anonymous)."""
        data = await self._get_json(self._v1("user/current"))
        if data.get("type") == "anonymous":
            raise ConfluenceAuthError(f"Confluence treats us as anonymous: check {self._fix}")

    async def list_space_keys(self) -> list[str]:
        """Keys of every current space we can see."""
        if self._cloud:
            return [space.key for space in await self._cloud_spaces(None)]
        keys: list[str] = []
        async for data in self._paginate(self._v1("space"), {"limit": "100", "status": "current"}):
            keys.extend(parse_dc_space_keys(data))
        return keys

    # --- raw reads for app.permissions_client (same limits, retries and error translation) ---------------
    @property
    def is_cloud(self) -> bool:
        return self._cloud

    async def get_json(self, api: str, path: str, params: Params | None = None) -> JSON:
        """GET `/rest/api/<path>` (api "v1") or `/api/v2/<path>` (api "v2") as a JSON object."""
        data: JSON = await self._get_json(self._v2(path) if api == "v2" else self._v1(path), params)
        return data

    async def get_any_json(self, api: str, path: str, params: Params | None = None) -> Any:
        """Like `get_json` for endpoints whose body is a JSON array (Data Center space permissions)."""
        url = self._v2(path) if api == "v2" else self._v1(path)
        return await self._get_json(url, params, top_level_array=True)

    def paginate(self, api: str, path: str, params: Params | None = None) -> AsyncIterator[JSON]:
        """Each page of a v1/v2 list, following `_links.next`."""
        return self._paginate(self._v2(path) if api == "v2" else self._v1(path), params)

    def absolute(self, link: str) -> str:
        """A `_links.download`/`webui` value (relative to the site, context path included or not) as a URL."""
        if link.startswith(("http://", "https://")):
            return link
        prefix = urlsplit(self._base).path.rstrip("/")
        path = link if not prefix or link.startswith(prefix + "/") else prefix + link
        return self._origin + path

    async def download(self, url: str, max_bytes: int) -> bytes:
        """The bytes at `url` (an attachment's download link), streamed, with the same origin check,
        concurrency gate and retries as every other call.

        Raises DownloadTooLarge as soon as more than `max_bytes` arrive (or `Content-Length` says so), so an
        oversize file costs at most `max_bytes` of memory and transfer; PageNotFound on 404.
        """
        if _origin(url) != self._origin:
            raise ConfluenceProtocolError(f"refusing to download off the configured origin {self._origin}")
        path = urlsplit(url).path
        result: bytes = await self._with_retries(path, self._download_once, url, path, max_bytes)
        return result

    async def _download_once(self, url: str, path: str, max_bytes: int) -> bytes:
        if self._http.auth is None:
            raise ConfluenceCredentialsRejected(f"no Confluence credentials configured: set {self._fix}")
        # Ask for the bytes as stored; a server (or proxy) that compresses anyway is inflated by a bounded
        # decoder over the raw stream, never by httpx's unbounded one (`_bounded_decoder`).
        headers = {"Accept": "*/*", "Accept-Encoding": "identity"}
        try:
            async with self._gate, self._http.stream("GET", url, headers=headers) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._raise_for_status(response, path)
                decoder = _bounded_decoder(response.headers.get("Content-Encoding", ""))
                declared = response.headers.get("Content-Length", "")
                if decoder is None and declared.isdigit() and int(declared) > max_bytes:
                    raise DownloadTooLarge(int(declared), max_bytes)
                data = bytearray()
                async for piece in response.aiter_raw():
                    if decoder is None:
                        data += piece
                    else:
                        pending = piece
                        while pending and len(data) <= max_bytes:
                            try:
                                data += decoder.decompress(pending, max_bytes + 1 - len(data))
                            except zlib.error as exc:
                                raise DownloadUndecodable(f"corrupt compressed body: {exc}") from exc
                            pending = decoder.unconsumed_tail
                    if len(data) > max_bytes:
                        raise DownloadTooLarge(len(data), max_bytes)
                return bytes(data)
        except httpx.TimeoutException as exc:
            raise _Transient(0, None, "timed out") from exc
        except httpx.TransportError as exc:
            raise _Transient(0, None, f"unreachable ({type(exc).__name__})") from exc

    # --- Cloud --------------------------------------------------------------------------------------------
    async def _cloud_page(self, page_id: str, content_type: ContentType) -> Page:
        kind = "pages" if content_type == "page" else "blogposts"
        params: Params = [
            ("body-format", "storage"),
            ("include-labels", "true"),
            *(("status", status) for status in FETCH_STATUSES[content_type]),
        ]
        data = await self._get_json(self._v2(f"{kind}/{quote(page_id, safe='')}"), params)
        content = parse_cloud_content(data, content_type)
        if content.status != "current":  # the caller only deletes it: skip the lookups that would 404
            space = await self._cloud_space(content.space_id)
            return build_cloud_page(content, space=space, base_url=self._base)
        try:
            return await self._complete_cloud_page(content, kind)
        except PageNotFound as exc:
            raise ConfluenceUnavailable(f"page {page_id} changed while being read; try again") from exc

    async def _complete_cloud_page(self, content: CloudContent, kind: str) -> Page:
        """Space, breadcrumb, author name, restrictions and all labels: v2 gives only ids for these."""
        self._titles[content.id] = content.title  # fresh: descendants' breadcrumbs read it from here
        ancestors: list[tuple[str, str]] = []
        if content.content_type == "page":
            ancestors = await self._cloud_ancestors(content.id)
        ancestor_ids = [ancestor_id for ancestor_id, _ in ancestors]
        space, titles, users, restricted, labels = await asyncio.gather(
            self._cloud_space(content.space_id),
            self._titles_of(ancestors),
            self.resolve_users([content.author_id] if content.author_id else []),
            self._any_restricted(content.id, ancestor_ids),
            self._all_labels(content, kind),
        )
        return build_cloud_page(
            content,
            space=space,
            base_url=self._base,
            ancestors=[titles[i] for i in ancestor_ids if i in titles],
            author=users.get(content.author_id or ""),
            restricted=restricted,
            labels=labels,
        )

    async def _all_labels(self, content: CloudContent, kind: str) -> list[str]:
        """`include-labels` stops at 50; a page with more is listed in full."""
        if content.labels_complete:
            return list(content.labels)
        labels: list[str] = []
        async for data in self._paginate(self._v2(f"{kind}/{content.id}/labels"), {"limit": "250"}):
            labels.extend(parse_label_names(data))
        return labels

    async def _cloud_ancestors(self, page_id: str) -> list[tuple[str, str]]:
        """(id, type) of every ancestor of a page, root first: pages, folders, whiteboards, databases, embeds.

        v2 answers at most `limit` of the nearest ancestors with no cursor; when a full answer comes back we
        ask again from the highest one returned (its own ancestors endpoint, by its type) until the root.
        """
        chain: list[tuple[str, str]] = []
        node_id, node_kind = page_id, "page"
        while True:
            path = f"{ANCESTOR_KINDS[node_kind]}/{quote(node_id, safe='')}/ancestors"
            found = parse_ancestors(await self._get_json(self._v2(path), {"limit": str(ANCESTORS_LIMIT)}))
            if any(item in chain or item[0] == page_id for item in found):
                raise ConfluenceProtocolError(f"Confluence sent a cyclic ancestor list for page {page_id}")
            chain = found + chain
            if len(found) < ANCESTORS_LIMIT:
                return chain
            node_id, node_kind = found[0]
            if node_kind not in ANCESTOR_KINDS:
                raise ConfluenceProtocolError(f"cannot list the ancestors of a {node_kind!r} (page {page_id})")

    async def _titles_of(self, ancestors: Sequence[tuple[str, str]]) -> dict[str, str]:
        """Titles of pages (in bulk) and of folders and other containers (one call each), cached."""
        pages = [ancestor_id for ancestor_id, kind in ancestors if kind == "page"]
        others = [(i, kind) for i, kind in ancestors if kind != "page" and kind in ANCESTOR_KINDS]
        titles, rest = await asyncio.gather(
            self._page_titles(pages), asyncio.gather(*(self._container_title(i, kind) for i, kind in others))
        )
        titles.update({i: title for (i, _), title in zip(others, rest, strict=True) if title is not None})
        return titles

    async def _container_title(self, content_id: str, kind: str) -> str | None:
        cached: str | None = self._titles.get(content_id)
        if cached is None:
            path = f"{ANCESTOR_KINDS[kind]}/{quote(content_id, safe='')}"
            try:
                cached = parse_titles({"results": [await self._get_json(self._v2(path))]}).get(content_id)
            except PageNotFound:
                return None  # not visible to us: the breadcrumb skips it; its restrictions are still checked
            if cached is not None:
                self._titles[content_id] = cached
        return cached

    async def space_key_of(self, space_id: str) -> str:
        """The key of the Cloud space with this id (v2 `GET /spaces/{id}`; cached, as for listed pages).
        Raises ConfluenceError, PageNotFound."""
        return (await self._cloud_space(space_id)).key

    async def _cloud_space(self, space_id: str) -> SpaceInfo:
        space = self._spaces.get(space_id)
        if space is None:
            space = parse_cloud_space(await self._get_json(self._v2(f"spaces/{quote(space_id, safe='')}")))
            self._spaces[space_id] = space
        return space

    async def _cloud_spaces(self, keys: Sequence[str] | None) -> list[SpaceInfo]:
        """Current spaces (with these keys), cached by id for naming the spaces of listed pages."""
        spaces: list[SpaceInfo] = []
        for batch in [None] if keys is None else _batches(list(keys), SPACE_BATCH):
            params = {"limit": str(V2_BATCH), "status": "current"}
            if batch is not None:
                params["keys"] = ",".join(batch)
            async for data in self._paginate(self._v2("spaces"), params):
                spaces.extend(parse_cloud_space(item) for item in results(data))
        for space in spaces:
            self._spaces[space.id] = space
        return spaces

    async def _page_titles(self, page_ids: Sequence[str]) -> dict[str, str]:
        titles: dict[str, str] = {}
        for page_id in page_ids:
            if (cached := self._titles.get(page_id)) is not None:
                titles[page_id] = cached
        missing = [i for i in page_ids if i not in titles]
        for batch in _batches(missing, V2_BATCH):
            params = {"id": ",".join(batch), "limit": str(V2_BATCH)}
            async for data in self._paginate(self._v2("pages"), params):
                for page_id, title in parse_titles(data).items():
                    self._titles[page_id] = titles[page_id] = title
        return titles

    async def _any_restricted(self, content_id: str, ancestor_ids: Sequence[str]) -> bool:
        """Read restrictions on the content itself (always read fresh) or anywhere on the path from the root
        (cached up to `RESTRICTION_TTL`): they are inherited by every descendant."""
        answers = await asyncio.gather(
            self._restricted(content_id, fresh=True), *(self._restricted(i) for i in ancestor_ids)
        )
        return any(answers)

    async def _restricted(self, content_id: str, *, fresh: bool = False) -> bool:
        """Whether `content_id` itself carries a read restriction naming any user or group.

        Both subject kinds are asked for: Data Center expands only groups by default ("expand ... Default
        value: group", Content Restrictions "Get restrictions by operation"), and a page restricted to one
        named user would otherwise read as open. An answer missing either kind is refused, not guessed.
        """
        if not fresh and (cached := self._restrictions.get(content_id)) is not None:
            return cached
        path = f"content/{quote(content_id, safe='')}/restriction/byOperation/read"
        params = {"expand": "restrictions.user,restrictions.group"}
        restricted = read_restricted(await self._get_json(self._v1(path), params))
        self._restrictions[content_id] = restricted
        return restricted

    async def _cloud_users(self, account_ids: Sequence[str]) -> dict[str, str]:
        params: Params = [*(("accountId", i) for i in account_ids), ("limit", str(len(account_ids)))]
        return parse_cloud_users(await self._get_json(self._v1("user/bulk"), params))

    async def _cloud_refs(self, space_keys: Sequence[str] | None) -> AsyncIterator[PageRef]:
        spaces = await self._cloud_spaces(space_keys)
        keys_by_id = {space.id: space.key for space in spaces}
        if not spaces:
            return
        id_batches: list[Sequence[str] | None] = [None]
        if space_keys is not None:
            id_batches = list(_batches(sorted(keys_by_id), SPACE_BATCH))
        for kind, content_type in KINDS:
            for batch in id_batches:
                params = {"status": "current", "limit": str(V2_BATCH)}
                if batch is not None:
                    params["space-id"] = ",".join(batch)
                async for data in self._paginate(self._v2(kind), params):
                    for ref in parse_cloud_refs(data, content_type, keys_by_id):
                        yield ref

    # --- Data Center --------------------------------------------------------------------------------------
    async def _dc_page(self, page_id: str) -> Page:
        expand = (
            "body.storage,version,space,history,ancestors,metadata.labels,"
            "restrictions.read.restrictions.user,restrictions.read.restrictions.group"
        )
        url = self._v1(f"content/{quote(page_id, safe='')}")
        data = await self._get_json(url, {"expand": expand, "status": "any"})
        ancestors_restricted = False
        if data.get("status") == "current":
            try:
                ancestors_restricted = any(await asyncio.gather(*(self._restricted(i) for i in dc_ancestor_ids(data))))
            except PageNotFound as exc:
                raise ConfluenceUnavailable(f"page {page_id} changed while being read; try again") from exc
        return parse_dc_page(data, base_url=self._base, ancestors_restricted=ancestors_restricted)

    async def _dc_user(self, user_id: str) -> str | None:
        """Data Center names a user by key or by username; try the key first, as page versions carry it."""
        for field in ("key", "username"):
            try:
                return parse_dc_user(await self._get_json(self._v1("user"), {field: user_id}))
            except PageNotFound:
                continue
        return None

    # --- CQL (v1 search, both products) --------------------------------------------------------------------
    @staticmethod
    def _listing_cql(space_keys: Sequence[str] | None, since: datetime | None) -> str:
        """Ordered by creation so that offset pagination (Data Center) is stable while pages are edited."""
        clauses = ["type in (page, blogpost)"]
        if space_keys:
            clauses.append(f"space in ({', '.join(map(_cql_quote, space_keys))})")
        if since is not None:
            start = (since - CQL_TZ_SLACK).astimezone(UTC)
            clauses.append(f'lastmodified >= "{start:%Y-%m-%d %H:%M}"')
        return " and ".join(clauses) + " order by created asc"

    async def _cql_refs(self, cql: str, *, cqlcontext: str | None = None) -> AsyncIterator[PageRef]:
        params = {"cql": cql, "expand": "version,space", "limit": str(CQL_BATCH)}
        if cqlcontext is not None:
            params["cqlcontext"] = cqlcontext
        async for data in self._paginate(self._v1("content/search"), params):
            for ref in parse_search_refs(data):
                yield ref

    # --- HTTP ---------------------------------------------------------------------------------------------
    def _v2(self, path: str) -> str:
        return f"{self._base}/api/v2/{path}"

    def _v1(self, path: str) -> str:
        return f"{self._base}/rest/api/{path}"

    async def _paginate(self, url: str, params: Params | None) -> AsyncIterator[JSON]:
        """Each page of a list, following `_links.next` (a v2 cursor, or v1 `start`/`limit`); a link off the
        configured origin is refused by `_get_json` before anything is sent."""
        seen: set[str] = set()
        next_page: str | None = url
        while next_page is not None and next_page not in seen:
            seen.add(next_page)
            data = await self._get_json(next_page, params)
            yield data
            next_page, params = next_url(data, self._base), None

    async def _get_json(self, url: str, params: Params | None = None, *, top_level_array: bool = False) -> Any:
        """GET with the concurrency limit, retrying transient failures with backoff, as a JSON object.

        A `Retry-After` longer than our backoff cap is not slept through: the error goes up with that
        delay so the job queue, not a worker slot, does the waiting. Every URL, those taken from a response
        (`_links.next`) included, must be on the configured origin: our credentials go nowhere else.
        """
        if _origin(url) != self._origin:
            raise ConfluenceProtocolError(
                f"refusing to send credentials off the configured Confluence origin {self._origin}: "
                f"a response pointed at {_origin(url)}"
            )
        path = urlsplit(url).path
        return await self._with_retries(path, self._attempt, url, params, path, top_level_array=top_level_array)

    async def _with_retries(self, path: str, call: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """`await call(*args, **kwargs)` (a coroutine function, as tenacity requires), repeated with tenacity
        while it fails transiently (`_Transient`: timeout, unreachable, 429, 5xx): at most
        CONFLUENCE_MAX_RETRIES retries, each after `self._backoff` (full jitter, or the server's `Retry-After`),
        each logged and counted (`on_retry`). A `Retry-After` longer than the backoff cap ends the retries at
        once. When they end, ConfluenceUnavailable (carrying the last `Retry-After`) is raised, chained to the
        transport error if there was one; any other error goes up at once, unretried.
        """

        def exhausted(state: RetryCallState) -> NoReturn:
            failure = state.outcome.exception() if state.outcome is not None else None
            assert isinstance(failure, _Transient)
            raise ConfluenceUnavailable(
                f"Confluence {failure.detail} for GET {path} (after {state.attempt_number} attempts)",
                retry_after=failure.retry_after,
            ) from failure.__cause__

        def retrying(state: RetryCallState) -> None:
            failure = state.outcome.exception() if state.outcome is not None else None
            assert isinstance(failure, _Transient) and state.next_action is not None
            wait = state.next_action.sleep
            log.warning(
                "confluence request failed; retrying",
                extra={"event": "confluence_retry", "status": failure.status, "wait": wait, "path": path},
            )
            if self._on_retry is not None:
                self._on_retry(failure.status, wait)

        policy = AsyncRetrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(self._max_retries + 1) | _RetryAfterBeyond(self._backoff.cap),
            wait=self._backoff,
            sleep=self._sleep,
            before_sleep=retrying,
            retry_error_callback=exhausted,  # raises ConfluenceUnavailable: never tenacity's RetryError
        )
        return await policy(call, *args, **kwargs)

    async def _attempt(self, url: str, params: Params | None, path: str, *, top_level_array: bool = False) -> Any:
        if self._http.auth is None:
            raise ConfluenceCredentialsRejected(f"no Confluence credentials configured: set {self._fix}")
        try:
            async with self._gate:
                response = await self._http.get(url, params=params)
        except httpx.TimeoutException as exc:
            raise _Transient(0, None, "timed out") from exc
        except httpx.TransportError as exc:
            raise _Transient(0, None, f"unreachable ({type(exc).__name__})") from exc
        if response.status_code >= 400:
            self._raise_for_status(response, path)
        try:
            body = response.json()
            if top_level_array and isinstance(body, list):
                return body
            return as_object(body, "a JSON object")
        except ValueError as exc:
            raise ConfluenceProtocolError(f"Confluence sent non-JSON for GET {path}") from exc

    def _raise_for_status(self, response: httpx.Response, path: str) -> None:
        status = response.status_code
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise _Transient(status, retry_after, f"answered {status}")
        if status == 401:
            raise ConfluenceCredentialsRejected(
                f"Confluence refused our credentials (401) for GET {path}: check {self._fix}"
            )
        if status == 403:
            raise ConfluenceAuthError(f"Confluence forbade GET {path} (403): the user of {self._fix} lacks permission")
        if status == 404:
            raise PageNotFound(f"Confluence has nothing visible to us at {path} (404)")
        raise ConfluenceProtocolError(f"Confluence answered {status} for GET {path}: {response.text[:200]!r}")
