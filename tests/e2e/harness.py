"""Run the real service (`confluence-vectors serve` / `worker`) as subprocesses against test servers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli_path() -> str:
    found = shutil.which("confluence-vectors", path=str(Path(sys.executable).parent))
    return found or str(Path(sys.executable).parent / "confluence-vectors")


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; last={last!r}")


class Service:
    """One `confluence-vectors` process with its own environment; logs kept for post-mortems."""

    def __init__(self, env: dict[str, str], args: list[str], log_path: Path) -> None:
        self.env = env
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [cli_path(), *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, like a crash or an OOM kill."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Api(Service):
    def __init__(self, env: dict[str, str], log_path: Path, *, worker: bool = True, port: int | None = None) -> None:
        self.port = port or free_port()
        args = ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if not worker:
            args.append("--no-worker")
        super().__init__(env, args, log_path)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Api:
        super().start()
        wait_until(self._healthy, timeout=60, what=f"service healthy; logs:\n{self.logs()[-3000:]}")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"service exited with {self.proc.returncode}; logs:\n{self.logs()[-5000:]}")
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        return False

    def webhook(self, body: dict[str, Any] | bytes, **params: str) -> httpx.Response:
        content = body if isinstance(body, bytes) else None
        return httpx.post(
            f"{self.url}/webhook/confluence",
            params=params or None,
            json=None if content is not None else body,
            content=content,
            timeout=10,
        )


def service_env(*, database_url: str, confluence: Any, ollama: Any, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONFLUENCE_", "OLLAMA_", "EMBED_", "WEBHOOK_"))}
    env.update(
        {
            "DATABASE_URL": database_url,
            "DATA_DIR": str(data_dir),
            "CONFLUENCE_BASE_URL": confluence.base_url,
            "OLLAMA_BASE_URL": ollama.base_url,
            "EMBED_DIM": str(getattr(ollama, "dim", 1024)),
            "CHUNK_SIZE": "128",
            "CHUNK_OVERLAP": "0",
            "RECONCILE_INTERVAL": "0",
            "WORKER_HEARTBEAT_SECONDS": "1",
            "RETRY_BASE_SECONDS": "0.2",
            "RETRY_MAX_SECONDS": "2",
            "CONFLUENCE_MAX_BACKOFF": "2",
            "DEDUPE_WINDOW_SECONDS": "0",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            # Searches that name no person see the whole index, as before issue 12; permission tests unset it.
            "SEARCH_SERVICE_IDENTITY": "service-account",
        }
    )
    if confluence.deployment == "cloud":
        env.update({"CONFLUENCE_EMAIL": confluence.email, "CONFLUENCE_API_TOKEN": confluence.api_token})
    else:
        env.update({"CONFLUENCE_PAT": confluence.pat, "CONFLUENCE_DEPLOYMENT": "datacenter"})
    env.update(extra)
    return env


@contextlib.contextmanager
def running(service: Service) -> Iterator[Service]:
    service.start()
    try:
        yield service
    finally:
        service.stop()


class PeakRss:
    """A child's own peak RSS, from `/proc/<pid>/status` VmHWM, polled until it exits.

    Not `ru_maxrss` from `wait4`/`getrusage`: Linux folds the address space a process had *before* exec into
    it, and with vfork that is the parent's, so a small child of a large test or benchmark process reports
    the parent's size. VmHWM is the high-water mark of the new program's own memory; being monotonic, the last
    value read before exit misses only growth in the final polling interval.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import threading

        self.pid = pid
        self.interval = interval
        self.mb = 0.0
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        path = Path(f"/proc/{self.pid}/status")
        while True:
            try:
                text = path.read_text()
            except OSError:
                return  # gone
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    self.mb = max(self.mb, int(line.split()[1]) / 1024)
                if line.startswith("State:") and "Z" in line.split()[1]:
                    return  # a zombie has no memory left to measure
            time.sleep(self.interval)

    def result(self) -> float:
        """The peak in MB; call after the process has exited (joins the poller)."""
        self._thread.join(timeout=5)
        return self.mb
