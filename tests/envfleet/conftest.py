from __future__ import annotations

import pathlib

import grpc
import pytest

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.v1 import env_pb2, env_pb2_grpc
from asyncwebrl.common.localstack import ServiceProcess

TOKEN = "test-token"
PAGES = pathlib.Path(__file__).parent / "pages"


def start_envfleet(tmp_path: pathlib.Path, redis_server, *extra: str, env: dict | None = None) -> ServiceProcess:
    svc = ServiceProcess(
        "envfleet",
        ["--redis-url", redis_server.url, "--log-format", "text", *extra],
        {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password, **(env or {})},
        tmp_path / "envfleet.log",
    )
    svc.wait_ready()
    return svc


@pytest.fixture(scope="module")
def envfleet(redis_server, tmp_path_factory):
    """One envfleet process per module: MiniWoB plus the test pages, 1 browser x 3 contexts."""
    svc = start_envfleet(
        tmp_path_factory.mktemp("envfleet"),
        redis_server,
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
