"""The rollout gateway's exception types: each makes an episode void (a fault, not a reward)."""

from __future__ import annotations

MAX_JUDGE_TEXT = 8192


class EnvFault(Exception):
    """The episode is void: a browser crashed or envfleet was unreachable."""


class NoDemonstration(Exception):
    """Demonstration mode: the reference agent has no action for this task or page."""


class JudgeError(Exception):
    """The judge failed or its reply does not parse: the episode is void, not failed."""

    def __init__(self, message: str, text: str = "") -> None:
        super().__init__(message)
        self.text = text[:MAX_JUDGE_TEXT]
