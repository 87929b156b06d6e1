"""Structured logs: one JSON object per line with the event's context (`page_id`, `job_id`...).

Context travels in `extra={...}`; this formatter emits every non-standard attribute, so call sites stay plain
`log.info("page indexed", extra={...})`. Secrets never reach a log: settings hold them as `SecretStr`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                entry[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        context = {
            k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_") and v is not None
        }
        return f"{base} {context}" if context else base


class _PeopleFormatter(TextFormatter):
    """`TextFormatter` with the level in lower case and no logger name: for a terminal, not a log pipeline."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)  # "LEVEL: message {context}"
        return line.replace(record.levelname, record.levelname.lower(), 1)


def configure_logging(level: str = "INFO", fmt: str = "json", *, for_people: bool = False) -> None:
    """Route every log record to stderr as JSON (or text) at `level`.

    `for_people=True` (the CLI's one-shot commands): only our own `app.*` loggers speak at `level`, as short
    text lines ("info: applied procrastinate's schema ...") whatever LOG_FORMAT says, since a person reads them
    between the command's own output; libraries (pgserver's start-up chatter, procrastinate, LlamaIndex) and
    Python warnings only from WARNING up, so that output is not buried in them.
    """
    handler = logging.StreamHandler(sys.stderr)
    if for_people:
        formatter: logging.Formatter = _PeopleFormatter("%(levelname)s: %(message)s")
    elif fmt == "json":
        formatter = JsonFormatter()
    else:
        formatter = TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # procrastinate logs every defer and job start at INFO with the whole job; ours say what matters.
    logging.getLogger("procrastinate").setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)  # warnings become log records: formatted like the rest, filtered by level
    logging.getLogger("app").setLevel(logging.NOTSET)
    if for_people:
        logging.getLogger("app").setLevel(level.upper())
        root.setLevel(max(logging.WARNING, root.level))
        logging.getLogger("py.warnings").setLevel(logging.ERROR)  # library deprecations are not the user's
