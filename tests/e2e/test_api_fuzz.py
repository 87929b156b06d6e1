"""Property-based fuzzing of the real HTTP API: whatever a client sends, the service never answers 5xx.

Schemathesis reads the service's own `/openapi.json` and generates valid and invalid requests (query strings,
headers, paths) for every operation: webhook, search, status, healthz, readyz, metrics. The service is the
real `confluence-vectors serve` subprocess, over real HTTP on 127.0.0.1, with `API_TOKEN` set and sent, and
working fakes behind it, so `/readyz` is 200 and `/search` reaches the index. The webhook reads its body as raw
bytes (it must, to check signatures), so the schema has no body for it: a second, Hypothesis-driven test sends
arbitrary JSON and bytes bodies.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.core.result import Ok
from schemathesis.schemas import BaseSchema

from tests.conftest import _with_db
from tests.e2e.conftest import Db, page_body
from tests.e2e.harness import Api, service_env, wait_until
from tests.e2e.test_pipeline_e2e import indexed
from tests.fakes.confluence import FakeConfluence
from tests.fakes.ollama import FakeOllama

API_TOKEN = "fuzz-token-0123456789"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
OPERATOR_TOKEN = "fuzz-operator-0123456789"
#: Operator-only routes are fuzzed with the operator token (the API token alone gets 403 there).
OPERATOR_ONLY = {"/access/explain"}
FUZZ_SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def fuzz_api(pg_server: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One service for the whole module (fuzzing many operations must not pay a start-up each), with two
    indexed pages so `/search` has something to rank."""
    name = f"cv_fuzz_{os.getpid()}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    url = _with_db(pg_server, name)
    tmp = tmp_path_factory.mktemp("fuzz")
    confluence = FakeConfluence("cloud").start()
    ollama = FakeOllama(dim=1024).start()
    api: Api | None = None
    try:
        confluence.add_space("ENG", "Engineering")
        for pid in ("9001", "9002"):
            confluence.put_page(pid, title=f"Guide {pid}", body=page_body(2, 2, seed=pid), space_key="ENG")
        env = service_env(
            database_url=url,
            confluence=confluence,
            ollama=ollama,
            data_dir=tmp / "data",
            API_TOKEN=API_TOKEN,
            OPERATOR_TOKEN=OPERATOR_TOKEN,
            DEDUPE_WINDOW_SECONDS="300",  # the production default: the dedupe path is fuzzed too
            LOG_LEVEL="WARNING",
        )
        api = Api(env, tmp / "api.log").start()
        db = Db(url)
        for pid in ("9001", "9002"):
            assert api.webhook({"event": "page_created", "page": {"id": pid}}).status_code == 202
        wait_until(lambda: indexed(db, "9001") and indexed(db, "9002"), timeout=60, what="seed pages indexed")
        yield api
    finally:
        if api is not None:
            api.stop()
        confluence.stop()
        ollama.stop()
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def api_schema(fuzz_api: Api) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_api.url}/openapi.json", timeout=30)


#: Every operation the service exposes. (Schemathesis' own `from_fixture(...).parametrize()` loader does not
#: run under pytest 9, which dropped `Node._nodeid`; `APIOperation.as_strategy` with `@given` is its
#: documented way to use generated cases in ordinary tests, and it gives one test item per operation too.)
OPERATIONS = [
    ("POST", "/webhook/confluence"),
    ("GET", "/search"),
    ("GET", "/access/explain"),
    ("GET", "/status"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
]


def test_schema_covers_every_endpoint(api_schema: BaseSchema) -> None:
    """The fuzzing below is only as wide as the schema: every public endpoint must be in it."""
    operations = [result.ok() for result in api_schema.get_all_operations() if isinstance(result, Ok)]
    found = {(operation.method.upper(), operation.path) for operation in operations}
    assert found == set(OPERATIONS), found


def _fuzz(
    api_schema: BaseSchema, method: str, path: str, mode: GenerationMode, check: Callable[[Case[Any]], None]
) -> None:
    operation = api_schema[path][method]
    sent: list[Case[Any]] = []

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Case[Any]) -> None:
        sent.append(case)
        check(case)

    run()
    # Operations with parameters must really have been fuzzed (Hypothesis stops early on tiny input spaces).
    assert len(sent) >= (20 if (method, path) in WITH_PARAMETERS else 1), len(sent)
    print(f"{method} {path} {mode.value}: {len(sent)} requests")


#: Negative cases need something to break: only operations with parameters have them.
WITH_PARAMETERS = {("POST", "/webhook/confluence"), ("GET", "/search"), ("GET", "/access/explain")}
CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or (method, path) in WITH_PARAMETERS
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_no_server_error_on_any_generated_request(
    api_schema: BaseSchema, fuzz_api: Api, method: str, path: str, mode: GenerationMode
) -> None:
    """Valid and invalid inputs alike get a 2xx/4xx: a 5xx would mean an unhandled input. (With working
    fakes behind it `/readyz` is 200, so no 503 is excused there either.)"""

    def check(case: Case[Any]) -> None:
        auth = {"Authorization": f"Bearer {OPERATOR_TOKEN}"} if path in OPERATOR_ONLY else AUTH
        response = case.call(headers={**dict(case.headers or {}), **auth}, timeout=30)
        assert response.status_code < 500, (
            f"{case.method} {case.path} query={case.query} headers={case.headers} -> {response.status_code}: "
            f"{response.text[:500]}\nlogs:\n{fuzz_api.logs()[-3000:]}"
        )
        if path in ("/search", "/status", "/access/explain") and mode is GenerationMode.POSITIVE:
            assert response.status_code != 401, "the bearer token was sent"
            if path in OPERATOR_ONLY:
                assert response.status_code != 403, "the operator token was sent"

    _fuzz(api_schema, method, path, mode, check)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_content_endpoints_refuse_without_the_token(api_schema: BaseSchema, method: str, path: str) -> None:
    """Generated requests without the bearer token: never a 5xx, and never wiki content."""

    def check(case: Case[Any]) -> None:
        if case.headers:
            case.headers.pop("Authorization", None)
        response = case.call(timeout=30)
        assert response.status_code < 500, (case.method, case.path, case.query, response.status_code)
        if path in ("/search", "/status", "/access/explain"):
            assert response.status_code == 401, (case.path, response.status_code, response.text[:300])

    _fuzz(api_schema, method, path, GenerationMode.POSITIVE, check)


_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_page_ids = st.integers(min_value=-5, max_value=10**40) | st.text(max_size=40) | _json_scalars
_webhook_like = st.fixed_dictionaries(
    {},
    optional={
        "event": st.sampled_from(
            [
                "page_updated",
                "page_created",
                "blog_created",
                "comment_created",
                "label_added",
                "avi:confluence:updated:page",
                "",
            ]
        )
        | st.text(max_size=30),
        "page": st.fixed_dictionaries({}, optional={"id": _page_ids, "idAsString": _page_ids, "contentType": _json}),
        "blogpost": st.dictionaries(st.sampled_from(["id", "contentType"]), _page_ids, max_size=2),
        "labeled": _json,
        "comment": _json,
    },
)


@given(
    body=_webhook_like.map(lambda d: json.dumps(d).encode())
    | _json.map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=200),
    event=st.none() | st.text(max_size=30),
)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_webhook_bodies_never_cause_a_server_error(fuzz_api: Api, body: bytes, event: str | None) -> None:
    params = {"event": event} if event is not None else None
    response = httpx.post(
        f"{fuzz_api.url}/webhook/confluence",
        content=body,
        params=params,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code in (200, 202, 400, 422), (body[:200], event, response.status_code, response.text)
    assert response.json()["status"] in ("queued", "ignored", "duplicate", "rejected", "accepted")


def test_service_survived_the_fuzzing(fuzz_api: Api) -> None:
    """After everything above: still alive, still ready, the seed pages still searchable."""
    assert fuzz_api.proc is not None and fuzz_api.proc.poll() is None
    assert httpx.get(f"{fuzz_api.url}/readyz", timeout=30).status_code == 200
    found = httpx.get(f"{fuzz_api.url}/search", params={"q": "canary checks"}, headers=AUTH, timeout=30)
    assert found.status_code == 200 and found.json()["results"], found.text
    assert "Traceback" not in fuzz_api.logs(), fuzz_api.logs()[-3000:]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"event": "page_updated", "page": {"id": ' + b"7" * 5000 + b"}}", "too many digits"),
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        (b'{"event": "page_updated\\u0000", "page": {"id": 1}}', "event name"),
        (b'{"page": {"id": ' + b"9" * 40 + b"}}", "longer than 32 digits"),
    ],
    ids=["5000-digit int", "deep nesting", "NUL in event", "40-digit numeric id"],
)
def test_hostile_webhook_bodies_get_a_4xx_with_a_reason(fuzz_api: Api, body: bytes, reason: str) -> None:
    """Issue 10: a 5,000-digit integer answered 500; every malformed body gets a 4xx that says why."""
    response = httpx.post(
        f"{fuzz_api.url}/webhook/confluence",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert reason in response.json()["reason"]


def test_access_explain_is_operator_only(fuzz_api: Api) -> None:
    """"Who may read page X" names pages a person-scoped app's users may not read: the API token every app holds
    is refused (403), the operator token is admitted."""
    params = {"user": "anyone", "page": "1"}
    with_api = httpx.get(f"{fuzz_api.url}/access/explain", params=params, headers=AUTH, timeout=30)
    assert with_api.status_code == 403 and "OPERATOR_TOKEN" in with_api.text, with_api.text
    operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    with_operator = httpx.get(f"{fuzz_api.url}/access/explain", params=params, headers=operator, timeout=30)
    assert with_operator.status_code not in (401, 403), with_operator.text
