"""Attachment extraction: facts kept on the fidelity set, time per MB per format, peak memory of big files.

Run: `python -m bench.attachment_extraction` (or `python -m bench attachment_extraction` to record it).

1. Fidelity: every file of `tests.fakes.office_files.fidelity_set()` (facts planted in headers, footers,
   merged and wrapped cells, notes, number formats, a second page; hidden sheets and slides whose text must
   stay out) through our extractor and each installed candidate (pdfplumber's text and table paths for PDF;
   Microsoft's markitdown when installed, which it is not by default: 391 MB). A fact counts as kept when it
   is in the text; a row is kept whole when its two planted cells share a line; a leak is hidden text shown.
2. Speed: each format's extractor on a generated file of 1-10 MB, in process (no interpreter start-up),
   seconds per MB of file; the child process's fixed start-up cost is measured once, apart.
3. Memory: the extraction child's peak RSS (its own VmHWM) for a 10 MiB PDF and a
   50,000-row workbook, with the production character cap (200,000) and without it.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.attachments.extract import KINDS, run
from tests.fakes import office_files as files

CAP = 200_000
UNCAPPED = 10**9


@dataclass(frozen=True)
class Candidate:
    name: str
    formats: frozenset[str]
    extract: Callable[[bytes, str], str]


def _ours(data: bytes, media_type: str) -> str:
    return run(KINDS[media_type], data, CAP)


def _pdfplumber_text(data: bytes, media_type: str) -> str:
    import pdfplumber

    with pdfplumber.open(io.BytesIO(data)) as pdf:
        return "\n".join(page.extract_text() or "" for page in pdf.pages)


def _pdfplumber_tables(data: bytes, media_type: str) -> str:
    import pdfplumber

    with pdfplumber.open(io.BytesIO(data)) as pdf:
        lines = []
        for page in pdf.pages:
            tables = page.extract_tables()
            lines += [" | ".join(cell or "" for cell in row) for table in tables for row in table]
            if not tables:
                lines.append(page.extract_text() or "")
        return "\n".join(lines)


def _markitdown(data: bytes, media_type: str) -> str:
    from markitdown import MarkItDown  # type: ignore[import-not-found]

    extension = {v: k for k, v in files.__dict__.items() if isinstance(v, str) and "/" in v}.get(media_type, "")
    suffix = {"PDF": ".pdf", "DOCX": ".docx", "PPTX": ".pptx", "XLSX": ".xlsx"}.get(extension, ".txt")
    return str(MarkItDown().convert_stream(io.BytesIO(data), file_extension=suffix).text_content)


def candidates() -> list[Candidate]:
    found = [Candidate("ours", frozenset(KINDS.values()), _ours)]
    try:
        import pdfplumber  # noqa: F401

        found += [
            Candidate("pdfplumber text", frozenset({"pdf"}), _pdfplumber_text),
            Candidate("pdfplumber tables", frozenset({"pdf"}), _pdfplumber_tables),
        ]
    except ImportError:
        pass
    try:
        import markitdown  # type: ignore[import-not-found]  # noqa: F401

        found.append(Candidate("markitdown", frozenset(KINDS.values()), _markitdown))
    except ImportError:
        pass
    return found


def fidelity() -> list[str]:
    rows = ["| file | extractor | facts kept | rows whole | hidden text leaked | ms |", "|---|---|---|---|---|---|"]
    totals: dict[str, list[int]] = {}
    for sample in files.fidelity_set():
        for candidate in candidates():
            if KINDS[sample.media_type] not in candidate.formats:
                continue
            started = time.perf_counter()
            try:
                text = candidate.extract(sample.data, sample.media_type)
            except Exception as exc:  # a candidate failing on a file keeps nothing
                text = f"<{type(exc).__name__}>"
            ms = (time.perf_counter() - started) * 1000
            lines = text.splitlines()
            kept = sum(fact in text for fact in sample.facts)
            whole = sum(any(a in line and b in line for line in lines) for a, b in sample.together)
            leaked = sum(word in text for word in sample.absent)
            total = totals.setdefault(candidate.name, [0, 0, 0, 0, 0])
            for i, value in enumerate((kept, len(sample.facts), whole, len(sample.together), leaked)):
                total[i] += value
            rows.append(
                f"| {sample.name} | {candidate.name} | {kept}/{len(sample.facts)} | "
                f"{whole}/{len(sample.together)} | {leaked} | {ms:.0f} |"
            )
    for name, (kept, facts, whole, pairs, leaked) in totals.items():
        rows.append(f"| **all** | {name} | {kept}/{facts} | {whole}/{pairs} | {leaked} | |")
    return rows


def big_pdf(target_bytes: int) -> bytes:
    """A text PDF of about `target_bytes` (uncompressed content streams, 60 lines a page)."""
    from fpdf import FPDF

    def build(pages: int) -> bytes:
        document = FPDF()
        document.compress = False
        document.set_font("helvetica", size=9)
        line = "Quarterly figures for region {n}: revenue grew while the sable budget held at 9,400 EUR per team."
        for page in range(pages):
            document.add_page()
            for row in range(60):
                document.cell(text=line.format(n=page * 60 + row), new_x="LMARGIN", new_y="NEXT")
        return bytes(document.output())

    per_page = len(build(20)) / 20
    return build(int(target_bytes / per_page) + 1)


def big_workbook(rows: int) -> bytes:
    return files.xlsx([["id", "name", "share", "amount"], *([i, f"item {i}", i / rows, i * 1.5] for i in range(rows))])


def big_docx(paragraphs: int) -> bytes:
    return files.docx("Big", [f"Paragraph {i}: the deploy pipeline promotes builds." for i in range(paragraphs)])


def big_pptx(slides: int) -> bytes:
    return files.pptx([(f"Slide {i}", f"Body text of slide {i} with a few words.") for i in range(slides)])


def big_csv(rows: int) -> bytes:
    return "".join(f"{i},item {i},{i * 1.5}\n" for i in range(rows)).encode()


def speed(inputs: dict[str, tuple[str, bytes]]) -> list[str]:
    rows = ["| format | file MB | extract s (uncapped, in process) | s per MB | chars out |", "|---|---|---|---|---|"]
    for label, (kind, data) in inputs.items():
        started = time.perf_counter()
        text = run(kind, data, UNCAPPED)
        seconds = time.perf_counter() - started
        mb = len(data) / 2**20
        rows.append(f"| {label} | {mb:.2f} | {seconds:.2f} | {seconds / mb:.2f} | {len(text):,} |")
    return rows


def child_peak(kind: str, data: bytes, max_chars: int) -> tuple[float, float, str]:
    """(seconds, peak RSS MiB, outcome) of one extraction child, as the worker runs it; the peak is the
    child's own VmHWM, which it reports (`wait4` would count the parent's address space at spawn too)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "app.attachments.extract", kind, str(max_chars), "2048"],
        input=data,
        capture_output=True,
        check=True,
    )
    answer = json.loads(done.stdout)
    outcome = f"{len(answer['text']):,} chars" if "text" in answer else answer.get("reason", "?")
    return time.perf_counter() - started, int(answer.get("peak_rss_kib") or 0) / 1024, outcome


def memory(pdf: bytes, workbook: bytes) -> list[str]:
    rows = ["| file | cap | child s | child peak RSS MiB | outcome |", "|---|---|---|---|---|"]
    for label, kind, data in (("tiny text file (start-up cost)", "text", b"hello"),
                              (f"{len(pdf) / 2**20:.1f} MiB PDF", "pdf", pdf),
                              ("50,000-row workbook", "xlsx", workbook)):  # fmt: skip
        for cap in (CAP, UNCAPPED):
            seconds, peak, outcome = child_peak(kind, data, cap)
            shown = f"{cap:,}" if cap == CAP else "none"
            rows.append(f"| {label} | {shown} | {seconds:.2f} | {peak:.0f} | {outcome} |")
            if kind == "text":
                break
    return rows


def main() -> str:
    pdf = big_pdf(10 * 2**20)
    workbook = big_workbook(50_000)
    sections = [
        "### Attachment extraction fidelity (generated set, facts planted in hard places)",
        "\n".join(fidelity()),
        "### Extraction time per MB",
        "\n".join(
            speed(
                {
                    "PDF (pypdfium2)": ("pdf", pdf),
                    "XLSX 50,000 rows (openpyxl read-only)": ("xlsx", workbook),
                    "DOCX 20,000 paragraphs (python-docx)": ("docx", big_docx(20_000)),
                    "PPTX 300 slides (python-pptx)": ("pptx", big_pptx(300)),
                    "CSV 100,000 rows (charset-normalizer)": ("csv", big_csv(100_000)),
                }
            )
        ),
        "### Peak memory of the extraction process",
        "\n".join(memory(pdf, workbook)),
    ]
    text = "\n\n".join(sections)
    print(text)
    return text


if __name__ == "__main__":
    main()
