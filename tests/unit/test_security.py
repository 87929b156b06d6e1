"""Webhook signatures and tokens (app.credentials, app.webhook_auth), the authentication matrix, delivery
digests (app.deliveries), loopback detection (app.api_auth)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from app.api_auth import is_loopback
from app.credentials import verify_signature, verify_token
from app.deliveries import delivery_digest
from app.errors import WebhookRejected
from app.webhook_auth import authenticate_webhook
from tests.conftest import make_settings

BODY = b'{"event":"page_updated","page":{"id":123}}'
SECRET = "s3cr3t-webhook-key"


def hex_sig(body: bytes = BODY, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    "header",
    [f"sha256={hex_sig()}", hex_sig(), hex_sig().upper(), f"SHA256={hex_sig()}", f"  sha256={hex_sig()}  "],
)
def test_valid_signature_forms(header: str) -> None:
    assert verify_signature(BODY, header, SECRET)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=",
        f"sha256={hex_sig(secret='other')}",  # wrong secret
        f"sha256={hex_sig(body=BODY + b' ')}",  # body changed
        f"sha1={hex_sig()}",  # right digest, wrong algorithm name: no downgrade
        f"sha256={hex_sig()[:-2]}",  # truncated
        "sha256=zz" + hex_sig()[2:],
        "sha256=ümlaut",  # non-ASCII must be a clean False, not a TypeError
    ],
)
def test_invalid_signatures(header: str | None) -> None:
    assert not verify_signature(BODY, header, SECRET)


def test_empty_secret_never_verifies() -> None:
    assert not verify_signature(BODY, "sha256=" + hmac.new(b"", BODY, hashlib.sha256).hexdigest(), "")


@pytest.mark.parametrize(
    ("given", "expected", "ok"),
    [
        ("tok-123", "tok-123", True),
        ("tok-124", "tok-123", False),
        ("tok-12", "tok-123", False),
        (None, "tok-123", False),
        ("", "tok-123", False),
        ("", "", False),
        ("tök", "tök", True),
    ],
)
def test_verify_token(given: str | None, expected: str, ok: bool) -> None:
    assert verify_token(given, expected) is ok


# --- authenticate_webhook: (secret?, token?) x (signature ok/bad/missing, token ok/bad/missing) ----------
SIG_OK = {"X-Hub-Signature": f"sha256={hex_sig()}"}
SIG_BAD = {"X-Hub-Signature": f"sha256={hex_sig(secret='wrong')}"}
TOKEN = "url-token-1"


@pytest.mark.parametrize(
    ("secret", "token", "headers", "query_token", "accepted"),
    [
        # nothing configured: everything goes
        (None, None, {}, None, True),
        (None, None, SIG_BAD, "junk", True),
        # secret only
        (SECRET, None, SIG_OK, None, True),
        (SECRET, None, {"x-hub-signature": f"sha256={hex_sig()}"}, None, True),  # any header case
        (SECRET, None, SIG_BAD, None, False),
        (SECRET, None, {}, None, False),
        (SECRET, None, {}, TOKEN, False),  # a token proves nothing when only a secret is configured
        # token only
        (None, TOKEN, {}, TOKEN, True),
        (None, TOKEN, {}, "wrong", False),
        (None, TOKEN, {}, None, False),
        (None, TOKEN, SIG_OK, None, False),
        # both: either suffices
        (SECRET, TOKEN, SIG_OK, None, True),
        (SECRET, TOKEN, {}, TOKEN, True),
        (SECRET, TOKEN, SIG_BAD, TOKEN, True),
        (SECRET, TOKEN, SIG_OK, "wrong", True),
        (SECRET, TOKEN, SIG_BAD, "wrong", False),
        (SECRET, TOKEN, {}, None, False),
    ],
)
def test_authenticate_webhook_matrix(
    secret: str | None, token: str | None, headers: dict[str, str], query_token: str | None, accepted: bool
) -> None:
    settings = make_settings(webhook_secret=secret, webhook_token=token)
    if accepted:
        authenticate_webhook(BODY, headers, query_token, settings)
    else:
        with pytest.raises(WebhookRejected) as info:
            authenticate_webhook(BODY, headers, query_token, settings)
        assert info.value.status_code == 401


def test_rejection_names_the_check_but_never_a_value() -> None:
    settings = make_settings(webhook_secret=SECRET, webhook_token=TOKEN)
    with pytest.raises(WebhookRejected) as info:
        authenticate_webhook(BODY, SIG_BAD, "guess-1", settings)
    message = str(info.value)
    assert "X-Hub-Signature" in message and "token" in message
    for secret_value in (SECRET, TOKEN, "guess-1", hex_sig(secret="wrong")):
        assert secret_value not in message


# --- delivery digests ---------------------------------------------------------------------------------------
def test_digest_prefers_atlassian_delivery_id() -> None:
    a = delivery_digest(BODY, {"X-Atlassian-Webhook-Identifier": "abc-1"})
    b = delivery_digest(BODY + b" ", {"x-atlassian-webhook-identifier": "abc-1"})  # a retry, re-serialised
    c = delivery_digest(BODY, {"X-Atlassian-Webhook-Identifier": "abc-2"})
    assert a == b != c
    assert a.startswith("id:")


def test_digest_falls_back_to_body_hash() -> None:
    plain = delivery_digest(BODY, {})
    assert plain == "body:" + hashlib.sha256(b"0:" + BODY).hexdigest()  # no URL event: an empty scope
    assert delivery_digest(BODY, {"X-Request-Id": "r1"}) == plain  # proxies stamp these per hop
    assert delivery_digest(BODY, {"X-Atlassian-Webhook-Identifier": "  "}) == plain
    assert delivery_digest(BODY + b"x", {}) != plain


def test_digest_includes_the_url_event() -> None:
    """Cloud registers one hook per event and its bodies do not name the event: the same body under
    `?event=page_moved` after `?event=page_updated` is another delivery, not a duplicate (issue 10)."""
    updated = delivery_digest(BODY, {}, "page_updated")
    assert updated == delivery_digest(BODY, {}, "page_updated")  # a re-delivery is still recognised
    assert updated != delivery_digest(BODY, {}, "page_moved") != delivery_digest(BODY, {})
    with_id = {"X-Atlassian-Webhook-Identifier": "abc-1"}
    assert delivery_digest(BODY, with_id, "page_updated") != delivery_digest(BODY, with_id, "page_moved")
    # the event cannot be smuggled across the boundary between event and body
    assert delivery_digest(b"\x00" + BODY, {}, "a") != delivery_digest(BODY, {}, "a\x00")


def test_digest_is_bounded_whatever_the_header_size() -> None:
    assert len(delivery_digest(BODY, {"X-Atlassian-Webhook-Identifier": "x" * 8000})) == len("id:") + 64


# --- loopback -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("192.168.1.2", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
