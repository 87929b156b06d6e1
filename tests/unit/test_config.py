"""Settings refuse nonsense with a message naming the setting."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.config import Deployment
from tests.conftest import make_settings as make


def test_defaults_match_the_documented_interface() -> None:
    s = make()
    assert (s.embed_model, s.embed_dim, s.vector_table, s.physical_table) == (
        "bge-m3",
        1024,
        "confluence",
        "data_confluence",
    )


@pytest.mark.parametrize("name", ["Confluence", "data-x", "1abc", "x; drop table y", ""])
def test_vector_table_must_be_identifier(name: str) -> None:
    with pytest.raises(ValidationError, match="VECTOR_TABLE"):
        make(vector_table=name)


def test_overlap_must_be_smaller_than_chunk() -> None:
    with pytest.raises(ValidationError, match="CHUNK_OVERLAP"):
        make(chunk_size=100, chunk_overlap=100)


def test_placeholder_secret_refused() -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        make(confluence_api_token="changeme", confluence_email="a@b.c")


def test_secrets_never_in_repr() -> None:
    s = make(confluence_email="a@b.c", confluence_api_token="s3cr3t-value", webhook_secret="hmac-key-123")
    assert (
        "s3cr3t-value" not in repr(s)
        and "hmac-key-123" not in repr(s)
        and "s3cr3t-value" not in str(s.model_dump())
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"confluence_email": "a@b.c", "confluence_api_token": "t0ken"}, Deployment.CLOUD),
        ({"confluence_pat": "p4t"}, Deployment.DATACENTER),
        ({"confluence_pat": "p4t", "confluence_deployment": "cloud"}, Deployment.CLOUD),
        ({"confluence_base_url": "https://acme.atlassian.net/wiki"}, Deployment.CLOUD),
    ],
)
def test_deployment_inferred_or_overridden(kwargs: dict[str, str], expected: Deployment) -> None:
    assert make(**kwargs).deployment is expected
