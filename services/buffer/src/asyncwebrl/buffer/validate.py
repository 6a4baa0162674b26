"""Checks on a group before anything is stored, and what the store needs from it.

A group holds ~10^5 token ids and ~10^4 logprobs: per-element Python would cost
more than the Redis write, so numeric checks run in numpy over the whole group.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from asyncwebrl.buffer.config import Limits
from asyncwebrl.buffer.errors import InvalidArgument
from asyncwebrl.common.blobstore import MAX_DIMENSION, MIME_TYPES
from asyncwebrl.common.keys import is_job_id, is_sha256
from asyncwebrl.common.tasks import DIFFICULTIES, is_zero_variance
from asyncwebrl.v1 import buffer_pb2

GROUP_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
EPISODE_ID = GROUP_ID
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
FINISH_REASON = re.compile(r"^[a-z_]{0,32}$")
MAX_TASK_CHARS = 256
MAX_REWARD = 1e6
MAX_JUDGE_LATENCY_S = 86400.0  # a day: far beyond any episode timeout
# Logprobs are <= 0; a little above tolerates rounding in the engine.
MAX_LOGPROB = 1e-3


@dataclasses.dataclass(frozen=True, slots=True)
class GroupSummary:
    """What the stream entry carries beside the serialised group."""

    min_version: int
    max_version: int
    steps: int
    tokens: int  # prompt + output
    zero_variance: bool
    blobs: tuple[str, ...]  # distinct screenshot digests


def check_job_id(job_id: str, field: str = "job_id") -> str:
    if not is_job_id(job_id):
        raise InvalidArgument(field, "must match [A-Za-z0-9_-]{1,64}")
    return job_id


def check_name(value: str, field: str) -> str:
    if not NAME.match(value):
        raise InvalidArgument(field, "must match [A-Za-z0-9_.-]{1,64}")
    return value


def _ints(values, field: str, low: int, high: int, max_len: int, min_len: int = 1) -> np.ndarray:
    arr = np.array(values, dtype=np.int64)
    if not min_len <= arr.size <= max_len:
        raise InvalidArgument(field, f"length {arr.size} outside [{min_len}, {max_len}]")
    if arr.size and (int(arr.min()) < low or int(arr.max()) > high):
        raise InvalidArgument(field, f"values must be in [{low}, {high}], got [{int(arr.min())}, {int(arr.max())}]")
    return arr


def check_group(group: buffer_pb2.Group, limits: Limits, trainer_version: int) -> GroupSummary:
    """Raise InvalidArgument naming the first problem; return the summary otherwise.

    The checks run in bulk over the whole group (a few numpy reductions instead
    of a dozen per step); only a group that fails goes through ``_check_slowly``,
    which applies the same rules step by step to name the offending field."""
    summary = _check_fast(group, limits, trainer_version)
    if summary is None:
        _check_slowly(group, limits, trainer_version)
        raise AssertionError("a check failed in bulk but passed step by step")  # never: same rules
    return summary


def _check_fast(group: buffer_pb2.Group, limits: Limits, trainer_version: int) -> GroupSummary | None:
    if (
        not GROUP_ID.match(group.group_id)
        or not is_job_id(group.job_id)
        or not 0 < len(group.task) <= MAX_TASK_CHARS
        or not group.task.isprintable()
        or group.difficulty not in DIFFICULTIES
        or group.created_unix_ms < 0
        or not 1 <= len(group.episodes) <= limits.max_episodes
    ):
        return None
    # Token ids are uint32 on the wire: never negative, so only their counts need checking
    # here; the trainer checks them against its vocabulary.
    # The limits and the containers are looked up once per step (each attribute access on a
    # message builds a new wrapper); logprobs and versions go to numpy a step at a time (the
    # quickest way from a repeated field, ~3 us for 150 values) and are checked once.
    max_prompt, max_output = limits.max_prompt_tokens, limits.max_output_tokens
    max_images, max_text, max_steps = limits.max_images_per_step, limits.max_text_chars, limits.max_steps
    array, f32, i64, isfinite = np.array, np.float32, np.int64, math.isfinite
    logprobs, versions = [], []
    tokens = 0
    blobs: dict[str, None] = {}
    episode_ids = set()
    rewards = []
    steps = 0
    for episode in group.episodes:
        episode_steps = episode.steps
        n_steps = len(episode_steps)
        episode_id, reward, raw_reward = episode.episode_id, episode.reward, episode.raw_reward
        if (
            not EPISODE_ID.match(episode_id)
            or episode_id in episode_ids
            or not isfinite(reward)
            or abs(reward) > MAX_REWARD
            or not isfinite(raw_reward)
            or abs(raw_reward) > MAX_REWARD
            or not FINISH_REASON.match(episode.finish_reason)
            or len(episode.judge_text) > max_text
            or not 0 <= episode.judge_latency_s <= MAX_JUDGE_LATENCY_S
            or not 1 <= n_steps <= max_steps
            or episode.length != n_steps
        ):
            return None
        episode_ids.add(episode_id)
        rewards.append(reward)
        for step in episode_steps:
            step_logprobs, step_versions, shots = step.logprobs, step.versions, step.screenshots
            n_prompt, n = len(step.prompt_ids), len(step.output_ids)
            if (
                not 1 <= n_prompt <= max_prompt
                or not 1 <= n <= max_output
                or len(step_logprobs) != n
                or len(step_versions) != n
                or len(shots) > max_images
                or len(step.text) > max_text
                or len(step.action) > max_text
            ):
                return None
            for ref in shots:
                sha = ref.sha256
                if sha not in blobs:
                    if not _ref_ok(ref):
                        return None
                    blobs[sha] = None
            tokens += n_prompt + n
            logprobs.append(array(step_logprobs, dtype=f32))
            # Versions may go down within an episode: with several engines, a step (or a resumed
            # generation) served by an engine not yet updated follows one that was. Staleness uses the oldest.
            versions.append(array(step_versions, dtype=i64))
        steps += n_steps
    all_lp = np.concatenate(logprobs)
    all_versions = np.concatenate(versions)
    if (
        not bool(np.isfinite(all_lp).all())
        or float(all_lp.max()) > MAX_LOGPROB
        or int(all_versions.min()) < 0
        or int(all_versions.max()) > trainer_version + limits.max_version_lead
    ):
        return None
    return GroupSummary(
        int(all_versions.min()), int(all_versions.max()), steps, tokens, is_zero_variance(rewards), tuple(blobs),
    )


def _ref_ok(ref) -> bool:
    return (
        is_sha256(ref.sha256)
        and ref.mime in MIME_TYPES
        and 0 < ref.width <= MAX_DIMENSION
        and 0 < ref.height <= MAX_DIMENSION
        and ref.size_bytes > 0
    )


def _check_slowly(group: buffer_pb2.Group, limits: Limits, trainer_version: int) -> GroupSummary:
    if not GROUP_ID.match(group.group_id):
        raise InvalidArgument("group.group_id", "must match [A-Za-z0-9_.:-]{1,128}")
    check_job_id(group.job_id, "group.job_id")
    if not 0 < len(group.task) <= MAX_TASK_CHARS or not group.task.isprintable():
        raise InvalidArgument("group.task", f"must be 1-{MAX_TASK_CHARS} printable characters")
    if group.difficulty not in DIFFICULTIES:
        raise InvalidArgument("group.difficulty", f"must be one of {DIFFICULTIES}")
    if group.created_unix_ms < 0:
        raise InvalidArgument("group.created_unix_ms", "must be >= 0")
    if not 1 <= len(group.episodes) <= limits.max_episodes:
        raise InvalidArgument("group.episodes", f"count {len(group.episodes)} outside [1, {limits.max_episodes}]")

    top_version = trainer_version + limits.max_version_lead
    min_version, max_version = None, -1
    steps = tokens = 0
    blobs: dict[str, None] = {}
    seen_episodes: set[str] = set()
    rewards = []
    for i, episode in enumerate(group.episodes):
        where = f"group.episodes[{i}]"
        if not EPISODE_ID.match(episode.episode_id):
            raise InvalidArgument(f"{where}.episode_id", "must match [A-Za-z0-9_.:-]{1,128}")
        if episode.episode_id in seen_episodes:
            raise InvalidArgument(f"{where}.episode_id", f"{episode.episode_id!r} appears twice in the group")
        seen_episodes.add(episode.episode_id)
        if not np.isfinite(episode.reward) or abs(episode.reward) > MAX_REWARD:
            raise InvalidArgument(f"{where}.reward", f"must be finite with magnitude <= {MAX_REWARD:g}")
        if not np.isfinite(episode.raw_reward) or abs(episode.raw_reward) > MAX_REWARD:
            raise InvalidArgument(f"{where}.raw_reward", f"must be finite with magnitude <= {MAX_REWARD:g}")
        if not FINISH_REASON.match(episode.finish_reason):
            raise InvalidArgument(f"{where}.finish_reason", "must match [a-z_]{0,32}")
        if len(episode.judge_text) > limits.max_text_chars:
            raise InvalidArgument(f"{where}.judge_text", f"longer than {limits.max_text_chars} characters")
        if not 0 <= episode.judge_latency_s <= MAX_JUDGE_LATENCY_S:  # also refuses NaN
            raise InvalidArgument(f"{where}.judge_latency_s", f"must be in [0, {MAX_JUDGE_LATENCY_S:g}]")
        if not 1 <= len(episode.steps) <= limits.max_steps:
            raise InvalidArgument(f"{where}.steps", f"count {len(episode.steps)} outside [1, {limits.max_steps}]")
        if episode.length != len(episode.steps):
            raise InvalidArgument(f"{where}.length", f"is {episode.length} but the episode has {len(episode.steps)} steps")
        rewards.append(episode.reward)
        for j, step in enumerate(episode.steps):
            at = f"{where}.steps[{j}]"
            prompt = _ints(step.prompt_ids, f"{at}.prompt_ids", 0, 2**32 - 1, limits.max_prompt_tokens)
            output = _ints(step.output_ids, f"{at}.output_ids", 0, 2**32 - 1, limits.max_output_tokens)
            n = output.size
            if len(step.logprobs) != n:
                raise InvalidArgument(f"{at}.logprobs", f"has {len(step.logprobs)} values for {n} output tokens")
            if len(step.versions) != n:
                raise InvalidArgument(f"{at}.versions", f"has {len(step.versions)} values for {n} output tokens")
            logprobs = np.array(step.logprobs, dtype=np.float32)
            if not np.isfinite(logprobs).all() or float(logprobs.max()) > MAX_LOGPROB:
                raise InvalidArgument(f"{at}.logprobs", "must be finite and <= 0")
            # Each token keeps its own version, in any order (see summarise).
            versions = _ints(step.versions, f"{at}.versions", 0, top_version, limits.max_output_tokens)
            low = int(versions.min())
            min_version = low if min_version is None else min(min_version, low)
            max_version = max(max_version, int(versions.max()))
            if len(step.screenshots) > limits.max_images_per_step:
                raise InvalidArgument(f"{at}.screenshots", f"more than {limits.max_images_per_step}")
            for k, ref in enumerate(step.screenshots):
                _check_ref(ref, f"{at}.screenshots[{k}]")
                blobs[ref.sha256] = None
            if len(step.text) > limits.max_text_chars:
                raise InvalidArgument(f"{at}.text", f"longer than {limits.max_text_chars} characters")
            if len(step.action) > limits.max_text_chars:
                raise InvalidArgument(f"{at}.action", f"longer than {limits.max_text_chars} characters")
            steps += 1
            tokens += prompt.size + n
    assert min_version is not None  # every step has at least one output token
    return GroupSummary(min_version, max_version, steps, tokens, is_zero_variance(rewards), tuple(blobs))


def _check_ref(ref, field: str) -> None:
    if not is_sha256(ref.sha256):
        raise InvalidArgument(f"{field}.sha256", "not a lowercase hex sha256 digest")
    if ref.mime not in MIME_TYPES:
        raise InvalidArgument(f"{field}.mime", f"must be one of {MIME_TYPES}")
    if not 0 < ref.width <= MAX_DIMENSION or not 0 < ref.height <= MAX_DIMENSION:
        raise InvalidArgument(field, f"width and height must be in (0, {MAX_DIMENSION}]")
    if ref.size_bytes <= 0:
        raise InvalidArgument(f"{field}.size_bytes", "must be positive")
