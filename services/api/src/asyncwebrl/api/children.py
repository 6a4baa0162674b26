"""A job's processes as local children of the api: start, health, stop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pathlib
import signal
import sys
import time
import urllib.request

from asyncwebrl.api.errors import LaunchError
from asyncwebrl.common.localstack import free_port


@dataclasses.dataclass
class Child:
    role: str
    args: list[str]
    log_path: pathlib.Path
    port: int = 0  # engines: their HTTP port
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started: float = 0.0
    once: bool = False  # its work has an end: exit 0 is done, not a crash

    def new_port(self) -> None:
        """An engine starts again on a port chosen now: the one it had may have been taken meanwhile
        (another process's free_port() race), and a restart on it would fail the same way."""
        self.port = free_port()
        self.args[self.args.index("--http-port") + 1] = str(self.port)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def view(self) -> dict:
        return {"role": self.role, "pid": self.proc.pid if self.proc else None, "running": self.running,
                "restarts": self.restarts, "exit_code": self.proc.returncode if self.proc else None,
                "log": str(self.log_path)}



async def spawn(child: Child, env: dict[str, str]) -> None:
    child.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(child.log_path, "ab") as out:
        child.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", f"asyncwebrl.{child.args[0]}", *child.args[1:],
            stdout=out, stderr=asyncio.subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True)
    child.started = time.monotonic()


async def engines_healthy(engines: list[Child], timeout: float, cancel: asyncio.Event | None = None) -> None:
    deadline = time.monotonic() + timeout
    for e in engines:
        while not await asyncio.to_thread(_healthy, e.port):
            if not e.running:
                raise LaunchError(f"engine exited with {e.proc.returncode if e.proc else '?'}; see {e.log_path}")
            if time.monotonic() > deadline or (cancel is not None and cancel.is_set()):
                raise LaunchError(f"engine not healthy after {timeout:.0f}s; see {e.log_path}")
            await asyncio.sleep(0.25)


async def stop_children(children: list[Child], grace: float) -> None:
    """SIGTERM, gateways first (no new episodes), then trainers, then the engines they publish to;
    SIGKILL whatever outlives ``grace``."""
    order = {"rollout": 0, "trainer": 1, "engine": 2}
    for c in sorted(children, key=lambda c: order[c.role.removeprefix("warm-")]):
        if c.running:
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(signal.SIGTERM)
    for c in children:
        if c.proc is None:
            continue
        try:
            await asyncio.wait_for(c.proc.wait(), grace)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.proc.pid, signal.SIGKILL)
            await c.proc.wait()


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False
