"""One error tree for the whole service.

Every error we raise derives from `ConfluenceVectorsError`. The split that matters operationally is
`RetryableError` (the queue retries with backoff: 429, 5xx, timeouts, Ollama busy, Postgres away) versus
`PermanentError` (retrying cannot help: bad credentials, missing model, bad payload). Library exceptions are
translated at the boundary with `raise ... from exc`. A class docstring is its default message.
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


class ConfigurationError(PermanentError):
    """The configuration is invalid."""


# --- Confluence -------------------------------------------------------------------------------------------
class ConfluenceError(ConfluenceVectorsError):
    """Confluence request failed."""


class ConfluenceUnavailable(RetryableError, ConfluenceError):
    """Confluence is rate limiting, failing or unreachable."""


class ConfluenceAuthError(PermanentError, ConfluenceError):
    """Confluence refused our credentials (401/403): check CONFLUENCE_EMAIL + CONFLUENCE_API_TOKEN (Cloud) or
    CONFLUENCE_PAT (Data Center)."""


class ConfluenceProtocolError(PermanentError, ConfluenceError):
    """Confluence answered something we cannot read."""


class PageNotFound(ConfluenceError):
    """The page does not exist or is not visible to us: its vectors must go."""


# --- Embeddings -------------------------------------------------------------------------------------------
class EmbeddingError(ConfluenceVectorsError):
    """Embedding failed."""


class EmbeddingUnavailable(RetryableError, EmbeddingError):
    """The embedding server is unreachable, overloaded or failing."""


class EmbeddingModelMissing(PermanentError, EmbeddingError):
    """The embedding model is not present on the Ollama server: run `ollama pull <EMBED_MODEL>`."""


class EmbeddingDimensionMismatch(PermanentError, EmbeddingError):
    """The embedding model returned vectors of a different length than EMBED_DIM."""


class EmbeddingRejected(PermanentError, EmbeddingError):
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
