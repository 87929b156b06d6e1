"""`GET /access/explain`: why a person may or may not read a page (operator-only: `OPERATOR_TOKEN`).

The answer names content ids, the space key and the person's principals, never page text or titles. It still
tells whether anyone may read a given page, so the API token that person-scoped apps hold is not enough.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from app.access_explain import explain
from app.api_auth import require_operator
from app.errors import ConfluenceVectorsError
from app.permissions_client import UnknownPerson

router = APIRouter(tags=["access"])


@router.get(
    "/access/explain",
    summary="Why a person may or may not read a page: stored decision vs Confluence now",
    dependencies=[Depends(require_operator)],
    responses={404: {"description": "Unknown person"}, 503: {"description": "Confluence unavailable"}},
)
async def explain_access(
    request: Request,
    user: Annotated[str, Query(min_length=1, max_length=255, description="Cloud account id / DC username.")],
    page: Annotated[str, Query(min_length=1, max_length=32, pattern=r"^[0-9]+$", description="Page id.")],
) -> dict[str, Any]:
    rt: Any = request.app.state.runtime
    try:
        result = await explain(rt, user, page)
    except UnknownPerson as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except ConfluenceVectorsError as exc:
        raise HTTPException(status_code=503, detail=f"cannot read the person from Confluence: {exc}") from exc
    return dataclasses.asdict(result)
