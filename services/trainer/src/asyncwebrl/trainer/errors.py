"""The trainer's exception types: each ends the process with one line naming it (exit 1)."""

from __future__ import annotations


class BufferFailed(Exception):
    """The buffer answered a call with an error the trainer cannot go on from."""

    def __init__(self, target: str, code: str, details: str) -> None:
        super().__init__(f"the buffer at {target} answered {code}: {details}")
        self.code = code


class StorageMismatch(ValueError):
    """The checkpoint directory is behind the job's version in the buffer: not this job's storage."""
