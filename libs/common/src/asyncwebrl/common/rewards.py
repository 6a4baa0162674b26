"""What a finished episode's reward means, for every task source.

A task reports its own raw reward (MiniWoB: -1 for a wrong action, 0 for a
timeout, up to 1 for success; built-in sites and judged tasks: 1 or 0). GRPO
sees task success, 1 or 0, unless a job asks for the raw reward: a -1 for a
wrong click against a 0 for running out of steps ranks two failures, and under
a constant step normaliser that pushes a policy towards long failures.
"""

from __future__ import annotations

REWARD_MODES = ("success", "raw")


def succeeded(raw: float) -> bool:
    return raw > 0


def trained_reward(raw: float, mode: str) -> float:
    if mode == "raw":
        return float(raw)
    if mode == "success":
        return 1.0 if succeeded(raw) else 0.0
    raise ValueError(f"reward: must be one of {REWARD_MODES}, got {mode!r}")
