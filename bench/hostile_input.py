"""Hostile page bodies: what converting each costs in output size, time and peak memory.

Run: `python -m bench.hostile_input`. Any editor can save such a body, and the worker converts it (under
`serve`, in the API's own process), so the converter must stay linear in its input whatever the markup.
Each case runs in a fresh interpreter so its peak resident memory (`VmHWM`, Linux) is its own; the
"peak MB" column is that peak minus the same interpreter's peak right after importing the converter.

Cases: the issue-10 reproduction (a ~10 KB, 200-row table whose cells span 999 rows and 64 columns), a table
with one 200-cell row over 1,000 one-cell rows (grid padding), a wide table with long headers (record
form repeats each header as a key), a long cell carried down 500 rows, deep nested lists, and a plain
500 x 6 table as the legitimate baseline.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench.common import machine, show

_CASES: dict[str, str] = {
    "span grid (issue 10 repro)": (
        "'<table><tbody>' + ''.join('<tr><td rowspan=\"999\" colspan=\"64\">cell %d</td></tr>' % i "
        "for i in range(200)) + '</tbody></table>'"
    ),
    "one 200-cell row + 1,000 short rows": (
        "'<table><tbody><tr>' + '<td>h</td>' * 200 + '</tr>' + '<tr><td>x</td></tr>' * 1000 + '</tbody></table>'"
    ),
    "wide table, 2 KB headers, 300 rows": (
        "'<table><tbody><tr>' + ''.join('<th>' + ('header%d ' % i) * 250 + '</th>' for i in range(9)) + '</tr>'"
        " + ('<tr>' + '<td>v</td>' * 9 + '</tr>') * 300 + '</tbody></table>'"
    ),
    "10 KB cell carried down 500 rows": (
        "'<table><tbody><tr><td rowspan=\"500\">' + 'long text ' * 1000 + '</td><td>a</td></tr>'"
        " + '<tr><td>b</td></tr>' * 499 + '</tbody></table>'"
    ),
    "lists nested 80 deep, 2,000 items": ("'<ul><li>' * 80 + '<p>x</p>' * 2000 + '</li></ul>' * 80"),
    "plain 500 x 6 table (baseline)": (
        "'<table><tbody>' + ('<tr>' + '<td>some value</td>' * 6 + '</tr>') * 500 + '</tbody></table>'"
    ),
}

_CHILD = """
import json, re, sys, time
def hwm():
    return int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024
from app.convert import storage_to_markdown
base = hwm()
body = {expr}
started = time.perf_counter()
markdown = storage_to_markdown(body)
seconds = time.perf_counter() - started
print(json.dumps({{"body": len(body), "markdown": len(markdown), "seconds": seconds, "peak": hwm() - base}}))
"""


def measure(expr: str, timeout: float = 600.0) -> dict[str, float]:
    """Convert the body `expr` evaluates to in a fresh interpreter; sizes in characters, seconds, MB."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD.format(expr=expr)], capture_output=True, text=True, timeout=timeout, check=True
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> str:
    rows = []
    for name, expr in _CASES.items():
        m = measure(expr)
        rows.append(
            [
                name,
                f"{m['body'] / 1024:,.1f}",
                f"{m['markdown'] / 1024:,.1f}",
                f"{m['markdown'] / m['body']:.2f}",
                f"{m['seconds']:.3f}",
                f"{m['peak']:.1f}",
            ]
        )
    return show(
        "Hostile page bodies: converter output, time and peak memory",
        ["body", "body KB", "markdown KB", "markdown / body", "seconds", "peak MB over import"],
        rows,
        note=machine(),
    )


if __name__ == "__main__":
    main()
