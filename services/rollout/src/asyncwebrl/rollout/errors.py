"""The rollout gateway's exception types: each makes an episode void (a fault, not a reward)."""

from __future__ import annotations

MAX_JUDGE_TEXT = 8192


class EnvFault(Exception):
    """The episode is void: a browser crashed or envfleet was unreachable."""


class NoDemonstration(Exception):
    """Demonstration mode: the reference agent has no action for this task or page."""


class JudgeError(Exception):
    """The judge failed or its reply does not parse: the episode is void, not failed.

    ``reason`` (the episodes-lost label): ``judge_unparseable``, a reply that is not a verdict, or
    ``judge_unavailable``, a judge that timed out, refused, or answered an error past its retries."""

    def __init__(self, message: str, text: str = "", reason: str = "judge_unparseable") -> None:
        super().__init__(message)
        self.text = text[:MAX_JUDGE_TEXT]
        self.reason = reason


class JudgeUnavailable(JudgeError):
    """The judge could not be asked (timeouts, refused connections, error answers past the retries)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="judge_unavailable")
