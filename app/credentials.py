"""Is a presented credential the configured one? Constant-time checks of tokens and HMAC signatures.

Every comparison runs `hmac.compare_digest` on bytes, so its time does not depend on how much of a guess was
right (Python docs, `hmac.compare_digest`). These functions only answer yes or no: none logs, and none puts a
secret, a token or a signature into an exception, so callers can say *which* check failed, never the values.
"""

from __future__ import annotations

import hashlib
import hmac


def as_bytes(value: str) -> bytes:
    """Header values arrive as latin-1-decoded `str`; `compare_digest` refuses non-ASCII `str`, not bytes."""
    return value.encode("utf-8", "surrogateescape")


def verify_signature(body: bytes, header: str | None, secret: str) -> bool:
    """True when `header` is the HMAC-SHA256 of the raw `body` under `secret`, as `sha256=<hex>` (what
    Confluence Data Center sends in `X-Hub-Signature`: admin guide, "Managing webhooks") or bare hex.

    Any other algorithm prefix is refused rather than guessed at: a downgrade to SHA-1 is not ours to accept.
    A missing header or an empty secret never verifies.
    """
    if not header or not secret:
        return False
    given = header.strip()
    algorithm, sep, digest = given.partition("=")
    if sep:
        if algorithm.strip().lower() != "sha256":
            return False
        given = digest.strip()
    expected = hmac.new(as_bytes(secret), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(as_bytes(given.lower()), expected.encode("ascii"))


def verify_token(given: str | None, expected: str) -> bool:
    """Constant-time equality of a presented token with the configured one; an empty one never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(as_bytes(given), as_bytes(expected))
