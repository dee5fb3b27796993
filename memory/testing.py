"""A real Chroma server for tests: runs chromadb's own ``chroma run`` CLI on a free port.

::

    with ChromaServer(tmp_path / "chroma") as server:
        memory = VectorMemory("docs", url=server.url)

And a real Redis server (``redis-server`` on a free loopback port) for the shared history::

    with RedisServer(tmp_path / "redis") as redis:
        history = RedisHistory(redis.url)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["ChromaServer", "RedisServer", "free_port"]


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _chroma_cli() -> str:
    here = Path(sys.executable).parent / "chroma"
    if here.is_file():
        return str(here)
    found = shutil.which("chroma")
    if found:
        return found
    raise FileNotFoundError("the `chroma` command was not found: pip install chromadb")


class _LoopbackServer:
    """A server process of the tests' own on loopback: started with its log in a file,
    waited for until it answers (or refused with the log's tail), stopped (terminate, then
    kill). A subclass gives its ``url``, ``command()``, ``ready()`` check and ``name``."""

    name = "server"

    def __init__(self, path: str | Path, log_path: Path, *, port: int | None, host: str,
                 startup_timeout: float, poll: float):
        self.path = Path(path)
        self.host = host
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.poll = poll
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = log_path

    @property
    def url(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> Any:
        self.path.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.ready():
                return self
            time.sleep(self.poll)
        self.stop()
        raise RuntimeError(f"{self.name} did not start on {self.url}; its log:\n"
                           + self.log_path.read_text(errors="replace")[-2000:])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ChromaServer(_LoopbackServer):
    """A ``chroma run --path PATH --port PORT`` process; ``url`` once started.

    ``start()`` waits until the server answers its heartbeat (or raises with its log);
    ``stop()`` ends it (the data stays in ``path``, so a new server on the same path
    serves the same collections).
    """

    name = "the Chroma server"

    def __init__(self, path: str | Path, *, port: int | None = None, host: str = "127.0.0.1",
                 startup_timeout: float = 30.0):
        path = Path(path)
        port = port or free_port()
        super().__init__(path, path.parent / f"{path.name}-chroma-{port}.log", port=port, host=host,
                         startup_timeout=startup_timeout, poll=0.1)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [_chroma_cli(), "run", "--path", str(self.path), "--host", self.host, "--port", str(self.port)]

    def ready(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/api/v2/heartbeat", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False


class RedisServer(_LoopbackServer):
    """A throwaway ``redis-server`` on loopback for tests and benches (nothing is saved:
    ``--save '' --appendonly no``, its files go to ``path``); ``url`` once started.

    ``stop()`` then ``start()`` brings it back on the same port, empty — what a shared
    store that restarted without persistence looks like to the agent servers::

        with RedisServer(tmp_path) as redis:
            history = RedisHistory(redis.url)
    """

    name = "redis-server"

    def __init__(self, path: str | Path, *, port: int | None = None, host: str = "127.0.0.1",
                 startup_timeout: float = 10.0):
        path = Path(path)
        port = port or free_port()
        super().__init__(path, path / f"redis-{port}.log", port=port, host=host,
                         startup_timeout=startup_timeout, poll=0.05)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @staticmethod
    def executable() -> str:
        """The ``redis-server`` command, or FileNotFoundError saying how to install it."""
        found = shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError("redis-server was not found: ./setup.sh --dev installs it "
                                    "(Debian/Ubuntu: apt-get install -y redis-server)")
        return found

    def command(self) -> list[str]:
        return [self.executable(), "--port", str(self.port), "--bind", self.host, "--save", "",
                "--appendonly", "no", "--dir", str(self.path)]

    def ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False
