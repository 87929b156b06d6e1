"""The labelled retrieval set (pages in `pages.py`, questions in `questions.yaml`) and how answers are matched."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

QUESTIONS_FILE = Path(__file__).with_name("questions.yaml")
TYPES = ("paraphrase", "keyword", "table", "code", "deep", "distractor")
SPLITS = ("tune", "test")

#: Markup that differs between renderings of the same text (Markdown from our converter, html2text's output):
#: emphasis, code ticks, table pipes, escapes, underscores (html2text writes `\_`), link brackets.
_MARKUP = re.compile(r"[\\*`|_\[\]#>]")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Question:
    id: str
    q: str
    page: str
    answer: str
    type: str
    split: str


def normalise(text: str) -> str:
    """Lowercase, markup removed, whitespace collapsed: `answer in chunk` then means the words are there, in
    order, however a converter wrapped or escaped them."""
    return _SPACE.sub(" ", _MARKUP.sub(" ", text.lower())).strip()


def contains_answer(text: str, answer: str) -> bool:
    return normalise(answer) in normalise(text)


def load_questions(path: Path = QUESTIONS_FILE) -> list[Question]:
    """The questions, validated: unique ids, known type and split. Raises ValueError on a malformed entry."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    questions = [Question(**{k: str(v) for k, v in item.items()}) for item in raw]
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate question ids")
    for q in questions:
        if q.type not in TYPES or q.split not in SPLITS:
            raise ValueError(f"{q.id}: unknown type {q.type!r} or split {q.split!r}")
    return questions
