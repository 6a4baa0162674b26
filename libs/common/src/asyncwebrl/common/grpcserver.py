"""The gRPC + HTTP bootstrap every service reuses.

One ``ServiceRunner`` per process: an asyncio gRPC server with grpc.health.v1,
reflection, shared-token auth and Prometheus interceptors, plus a small HTTP
server for ``/metrics``, ``/healthz`` (alive) and ``/readyz`` (can take work).
SIGTERM/SIGINT flip health to NOT_SERVING, let in-flight calls finish within
the grace period, then stop.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

from asyncwebrl.common.service_config import GrpcConfig

log = logging.getLogger(__name__)

# Names follow go-grpc-prometheus / py-grpc-prometheus so stock dashboards work.
GRPC_STARTED = Counter(
    "grpc_server_started_total", "RPCs started on the server.", ["grpc_type", "grpc_service", "grpc_method"]
)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
GRPC_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# Health and reflection stay open so probes and grpcurl work without the token.
_OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def _split_method(full: str) -> tuple[str, str]:
    service, _, method = full.lstrip("/").partition("/")
    return service, method


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _code_name(context: grpc.aio.ServicerContext, failed: bool) -> str:
    code = context.code()
    if code is None:
        return "UNKNOWN" if failed else "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return grpc.StatusCode(code).name if not isinstance(code, int) else _INT_CODES.get(code, "UNKNOWN")


_INT_CODES = {c.value[0]: c.name for c in grpc.StatusCode}


def _rebuild(handler: grpc.RpcMethodHandler, **behaviours) -> grpc.RpcMethodHandler:
    kind = _rpc_type(handler)
    factory = {
        "unary": grpc.unary_unary_rpc_method_handler,
        "server_stream": grpc.unary_stream_rpc_method_handler,
        "client_stream": grpc.stream_unary_rpc_method_handler,
        "bidi_stream": grpc.stream_stream_rpc_method_handler,
    }[kind]
    attr = {
        "unary": "unary_unary",
        "server_stream": "unary_stream",
        "client_stream": "stream_unary",
        "bidi_stream": "stream_stream",
    }[kind]
    return factory(
        behaviours[attr],
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC by service, method and final status code."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        service, method = _split_method(details.method)
        kind = _rpc_type(handler)
        labels = (kind, service, method)

        if handler.response_streaming:
            inner = handler.unary_stream or handler.stream_stream

            async def streaming(request_or_iterator, context):
                GRPC_STARTED.labels(*labels).inc()
                start = time.perf_counter()
                failed = False
                try:
                    result = inner(request_or_iterator, context)
                    if hasattr(result, "__aiter__"):
                        async for item in result:
                            yield item
                    else:
                        await result
                except BaseException:
                    failed = True
                    raise
                finally:
                    GRPC_SECONDS.labels(*labels).observe(time.perf_counter() - start)
                    GRPC_HANDLED.labels(*labels, _code_name(context, failed)).inc()

            return _rebuild(handler, unary_stream=streaming, stream_stream=streaming)

        inner = handler.unary_unary or handler.stream_unary

        async def unary(request_or_iterator, context):
            GRPC_STARTED.labels(*labels).inc()
            start = time.perf_counter()
            failed = False
            try:
                return await inner(request_or_iterator, context)
            except BaseException:
                failed = True
                raise
            finally:
                GRPC_SECONDS.labels(*labels).observe(time.perf_counter() - start)
                GRPC_HANDLED.labels(*labels, _code_name(context, failed)).inc()

        return _rebuild(handler, unary_unary=unary, stream_unary=unary)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every RPC except health and reflection."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        if details.method.startswith(_OPEN_PREFIXES):
            return await continuation(details)
        supplied = b""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                supplied = value.encode() if isinstance(value, str) else value
                break
        if hmac.compare_digest(supplied, self._expected):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return None

        async def deny_unary(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

        async def deny_stream(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
            yield  # pragma: no cover - makes this an async generator

        return _rebuild(
            handler,
            unary_unary=deny_unary,
            stream_unary=deny_unary,
            unary_stream=deny_stream,
            stream_stream=deny_stream,
        )


class ServiceRunner:
    """Owns the gRPC server, the HTTP side server, health state and shutdown."""

    def __init__(
        self,
        config: GrpcConfig,
        service_names: Iterable[str],
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.service_names = list(service_names)
        self._ready = ready or (lambda: True)
        self._stopping = asyncio.Event()
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self.grpc_port = 0
        self.http_port = 0

    def build_server(self) -> grpc.aio.Server:
        interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor()]
        if self.config.auth_token:
            interceptors.append(AuthInterceptor(self.config.auth_token))
        limit = self.config.max_message_bytes
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        return self.server

    async def start(self) -> None:
        """Bind both ports or neither: raises OSError naming the port that failed."""
        assert self.server is not None, "call build_server() and add servicers first"
        address = f"{self.config.host}:{self.config.grpc_port}"
        try:
            self.grpc_port = self.server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises rather than returning 0 on newer releases
            raise OSError(f"grpc_port: cannot bind {address}: {exc}") from exc
        if self.grpc_port == 0:
            raise OSError(f"grpc_port: cannot bind {address}")
        await self.server.start()
        try:
            await self._start_http()
        except OSError as exc:
            # A started gRPC server left running keeps its threads alive: the process would
            # hang with its gRPC port open (looking healthy) instead of exiting.
            await self.server.stop(0)
            if self._http is not None:
                await self._http.cleanup()
            raise OSError(f"http_port: cannot bind {self.config.host}:{self.config.http_port}: {exc}") from exc
        await self.set_serving(True)
        log.info("serving", extra={"grpc_port": self.grpc_port, "http_port": self.http_port})

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def _start_http(self) -> None:
        app = web.Application(client_max_size=64 * 1024)

        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def healthz(_request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def readyz(_request: web.Request) -> web.Response:
            ok = self._ready() and not self._stopping.is_set()
            return web.json_response({"ready": ok}, status=200 if ok else 503)

        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        self._http = web.AppRunner(app, access_log=None)
        await self._http.setup()
        site = web.TCPSite(self._http, self.config.host, self.config.http_port)
        await site.start()
        self.http_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        self._stopping.set()
        await self.set_serving(False)
        if self.server is not None:
            await self.server.stop(self.config.shutdown_grace_s)
        if self._http is not None:
            await self._http.cleanup()
        log.info("stopped")


async def run_service(
    runner: ServiceRunner,
    add_servicers: Callable[[grpc.aio.Server], None],
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Start, serve until SIGTERM/SIGINT, drain, then run ``on_stop``."""
    server = runner.build_server()
    add_servicers(server)
    runner.install_signal_handlers()
    try:
        # Inside the try: a start that fails (a port taken) still runs on_stop, which ends the
        # service's own tasks; left running, asyncio.run's teardown can wait on them forever.
        await runner.start()
        await runner.wait_stopped()
        log.info("shutting down", extra={"grace_s": runner.config.shutdown_grace_s})
    finally:
        await runner.stop()
        if on_stop is not None:
            await on_stop()
