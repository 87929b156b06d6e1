"""A fake Ollama API server: real HTTP on 127.0.0.1, deterministic vectors, injectable faults, counters.

Why a server and not a patched client: the embedder's retries, fallbacks and connection handling are exactly
what we want to test, and they live below any function we could patch. Vectors come from `embed_text`, a
hashing-trick bag of words and character trigrams, so similar texts get similar vectors and retrieval tests
can assert on ranking, not only on shapes.

    with FakeOllama() as ollama:           # or FakeOllama(...).start() / .stop()
        embedder = OllamaBgeM3Embedding(base_url=ollama.base_url)
        ollama.fail_next(2, status=503)    # faults: fail_next, down (503 busy), go_down()/come_up() (refused)
        ollama.corrupt_next(1, "nan")      # a 200 whose vector holds NaN/Infinity/null/text (a broken proxy)
        assert ollama.calls == ...         # counters: calls, inputs, texts; reset()

As a process: `python -m tests.fakes.ollama --port 11434 --per-input-delay 0.005` prints its base URL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import re
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from functools import lru_cache
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

_WORD = re.compile(r"\w+")
_CJK = re.compile(r"[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_TOKEN = re.compile(r"[^\W\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]+|[^\w\s]")
_WORD_WEIGHT, _TRIGRAM_WEIGHT = 1.0, 0.5
#: `corrupt_next` kinds and the component each writes: what a vector must never hold.
CORRUPTIONS: dict[str, Any] = {
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "null": None,
    "string": "0.5",
    "bool": True,
    "object": {"value": 0.5},
}


@lru_cache(maxsize=1 << 17)
def _slot(feature: str, dim: int) -> tuple[int, float]:
    """Index and sign of a feature: the hashing trick, stable across processes (unlike `hash`)."""
    digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "big")
    return digest % dim, (1.0 if digest >> 63 else -1.0)


def embed_text(text: str, dim: int = 1024, *, trigram_weight: float = _TRIGRAM_WEIGHT) -> list[float]:
    """Deterministic unit vector: lowercased word unigrams plus character trigrams of each padded word.
    Shared words and shared word pieces (Korean particles, English inflections) raise cosine similarity."""
    vector = [0.0] * dim
    for word in _WORD.findall(text.lower()):
        index, sign = _slot("w:" + word, dim)
        vector[index] += sign * _WORD_WEIGHT
        padded = f"<{word}>"
        for i in range(len(padded) - 2):
            index, sign = _slot("t:" + padded[i : i + 3], dim)
            vector[index] += sign * trigram_weight
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0:  # empty or punctuation-only text: a fixed unit vector, never zeros (cosine would be NaN)
        vector[0] = 1.0
        return vector
    return [x / norm for x in vector]


def count_tokens(text: str) -> int:
    """Roughly what a subword tokenizer would say: one per word or punctuation mark, one per CJK character."""
    return len(_TOKEN.findall(text)) + len(_CJK.findall(text))


def _truncate(text: str, limit: int) -> str:
    """Keep the first `limit` rough tokens, as Ollama does when `truncate` is true."""
    pieces = re.findall(_TOKEN.pattern + "|" + _CJK.pattern, text)
    return " ".join(pieces[:limit])


def _tag(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


class FakeOllama:
    """Serves /api/embed, /api/embeddings, /api/tags, /api/show and / like Ollama does, from a thread.

    `calls` counts every embed HTTP request received (failed ones too, so retries are visible); `inputs` and
    `texts` count only what was actually embedded. `down = True` answers 503 "server busy" (a live but
    saturated server); `go_down()` really stops listening (connection refused) and `come_up()` listens again
    on the same port.
    """

    def __init__(
        self,
        *,
        dim: int = 1024,
        model: str = "bge-m3",
        context_tokens: int = 8192,
        legacy: bool = False,
        port: int = 0,
        per_input_delay: float = 0.0,
        per_call_delay: float = 0.0,
        parallel: int | None = None,
    ) -> None:
        self.dim = dim
        self.context_tokens = context_tokens
        self.legacy = legacy
        self.models: set[str] = {model}
        self.per_input_delay = per_input_delay
        self.per_call_delay = per_call_delay
        self.parallel = parallel  # like OLLAMA_NUM_PARALLEL: embed requests computed at once (None: no limit)
        self.down = False
        #: While set, an embed request with an input containing this text waits until `release()` (a slow
        #: Ollama, within its contract): tests pin a client mid-run at a known point. `held` counts them.
        self.hold_on: str | None = None
        self.held = 0
        self._released = threading.Event()
        self._port = port
        self._lock = threading.Lock()
        self._failures: list[int] = []
        self._corruptions: list[str] = []
        self._calls = 0
        self._texts: list[str] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._gate: asyncio.Semaphore | None = None
        self.app = Starlette(
            routes=[
                Route("/", self._root, methods=["GET", "HEAD"]),
                Route("/api/embed", self._embed, methods=["POST"]),
                Route("/api/embeddings", self._embeddings, methods=["POST"]),
                Route("/api/tags", self._tags, methods=["GET"]),
                Route("/api/show", self._show, methods=["POST"]),
            ],
            lifespan=self._lifespan,
        )

    # --- lifecycle ----------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> FakeOllama:
        if self._server is not None:
            return self
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, timeout_graceful_shutdown=1)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="fake-ollama")
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake Ollama did not start")
            time.sleep(0.005)
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout=10)

    go_down = stop  # the port stays ours in `base_url`; clients now get "connection refused"

    def come_up(self) -> None:
        """Listen again on the same port, as a restarted Ollama would."""
        self.start()

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # --- faults and counters ------------------------------------------------------------------------------
    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """The next `n` embed requests answer `status` with an Ollama-style error body."""
        with self._lock:
            self._failures.extend([status] * n)

    def corrupt_next(self, n: int = 1, kind: str = "nan") -> None:
        """The next `n` successful embed answers carry a bad component in their first vector, as a broken
        proxy or an OpenAI-style shim might (Ollama itself answers 500 when its encoder meets a NaN): `kind`
        is one of `CORRUPTIONS` (`nan` and `inf` are written as the JSON extensions `NaN` and `Infinity`)."""
        if kind not in CORRUPTIONS:
            raise ValueError(f"kind must be one of {sorted(CORRUPTIONS)}")
        with self._lock:
            self._corruptions.extend([kind] * n)

    def _answer(self, build: Callable[[list[list[Any]]], dict[str, Any]], vectors: list[list[Any]]) -> Response:
        """The JSON answer `build(vectors)`, with the next pending corruption (if any) in its first vector's
        last component, written with Python's JSON extensions (`NaN`, `Infinity`) as a non-Go server would."""
        with self._lock:
            kind = self._corruptions.pop(0) if self._corruptions else None
        if kind is None or not vectors:
            return JSONResponse(build(vectors))
        vectors = [[*vectors[0][:-1], CORRUPTIONS[kind]], *vectors[1:]]
        return Response(json.dumps(build(vectors), allow_nan=True), media_type="application/json")

    @property
    def calls(self) -> int:
        with self._lock:
            return self._calls

    @property
    def inputs(self) -> int:
        with self._lock:
            return len(self._texts)

    @property
    def texts(self) -> list[str]:
        with self._lock:
            return list(self._texts)

    def reset(self) -> None:
        with self._lock:
            self._calls, self._texts, self._failures, self._corruptions = 0, [], [], []

    # --- handlers -----------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self._gate = asyncio.Semaphore(self.parallel) if self.parallel else None  # one per server loop
        yield

    async def _root(self, _request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    def _has(self, name: Any) -> bool:
        return isinstance(name, str) and _tag(name) in {_tag(m) for m in self.models}

    def _fault(self) -> Response | None:
        with self._lock:
            self._calls += 1
            if self.down:
                return JSONResponse({"error": "server busy, please try again"}, 503)
            status = self._failures.pop(0) if self._failures else None
        if status is not None:
            message = "server busy" if status == 503 else f"injected failure ({status})"
            return JSONResponse({"error": message}, status)
        return None

    def _missing(self, name: Any) -> Response:
        return JSONResponse({"error": f'model "{name}" not found, try pulling it first'}, 404)

    def release(self) -> None:
        """Let the requests held by `hold_on` (and any later ones) through."""
        self._released.set()

    async def _compute(self, texts: list[str]) -> list[list[float]]:
        if self.hold_on is not None and any(self.hold_on in text for text in texts):
            with self._lock:
                self.held += 1
            await asyncio.to_thread(self._released.wait, 300)
        async with self._gate or contextlib.nullcontext():
            delay = self.per_call_delay + self.per_input_delay * len(texts)
            if delay > 0:
                await asyncio.sleep(delay)
            vectors = [embed_text(text, self.dim) for text in texts]
        with self._lock:
            self._texts.extend(texts)
        return vectors

    async def _embed(self, request: Request) -> Response:
        if self.legacy:  # servers before 0.3 had no such route; Go's router answers in plain text
            with self._lock:
                self._calls += 1
            return PlainTextResponse("404 page not found", 404)
        if (fault := self._fault()) is not None:
            return fault
        body = await request.json()
        if not self._has(body.get("model")):
            return self._missing(body.get("model"))
        raw = body.get("input", [])
        texts: list[str] = [raw] if isinstance(raw, str) else list(raw)
        if not all(isinstance(t, str) for t in texts):
            return JSONResponse({"error": "invalid input type"}, 400)
        tokens = [count_tokens(t) for t in texts]
        if any(n > self.context_tokens for n in tokens):
            if body.get("truncate", True) is False:
                return JSONResponse({"error": "the input length exceeds the context length"}, 400)
            limit = self.context_tokens
            texts = [_truncate(t, limit) if n > limit else t for t, n in zip(texts, tokens, strict=True)]
        started = time.perf_counter_ns()
        vectors = await self._compute(texts)
        return self._answer(
            lambda embeddings: {
                "model": body["model"],
                "embeddings": embeddings,
                "total_duration": time.perf_counter_ns() - started,
                "load_duration": 0,
                "prompt_eval_count": sum(min(n, self.context_tokens) for n in tokens),
            },
            vectors,
        )

    async def _embeddings(self, request: Request) -> Response:
        """The old endpoint: one prompt, no `truncate` (it truncates silently)."""
        if (fault := self._fault()) is not None:
            return fault
        body = await request.json()
        if not self._has(body.get("model")):
            return self._missing(body.get("model"))
        prompt = body.get("prompt", "")
        if count_tokens(prompt) > self.context_tokens:
            prompt = _truncate(prompt, self.context_tokens)
        return self._answer(lambda vectors: {"embedding": vectors[0]}, await self._compute([prompt]))

    async def _tags(self, _request: Request) -> Response:
        models = [
            {
                "name": _tag(m),
                "model": _tag(m),
                "modified_at": "2024-08-01T00:00:00Z",
                "size": 1_157_672_605,
                "digest": hashlib.sha256(m.encode()).hexdigest(),
                "details": {"format": "gguf", "family": "bert", "parameter_size": "566.70M"},
            }
            for m in sorted(self.models)
        ]
        return JSONResponse({"models": models})

    async def _show(self, request: Request) -> Response:
        body = await request.json()
        name = body.get("model") or body.get("name")
        if not self._has(name):
            return JSONResponse({"error": f"model '{name}' not found"}, 404)
        return JSONResponse(
            {
                "modelfile": f"FROM {name}\n",
                "parameters": "",
                "details": {"format": "gguf", "family": "bert", "parameter_size": "566.70M"},
                "model_info": {
                    "general.architecture": "bert",
                    "bert.context_length": self.context_tokens,
                    "bert.embedding_length": self.dim,
                },
                "capabilities": ["embedding"],
            }
        )


def main(argv: list[str] | None = None) -> None:
    """Run the fake as a process (e2e tests, benchmarks) until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.ollama", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--model", default="bge-m3")
    parser.add_argument("--context-tokens", type=int, default=8192)
    parser.add_argument("--legacy", action="store_true", help="only /api/embeddings, like servers before 0.3")
    parser.add_argument("--per-input-delay", type=float, default=0.0, help="seconds of compute per input")
    parser.add_argument("--per-call-delay", type=float, default=0.0, help="seconds of overhead per request")
    parser.add_argument("--parallel", type=int, default=None, help="requests computed at once (default: any)")
    args = parser.parse_args(argv)
    fake = FakeOllama(
        dim=args.dim,
        model=args.model,
        context_tokens=args.context_tokens,
        legacy=args.legacy,
        port=args.port,
        per_input_delay=args.per_input_delay,
        per_call_delay=args.per_call_delay,
        parallel=args.parallel,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with fake:
        print(fake.base_url, flush=True)
        while not stop.wait(0.2):  # a timed wait, so signal handlers run promptly on every platform
            pass


if __name__ == "__main__":
    main()
