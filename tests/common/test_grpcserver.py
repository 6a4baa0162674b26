"""The shared bootstrap on a real loopback server: auth, metrics, health, streaming."""

from __future__ import annotations

import socket

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from asyncwebrl.common.grpcclient import aio_channel
from asyncwebrl.common.grpcserver import ServiceRunner
from asyncwebrl.common.service_config import ServiceConfig

SERVICE = "test.Echo"


def _echo_handler() -> grpc.GenericRpcHandler:
    async def echo(request: bytes, context):
        if request == b"bad":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request: bad")
        return request

    async def repeat(request: bytes, context):
        for i in range(3):
            yield request + str(i).encode()
        if request == b"fail":
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "budget")

    ident = lambda b: b  # noqa: E731
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo, ident, ident),
            "Repeat": grpc.unary_stream_rpc_method_handler(repeat, ident, ident),
        },
    )


def handled(method: str, code: str) -> float:
    return REGISTRY.get_sample_value(
        "grpc_server_handled_total",
        {"grpc_type": "server_stream" if method == "Repeat" else "unary", "grpc_service": SERVICE,
         "grpc_method": method, "grpc_code": code},
    ) or 0.0


@pytest.fixture
async def runner():
    cfg = ServiceConfig(grpc_port=0, http_port=0, auth_token="tok", shutdown_grace_s=1)
    r = ServiceRunner(cfg, [SERVICE])
    server = r.build_server()
    server.add_generic_rpc_handlers((_echo_handler(),))
    await r.start()
    yield r
    await r.stop()


async def test_auth_metrics_and_streaming(runner):
    target = f"127.0.0.1:{runner.grpc_port}"
    async with aio_channel(target, "tok") as ch, aio_channel(target) as anon:
        echo = ch.unary_unary(f"/{SERVICE}/Echo")
        repeat = ch.unary_stream(f"/{SERVICE}/Repeat")
        ok0, bad0, stream_fail0 = handled("Echo", "OK"), handled("Echo", "INVALID_ARGUMENT"), handled(
            "Repeat", "RESOURCE_EXHAUSTED")
        assert await echo(b"hi") == b"hi"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await echo(b"bad")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [m async for m in repeat(b"x")] == [b"x0", b"x1", b"x2"]
        got = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for m in repeat(b"fail"):
                got.append(m)
        assert got == [b"fail0", b"fail1", b"fail2"] and err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert handled("Echo", "OK") == ok0 + 1
        assert handled("Echo", "INVALID_ARGUMENT") == bad0 + 1
        assert handled("Repeat", "RESOURCE_EXHAUSTED") == stream_fail0 + 1

        for call in (anon.unary_unary(f"/{SERVICE}/Echo")(b"hi"),):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [m async for m in anon.unary_stream(f"/{SERVICE}/Repeat")(b"x")]
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        health = health_pb2_grpc.HealthStub(anon)
        assert (await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))).status == \
            health_pb2.HealthCheckResponse.SERVING
        await runner.set_serving(False)
        assert (await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING

    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{runner.http_port}"
        async with http.get(base + "/metrics") as resp:
            assert resp.status == 200 and "grpc_server_handling_seconds_bucket" in await resp.text()
        async with http.get(base + "/healthz") as resp:
            assert resp.status == 200
        runner.request_stop()
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 503


def _listening_socket() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.parametrize("taken", ["grpc_port", "http_port"])
async def test_a_taken_port_fails_start_naming_it_and_binds_nothing(taken):
    with _listening_socket() as busy:
        port = busy.getsockname()[1]
        cfg = ServiceConfig(**{"grpc_port": 0, "http_port": 0, taken: port}, shutdown_grace_s=1)
        r = ServiceRunner(cfg, [SERVICE])
        r.build_server().add_generic_rpc_handlers((_echo_handler(),))
        with pytest.raises(OSError, match=f"^{taken}: cannot bind 127.0.0.1:{port}"):
            await r.start()
    # A failed start leaves no gRPC server behind to keep the process alive.
    if taken == "http_port":
        with socket.socket() as s:
            s.bind(("127.0.0.1", r.grpc_port))
