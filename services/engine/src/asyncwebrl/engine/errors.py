"""The engine's exception types."""

from __future__ import annotations


class BadRequest(Exception):
    """A request the engine refuses: answered with ``status`` (400 unless said) and a message naming the field."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.status = status
