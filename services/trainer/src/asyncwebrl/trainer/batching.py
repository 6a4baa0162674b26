"""From buffer groups to training rows, and rows into micro-batches by a token budget.

One row per step: the step's prompt (with its screenshots) and output tokens,
the behaviour logprobs the engine returned, and the step advantage that every
output token of the row shares.
"""

from __future__ import annotations

import dataclasses

from asyncwebrl.trainer.algorithm import group_advantages, step_advantage
from asyncwebrl.v1 import buffer_pb2, env_pb2


@dataclasses.dataclass
class Row:
    prompt_ids: list[int]
    output_ids: list[int]
    behav_logprobs: list[float]
    versions: list[int]
    advantage: float
    screenshots: list[env_pb2.ScreenshotRef]
    group_id: str
    episode_id: str
    success: bool

    @property
    def tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)


@dataclasses.dataclass
class RowStats:
    groups: int = 0
    rows: int = 0
    response_tokens: int = 0


def rows_from_groups(groups: list[buffer_pb2.Group], step_norm: str = "constant", k: float = 10.0,
                     vocab_size: int | None = None) -> tuple[list[Row], RowStats]:
    """Every group's steps as rows. Which groups arrive is the buffer's decision (it drops zero-variance
    groups unless the job keeps them); a kept one has advantage 0 everywhere."""
    stats = RowStats()
    rows: list[Row] = []
    for group in groups:
        stats.groups += 1
        rewards = [e.reward for e in group.episodes]
        for episode, adv in zip(group.episodes, group_advantages(rewards).tolist()):
            a = step_advantage(adv, len(episode.steps), step_norm, k)
            for step in episode.steps:
                if vocab_size is not None and (
                    max(step.prompt_ids, default=0) >= vocab_size or max(step.output_ids, default=0) >= vocab_size
                ):
                    raise ValueError(f"group {group.group_id}: token id outside the model's vocabulary ({vocab_size})")
                rows.append(Row(list(step.prompt_ids), list(step.output_ids), list(step.logprobs),
                                list(step.versions), a, list(step.screenshots), group.group_id,
                                episode.episode_id, episode.success))
                stats.rows += 1
                stats.response_tokens += len(step.output_ids)
    return rows, stats


def micro_batches(rows: list[Row], token_budget: int) -> list[list[Row]]:
    """Consecutive rows packed while their padded size (rows x longest) fits the budget;
    a row longer than the budget goes alone."""
    if token_budget <= 0:
        raise ValueError("token_budget: must be positive")
    batches: list[list[Row]] = []
    current: list[Row] = []
    longest = 0
    for row in rows:
        width = max(longest, row.tokens)
        if current and width * (len(current) + 1) > token_budget:
            batches.append(current)
            current, width = [], row.tokens
        current.append(row)
        longest = width
    if current:
        batches.append(current)
    return batches
