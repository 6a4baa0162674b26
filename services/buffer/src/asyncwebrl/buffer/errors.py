"""Failures that map onto gRPC status codes, raised by the store and translated by the servicer."""

from __future__ import annotations


class BufferError(Exception):
    """Base: carries a message safe to show the caller."""


class InvalidArgument(BufferError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(BufferError):
    pass


class Exhausted(BufferError):
    """Backpressure: the stream cap or the blob budget is reached."""


class Conflict(BufferError):
    """FAILED_PRECONDITION: e.g. moving the trainer version backwards."""


class Unavailable(BufferError):
    """Transient: the same call may work when retried."""
