"""From buffer groups to training rows, and rows into micro-batches by a token budget.

One row per step: the step's prompt (with its screenshots) and output tokens,
the behaviour logprobs the engine returned, and the step advantage that every
output token of the row shares. ``training_rows`` is the whole preparation of a
batch: advantages, screenshots processed for the model, and the groups the
model cannot take dropped (counted by reason).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from asyncwebrl.common.agent.vision import BadImage, ImageBatch, decode_image, process_images
from asyncwebrl.trainer.algorithm import group_advantages, step_advantage
from asyncwebrl.v1 import buffer_pb2, env_pb2

log = logging.getLogger("asyncwebrl.trainer")


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


class Images:
    """Screenshot refs -> (pixel_values, grid) for the model, each image processed once."""

    def __init__(self, processor, blobs: dict[str, bytes]) -> None:
        self.processor = processor
        self.blobs = blobs
        self.cache: dict[str, ImageBatch] = {}

    def one(self, sha: str) -> ImageBatch:
        if sha not in self.cache:
            if sha not in self.blobs:
                raise KeyError(sha)
            self.cache[sha] = process_images(self.processor, [decode_image(self.blobs[sha])])
        return self.cache[sha]

    def __call__(self, refs) -> tuple[np.ndarray, np.ndarray] | None:
        if not refs:
            return None
        parts = [self.one(r.sha256) for r in refs]
        return np.concatenate([p.pixel_values for p in parts]), np.concatenate([p.grid_thw for p in parts])

    def tokens(self, refs) -> int:
        """Image placeholders the prompt must hold for these screenshots."""
        return sum(sum(self.one(r.sha256).token_counts) for r in refs)


def usable_rows(rows: list[Row], images: Images, image_token_id: int,
                vision_ids: frozenset[int] = frozenset()) -> tuple[list[Row], dict[str, int]]:
    """Drop every group with a row the model cannot take: a missing or undecodable
    screenshot, image placeholders that do not match the images, or vision tokens
    (``vision_ids``) in the output, which the forward pass would take for an image's place."""
    bad: dict[str, str] = {}
    for row in rows:
        if row.group_id in bad:
            continue
        if vision_ids and not vision_ids.isdisjoint(row.output_ids):
            bad[row.group_id] = "vision_token_output"
            continue
        try:
            expected = images.tokens(row.screenshots)
        except KeyError:
            bad[row.group_id] = "missing_blob"
            continue
        except BadImage:
            bad[row.group_id] = "bad_image"
            continue
        if sum(1 for t in row.prompt_ids if t == image_token_id) != expected:
            bad[row.group_id] = "image_tokens"
    if bad:
        log.warning("dropping groups the model cannot take", extra={"groups": bad})
    counts: dict[str, int] = {}
    for reason in bad.values():
        counts[reason] = counts.get(reason, 0) + 1
    return [r for r in rows if r.group_id not in bad], counts


def vision_token_ids(policy) -> frozenset[int]:
    """The policy's image and vision-span tokens: never a valid sampled output."""
    return frozenset(i for i in (policy.image_token_id, policy.vision_start_id, policy.vision_end_id,
                                 getattr(policy.model.config, "video_token_id", None)) if isinstance(i, int))


def training_rows(groups: list[buffer_pb2.Group], blobs: dict[str, bytes], policy, step_norm: str = "constant",
                  k: float = 10.0, vocab_size: int | None = None) -> tuple[list[Row], Images, dict[str, int]]:
    """A batch's groups as the rows the learner trains on, with their screenshots (``blobs`` by sha256)
    ready for the model; groups it cannot take are dropped and counted by reason."""
    rows, _ = rows_from_groups(groups, step_norm, k, vocab_size)
    images = Images(policy.image_processor, blobs)
    rows, dropped = usable_rows(rows, images, policy.image_token_id, vision_token_ids(policy))
    return rows, images, dropped


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
