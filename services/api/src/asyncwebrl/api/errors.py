"""The api's exception types, in one place: what the REST layer turns into problems, and what the
launchers, the store and the Kubernetes client raise."""

from __future__ import annotations


class Problem(Exception):
    """An RFC 9457 problem the REST layer answers with (``service``)."""

    def __init__(self, status: int, title: str, detail: str, **extra) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


class LaunchError(Exception):
    """A job (or an evaluation) cannot start or has failed; the message names the field or the process."""


class EvalConflict(Exception):
    """The evaluation cannot run (the version is not on disk, too many evaluations): a 409."""


class KubeError(Exception):
    """A Kubernetes API call that failed; the message names the call."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class StoreFull(Exception):
    """The job store holds ``--max-jobs`` jobs already."""


class BadPageToken(ValueError):
    """A page token this api did not issue."""
