"""A real embedding model behind the Ollama API: WordLlama's packaged 256-dimension static model.

Why: every other test embeds with `tests.fakes.ollama.embed_text`, a hashing-trick stand-in that only rewards
shared words. Measuring whether search finds the right answer for a real question (bench/retrieval_quality.py)
needs a model that knows "sentinel" and "replica" are related. `wordllama` ships real weights inside its wheel,
so it runs on a machine without model downloads (~1,000 texts/s on one core).

The HTTP contract is the fake Ollama's (`FakeOllama`: /api/embed, /api/embeddings, /api/tags, /api/show, faults
and counters); only the vectors differ. Start the service with `EMBED_DIM=256` and any `EMBED_MODEL` name that
is passed here as `model`.

wordllama 0.4.0.post1 looks for its packaged tokenizer under `<cache_dir>/tokenizers/` and, not finding it
there in its default cache, tries to download it; `load_model` copies the packaged file into a private cache
directory and loads with `disable_download=True`, so nothing is ever fetched.

    with WordLlamaOllama() as ollama:          # base_url, dim == 256, model == "wordllama-l2-supercat"
        ...
    python -m tests.fakes.wordllama_ollama --port 11434
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import tempfile
import threading
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from tests.fakes.ollama import FakeOllama

#: The dimension of wordllama's packaged `l2_supercat_256` weights.
DIM = 256
MODEL = "wordllama-l2-supercat"
#: The packaged model's tokenizer file (wordllama 0.4: `wordllama/tokenizers/`).
_TOKENIZER = "l2_supercat_tokenizer_config.json"


@cache
def load_model() -> Any:
    """The packaged WordLlama model, loaded once per process without any network access.

    Raises ImportError when the `bench` extra (wordllama) is not installed, FileNotFoundError when the wheel
    does not carry the tokenizer file this loader expects.
    """
    from wordllama import WordLlama

    packaged = resources.files("wordllama").joinpath("tokenizers", _TOKENIZER)
    cache_dir = Path(tempfile.mkdtemp(prefix="wordllama-"))
    (cache_dir / "tokenizers").mkdir()
    with resources.as_file(packaged) as source:
        shutil.copyfile(source, cache_dir / "tokenizers" / _TOKENIZER)
    return WordLlama.load(cache_dir=cache_dir, disable_download=True, dim=DIM)


def embed_texts(texts: list[str]) -> list[list[float]]:
    """Unit vectors (cosine-ready, as bge-m3's are) of length `DIM`, one per text, in order."""
    if not texts:
        return []
    vectors = load_model().embed(texts, norm=True)
    return [[float(x) for x in row] for row in vectors]


class WordLlamaOllama(FakeOllama):
    """`FakeOllama` whose vectors come from WordLlama: same routes, faults, counters and `parallel` gate."""

    def __init__(self, *, model: str = MODEL, port: int = 0, parallel: int | None = None) -> None:
        super().__init__(dim=DIM, model=model, port=port, parallel=parallel)
        load_model()  # fail at construction, not on the first request, when wordllama is missing

    async def _compute(self, texts: list[str]) -> list[list[float]]:
        # The model is CPU-bound numpy: off the server's event loop, so /api/tags stays responsive.
        async with self._gate or contextlib.nullcontext():
            vectors = await asyncio.to_thread(embed_texts, texts)
        with self._lock:
            self._texts.extend(texts)
        return vectors


def main(argv: list[str] | None = None) -> None:
    """Run the server as a process until SIGINT/SIGTERM; prints its base URL first."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.wordllama_ollama", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with WordLlamaOllama(model=args.model, port=args.port) as server:
        print(server.base_url, flush=True)
        while not stop.wait(0.2):
            pass


if __name__ == "__main__":
    main()
