"""All configuration, read once from the environment and `.env`.

Nobody else reads `os.environ`: modules receive a `Settings` so tests can build one with explicit values and
run several services side by side in one process.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,50}$")
_PLACEHOLDERS = {"changeme", "change-me", "your-token", "your_token", "xxx", "todo", "secret", "<token>"}


APP_NAME = "confluence-vectors"
#: Where the embedded Postgres lives unless DATA_DIR says otherwise: the user's data directory (XDG on Linux,
#: ~/Library/Application Support on macOS, %LOCALAPPDATA% on Windows, per `platformdirs`), not the current
#: directory, so every command finds the same database wherever it is started from.
DEFAULT_DATA_DIR = Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
#: `.env` files read, lowest precedence first: the user's config directory, then the current directory.
#: Real environment variables override both (pydantic-settings' documented order).
ENV_FILES = (Path(platformdirs.user_config_dir(APP_NAME, appauthor=False)) / ".env", Path(".env"))


def env_files_in_use() -> list[Path]:
    """The `.env` files that exist and were read, absolute, lowest precedence first (for start-up and status)."""
    return [path.resolve() for path in ENV_FILES if path.is_file()]


class Deployment(StrEnum):
    """Which Confluence product we talk to; they differ in REST API, auth and URLs."""

    CLOUD = "cloud"
    DATACENTER = "datacenter"


class Settings(BaseSettings):
    """Every knob of the service. Secrets are `SecretStr`, so they never show in logs or reprs."""

    model_config = SettingsConfigDict(env_file=ENV_FILES, env_file_encoding="utf-8", extra="ignore")

    # --- Postgres -------------------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        default=None, description="Postgres URL. Unset: an embedded PostgreSQL with pgvector under DATA_DIR."
    )
    data_dir: Path = Field(default=DEFAULT_DATA_DIR, description="Where the embedded Postgres keeps its files.")
    embedded_shared_buffers: str | None = Field(
        default=None,
        pattern=r"^[1-9][0-9]*(kB|MB|GB|TB)$",
        description="shared_buffers of the embedded Postgres (e.g. 2GB), applied when it starts. Unset: a quarter "
        "of this machine's memory, as the pgvector README advises (bench/search_scale.py at 1M chunks: p99 "
        "about half of Postgres's 128MB default). Ignored with DATABASE_URL: tune your own server.",
    )
    db_pool_size: Annotated[int, Field(ge=1, le=100)] = 10
    search_database_url: SecretStr | None = Field(
        default=None,
        description="A hot standby of DATABASE_URL's Postgres for searches (app/replica.py). Unset: the primary.",
    )
    search_replica_max_lag: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=10.0,
        description="Seconds a standby may be behind the primary and still answer searches; further behind, "
        "searches go to the primary (a permission change not yet replayed must not be searched).",
    )

    # --- Confluence -----------------------------------------------------------------------------------
    confluence_base_url: str = Field(
        default="", description="Cloud: https://SITE.atlassian.net/wiki; Data Center: the root URL."
    )
    confluence_email: str | None = None
    confluence_api_token: SecretStr | None = None
    confluence_pat: SecretStr | None = None
    confluence_deployment: Deployment | None = Field(
        default=None, description="cloud|datacenter; inferred from the credentials when unset."
    )
    confluence_timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    confluence_max_concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    confluence_max_retries: Annotated[int, Field(ge=0, le=20)] = 5
    confluence_max_backoff: Annotated[float, Field(gt=0, le=3600)] = 60.0

    # --- Embeddings -----------------------------------------------------------------------------------
    ollama_base_url: str = "http://localhost:11434"
    embed_model: str = "bge-m3"
    embed_dim: Annotated[int, Field(ge=1, le=16000)] = 1024
    embed_batch_size: Annotated[int, Field(ge=1, le=512)] = 16
    embed_timeout: Annotated[float, Field(gt=0, le=3600)] = 120.0
    embed_max_tokens: Annotated[int, Field(ge=16, le=32768)] = Field(
        default=8192, description="The embedder's context; no chunk is ever longer (bge-m3: 8192)."
    )

    # --- Chunking -------------------------------------------------------------------------------------
    chunk_size: Annotated[int, Field(ge=32, le=32768)] = Field(default=512, description="Tokens per chunk.")
    chunk_overlap: Annotated[int, Field(ge=0, le=8192)] = Field(default=64, description="Tokens shared.")

    # --- Vector table ---------------------------------------------------------------------------------
    vector_table: str = Field(
        default="confluence", description="PGVectorStore table_name; the physical table is data_<name>."
    )
    vector_type: Literal["vector", "halfvec"] = Field(
        default="vector",
        description="Column type of the embeddings: halfvec (pgvector >= 0.7) halves table and index; change "
        "it with `reindex` (bench/search_scale.py measures both).",
    )
    hnsw_ef_search: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=40,
        description="Least hnsw.ef_search of a search (pgvector's default, 40; pgvector caps it at 1,000): how "
        "wide the HNSW walk is. At 1M chunks a graph built with HNSW_EF_CONSTRUCTION=200 gives recall@10 0.96 at 40, "
        "1.00 at 200; one built with 64 stays under 0.92 at any value (bench/search_scale.py, halfvec).",
    )

    # --- Queue / worker -------------------------------------------------------------------------------
    hnsw_m: Annotated[int, Field(ge=2, le=100)] = Field(
        default=16,
        description="HNSW graph degree m of a new index (pgvector's default; pgvector allows 2-100). An existing "
        "index keeps what it was built with until `rebuild-hnsw-index`.",
    )
    hnsw_ef_construction: Annotated[int, Field(ge=4, le=1000)] = Field(
        default=64,
        description="HNSW ef_construction of a new index (pgvector's default 64; 4-1000, at least 2 x HNSW_M). "
        "Set 200 from about 500,000 chunks, where 64 leaves true neighbours unreachable whatever HNSW_EF_SEARCH "
        "(bench/search_scale.py at 1M: recall@10 0.62 at ef_search 40 with 64, 0.96 with 200); apply it to an "
        "existing index with `rebuild-hnsw-index`.",
    )
    worker_concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    worker_heartbeat_seconds: Annotated[float, Field(gt=0, le=600)] = Field(
        default=10.0, description="A worker silent for 3x this long is presumed dead; its jobs are retried."
    )
    job_max_attempts: Annotated[int, Field(ge=1, le=100)] = 12
    retry_base_seconds: Annotated[float, Field(gt=0, le=3600)] = 2.0
    retry_max_seconds: Annotated[float, Field(gt=0, le=86400)] = 900.0
    reconcile_interval: Annotated[int, Field(ge=0)] = Field(
        default=900, description="Seconds between reconciliations; 0 disables."
    )
    reconcile_overlap: Annotated[int, Field(ge=0)] = Field(
        default=300, description="Seconds re-checked before the last checkpoint, for clock skew."
    )

    # --- Security -------------------------------------------------------------------------------------
    webhook_secret: SecretStr | None = None
    webhook_token: SecretStr | None = None
    api_token: SecretStr | None = None
    #: Bearer token for the per-page detail of `/status` (ids, titles, errors, file names), which the API token,
    #: also held by person-scoped apps, does not show: issue 12, counts and errors never reveal a page.
    operator_token: SecretStr | None = None
    index_restricted_pages: bool | None = Field(
        default=None,
        description=(
            "Obsolete and ignored: restricted pages are always indexed, and every search is filtered by the "
            "searcher's permissions (README, Permissions)."
        ),
    )
    permission_sync_interval: Annotated[int, Field(ge=1)] = Field(
        default=900,
        description="Seconds between permission re-reads (spaces, restrictions, cached group membership).",
    )
    search_service_identity: str | None = Field(
        default=None,
        description=(
            "Identity for searches that name no person: a Cloud account id / DC username, or the literal "
            "'service-account' for the indexing account's (unfiltered) view. Unset: such searches get 400."
        ),
    )
    permission_people_cache: Annotated[int, Field(ge=1)] = Field(
        default=10_000, description="People whose group membership is cached per process."
    )
    index_comments: bool = Field(
        default=True, description="Index footer and open inline comments with their page (resolved ones never)."
    )
    index_attachments: bool = Field(default=True, description="Index the text of pages' attachments.")
    attachment_media_types: tuple[str, ...] = Field(
        default=(
            "application/pdf",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "application/vnd.ms-excel",
            "text/csv",
            "text/plain",
            "text/markdown",
            "application/json",
        ),
        description="Attachment media types taken (others are recorded as skipped: unsupported type).",
    )
    attachment_max_bytes: Annotated[int, Field(ge=1)] = Field(
        default=10 * 1024 * 1024, description="Largest attachment downloaded, in bytes (enforced while reading)."
    )
    attachment_max_chars: Annotated[int, Field(ge=1)] = Field(
        default=200_000, description="Extracted characters kept per attachment (the rest is cut)."
    )
    attachment_timeout: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=60.0, description="Seconds an extraction may run before its process is killed."
    )
    attachment_memory_mb: Annotated[int, Field(ge=64)] = Field(
        default=1024, description="Address-space limit of the extraction process, in MiB (RLIMIT_AS)."
    )
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    dedupe_window_seconds: Annotated[int, Field(ge=0)] = 300

    # --- Service --------------------------------------------------------------------------------------
    log_level: str = "INFO"
    log_format: str = Field(default="json", description="json|text")

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        """`~` expanded and made absolute once, so what start-up and `status` print is where the data is."""
        return value.expanduser().resolve()

    @field_validator("embedded_shared_buffers", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`EMBEDDED_SHARED_BUFFERS=` (as .env.example invites) means "the default", not an invalid size."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("vector_table")
    @classmethod
    def _table_is_identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(
                "VECTOR_TABLE must be a lowercase SQL identifier (letters, digits, underscores; "
                f"at most 51 characters), got {value!r}"
            )
        return value

    @field_validator("confluence_base_url", "ollama_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value

    @field_validator(
        "confluence_api_token",
        "confluence_pat",
        "webhook_secret",
        "webhook_token",
        "api_token",
        "operator_token",
        mode="before",
    )
    @classmethod
    def _refuse_placeholders(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return None
            if value.strip().lower() in _PLACEHOLDERS:
                raise ValueError("looks like a placeholder from .env.example; set a real value or leave it unset")
        return value

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value not in {"json", "text"}:
            raise ValueError("LOG_FORMAT must be json or text")
        return value

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Settings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(
                f"CHUNK_OVERLAP ({self.chunk_overlap}) must be smaller than CHUNK_SIZE ({self.chunk_size})"
            )
        if self.chunk_size > self.embed_max_tokens:
            raise ValueError(f"CHUNK_SIZE ({self.chunk_size}) exceeds EMBED_MAX_TOKENS ({self.embed_max_tokens})")
        if self.hnsw_ef_construction < 2 * self.hnsw_m:  # pgvector refuses to build such an index (hnswbuild.c)
            raise ValueError(
                f"HNSW_EF_CONSTRUCTION ({self.hnsw_ef_construction}) must be at least 2 x HNSW_M ({self.hnsw_m})"
            )
        if self.confluence_email and not self.confluence_api_token:
            raise ValueError("CONFLUENCE_EMAIL is set but CONFLUENCE_API_TOKEN is not")
        return self

    @property
    def deployment(self) -> Deployment:
        """Explicit `CONFLUENCE_DEPLOYMENT` wins; else a PAT means Data Center, an email+token means Cloud."""
        if self.confluence_deployment is not None:
            return self.confluence_deployment
        if self.confluence_pat is not None and self.confluence_api_token is None:
            return Deployment.DATACENTER
        if ".atlassian.net" in self.confluence_base_url or self.confluence_api_token is not None:
            return Deployment.CLOUD
        return Deployment.DATACENTER

    @property
    def physical_table(self) -> str:
        """The table PGVectorStore reads for `table_name=vector_table`."""
        return f"data_{self.vector_table}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
