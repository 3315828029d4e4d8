"""Live servers for tests, on a free loopback port.

- `ServerThread`: the app and engine in this process (quick to start; for the tiny synthetic models).
- `ServerProcess`: `llamapyz serve` as a child process, exactly as a user runs it (for the real models).
- `RayServer`: `llamapyz serve --ray` as a child process, with the local Ray cluster it starts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from llamapyz.server import ServeOptions, create_server, load_engine

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the server exited while starting")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not become healthy in {timeout} s")


def bare_python(root: Path) -> dict[str, str]:
    """Under `root`, a Python without site-packages (not even pip) and an empty home: the whole environment
    a colleague's machine is assumed to have. Returns the variables for `in_env`."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    (root / "home").mkdir()
    return {"HOME": str(root / "home"), "PATH": f"{root / 'venv' / 'bin'}:/usr/bin:/bin"}


def in_env(env: dict[str, str], *command: str) -> list[str]:
    """`command` run with exactly the variables `env` (`env -i`), nothing inherited."""
    return ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *command]


BUILD_EPOCH = "1700000000"  # SOURCE_DATE_EPOCH of every test build


def build(*args: str, cwd: Path = REPO, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    """`python build.py ARGS…`, reproducibly (a fixed SOURCE_DATE_EPOCH), its output captured."""
    return subprocess.run([sys.executable, str(REPO / "build.py"), *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "SOURCE_DATE_EPOCH": BUILD_EPOCH}, timeout=timeout)


def run_archive(archive: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """An archive run with ARGS in exactly the environment `env` (see `bare_python`), its output captured."""
    return subprocess.run(in_env(env, str(archive), *args), capture_output=True, text=True, timeout=600)


class ServerThread:
    def __init__(self, model: Path, **options) -> None:
        self.options = ServeOptions(model=model, port=free_port(), open_browser=False, **options)
        self.url = f"http://127.0.0.1:{self.options.port}"
        self.state, self.server = create_server(self.options, say=lambda text: None)
        load_engine(self.options, self.state, say=lambda text: None)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_healthy(self.url, 30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.state.pool.stop()


class ServerProcess:
    """`llamapyz serve -m MODEL ARGS…` in a child process, or `LAUNCHER ARGS…` (a `.pyz`) in `env`."""

    def __init__(self, model: Path | None, *args: str, launcher: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [*(launcher or [sys.executable, "-m", "llamapyz", "serve"]),
                        *(["-m", str(model)] if model else []), "--port", str(self.port), "--nobrowser", *args]
        self.env = env if env is not None else {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process: subprocess.Popen | None = None
        self.ready_s = 0.0  # from start to /health answering 200

    def __enter__(self) -> ServerProcess:
        started = time.perf_counter()
        self.process = subprocess.Popen(self.command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=self.env)
        try:
            wait_healthy(self.url, 180, alive=lambda: self.process.poll() is None)
        except (RuntimeError, TimeoutError) as exc:
            self.__exit__()
            raise RuntimeError(f"{exc}; its output:\n{self.output}") from None
        self.ready_s = time.perf_counter() - started
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.output = self.process.stdout.read()

    def rss_mib(self, field: str = "VmRSS") -> float:
        """Resident memory now (VmRSS) or at its peak (VmHWM), from /proc."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field}")


def metrics(url: str) -> dict[str, float]:
    """The server's /metrics as {name: value}, without the `llamapyz:` prefix."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return {name.removeprefix("llamapyz:"): float(value)
            for name, value in (line.split() for line in text.splitlines() if line and not line.startswith("#"))}


def wait_idle(url: str, timeout_s: float = 10) -> dict[str, float]:
    """/metrics once no request is in a slot nor waiting for one (or, after `timeout_s` seconds, as it is)."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = metrics(url)
        if (now["requests_processing"] == now["requests_deferred"] == 0) or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


REPLICA_TITLE = b"ServeReplica:llamapyz:llamapyz-replica"  # Ray's process title for a --ray replica


class RayServer:
    """`llamapyz serve --ray …` in a child process (its own local Ray cluster), its output in a file (Ray says a lot:
    a pipe nobody reads would fill and stall it)."""

    def __init__(self, model: Path, log: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.command = [sys.executable, "-m", "llamapyz", "serve", "-m", str(model), "--port", str(self.port),
                        "--nobrowser", "--ray", *args]

    def __enter__(self) -> RayServer:
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(self.command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0"})
        try:
            wait_healthy(self.url, 240, alive=lambda: self.process.poll() is None)
        except (RuntimeError, TimeoutError) as exc:
            self.__exit__()
            raise RuntimeError(f"{exc}; its output:\n{self.log.read_text()[-5000:]}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # as a service manager stops it: the app and the cluster go
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def replica_pids() -> list[int]:
    """The processes of this machine's --ray replicas (found by the title Ray gives them)."""
    return [pid for pid, command in processes() if REPLICA_TITLE in command]


def ray_pids() -> list[int]:
    """Every Ray process on this machine: its workers and agents (`ray::…`), the raylet, the GCS."""
    return [pid for pid, command in processes()
            if command.startswith(b"ray::") or b"/raylet" in command or b"gcs_server" in command]


def processes() -> list[tuple[int, bytes]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((int(entry.name), (entry / "cmdline").read_bytes()))
            except OSError:
                pass
    return found
