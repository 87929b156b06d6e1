"""The Ollama embedder over real HTTP against the fake server: batching, fallbacks, error translation, retries.

Each test gets its own fake (a fresh port, counters and faults), so no test sees another's state.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from app.embeddings import OllamaBgeM3Embedding
from app.errors import (
    EmbeddingDimensionMismatch,
    EmbeddingError,
    EmbeddingInputTooLong,
    EmbeddingInvalid,
    EmbeddingModelMissing,
    EmbeddingUnavailable,
    PermanentError,
    RetryableError,
)
from tests.conftest import make_settings
from tests.fakes.ollama import CORRUPTIONS, FakeOllama, count_tokens, embed_text

FAST: dict[str, Any] = {"backoff_base": 0.001, "backoff_cap": 0.01}


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture()
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


@pytest.fixture()
async def embedder(ollama: FakeOllama) -> AsyncIterator[OllamaBgeM3Embedding]:
    model = OllamaBgeM3Embedding(base_url=ollama.base_url, **FAST)
    yield model
    await model.aclose()


TEXTS = [f"page {i}: how to deploy service number {i} to production" for i in range(30)]


# --- batching and order -------------------------------------------------------------------------------------
async def test_async_batches_of_batch_size_keep_order(embedder: OllamaBgeM3Embedding, ollama: FakeOllama) -> None:
    vectors = await embedder.aembed_many(TEXTS)

    assert ollama.calls == 2 and embedder.calls == 2
    assert ollama.texts == TEXTS and embedder.inputs == 30
    assert vectors == [pytest.approx(embed_text(t)) for t in TEXTS]
    assert all(len(v) == 1024 and isinstance(v[0], float) for v in vectors)


async def test_no_texts_no_call(embedder: OllamaBgeM3Embedding, ollama: FakeOllama) -> None:
    assert await embedder.aembed_many([]) == []
    assert ollama.calls == 0


def test_sync_path_batches_too(ollama: FakeOllama) -> None:
    embedder = OllamaBgeM3Embedding(base_url=ollama.base_url, embed_batch_size=7, **FAST)
    try:
        vectors = embedder.embed_many(TEXTS)
    finally:
        embedder.close()
    assert ollama.calls == 5  # 7+7+7+7+2
    assert vectors == [pytest.approx(embed_text(t)) for t in TEXTS]


def test_llamaindex_sync_api(ollama: FakeOllama) -> None:
    embedder = OllamaBgeM3Embedding(base_url=ollama.base_url, **FAST)
    try:
        vectors = embedder.get_text_embedding_batch(TEXTS)
        query = embedder.get_query_embedding("how to deploy")
    finally:
        embedder.close()
    assert len(vectors) == 30 and vectors[29] == pytest.approx(embed_text(TEXTS[29]))
    assert query == pytest.approx(embed_text("how to deploy"))  # no instruction prefix for bge-m3
    assert ollama.calls == 3


async def test_llamaindex_async_api(embedder: OllamaBgeM3Embedding, ollama: FakeOllama) -> None:
    query = await embedder.aget_query_embedding("배포 방법")
    text = await embedder.aget_text_embedding("deploy guide")
    batch = await embedder.aget_text_embedding_batch(TEXTS)
    assert query == pytest.approx(embed_text("배포 방법"))
    assert text == pytest.approx(embed_text("deploy guide"))
    assert batch == [pytest.approx(embed_text(t)) for t in TEXTS]
    assert ollama.texts[:2] == ["배포 방법", "deploy guide"]


def test_from_settings_reads_the_embedding_knobs() -> None:
    settings = make_settings(
        ollama_base_url="http://127.0.0.1:1234", embed_model="bge-m3:567m", embed_dim=768, embed_batch_size=8
    )
    embedder = OllamaBgeM3Embedding.from_settings(settings, max_retries=0)
    assert (embedder.base_url, embedder.model_name, embedder.dimension) == ("http://127.0.0.1:1234", "bge-m3:567m", 768)
    assert (embedder.embed_batch_size, embedder.max_retries, embedder.num_ctx) == (8, 0, settings.embed_max_tokens)


# --- old servers ---------------------------------------------------------------------------------------------
async def test_legacy_server_falls_back_and_remembers() -> None:
    with FakeOllama(legacy=True) as ollama:
        embedder = OllamaBgeM3Embedding(base_url=ollama.base_url, **FAST)
        try:
            first = await embedder.aembed_many(TEXTS[:5])
            assert ollama.calls == 1 + 5  # one 404 from /api/embed, then a prompt per call
            second = await embedder.aembed_many(TEXTS[5:8])
            assert ollama.calls == 6 + 3  # /api/embed is not tried again
        finally:
            await embedder.aclose()
    assert first + second == [pytest.approx(embed_text(t)) for t in TEXTS[:8]]
    assert sorted(ollama.texts) == sorted(TEXTS[:8])  # legacy prompts run concurrently: any order


def test_legacy_server_sync() -> None:
    with FakeOllama(legacy=True) as ollama:
        embedder = OllamaBgeM3Embedding(base_url=ollama.base_url, **FAST)
        try:
            vectors = embedder.get_text_embedding_batch(TEXTS[:3])
        finally:
            embedder.close()
    assert vectors == [pytest.approx(embed_text(t)) for t in TEXTS[:3]]


# --- permanent errors ----------------------------------------------------------------------------------------
async def test_missing_model_says_how_to_fix(ollama: FakeOllama) -> None:
    embedder = OllamaBgeM3Embedding(base_url=ollama.base_url, model_name="bge-m3:567m", **FAST)
    try:
        with pytest.raises(EmbeddingModelMissing, match=r"ollama pull bge-m3:567m") as info:
            await embedder.aembed_many(["x"])
        with pytest.raises(EmbeddingModelMissing, match=r"ollama pull bge-m3:567m"):
            await embedder.check_model()
    finally:
        await embedder.aclose()
    assert isinstance(info.value, PermanentError)
    assert ollama.calls == 1  # not retried, and not mistaken for an old server


async def test_check_model_passes_for_present_model_tag_or_not(ollama: FakeOllama) -> None:
    ollama.models = {"bge-m3:latest"}
    embedder = OllamaBgeM3Embedding(base_url=ollama.base_url, **FAST)
    try:
        await embedder.check_model()
    finally:
        await embedder.aclose()


async def test_check_model_catches_wrong_dimension_before_any_embedding() -> None:
    with FakeOllama(dim=768) as ollama:
        embedder = OllamaBgeM3Embedding(base_url=ollama.base_url, **FAST)
        try:
            with pytest.raises(EmbeddingDimensionMismatch, match="EMBED_DIM=1024"):
                await embedder.check_model()
        finally:
            await embedder.aclose()


async def test_dimension_mismatch_names_setting_and_model() -> None:
    with FakeOllama(dim=768) as ollama:
        embedder = OllamaBgeM3Embedding(base_url=ollama.base_url, **FAST)
        try:
            with pytest.raises(EmbeddingDimensionMismatch, match=r"'bge-m3' returns 768.*EMBED_DIM=1024"):
                await embedder.aembed_many(["hello"])
        finally:
            await embedder.aclose()


async def test_input_too_long_is_refused_never_truncated() -> None:
    with FakeOllama(context_tokens=50) as ollama:
        embedder = OllamaBgeM3Embedding(base_url=ollama.base_url, num_ctx=50, **FAST)
        try:
            with pytest.raises(EmbeddingInputTooLong, match="EMBED_MAX_TOKENS") as info:
                await embedder.aembed_many(["short", "word " * 60])
        finally:
            await embedder.aclose()
    assert isinstance(info.value, PermanentError)
    assert ollama.calls == 1 and ollama.inputs == 0


# --- retryable errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [500, 502, 503, 429])
async def test_retries_transient_statuses_then_succeeds(
    embedder: OllamaBgeM3Embedding, ollama: FakeOllama, status: int
) -> None:
    ollama.fail_next(2, status=status)
    vectors = await embedder.aembed_many(["a", "b"])
    assert vectors == [pytest.approx(embed_text("a")), pytest.approx(embed_text("b"))]
    assert ollama.calls == 3 and ollama.inputs == 2


def test_sync_retries_then_succeeds(ollama: FakeOllama) -> None:
    ollama.fail_next(1, status=500)
    embedder = OllamaBgeM3Embedding(base_url=ollama.base_url, **FAST)
    try:
        assert embedder.get_text_embedding("a") == pytest.approx(embed_text("a"))
    finally:
        embedder.close()
    assert ollama.calls == 2


async def test_busy_server_gives_up_after_bounded_retries(embedder: OllamaBgeM3Embedding, ollama: FakeOllama) -> None:
    ollama.down = True
    with pytest.raises(EmbeddingUnavailable, match=r"503.*server busy") as info:
        await embedder.aembed_many(["a"])
    assert isinstance(info.value, RetryableError)
    assert ollama.calls == embedder.max_retries + 1


async def test_dead_server_then_back(embedder: OllamaBgeM3Embedding, ollama: FakeOllama) -> None:
    await embedder.aembed_many(["warm the connection pool"])
    ollama.go_down()
    with pytest.raises(EmbeddingUnavailable, match="unreachable"):
        await embedder.aembed_many(["a"])
    with pytest.raises(EmbeddingUnavailable):
        await embedder.check_model()
    ollama.come_up()
    assert await embedder.aembed_many(["a"]) == [pytest.approx(embed_text("a"))]
    await embedder.check_model()


def test_dead_server_sync(ollama: FakeOllama) -> None:
    embedder = OllamaBgeM3Embedding(base_url=ollama.base_url, max_retries=1, **FAST)
    ollama.go_down()
    try:
        with pytest.raises(EmbeddingUnavailable):
            embedder.embed_many(["a"])
        ollama.come_up()
        assert embedder.embed_many(["a"]) == [pytest.approx(embed_text("a"))]
    finally:
        embedder.close()


# --- the fake's vectors --------------------------------------------------------------------------------------
def test_fake_vectors_are_unit_and_deterministic() -> None:
    for text in ["Deploy the service", "", "...", "회의록 작성 방법"]:
        vector = embed_text(text)
        assert len(vector) == 1024
        assert math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-9)
        assert vector == embed_text(text)
    assert len(embed_text("x", dim=16)) == 16


@pytest.mark.parametrize(
    ("anchor", "similar", "unrelated"),
    [
        ("How to deploy the billing service", "Deploying the billing service", "Quarterly marketing budget review"),
        ("회의록 작성 방법 안내", "회의록을 작성하는 방법", "서버 배포 절차와 롤백"),
        ("Kubernetes cluster upgrade runbook", "kubernetes CLUSTER upgrade", "holiday party photos"),
    ],
)
def test_fake_similar_texts_are_closer(anchor: str, similar: str, unrelated: str) -> None:
    a, s, u = embed_text(anchor), embed_text(similar), embed_text(unrelated)
    assert cosine(a, s) > cosine(a, u) + 0.2


def test_fake_counts_cjk_characters_as_tokens() -> None:
    assert count_tokens("deploy the service.") == 4
    assert count_tokens("회의록") == 3


async def test_slow_server_times_out_as_unavailable() -> None:
    with FakeOllama(per_call_delay=1.0) as ollama:
        embedder = OllamaBgeM3Embedding(base_url=ollama.base_url, timeout=0.1, max_retries=1, **FAST)
        try:
            with pytest.raises(EmbeddingUnavailable, match="ReadTimeout"):
                await embedder.aembed_many(["a"])
        finally:
            await embedder.aclose()
    assert ollama.calls == 2


def test_one_embedder_survives_successive_event_loops(ollama: FakeOllama) -> None:
    """A CLI may `asyncio.run` several times; a pool bound to a closed loop must not be reused."""
    embedder = OllamaBgeM3Embedding(base_url=ollama.base_url, **FAST)
    for text in ["first loop", "second loop"]:
        assert asyncio.run(embedder.aembed_many([text])) == [pytest.approx(embed_text(text))]
    asyncio.run(embedder.aclose())


# --- vectors that are not finite numbers (issue 10) ----------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
async def test_non_finite_or_non_numeric_components_are_an_embedding_error(
    embedder: OllamaBgeM3Embedding, ollama: FakeOllama, kind: str
) -> None:
    """NaN, Infinity, null, text, booleans or objects in a 200 answer: refused as EmbeddingInvalid (an
    EmbeddingError the job retries), never handed on as a vector pgvector would refuse, never a TypeError."""
    ollama.corrupt_next(1, kind)
    with pytest.raises(EmbeddingInvalid, match="component 1023") as info:
        await embedder.aembed_many(TEXTS[:3])
    assert isinstance(info.value, EmbeddingError) and isinstance(info.value, RetryableError)
    assert embedder.calls == 0  # nothing counted as embedded
    assert await embedder.aembed_many(TEXTS[:3]) == [pytest.approx(embed_text(t)) for t in TEXTS[:3]]


@pytest.mark.parametrize("kind", ["nan", "null", "string"])
def test_sync_and_legacy_paths_refuse_them_too(kind: str) -> None:
    for legacy in (False, True):
        with FakeOllama(legacy=legacy) as ollama:
            embedder = OllamaBgeM3Embedding(base_url=ollama.base_url, **FAST)
            try:
                ollama.corrupt_next(1, kind)
                with pytest.raises(EmbeddingInvalid):
                    embedder.embed_many(TEXTS[:1])
            finally:
                embedder.close()


async def test_a_corrupt_vector_anywhere_in_the_batch_fails_the_batch(
    embedder: OllamaBgeM3Embedding, ollama: FakeOllama
) -> None:
    ollama.corrupt_next(1, "inf")
    with pytest.raises(EmbeddingInvalid):
        await embedder.aembed_many(TEXTS[:20])  # the bad vector is in the first of two requests
    assert ollama.calls == 1  # the second batch was never asked for
