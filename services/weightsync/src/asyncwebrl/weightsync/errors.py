"""weightsync's exception types, mapped onto gRPC status codes by the servicer."""

from __future__ import annotations


class Refused(Exception):
    """A request that must not be applied: (kind, field, message)."""

    def __init__(self, kind: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.kind = kind  # invalid | old | busy
        self.field = field
