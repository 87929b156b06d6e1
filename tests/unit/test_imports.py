"""The app's imports: no import cycle, no app import hidden inside a function, every task module registered.

Why: imports inside functions used to break the runtime -> queue -> jobs -> runtime cycle; they hid it rather
than removing it, and an import error then surfaced at the first job instead of at start-up.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
#: Files whose functions may import app modules, and why.
LAZY_IMPORTS_ALLOWED = {
    # The CLI's commands import what they use, so `--help` and quick commands start fast.
    "cli.py",
    # The extraction child imports only the one format's library it needs: its start-up is paid per file.
    "attachments/extract.py",
}


def _modules() -> list[str]:
    return sorted(
        ".".join(path.relative_to(APP.parent).with_suffix("").parts).removesuffix(".__init__")
        for path in APP.rglob("*.py")
    )


def _is_app(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "app"
    return any(alias.name.split(".")[0] == "app" for alias in node.names)


def function_level_app_imports(source: str) -> list[tuple[int, str]]:
    """(line, function name) of every import of an app module inside a function body of `source`."""
    found: list[tuple[int, str]] = []
    for function in ast.walk(ast.parse(source)):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            name = getattr(function, "name", "<lambda>")
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom) and _is_app(node):
                    found.append((node.lineno, name))
    return sorted(set(found))


def test_the_check_sees_function_level_imports() -> None:
    source = "import app.x\n\ndef f():\n    from app.queue import task\n\nasync def g():\n    import app.jobs\n"
    assert function_level_app_imports(source) == [(4, "f"), (7, "g")]
    assert function_level_app_imports("from app import queue\n\ndef f():\n    import json\n") == []


def test_no_app_import_inside_a_function() -> None:
    offenders = [
        f"app/{path.relative_to(APP).as_posix()}:{line} in {name}()"
        for path in sorted(APP.rglob("*.py"))
        if path.relative_to(APP).as_posix() not in LAZY_IMPORTS_ALLOWED
        for line, name in function_level_app_imports(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], "import at module level (types under TYPE_CHECKING) instead: " + ", ".join(offenders)


#: Run in a fresh interpreter: third-party packages are imported once (the slow part), no app module is; then
#: each app module is imported in a forked child that starts with no app module loaded, so the order of
#: imports is the one a process starting at that module sees, and a cycle fails there.
_IMPORT_EACH = r"""
import ast, importlib, os, sys, traceback
from pathlib import Path

app_dir = Path(sys.argv[1])
third_party = set()
for path in app_dir.rglob("*.py"):
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            third_party.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            third_party.add(node.module)
for name in sorted(third_party):
    if name.split(".")[0] != "app":
        try:
            importlib.import_module(name)
        except Exception:
            pass  # an optional library: the child that needs it reports it
assert not [m for m in sys.modules if m == "app" or m.startswith("app.")], "no app module before the forks"
failed = []
for module in sys.argv[2:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(module)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        failed.append(module)
print("FAILED:" + ",".join(failed))
"""


def test_every_app_module_imports_on_its_own() -> None:
    """Each module imported first in a process of its own: a cycle (a module importing, at module level, one
    that imports it back before it is complete) raises ImportError there."""
    modules = _modules()
    assert "app.runtime" in modules and "app.tasks" in modules
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, str(APP), *modules],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=APP.parent,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().splitlines()[-1] == "FAILED:", done.stderr[-4000:]


def test_every_module_declaring_tasks_is_registered() -> None:
    """A module declaring a task with `app.queue.task` but missing from `app.tasks.TASK_MODULES` would have
    its jobs deferred and never run."""
    from app.tasks import TASK_MODULES

    declaring = set()
    for path in APP.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
                for decorator in node.decorator_list:
                    if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "task":
                        declaring.add(".".join(path.relative_to(APP.parent).with_suffix("").parts))
    assert declaring == {module.__name__ for module in TASK_MODULES}
