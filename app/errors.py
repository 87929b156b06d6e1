"""One error tree for the whole service.

Every error we raise derives from `ConfluenceVectorsError`. The split that matters operationally is
`RetryableError` (the queue retries with backoff: 429, 5xx, timeouts, Ollama busy, Postgres away) versus
`PermanentError` (retrying cannot help: bad credentials, missing model, bad payload); among the latter,
`ServiceFault` (credentials, missing model, misconfiguration) is not the page's fault and never ends a page.
Library exceptions are translated at the boundary with `raise ... from exc`. A class docstring is its default message.
"""

from __future__ import annotations


class ConfluenceVectorsError(Exception):
    """Something went wrong in confluence-vectors."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.__class__.__name__).strip())


class RetryableError(ConfluenceVectorsError):
    """A temporary failure; the job is retried with backoff."""

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Seconds the remote side asked us to wait (e.g. `Retry-After`), if it said.
        self.retry_after = retry_after


class PermanentError(ConfluenceVectorsError):
    """A failure that retrying cannot fix; the page's status records it."""


class ServiceFault(PermanentError):
    """A fault of a service we depend on or of our own set-up, not of the page: credentials refused (401), the
    embedding model missing, a misconfiguration.

    Permanent for the call (retrying at once cannot help, so in-call retries stop), but NOT a verdict on the
    page: an operator fixes it, and every page must then update by itself. So a page job failing with one
    never ends the page (`app.queue.plan_retry` keeps retrying with backoff capped at RETRY_MAX_SECONDS, without
    `JOB_MAX_ATTEMPTS`) and never deletes its rows (`VectorStore.record_failure`): the old version stays
    searchable while `status` shows the error. Page-level permanent errors (403 or malformed content of that
    page, an input too long) are the other `PermanentError`s, which do end the page `failed`.
    """


class ConfigurationError(ServiceFault):
    """The configuration is invalid."""


# --- Confluence -------------------------------------------------------------------------------------------
class ConfluenceError(ConfluenceVectorsError):
    """Confluence request failed."""


class ConfluenceUnavailable(RetryableError, ConfluenceError):
    """Confluence is rate limiting, failing or unreachable."""


class ConfluenceAuthError(PermanentError, ConfluenceError):
    """Confluence refused our credentials (401/403): check CONFLUENCE_EMAIL + CONFLUENCE_API_TOKEN (Cloud) or
    CONFLUENCE_PAT (Data Center)."""


class ConfluenceCredentialsRejected(ServiceFault, ConfluenceAuthError):
    """Confluence refused our credentials themselves (401, none configured, treated as anonymous): an expired or
    rotated token is a fault of the service account, not of any page (a 403 for one page stays a plain
    `ConfluenceAuthError`: that page is forbidden to us)."""


class ConfluenceProtocolError(PermanentError, ConfluenceError):
    """Confluence answered something we cannot read."""


class PageNotFound(ConfluenceError):
    """The page does not exist or is not visible to us: its vectors must go."""


# --- Embeddings -------------------------------------------------------------------------------------------
class EmbeddingError(ConfluenceVectorsError):
    """Embedding failed."""


class EmbeddingUnavailable(RetryableError, EmbeddingError):
    """The embedding server is unreachable, overloaded or failing."""


class EmbeddingModelMissing(ServiceFault, EmbeddingError):
    """The embedding model is not present on the Ollama server: run `ollama pull <EMBED_MODEL>`."""


class EmbeddingDimensionMismatch(ServiceFault, EmbeddingError):
    """The embedding model returned vectors of a different length than EMBED_DIM."""


class EmbeddingRejected(ServiceFault, EmbeddingError):
    """The embedding server refused the request (e.g. a model that cannot embed, or a proxy's 401)."""


class EmbeddingInputTooLong(PermanentError, EmbeddingError):
    """An input exceeds the embedding model's context."""


class EmbeddingInvalid(RetryableError, EmbeddingError):
    """The embedding server returned a vector that is not all finite numbers (NaN, Infinity, null, text).

    Retryable: a proxy or a half-loaded model may answer garbage once; a model that does so for an input
    every time fails the page after JOB_MAX_ATTEMPTS with this as its last error. Nothing is written either
    way (pgvector refuses NaN and infinite components: pgvector README, "Vector type").
    """


# --- Storage ----------------------------------------------------------------------------------------------
class DatabaseUnavailable(RetryableError):
    """Postgres is unreachable."""


class IndexModelMismatch(ConfigurationError):
    """The vector table was built with another embedding model or dimension."""


# --- Webhooks ---------------------------------------------------------------------------------------------
class WebhookRejected(PermanentError):
    """The webhook request is not acceptable."""

    def __init__(self, message: str | None = None, *, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code
