"""Which extractor reads a file, and running it in a child process with time and memory limits.

Why a process: parsers of untrusted files are C extensions (PDFium, libxml2) or pure Python that can spin on
a crafted file; a thread cannot be stopped and a blown heap takes the worker with it. The child sets its own
`RLIMIT_AS` (address space; `resource.setrlimit(2)`) before reading anything, the parent kills it after
`timeout` seconds, and either outcome becomes a skip reason for that attachment, never a failed page.

Protocol: `python -m app.attachments.extract KIND MAX_CHARS MEMORY_MB`, the file on stdin, one JSON object on
stdout: `{"text": "..."}` or `{"reason": "encrypted", "detail": "..."}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
from dataclasses import dataclass
from pathlib import PurePosixPath

from app.attachments.errors import Unextractable

#: Media type → extractor kind (IANA names as Confluence reports them in `mediaType`).
KINDS = {
    "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.ms-excel": "xls",
    "text/csv": "csv",
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "application/json": "json",
}
#: When Confluence says only `application/octet-stream`, the file name's extension decides.
EXTENSIONS = {
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".xls": "application/vnd.ms-excel",
    ".doc": "application/msword",
    ".ppt": "application/vnd.ms-powerpoint",
    ".csv": "text/csv",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".json": "application/json",
}
#: Word and PowerPoint 97-2003 binary files: no maintained pure-Python reader exists (the peers shell out to
#: antiword/catdoc or LibreOffice), so they are skipped with a reason that says what to do. Excel's .xls is
#: read (xlrd, `xls.py`).
LEGACY = {
    "application/msword": "Word 97-2003 (.doc): convert to .docx",
    "application/vnd.ms-powerpoint": "PowerPoint 97-2003 (.ppt): convert to .pptx",
}
LEGACY_REASON = "legacy binary format"


@dataclass(frozen=True, slots=True)
class Extraction:
    """Markdown of a file, or why there is none (`reason` is one of the skip reasons shown in status)."""

    markdown: str | None
    reason: str | None = None
    detail: str | None = None


def media_type_of(media_type: str, file_name: str) -> str:
    """The media type we go by: Confluence's, unless it is generic and the extension says more."""
    declared = media_type.split(";")[0].strip().lower()
    if declared in KINDS:
        return declared
    return EXTENSIONS.get(PurePosixPath(file_name.lower()).suffix, declared)


async def extract(data: bytes, media_type: str, *, max_chars: int, timeout: float, memory_mb: int) -> Extraction:
    """Run the extractor for `media_type` on `data` in a child process. Never raises for a bad file."""
    kind = KINDS.get(media_type)
    if kind is None:
        if media_type in LEGACY:
            return Extraction(None, LEGACY_REASON, LEGACY[media_type])
        return Extraction(None, "unsupported type", media_type)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.attachments.extract", kind, str(max_chars), str(memory_mb),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(process.communicate(data), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return Extraction(None, "timed out", f"extraction ran longer than {timeout:g} s")
    try:
        answer = json.loads(out.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return Extraction(None, "extractor failed", f"exit {process.returncode}: {tail[0][:200]}")
    if "text" in answer:
        return Extraction(str(answer["text"]))
    return Extraction(None, str(answer.get("reason", "extractor failed")), answer.get("detail"))


def run(kind: str, data: bytes, max_chars: int) -> str:
    """The extraction itself (in the child): Markdown, checked for garbage, at most `max_chars` long."""
    # One format's library imported, not all: the child's start-up is part of every extraction's cost.
    from app.attachments import quality, text
    from app.attachments.markdown import paragraph

    if kind == "pdf":
        from app.attachments import pdf

        markdown = pdf.to_markdown(data, max_chars)
    elif kind == "docx":
        from app.attachments import docx

        markdown = docx.to_markdown(data, max_chars)
    elif kind == "pptx":
        from app.attachments import pptx

        markdown = pptx.to_markdown(data, max_chars)
    elif kind == "xlsx":
        from app.attachments import xlsx

        markdown = xlsx.to_markdown(data, max_chars)
    elif kind == "xls":
        from app.attachments import xls

        markdown = xls.to_markdown(data, max_chars)
    elif kind == "csv":
        markdown = text.to_markdown(data, max_chars, csv_rows=True)
    elif kind == "json":
        body = text.to_markdown(data, max_chars)
        markdown = f"```json\n{body}\n```" if body.strip() else ""
    elif kind == "markdown":
        markdown = text.to_markdown(data, max_chars)
    else:
        markdown = paragraph(text.to_markdown(data, max_chars))
    return quality.check_text(markdown[:max_chars])


def _child(argv: list[str]) -> int:
    kind, max_chars, memory_mb = argv[0], int(argv[1]), int(argv[2])
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    data = sys.stdin.buffer.read()
    try:
        answer: dict[str, str] = {"text": run(kind, data, max_chars)}
    except Unextractable as exc:
        answer = {"reason": exc.reason, "detail": str(exc)[:500]}
    except MemoryError:
        answer = {"reason": "too much memory", "detail": f"over {memory_mb} MiB"}
    except Exception as exc:  # a parser's own error on a malformed file: the file is corrupt for us
        answer = {"reason": "corrupt", "detail": f"{type(exc).__name__}: {str(exc)[:300]}"}
    answer["peak_rss_kib"] = _peak_rss_kib()
    sys.stdout.write(json.dumps(answer))
    return 0


def _peak_rss_kib() -> str:
    """This process's own peak resident set (`VmHWM`, proc(5)), for the log and the benchmark: the parent's
    `wait4` rusage would also count the address space it had when the child was spawned."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return line.split()[1]
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    raise SystemExit(_child(sys.argv[1:]))
