"""Which webhooks we accept: the signature (Data Center) or URL token (Cloud) policy.

The checks themselves are `app.credentials`; this module decides which apply to a delivery and says, without
any value, which one failed. It runs on the webhook's hot path, so it does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.config import Settings
from app.credentials import verify_signature, verify_token
from app.errors import WebhookRejected

SIGNATURE_HEADER = "X-Hub-Signature"


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup (HTTP header names are, RFC 9110 §5.1) for Starlette's `Headers`, which is
    already case-insensitive, and for a plain dict alike."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    for key, candidate in headers.items():
        if key.lower() == wanted:
            return candidate
    return None


def authenticate_webhook(body: bytes, headers: Mapping[str, str], query_token: str | None, settings: Settings) -> None:
    """Accept the delivery if any configured check passes; raise `WebhookRejected(401)` otherwise.

    Either check suffices because the two products differ: Data Center signs (`WEBHOOK_SECRET`), Cloud REST
    hooks cannot, so they carry a token in the URL (`WEBHOOK_TOKEN`). With neither configured there is
    nothing to check (the operator chose a private network), and every delivery is accepted.
    """
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    token = settings.webhook_token.get_secret_value() if settings.webhook_token else None
    if not secret and not token:
        return
    signature = header(headers, SIGNATURE_HEADER)
    if secret and verify_signature(body, signature, secret):
        return
    if token and verify_token(query_token, token):
        return
    problems = []
    if secret:
        problems.append(f"{SIGNATURE_HEADER} {'does not match the body' if signature else 'is missing'}")
    if token:
        problems.append(f"the `token` query parameter {'is wrong' if query_token else 'is missing'}")
    raise WebhookRejected("unauthenticated webhook: " + " and ".join(problems), status_code=401)
