"""A module-scoped stack for gateway tests: envfleet (Chromium), buffer, Redis; engines per job."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.error
import urllib.request

import pytest

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.common.localstack import EngineProcess, ServiceProcess
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.v1 import buffer_pb2_grpc
from tests.helpers import start_envfleet_and_buffer
from tests.helpers import wait_until  # noqa: F401 - re-exported to the rollout tests

TOKEN = "rollout-token"
PREFIX = "rollout-test:"
TASK = "miniwob/click-test"


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory, chromium_path):
    """envfleet, buffer and one registered engine, shared by the module's jobs."""
    logs = tmp_path_factory.mktemp("rollout")
    envfleet, buffer, env, common = start_envfleet_and_buffer(redis_server, PREFIX, TOKEN, logs, chromium_path)
    yield {"envfleet": envfleet, "buffer": buffer, "logs": logs, "env": env, "common": common}
    for svc in (buffer, envfleet):
        svc.stop()


def engine_for(stack, redis_server, job: str, *extra: str, name: str = "") -> EngineProcess:
    name = name or f"engine-{job}"
    engine = EngineProcess(
        ["--model-path", str(SHIPPED / "qwen2_5_vl"), "--device", "cpu", "--registry-redis-url", redis_server.url,
         "--key-prefix", PREFIX, "--job-id", job, "--endpoint-id", name, "--heartbeat-s", "0.5", *extra],
        stack["logs"] / f"{name}.log",
        env={"ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": redis_server.password},
    )
    engine.wait_ready()
    return engine


def gateway_for(stack, job: str, *extra: str) -> ServiceProcess:
    svc = ServiceProcess(
        "rollout",
        [*stack["common"], "--job-id", job, "--envfleet-target", stack["envfleet"].target,
         "--buffer-target", stack["buffer"].target, "--tasks", TASK, "--group-size", "2",
         "--max-concurrent-episodes", "4", "--steps-easy", "2", "--max-new-tokens", "12", *extra],
        stack["env"], stack["logs"] / f"rollout-{job}.log",
    )
    svc.wait_ready()
    return svc


def buffer_for(stack):
    ch = channel(stack["buffer"].target, TOKEN)
    return ch, buffer_pb2_grpc.BufferServiceStub(ch)





def metric(svc: ServiceProcess, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + (f"{{{labels}}}" if labels else " ")):
            return float(line.split()[-1])
    return 0.0


class RecordingProxy:
    """A loopback HTTP proxy in front of an engine that keeps every /generate body
    and response, so a test sees exactly what the gateway sent on the wire."""

    def __init__(self) -> None:
        self.target = ""
        self.exchanges: list[tuple[dict, int, dict]] = []
        # tamper(index, answer) -> answer: the n-th /generate answer as the gateway will see it.
        self.tamper = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                request = urllib.request.Request(proxy.target + self.path, data=body, headers=headers, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=120) as resp:
                        status, answer = resp.status, resp.read()
                except urllib.error.HTTPError as exc:
                    status, answer = exc.code, exc.read()
                if self.path == "/generate":
                    with proxy._lock:
                        index = len(proxy.exchanges)
                        proxy.exchanges.append((json.loads(body), status, json.loads(answer)))
                    if proxy.tamper is not None and status == 200:
                        answer = json.dumps(proxy.tamper(index, json.loads(answer))).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
