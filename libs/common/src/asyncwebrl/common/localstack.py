"""Local processes: a throwaway redis-server and service child processes on free ports.

Used by the tests, the demo and the benchmarks; the CLI's local stack builds on it.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time


# Starts of a child that finds a port chosen for it taken (another process bound it in between).
BIND_ATTEMPTS = 3


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now; all held until all are chosen, so none repeats. Another process
    can still take one before the child binds it: ServiceProcess.wait_ready starts again on new ones."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class RedisServer:
    """A real redis-server on a free loopback port, with a password and the AOF
    settings every shipped configuration uses (appendfsync everysec, no eviction)."""

    def __init__(self, workdir: pathlib.Path, password: str = "test-redis-password") -> None:
        self.port = free_port()
        self.password = password
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        """Start (or restart on the same port and data directory)."""
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--maxmemory-policy", "noeviction",
                "--dir", str(self.workdir),
                "--requirepass", self.password,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook, no final fsync; what survives is what the AOF had."""
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class ChildProcess:
    """A ``python -m asyncwebrl.<module>`` child with its output in a log file."""

    def __init__(self, module: str, args: list[str], env: dict[str, str] | None, log_path: pathlib.Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self._spawn(module, args, env)

    def _spawn(self, module: str, args: list[str], env: dict[str, str] | None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"asyncwebrl.{module}", *args],
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def logs(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class ServiceProcess(ChildProcess):
    """A gRPC service on free ports (``--grpc-port``, ``--http-port``)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: pathlib.Path) -> None:
        self.name = name
        self._args, self._env = args, env
        self.grpc_port, self.http_port = free_ports(2)
        super().__init__(name, self._argv(), env, log_path)

    def _argv(self) -> list[str]:
        return ["--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port), *self._args]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        """The child answers ``/healthz`` and its gRPC port accepts. A child that found a port taken
        (it exits naming it) starts again on new ones. A port accepting is not proof: the process that
        took it accepts too, and the child holds its gRPC port for a moment before finding its HTTP one taken."""
        deadline = time.monotonic() + timeout
        attempts = 1
        while True:
            if self.proc.poll() is not None:
                if attempts == BIND_ATTEMPTS or "cannot bind" not in self.logs():
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.logs()[-2000:]}")
                attempts += 1
                self.grpc_port, self.http_port = free_ports(2)
                self._spawn(self.name, self._argv(), self._env)
            elif self._answers_healthz():
                # The child binds gRPC before HTTP, so this only waits out a port it has just bound.
                wait_for_port(self.grpc_port, max(1.0, deadline - time.monotonic()), self.proc)
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not healthy on {self.http_port} after {timeout}s: {self.logs()[-2000:]}")
            time.sleep(0.05)

    def _answers_healthz(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False


class EngineProcess(ChildProcess):
    """The engine on a free port (HTTP only, like SGLang)."""

    def __init__(self, args: list[str], log_path: pathlib.Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        super().__init__("engine", ["--http-port", str(self.port), "--log-format", "text", *args], env, log_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine exited with {self.proc.returncode}: {self.logs()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"engine not healthy after {timeout}s: {self.logs()[-2000:]}")
