"""Failures that map onto gRPC status codes, raised by the fleet and translated by the servicer."""

from __future__ import annotations

from asyncwebrl.common.webgym import SITE_UNREACHABLE


class EnvError(Exception):
    """Base: carries a message safe to show the caller."""


class InvalidArgument(EnvError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(EnvError):
    pass


class Exhausted(EnvError):
    pass


class EpisodeOver(EnvError):
    pass


class EnvFault(EnvError):
    """The environment (browser, page) failed; the episode is void, not failed."""


class Unavailable(EnvError):
    """A dependency (the buffer, which stores screenshots) is down; the same call may work later."""


class BufferRejected(EnvError):
    """The buffer refused a screenshot for a reason waiting cannot fix: a bug or a misconfiguration
    (INVALID_ARGUMENT, UNAUTHENTICATED); INTERNAL to the caller, with what to check."""


class SiteUnreachable(Unavailable):
    """A live-website task's start page could not be loaded (DNS, refused, timeout, HTTP 5xx): UNAVAILABLE,
    an environment fault and not an episode; ``kind`` labels the metric. Its message starts "site unreachable: ",
    which the gateway reads to fail the episode at once instead of waiting as for an envfleet that is away."""

    def __init__(self, url: str, kind: str, detail: str) -> None:
        super().__init__(f"{SITE_UNREACHABLE}{url[:300]}: {detail[:200]}")
        self.url = url
        self.kind = kind
