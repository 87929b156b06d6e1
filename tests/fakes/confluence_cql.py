"""The slice of CQL the fake Confluence understands: exactly what `app.confluence` emits, and nothing else.

Anything outside the slice is a `CqlError` (the fake answers 400, as Confluence does), so a client that starts
emitting new CQL fails loudly in tests instead of silently matching everything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

_ORDER_BY = re.compile(r"\s+order\s+by\s+.*$", re.IGNORECASE | re.DOTALL)
_AND = re.compile(r"\s+and\s+(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", re.IGNORECASE)
_MEMBERSHIP = re.compile(r"^(type|space|id)\s*(=|in)\s*(.+)$", re.IGNORECASE | re.DOTALL)
_DATE = re.compile(r"^lastmodified\s*(>=|>|<=|<)\s*\"([^\"]+)\"$", re.IGNORECASE)
_TOKEN = re.compile(r"\"((?:[^\"\\]|\\.)*)\"|([^\s,()\"]+)")


class CqlError(ValueError):
    """CQL outside the supported slice."""


@dataclass(frozen=True, slots=True)
class CqlItem:
    """What a CQL clause can look at."""

    id: str
    type: str
    space_key: str
    last_modified: datetime


Predicate = Callable[[CqlItem], bool]


def parse_cql(cql: str) -> Predicate:
    """A predicate for `clause and clause ...` (a trailing `order by` is accepted and ignored)."""
    text = _ORDER_BY.sub("", cql.strip())
    if not text:
        raise CqlError("empty CQL")
    predicates = [_clause(part.strip()) for part in _AND.split(text)]
    return lambda item: all(predicate(item) for predicate in predicates)


def _clause(text: str) -> Predicate:
    if match := _MEMBERSHIP.match(text):
        field, op, raw = match.group(1).lower(), match.group(2).lower(), match.group(3).strip()
        values = _values(raw, many=op == "in")
        return lambda item: _field(item, field) in values
    if match := _DATE.match(text):
        op, when = match.group(1), _date(match.group(2))
        return lambda item: _compare(item.last_modified.replace(second=0, microsecond=0), op, when)
    raise CqlError(f"unsupported CQL clause: {text!r}")


def _values(raw: str, *, many: bool) -> frozenset[str]:
    if many:
        if not (raw.startswith("(") and raw.endswith(")")):
            raise CqlError(f"`in` needs a parenthesised list, got {raw!r}")
        raw = raw[1:-1]
    values = [quoted.replace('\\"', '"').replace("\\\\", "\\") or bare for quoted, bare in _TOKEN.findall(raw)]
    if not values or (not many and len(values) != 1):
        raise CqlError(f"bad CQL value list {raw!r}")
    return frozenset(values)


def _field(item: CqlItem, field: str) -> str:
    return {"type": item.type, "space": item.space_key, "id": item.id}[field]


def _date(text: str) -> datetime:
    for fmt in ("%Y-%m-%d %H:%M", "%Y/%m/%d %H:%M", "%Y-%m-%d", "%Y/%m/%d"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise CqlError(f"bad CQL date {text!r}")


def _compare(value: datetime, op: str, bound: datetime) -> bool:
    return {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[op]
