"""`GET /search`: validate, embed the question, rank, answer. The ranking lives in `app.search`.

Content endpoints are guarded by `require_api_token`; the dependency runs before the parameters are looked
at, so an unauthenticated caller learns nothing about the index, not even which queries are malformed.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from pydantic import BaseModel

from app.api_auth import require_api_token
from app.errors import ConfluenceVectorsError, EmbeddingError, RetryableError
from app.search import SearchHit, SearchMode
from app.search_run import run_search
from app.viewer import HEADER, MAX_IDENTITY_CHARS, PersonRequired, PersonUnavailable, PersonUnknown, viewer_principals

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 1000
MAX_FILTER_CHARS = 255


class SearchResult(BaseModel):
    score: float
    text: str
    page_id: str
    title: str
    url: str
    space_key: str
    header_path: str
    version: int | None
    last_modified: str | None


class SearchResponse(BaseModel):
    query: str
    mode: SearchMode
    results: list[SearchResult]


router = APIRouter(tags=["search"])


def _result(hit: SearchHit) -> SearchResult:
    """The API's view of a hit: the same fields, read off the dataclass (`node_id` stays internal)."""
    return SearchResult.model_validate(hit, from_attributes=True)


@router.get(
    "/search",
    summary="Search the indexed wiki",
    response_model=SearchResponse,
    dependencies=[Depends(require_api_token)],
    responses={
        400: {"description": f"No person named ({HEADER}) and no SEARCH_SERVICE_IDENTITY configured"},
        401: {"description": "API_TOKEN is set and the bearer token is missing or wrong"},
        403: {"description": "No API_TOKEN and the request or bind is not loopback, or the person is unknown"},
        422: {"description": "Invalid parameters"},
        503: {"description": "Postgres, the embedding server, or the person's groups in Confluence unavailable"},
    },
)
async def search_endpoint(
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="What to look for.")],
    k: Annotated[int, Query(ge=1, le=100, description="How many chunks to return.")] = 10,
    space: Annotated[str | None, Query(min_length=1, max_length=MAX_FILTER_CHARS, description="Space key.")] = None,
    label: Annotated[str | None, Query(min_length=1, max_length=MAX_FILTER_CHARS, description="Page label.")] = None,
    mode: Annotated[SearchMode, Query(description="hybrid (vector + full text) or vector.")] = SearchMode.HYBRID,
    person: Annotated[
        str | None,
        Header(
            alias=HEADER,
            max_length=MAX_IDENTITY_CHARS,
            description="The person this search answers as: Cloud account id or Data Center username.",
        ),
    ] = None,
) -> SearchResponse:
    query = q.strip()
    if not query:
        raise HTTPException(status_code=422, detail="q must not be blank")
    if any("\x00" in value for value in (q, space or "", label or "")):  # Postgres text cannot hold NUL
        raise HTTPException(status_code=422, detail="parameters must not contain NUL characters")
    rt: Any = request.app.state.runtime
    started = time.perf_counter()
    try:
        principals = await viewer_principals(rt, person)
    except PersonRequired as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    except PersonUnknown as exc:
        raise HTTPException(status_code=403, detail="the named person is not a Confluence user") from exc
    except PersonUnavailable as exc:
        log.warning("search person unavailable", extra={"error": str(exc)})
        raise HTTPException(
            status_code=503, detail="cannot establish what this person may read now", headers={"Retry-After": "5"}
        ) from exc
    try:
        hits = await run_search(rt, query, principals, k=k, space=space, label=label, mode=mode)
    except RetryableError as exc:
        log.warning("search unavailable", extra={"error": str(exc)})
        raise HTTPException(
            status_code=503, detail=f"search is unavailable: {exc}", headers={"Retry-After": "5"}
        ) from exc
    except EmbeddingError as exc:
        log.error("search embedding failed", extra={"error": str(exc)})
        raise HTTPException(status_code=502, detail=f"the embedding server failed: {exc}") from exc
    except ConfluenceVectorsError as exc:
        log.error("search failed", extra={"error": str(exc)})
        raise HTTPException(status_code=500, detail=str(exc)) from exc
    log.info(
        "search",
        extra={
            "mode": mode.value,
            "k": k,
            "results": len(hits),
            "ms": round((time.perf_counter() - started) * 1000, 1),
        },
    )
    return SearchResponse(query=query, mode=mode, results=[_result(hit) for hit in hits])
