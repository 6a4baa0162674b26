from __future__ import annotations

import pathlib

import grpc
import pytest

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc, env_pb2, env_pb2_grpc
from asyncwebrl.common.localstack import ServiceProcess

TOKEN = "test-token"
PAGES = pathlib.Path(__file__).parent / "pages"


def start_buffer(tmp_path: pathlib.Path, redis_server, *extra: str, prefix: str = "asyncwebrl:") -> ServiceProcess:
    """A buffer on ``redis_server``: where envfleet stores screenshots (PutBlobs)."""
    svc = ServiceProcess(
        "buffer",
        ["--redis-url", redis_server.url, "--key-prefix", prefix, "--log-format", "text", *extra],
        {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password},
        tmp_path / "buffer.log",
    )
    svc.wait_ready()
    return svc


def start_envfleet(tmp_path: pathlib.Path, buffer: ServiceProcess, *extra: str, env: dict | None = None) -> ServiceProcess:
    """envfleet storing its screenshots through ``buffer``; no Redis of its own."""
    svc = ServiceProcess(
        "envfleet",
        ["--buffer-target", buffer.target, "--log-format", "text", *extra],
        {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, **(env or {})},
        tmp_path / "envfleet.log",
    )
    svc.wait_ready()
    return svc


@pytest.fixture(scope="session")
def buffer(redis_server, tmp_path_factory):
    """One buffer for the envfleet tests (key prefix ``asyncwebrl:``), on the session's redis-server."""
    svc = start_buffer(tmp_path_factory.mktemp("envfleet-buffer"), redis_server)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def buffer_stub(buffer) -> buffer_pb2_grpc.BufferServiceStub:
    ch = channel(buffer.target, TOKEN)
    yield buffer_pb2_grpc.BufferServiceStub(ch)
    ch.close()


def get_blob(buffer_stub, job_id: str, sha256: str) -> buffer_pb2.BlobData | None:
    """A screenshot read back as the gateway and trainer read it: the buffer's GetBlobs."""
    (answer,) = list(buffer_stub.GetBlobs(buffer_pb2.GetBlobsRequest(job_id=job_id, sha256=[sha256]), timeout=10))
    assert answer.sha256 == sha256
    return answer.blob if answer.found else None


@pytest.fixture(scope="module")
def envfleet(buffer, tmp_path_factory):
    """One envfleet process per module: MiniWoB plus the test pages, 1 browser x 3 contexts."""
    svc = start_envfleet(
        tmp_path_factory.mktemp("envfleet"),
        buffer,
        "--browsers", "1",
        "--contexts-per-browser", "3",
        "--task-sources", "miniwob,static",
        "--static-task-dirs", str(PAGES),
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def stub(envfleet) -> env_pb2_grpc.EnvServiceStub:
    ch = channel(envfleet.target, TOKEN)
    yield env_pb2_grpc.EnvServiceStub(ch)
    ch.close()


def click(x: float, y: float, pixels: bool = True) -> env_pb2.Action:
    space = env_pb2.COORDINATE_SPACE_PIXELS if pixels else env_pb2.COORDINATE_SPACE_NORMALIZED_1000
    return env_pb2.Action(coordinates=space, click=env_pb2.Click(at=env_pb2.Point(x=x, y=y)))


def code_of(call, *args, **kwargs) -> grpc.StatusCode:
    try:
        call(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK
