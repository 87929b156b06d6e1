"""Ollama `bge-m3` as a LlamaIndex embedding model, plus the batched entry point our pipeline uses.

Why our own class rather than `llama-index-embeddings-ollama`: we need `truncate: false` (a silently truncated
chunk is a silently wrong vector), the dimension checked against the table, Ollama's failures translated into
our error tree (retryable vs permanent) and a fallback for servers that predate `/api/embed`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Any

import httpx
from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import Field, PrivateAttr, model_validator
from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from app.config import Settings, get_settings
from app.errors import (
    EmbeddingDimensionMismatch,
    EmbeddingInputTooLong,
    EmbeddingInvalid,
    EmbeddingModelMissing,
    EmbeddingRejected,
    EmbeddingUnavailable,
)
from app.retry import Backoff, parse_retry_after

log = logging.getLogger(__name__)

Vector = list[float]


def _log_retry(state: RetryCallState) -> None:
    """tenacity `before_sleep`: one warning per retry, naming the failure and the attempt that failed."""
    failure = state.outcome.exception() if state.outcome is not None else None
    log.warning(
        "embedding request failed, retrying: %s",
        failure,
        extra={"event": "embed_retry", "attempt": state.attempt_number},
    )


def _error_text(response: httpx.Response) -> str:
    """Ollama's `{"error": ...}` when it sent one, else the raw body (Go's router answers plain text)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):
        return error
    return response.text.strip()[:300]


def _json(response: httpx.Response) -> dict[str, Any]:
    """A 200 that is not a JSON object is a proxy or a half-started server: worth retrying later."""
    try:
        body = response.json()
    except ValueError as exc:
        raise EmbeddingUnavailable(f"Ollama answered non-JSON: {response.text[:120]!r}") from exc
    if not isinstance(body, dict):
        raise EmbeddingUnavailable(f"Ollama answered an unexpected body: {response.text[:120]!r}")
    return body


def _says_model_missing(response: httpx.Response) -> bool:
    """A 404 about the model, unlike the router's "404 page not found" from a server too old for the route."""
    text = _error_text(response).lower()
    return response.status_code == 404 and "not found" in text and ("model" in text or "pull" in text)


def _tag(name: str) -> str:
    """`bge-m3` and `bge-m3:latest` are the same model to Ollama."""
    return name if ":" in name else f"{name}:latest"


class OllamaBgeM3Embedding(BaseEmbedding):
    """Embeds through Ollama's HTTP API; one connection pool per process (and event loop), never per call."""

    base_url: str = "http://localhost:11434"
    model_name: str = "bge-m3"
    dimension: int = Field(default=1024, gt=0)
    embed_batch_size: int = Field(default=16, gt=0, le=2048)
    timeout: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    keep_alive: str | None = "10m"
    num_ctx: int | None = Field(
        default=8192,
        description="Sent as options.num_ctx so Ollama does not run with a smaller default window.",
    )
    backoff_base: float = Field(default=0.5, gt=0)
    backoff_cap: float = Field(default=10.0, gt=0)
    legacy_concurrency: int = Field(default=4, ge=1, description="In-flight /api/embeddings calls (old servers).")

    _client: httpx.Client | None = PrivateAttr(default=None)
    _aclient: httpx.AsyncClient | None = PrivateAttr(default=None)
    _aclient_loop: asyncio.AbstractEventLoop | None = PrivateAttr(default=None)
    _legacy: bool = PrivateAttr(default=False)
    _calls: int = PrivateAttr(default=0)
    _inputs: int = PrivateAttr(default=0)

    @model_validator(mode="before")
    @classmethod
    def _service_defaults(cls, data: Any) -> Any:
        """Fields not given come from the service's settings (environment and `.env`, as `Settings` reads them),
        so `OllamaBgeM3Embedding()` in a user's script embeds with the same Ollama server and model as the
        service. Invalid settings leave the class defaults (the script passes what it needs explicitly)."""
        if not isinstance(data, dict):
            return data
        try:
            settings = get_settings()
        except Exception:  # pydantic ValidationError: a bad unrelated setting must not break a query script
            return data
        return {
            "base_url": settings.ollama_base_url,
            "model_name": settings.embed_model,
            "dimension": settings.embed_dim,
            "embed_batch_size": settings.embed_batch_size,
            "timeout": settings.embed_timeout,
            "num_ctx": settings.embed_max_tokens,
        } | data

    @classmethod
    def class_name(cls) -> str:
        return "OllamaBgeM3Embedding"

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> OllamaBgeM3Embedding:
        """The service's embedder; tests override e.g. `backoff_base` to keep retries fast."""
        values: dict[str, Any] = {
            "base_url": settings.ollama_base_url,
            "model_name": settings.embed_model,
            "dimension": settings.embed_dim,
            "embed_batch_size": settings.embed_batch_size,
            "timeout": settings.embed_timeout,
            "num_ctx": settings.embed_max_tokens,
        }
        values.update(overrides)
        return cls(**values)

    @property
    def calls(self) -> int:
        """Embedding requests Ollama answered with vectors (batched /api/embed, or one per legacy prompt)."""
        return self._calls

    @property
    def inputs(self) -> int:
        """Texts embedded."""
        return self._inputs

    # --- LlamaIndex hooks ---------------------------------------------------------------------------------
    # bge-m3 is symmetric: queries need no instruction prefix, so queries and texts take the same path.
    def _get_query_embedding(self, query: str) -> Vector:
        return self.embed_many([query])[0]

    async def _aget_query_embedding(self, query: str) -> Vector:
        return (await self.aembed_many([query]))[0]

    def _get_text_embedding(self, text: str) -> Vector:
        return self.embed_many([text])[0]

    async def _aget_text_embedding(self, text: str) -> Vector:
        return (await self.aembed_many([text]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Vector]:
        return self.embed_many(texts)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Vector]:
        return await self.aembed_many(texts)

    # --- public entry points ------------------------------------------------------------------------------
    async def aembed_many(self, texts: Sequence[str]) -> list[Vector]:
        """Vectors in input order, `embed_batch_size` inputs per request. Batches go one after another:
        the worker already runs pages concurrently, and Ollama queues rather than parallelises beyond
        OLLAMA_NUM_PARALLEL."""
        items = list(texts)
        out: list[Vector] = []
        for start in range(0, len(items), self.embed_batch_size):
            batch = items[start : start + self.embed_batch_size]
            out.extend(await self._alegacy(batch) if self._legacy else await self._aembed_batch(batch))
        return out

    def embed_many(self, texts: Sequence[str]) -> list[Vector]:
        """The synchronous twin of `aembed_many`, for LlamaIndex's sync API."""
        items = list(texts)
        out: list[Vector] = []
        for start in range(0, len(items), self.embed_batch_size):
            batch = items[start : start + self.embed_batch_size]
            if not self._legacy:
                response = self._request("POST", "/api/embed", self._payload(batch))
                vectors = self._read_embed(response, batch)
                if vectors is not None:
                    out.extend(vectors)
                    continue
            for text in batch:
                response = self._request("POST", "/api/embeddings", self._legacy_payload(text))
                out.append(self._read_legacy(response))
        return out

    async def check_model(self) -> None:
        """Fail fast at startup: a missing model is permanent and no amount of queue retries will fix it."""
        response = await self._arequest("POST", "/api/show", {"model": self.model_name, "name": self.model_name})
        if response.status_code == 200:
            info = _json(response).get("model_info") or {}
            sizes = {v for k, v in info.items() if k.endswith(".embedding_length") and isinstance(v, int)}
            if sizes and self.dimension not in sizes:
                raise self._mismatch(sizes.pop())
            return
        if _says_model_missing(response):
            raise self._missing()
        response = await self._arequest("GET", "/api/tags", None)  # /api/show unusable: list instead
        if response.status_code != 200:
            raise EmbeddingUnavailable(f"Ollama at {self.base_url} answered {response.status_code} to /api/tags")
        names = {_tag(str(m.get(key, ""))) for m in _json(response).get("models", []) for key in ("name", "model")}
        if _tag(self.model_name) not in names:
            raise self._missing()

    async def aclose(self) -> None:
        """Close the pools. A pool opened under another, finished event loop is dropped, not closed: its
        sockets died with that loop and closing them from here would raise."""
        client, loop, self._aclient, self._aclient_loop = self._aclient, self._aclient_loop, None, None
        if client is not None and loop is asyncio.get_running_loop():
            await client.aclose()
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- protocol (shared by both paths) ------------------------------------------------------------------
    def _payload(self, batch: list[str]) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self.model_name, "input": batch, "truncate": False}
        if self.keep_alive is not None:
            payload["keep_alive"] = self.keep_alive
        if self.num_ctx is not None:
            payload["options"] = {"num_ctx": self.num_ctx}
        return payload

    def _legacy_payload(self, text: str) -> dict[str, Any]:
        payload = self._payload([])
        del payload["input"], payload["truncate"]  # the old endpoint cannot refuse; it truncates silently
        payload["prompt"] = text
        return payload

    def _read_embed(self, response: httpx.Response, batch: list[str]) -> list[Vector] | None:
        """The batch's vectors; None when the server predates /api/embed (remembered: no more tries)."""
        if response.status_code == 404 and not _says_model_missing(response):
            log.warning("Ollama lacks /api/embed; using /api/embeddings", extra={"event": "embed_legacy"})
            self._legacy = True
            return None
        self._raise_for(response)
        vectors = _json(response).get("embeddings")
        if not isinstance(vectors, list) or len(vectors) != len(batch):
            raise EmbeddingUnavailable(f"Ollama returned {len(vectors or [])} vectors for {len(batch)} inputs")
        return self._count([self._checked(v) for v in vectors])

    def _read_legacy(self, response: httpx.Response) -> Vector:
        self._raise_for(response)
        return self._count([self._checked(_json(response).get("embedding"))])[0]

    def _raise_for(self, response: httpx.Response) -> None:
        """Translate a non-retryable failure (retryable ones never get here: see `_step`)."""
        if response.status_code == 200:
            return
        text = _error_text(response)
        if _says_model_missing(response):
            raise self._missing()
        if response.status_code == 400 and ("context" in text.lower() or "too long" in text.lower()):
            raise EmbeddingInputTooLong(
                f"an input exceeds {self.model_name}'s context (num_ctx={self.num_ctx}); the chunker must "
                f"keep chunks under EMBED_MAX_TOKENS. Ollama said: {text}"
            )
        raise EmbeddingRejected(f"Ollama at {self.base_url} refused the request ({response.status_code}): {text}")

    def _checked(self, vector: Any) -> Vector:
        """`vector` as floats if it is `dimension` finite numbers; raises EmbeddingUnavailable (no vector),
        EmbeddingDimensionMismatch (wrong length) or EmbeddingInvalid (NaN, Infinity, null, bool or text).

        Python's JSON parser accepts `NaN` and `Infinity`, which Ollama's Go encoder never writes but a
        proxy or another server may; pgvector rejects them, and `float(None)` would be a bare TypeError.
        """
        if not isinstance(vector, list) or not vector:
            raise EmbeddingUnavailable(f"Ollama returned no vector: {str(vector)[:80]}")
        if len(vector) != self.dimension:
            raise self._mismatch(len(vector))
        for index, x in enumerate(vector):
            if type(x) not in (float, int) or not math.isfinite(x):  # `type`: bool is an int subclass
                raise EmbeddingInvalid(
                    f"Ollama at {self.base_url} returned a vector whose component {index} is {str(x)[:40]!r}, "
                    "not a finite number; nothing was written"
                )
        return [float(x) for x in vector]

    def _count(self, vectors: list[Vector]) -> list[Vector]:
        self._calls += 1
        self._inputs += len(vectors)
        return vectors

    def _missing(self) -> EmbeddingModelMissing:
        return EmbeddingModelMissing(
            f"model {self.model_name!r} is not on the Ollama server at {self.base_url}: "
            f"run `ollama pull {self.model_name}`"
        )

    def _mismatch(self, size: int) -> EmbeddingDimensionMismatch:
        return EmbeddingDimensionMismatch(
            f"model {self.model_name!r} returns {size}-dimensional vectors but EMBED_DIM={self.dimension}; "
            f"set EMBED_DIM={size} (and rebuild the index) or use a {self.dimension}-dimensional model"
        )

    def _retryable(self, outcome: httpx.Response | httpx.TransportError) -> httpx.Response:
        """The retry rule both transports share: the response to read, or EmbeddingUnavailable for what may
        pass if repeated: refused, timeouts, 429 and 5xx (Ollama's 503 "server busy"), with the server's
        `Retry-After` when it sent one. Any other status is the caller's to read."""
        if isinstance(outcome, httpx.Response):
            if outcome.status_code < 500 and outcome.status_code != 429:
                return outcome
            raise EmbeddingUnavailable(
                f"Ollama at {self.base_url} answered {outcome.status_code}: {_error_text(outcome)}",
                retry_after=parse_retry_after(outcome.headers.get("retry-after")),
            )
        raise EmbeddingUnavailable(
            f"Ollama at {self.base_url} is unreachable: {type(outcome).__name__}: {outcome}"
        ) from outcome

    def _retry_policy(self) -> dict[str, Any]:
        """tenacity's arguments for both transports: at most `max_retries` retries of an EmbeddingUnavailable
        (`_retryable`), each after full-jitter backoff or the server's `Retry-After` (capped at `backoff_cap`),
        each logged; then the last EmbeddingUnavailable itself goes up (`reraise`) and the queue takes over,
        so a job never blocks its worker for long."""
        return {
            "retry": retry_if_exception_type(EmbeddingUnavailable),
            "stop": stop_after_attempt(self.max_retries + 1),
            "wait": Backoff(base=self.backoff_base, cap=self.backoff_cap),
            "before_sleep": _log_retry,
            "reraise": True,
        }

    def _timeouts(self) -> httpx.Timeout:
        """A dead host should fail in seconds; a big batch on a CPU may legitimately take `timeout`."""
        return httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))

    # --- transport: async ---------------------------------------------------------------------------------
    def _async_client(self) -> httpx.AsyncClient:
        """One pool per event loop: an AsyncClient's connections belong to the loop that opened them."""
        loop = asyncio.get_running_loop()
        if self._aclient is None or self._aclient_loop is not loop:
            self._aclient = httpx.AsyncClient(base_url=self.base_url, timeout=self._timeouts())
            self._aclient_loop = loop
        return self._aclient

    async def _arequest(self, method: str, path: str, payload: dict[str, Any] | None) -> httpx.Response:
        response: httpx.Response = await AsyncRetrying(**self._retry_policy())(
            self._arequest_once, method, path, payload
        )
        return response

    async def _arequest_once(self, method: str, path: str, payload: dict[str, Any] | None) -> httpx.Response:
        outcome: httpx.Response | httpx.TransportError
        try:
            outcome = await self._async_client().request(method, path, json=payload)
        except httpx.TransportError as exc:
            outcome = exc
        return self._retryable(outcome)

    async def _aembed_batch(self, batch: list[str]) -> list[Vector]:
        vectors = self._read_embed(await self._arequest("POST", "/api/embed", self._payload(batch)), batch)
        return vectors if vectors is not None else await self._alegacy(batch)

    async def _alegacy(self, batch: list[str]) -> list[Vector]:
        """One prompt per call, a few in flight; on the first failure the rest are cancelled."""
        gate = asyncio.Semaphore(self.legacy_concurrency)

        async def one(text: str) -> Vector:
            async with gate:
                return self._read_legacy(await self._arequest("POST", "/api/embeddings", self._legacy_payload(text)))

        tasks = [asyncio.ensure_future(one(text)) for text in batch]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # --- transport: sync ----------------------------------------------------------------------------------
    def _request(self, method: str, path: str, payload: dict[str, Any] | None) -> httpx.Response:
        if self._client is None:
            self._client = httpx.Client(base_url=self.base_url, timeout=self._timeouts())
        response: httpx.Response = Retrying(**self._retry_policy())(self._request_once, method, path, payload)
        return response

    def _request_once(self, method: str, path: str, payload: dict[str, Any] | None) -> httpx.Response:
        assert self._client is not None  # opened by `_request`
        outcome: httpx.Response | httpx.TransportError
        try:
            outcome = self._client.request(method, path, json=payload)
        except httpx.TransportError as exc:
            outcome = exc
        return self._retryable(outcome)
