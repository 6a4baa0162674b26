"""Checks on a group before anything is stored, and what the store needs from it.

A group holds ~10^5 token ids and ~10^4 logprobs: per-element Python would cost
more than the Redis write, so numeric checks run in numpy over the whole group.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

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


def check_group(group: buffer_pb2.Group | WireGroup, limits: Limits, trainer_version: int) -> GroupSummary:
    """Raise InvalidArgument naming the first problem; return the summary otherwise.

    The checks run in bulk over the whole group (a few numpy reductions instead
    of a dozen per step), on the real message or on the wire view (``read_request``);
    only a group that fails them goes through ``_check_slowly``, which applies the
    same rules step by step on the real message to name the offending field, and
    is the authority: a group it passes is stored."""
    if isinstance(group, WireGroup):
        summary = _check_wire(group, limits, trainer_version)
    else:
        summary = _check_fast(group, limits, trainer_version)
    if summary is not None:
        return summary
    if isinstance(group, WireGroup):  # the wire view read every byte, so this is the same group
        try:
            group = buffer_pb2.Group.FromString(group.SerializeToString())
        except DecodeError as exc:  # e.g. a token id's varint longer than protobuf reads
            raise InvalidArgument("group", f"not a valid Group: {exc}") from exc
    return _check_slowly(group, limits, trainer_version)


def _group_ok(group, limits: Limits) -> bool:
    return bool(
        GROUP_ID.match(group.group_id)
        and is_job_id(group.job_id)
        and 0 < len(group.task) <= MAX_TASK_CHARS
        and group.task.isprintable()
        and group.difficulty in DIFFICULTIES
        and group.created_unix_ms >= 0
        and 1 <= len(group.episodes) <= limits.max_episodes
    )


def _episode_ok(episode, n_steps: int, seen: set[str], limits: Limits) -> bool:
    episode_id, reward, raw_reward = episode.episode_id, episode.reward, episode.raw_reward
    isfinite = math.isfinite
    return bool(
        EPISODE_ID.match(episode_id)
        and episode_id not in seen
        and isfinite(reward)
        and abs(reward) <= MAX_REWARD
        and isfinite(raw_reward)
        and abs(raw_reward) <= MAX_REWARD
        and FINISH_REASON.match(episode.finish_reason)
        and len(episode.judge_text) <= limits.max_text_chars
        and 0 <= episode.judge_latency_s <= MAX_JUDGE_LATENCY_S
        and 1 <= n_steps <= limits.max_steps
        and episode.length == n_steps
    )


class _Walk:
    """The group's and its episodes' checks, shared by both bulk checks, yielding every step;
    ``ok`` is False once one failed (the walk then stops)."""

    __slots__ = ("ok", "rewards", "blobs", "steps")

    def __init__(self) -> None:
        self.ok = True
        self.rewards: list[float] = []
        self.blobs: dict[str, None] = {}  # distinct screenshot digests, in order
        self.steps = 0

    def steps_of(self, group, limits: Limits):
        if not _group_ok(group, limits):
            self.ok = False
            return
        seen: set[str] = set()
        for episode in group.episodes:
            episode_steps = episode.steps
            n_steps = len(episode_steps)
            if not _episode_ok(episode, n_steps, seen, limits):
                self.ok = False
                return
            seen.add(episode.episode_id)
            self.rewards.append(episode.reward)
            self.steps += n_steps
            yield from episode_steps


def _refs_ok(shots, blobs: dict[str, None]) -> bool:
    for ref in shots:
        sha = ref.sha256
        if sha not in blobs:
            if not _ref_ok(ref):
                return False
            blobs[sha] = None
    return True


def _check_fast(group: buffer_pb2.Group, limits: Limits, trainer_version: int) -> GroupSummary | None:
    # Token ids are uint32 on the wire: never negative, so only their counts need checking
    # here; the trainer checks them against its vocabulary.
    # The limits and the containers are looked up once per step (each attribute access on a
    # message builds a new wrapper); logprobs and versions go to numpy a step at a time (the
    # quickest way from a repeated field, ~3 us for 150 values) and are checked once.
    max_prompt, max_output = limits.max_prompt_tokens, limits.max_output_tokens
    max_images, max_text = limits.max_images_per_step, limits.max_text_chars
    array, f32, i64 = np.array, np.float32, np.int64
    logprobs, versions = [], []
    tokens = 0
    walk = _Walk()
    for step in walk.steps_of(group, limits):
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
            or not _refs_ok(shots, walk.blobs)
        ):
            return None
        tokens += n_prompt + n
        logprobs.append(array(step_logprobs, dtype=f32))
        # Versions may go down within an episode: with several engines, a step (or a resumed
        # generation) served by an engine not yet updated follows one that was. Staleness uses the oldest.
        versions.append(array(step_versions, dtype=i64))
    if not walk.ok:
        return None
    return _summary(np.concatenate(logprobs), np.concatenate(versions), trainer_version, limits, walk, tokens)


def _summary(logprobs: np.ndarray, versions: np.ndarray, trainer_version: int, limits: Limits, walk: _Walk,
             tokens: int) -> GroupSummary | None:
    if (
        not bool(np.isfinite(logprobs).all())
        or float(logprobs.max()) > MAX_LOGPROB
        or int(versions.min()) < 0
        or int(versions.max()) > trainer_version + limits.max_version_lead
    ):
        return None
    return GroupSummary(int(versions.min()), int(versions.max()), walk.steps, tokens,
                        is_zero_variance(walk.rewards), tuple(walk.blobs))


# --- the wire view ------------------------------------------------------------
# Parsing a group's ~10^5 packed token ids into containers, then copying each step's logprobs
# and versions into numpy, was about half the buffer's CPU per PutGroup (py-spy under
# bench/buffer.py --put-only). The wire view is PutGroupRequest with StepRecord's packed
# numeric fields read as ``repeated bytes``: a packed field is one length-delimited record,
# the same wire type as bytes, so the parse only copies them and the checks decode them in
# numpy over the whole group. It is derived from buffer.proto here, so it follows it.

_WIRE_FIELDS = {  # StepRecord field -> its type in buffer.proto, which decides how its bytes decode
    "prompt_ids": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "output_ids": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "logprobs": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
    "versions": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
}


def _wire_classes():
    pool = descriptor_pool.DescriptorPool()  # its own pool: the same names as the real messages
    added: set[str] = set()

    def add(file) -> None:
        if file.name in added:
            return
        for dep in file.dependencies:
            add(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        if file.name == buffer_pb2.DESCRIPTOR.name:
            proto.ClearField("service")
            (step,) = [m for m in proto.message_type if m.name == "StepRecord"]
            for field in step.field:
                if field.name in _WIRE_FIELDS:
                    if field.type != _WIRE_FIELDS[field.name] or field.label != field.LABEL_REPEATED:
                        raise RuntimeError(f"buffer.proto: StepRecord.{field.name} is no longer a repeated "
                                           f"{_WIRE_FIELDS[field.name]}; update validate._WIRE_FIELDS")
                    field.type = field.TYPE_BYTES
                    field.ClearField("options")
        pool.Add(proto)
        added.add(file.name)

    add(buffer_pb2.DESCRIPTOR)
    request = message_factory.GetMessageClass(pool.FindMessageTypeByName("asyncwebrl.v1.PutGroupRequest"))
    return request, message_factory.GetMessageClass(pool.FindMessageTypeByName("asyncwebrl.v1.Group"))


WireRequest, WireGroup = _wire_classes()


def read_request(raw: bytes) -> buffer_pb2.PutGroupRequest | WireRequest:
    """The request as the wire view reads it when that view accounts for every byte (what our
    clients send: each packed field in one record); otherwise, the real message, so a field
    sent unpacked or split, or one the view does not know, is read as protobuf reads it.
    Raises InvalidArgument when the bytes are not a PutGroupRequest at all."""
    try:
        wire = WireRequest.FromString(raw)
        wire.DiscardUnknownFields()
        if wire.ByteSize() == len(raw):
            return wire
    except DecodeError:
        pass
    try:
        return buffer_pb2.PutGroupRequest.FromString(raw)
    except DecodeError as exc:
        raise InvalidArgument("group", f"not a valid PutGroupRequest: {exc}") from exc


class _Varints:
    """One packed varint field of every step of a group: the steps' wire bytes, concatenated."""

    __slots__ = ("data", "sizes", "ends")

    def __init__(self, chunks: list[bytes]) -> None:
        self.data = np.frombuffer(b"".join(chunks), dtype=np.uint8)
        self.sizes = np.fromiter(map(len, chunks), dtype=np.int64, count=len(chunks))
        self.ends = self.data < 0x80  # the last byte of each varint

    def well_formed(self, max_bytes: int) -> bool:
        """Every step holds at least one value and ends on a whole varint, and no varint is longer
        than ``max_bytes`` (protobuf reads up to 10; a longer one is left to it to judge)."""
        ends = self.ends
        if not self.sizes.all() or not ends[np.cumsum(self.sizes) - 1].all():
            return False
        # A varint longer than max_bytes is a run of max_bytes bytes without an end.
        n = ends.size - max_bytes + 1
        if n <= 0:
            return True
        window = ends[:n].copy()
        for k in range(1, max_bytes):
            window |= ends[k:k + n]
        return bool(window.all())

    def counts(self) -> np.ndarray:
        """Values per step, once well formed."""
        return np.add.reduceat(self.ends.view(np.uint8), np.cumsum(self.sizes) - self.sizes, dtype=np.int64)

    def total(self) -> int:
        return int(np.count_nonzero(self.ends))

    def values(self) -> np.ndarray:
        """The values, once well formed with at most 9 bytes each: below 2**63, never negative."""
        last = np.flatnonzero(self.ends)
        lengths = np.diff(last, prepend=-1)
        first = last - lengths + 1
        values = (self.data[first] & 0x7F).astype(np.int64)
        for k in range(1, int(lengths.max())):
            more = lengths > k
            values[more] |= (self.data[first[more] + k] & 0x7F).astype(np.int64) << (7 * k)
        return values


def _check_wire(group: WireGroup, limits: Limits, trainer_version: int) -> GroupSummary | None:
    """``_check_fast``'s rules on the wire view."""
    max_images, max_text = limits.max_images_per_step, limits.max_text_chars
    prompts, outputs, logprobs, versions = [], [], [], []
    walk = _Walk()
    for step in walk.steps_of(group, limits):
        p, o, lp, v, shots = step.prompt_ids, step.output_ids, step.logprobs, step.versions, step.screenshots
        if (
            len(p) != 1 or len(o) != 1 or len(lp) != 1 or len(v) != 1  # none, or split: the real checks
            or len(shots) > max_images
            or len(step.text) > max_text
            or len(step.action) > max_text
            or not _refs_ok(shots, walk.blobs)
        ):
            return None
        prompts.append(p[0])
        outputs.append(o[0])
        logprobs.append(lp[0])
        versions.append(v[0])
    if not walk.ok:
        return None
    # A canonical uint32 takes at most 5 bytes and a non-negative int64 below 2**63 at most 9: anything
    # longer (legal for protobuf in places, or a negative version) goes to the real checks.
    prompt, output, version = _Varints(prompts), _Varints(outputs), _Varints(versions)
    if not (prompt.well_formed(5) and output.well_formed(5) and version.well_formed(9)):
        return None
    # A step's prompt has at least one id (well formed) and no more ids than bytes.
    if int(prompt.sizes.max()) > limits.max_prompt_tokens and int(prompt.counts().max()) > limits.max_prompt_tokens:
        return None
    n_output = output.counts()
    if (
        int(n_output.max()) > limits.max_output_tokens
        or not np.array_equal(version.counts(), n_output)
        or not np.array_equal(np.fromiter(map(len, logprobs), dtype=np.int64, count=len(logprobs)), 4 * n_output)
    ):
        return None
    all_lp = np.frombuffer(b"".join(logprobs), dtype="<f4")
    return _summary(all_lp, version.values(), trainer_version, limits, walk, prompt.total() + int(n_output.sum()))


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
