"""gRPC channels that carry the shared token and our message limits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def _options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class _MetadataInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details):
        metadata = list(details.metadata or ()) + list(self._metadata)
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


def channel(target: str, token: str = "", max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.Channel:
    """A blocking channel; adds the bearer token to every call when one is given."""
    ch = grpc.insecure_channel(target, options=_options(max_message_bytes))
    if token:
        ch = grpc.intercept_channel(ch, _MetadataInterceptor(auth_metadata(token)))
    return ch


class _AioUnaryUnaryAuth(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._metadata)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._details(details), request)


class _AioStreamOnly(grpc.aio.UnaryStreamClientInterceptor):
    _details = _AioUnaryUnaryAuth._details

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._details(details), request)


def aio_channel(
    target: str, token: str = "", max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An asyncio channel; adds the bearer token to every call when one is given. ``options``: more
    channel arguments (e.g. a shorter reconnect backoff)."""
    # grpc.aio files each interceptor under its first matching kind, so one instance per kind.
    metadata = auth_metadata(token)
    interceptors = [_AioUnaryUnaryAuth(metadata), _AioStreamOnly(metadata)] if token else None
    return grpc.aio.insecure_channel(
        target, options=[*_options(max_message_bytes), *options], interceptors=interceptors
    )
