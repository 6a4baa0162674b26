from asyncwebrl.v1 import env_pb2 as _env_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StepRecord(_message.Message):
    __slots__ = ("prompt_ids", "screenshots", "output_ids", "logprobs", "versions", "text", "action", "invalid_action")
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    SCREENSHOTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    INVALID_ACTION_FIELD_NUMBER: _ClassVar[int]
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    screenshots: _containers.RepeatedCompositeFieldContainer[_env_pb2.ScreenshotRef]
    output_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    versions: _containers.RepeatedScalarFieldContainer[int]
    text: str
    action: str
    invalid_action: bool
    def __init__(self, prompt_ids: _Optional[_Iterable[int]] = ..., screenshots: _Optional[_Iterable[_Union[_env_pb2.ScreenshotRef, _Mapping]]] = ..., output_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., versions: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., action: _Optional[str] = ..., invalid_action: _Optional[bool] = ...) -> None: ...

class EpisodeRecord(_message.Message):
    __slots__ = ("episode_id", "steps", "reward", "success", "length", "finish_reason", "judged", "judge_text", "raw_reward", "judge_latency_s")
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    JUDGED_FIELD_NUMBER: _ClassVar[int]
    JUDGE_TEXT_FIELD_NUMBER: _ClassVar[int]
    RAW_REWARD_FIELD_NUMBER: _ClassVar[int]
    JUDGE_LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    steps: _containers.RepeatedCompositeFieldContainer[StepRecord]
    reward: float
    success: bool
    length: int
    finish_reason: str
    judged: bool
    judge_text: str
    raw_reward: float
    judge_latency_s: float
    def __init__(self, episode_id: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[StepRecord, _Mapping]]] = ..., reward: _Optional[float] = ..., success: _Optional[bool] = ..., length: _Optional[int] = ..., finish_reason: _Optional[str] = ..., judged: _Optional[bool] = ..., judge_text: _Optional[str] = ..., raw_reward: _Optional[float] = ..., judge_latency_s: _Optional[float] = ...) -> None: ...

class Group(_message.Message):
    __slots__ = ("group_id", "job_id", "task", "seed", "difficulty", "episodes", "created_unix_ms")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DIFFICULTY_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    job_id: str
    task: str
    seed: int
    difficulty: str
    episodes: _containers.RepeatedCompositeFieldContainer[EpisodeRecord]
    created_unix_ms: int
    def __init__(self, group_id: _Optional[str] = ..., job_id: _Optional[str] = ..., task: _Optional[str] = ..., seed: _Optional[int] = ..., difficulty: _Optional[str] = ..., episodes: _Optional[_Iterable[_Union[EpisodeRecord, _Mapping]]] = ..., created_unix_ms: _Optional[int] = ...) -> None: ...

class PutGroupRequest(_message.Message):
    __slots__ = ("group",)
    GROUP_FIELD_NUMBER: _ClassVar[int]
    group: Group
    def __init__(self, group: _Optional[_Union[Group, _Mapping]] = ...) -> None: ...

class PutGroupResponse(_message.Message):
    __slots__ = ("duplicate", "entry_id")
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    entry_id: str
    def __init__(self, duplicate: _Optional[bool] = ..., entry_id: _Optional[str] = ...) -> None: ...

class GetBatchRequest(_message.Message):
    __slots__ = ("job_id", "consumer", "groups", "current_version", "max_staleness", "wait_ms", "take_own_pending")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    TAKE_OWN_PENDING_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    consumer: str
    groups: int
    current_version: int
    max_staleness: int
    wait_ms: int
    take_own_pending: bool
    def __init__(self, job_id: _Optional[str] = ..., consumer: _Optional[str] = ..., groups: _Optional[int] = ..., current_version: _Optional[int] = ..., max_staleness: _Optional[int] = ..., wait_ms: _Optional[int] = ..., take_own_pending: _Optional[bool] = ...) -> None: ...

class RejectionCount(_message.Message):
    __slots__ = ("reason", "groups")
    REASON_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    reason: str
    groups: int
    def __init__(self, reason: _Optional[str] = ..., groups: _Optional[int] = ...) -> None: ...

class BatchHeader(_message.Message):
    __slots__ = ("batch_id", "groups", "steps", "rejected", "zero_variance_kept", "reclaimed")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    ZERO_VARIANCE_KEPT_FIELD_NUMBER: _ClassVar[int]
    RECLAIMED_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    groups: int
    steps: int
    rejected: _containers.RepeatedCompositeFieldContainer[RejectionCount]
    zero_variance_kept: int
    reclaimed: int
    def __init__(self, batch_id: _Optional[str] = ..., groups: _Optional[int] = ..., steps: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[RejectionCount, _Mapping]]] = ..., zero_variance_kept: _Optional[int] = ..., reclaimed: _Optional[int] = ...) -> None: ...

class GetBatchResponse(_message.Message):
    __slots__ = ("header", "group")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    header: BatchHeader
    group: Group
    def __init__(self, header: _Optional[_Union[BatchHeader, _Mapping]] = ..., group: _Optional[_Union[Group, _Mapping]] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("job_id", "batch_id", "consumer", "trainer_version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    TRAINER_VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    batch_id: str
    consumer: str
    trainer_version: int
    def __init__(self, job_id: _Optional[str] = ..., batch_id: _Optional[str] = ..., consumer: _Optional[str] = ..., trainer_version: _Optional[int] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ("groups", "already_acked", "lost")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    ALREADY_ACKED_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    groups: int
    already_acked: bool
    lost: int
    def __init__(self, groups: _Optional[int] = ..., already_acked: _Optional[bool] = ..., lost: _Optional[int] = ...) -> None: ...

class ConfigureJobRequest(_message.Message):
    __slots__ = ("job_id", "batch_groups", "max_staleness", "keep_zero_variance", "max_stream_groups")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_GROUPS_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    KEEP_ZERO_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAM_GROUPS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    batch_groups: int
    max_staleness: int
    keep_zero_variance: bool
    max_stream_groups: int
    def __init__(self, job_id: _Optional[str] = ..., batch_groups: _Optional[int] = ..., max_staleness: _Optional[int] = ..., keep_zero_variance: _Optional[bool] = ..., max_stream_groups: _Optional[int] = ...) -> None: ...

class ConfigureJobResponse(_message.Message):
    __slots__ = ("max_stream_groups",)
    MAX_STREAM_GROUPS_FIELD_NUMBER: _ClassVar[int]
    max_stream_groups: int
    def __init__(self, max_stream_groups: _Optional[int] = ...) -> None: ...

class SetTrainerVersionRequest(_message.Message):
    __slots__ = ("job_id", "version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class SetTrainerVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class ReportRunningRequest(_message.Message):
    __slots__ = ("job_id", "gateway", "running_groups", "ttl_s")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    RUNNING_GROUPS_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    gateway: str
    running_groups: int
    ttl_s: int
    def __init__(self, job_id: _Optional[str] = ..., gateway: _Optional[str] = ..., running_groups: _Optional[int] = ..., ttl_s: _Optional[int] = ...) -> None: ...

class ReportRunningResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BlobData(_message.Message):
    __slots__ = ("data", "mime", "width", "height")
    DATA_FIELD_NUMBER: _ClassVar[int]
    MIME_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    mime: str
    width: int
    height: int
    def __init__(self, data: _Optional[bytes] = ..., mime: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class PutBlobsRequest(_message.Message):
    __slots__ = ("job_id", "blobs")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    blobs: _containers.RepeatedCompositeFieldContainer[BlobData]
    def __init__(self, job_id: _Optional[str] = ..., blobs: _Optional[_Iterable[_Union[BlobData, _Mapping]]] = ...) -> None: ...

class PutBlobsResponse(_message.Message):
    __slots__ = ("refs",)
    REFS_FIELD_NUMBER: _ClassVar[int]
    refs: _containers.RepeatedCompositeFieldContainer[_env_pb2.ScreenshotRef]
    def __init__(self, refs: _Optional[_Iterable[_Union[_env_pb2.ScreenshotRef, _Mapping]]] = ...) -> None: ...

class GetBlobsRequest(_message.Message):
    __slots__ = ("job_id", "sha256")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sha256: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., sha256: _Optional[_Iterable[str]] = ...) -> None: ...

class GetBlobsResponse(_message.Message):
    __slots__ = ("sha256", "found", "blob")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    found: bool
    blob: BlobData
    def __init__(self, sha256: _Optional[str] = ..., found: _Optional[bool] = ..., blob: _Optional[_Union[BlobData, _Mapping]] = ...) -> None: ...

class BufferStatsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class BufferStatsResponse(_message.Message):
    __slots__ = ("job_id", "trainer_version", "groups_accepted", "groups_running", "groups_consumed", "rejected", "groups_duplicate", "zero_variance_kept", "steps_accepted", "steps_consumed", "stream_length", "stream_pending", "oldest_entry_age_s", "dead_letters", "blob_count", "blob_bytes", "blob_budget_bytes", "blob_bytes_all_jobs", "batch_groups", "max_staleness", "keep_zero_variance", "max_stream_groups", "gate_capacity", "group_bytes")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TRAINER_VERSION_FIELD_NUMBER: _ClassVar[int]
    GROUPS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    GROUPS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    GROUPS_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    GROUPS_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ZERO_VARIANCE_KEPT_FIELD_NUMBER: _ClassVar[int]
    STEPS_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    STEPS_CONSUMED_FIELD_NUMBER: _ClassVar[int]
    STREAM_LENGTH_FIELD_NUMBER: _ClassVar[int]
    STREAM_PENDING_FIELD_NUMBER: _ClassVar[int]
    OLDEST_ENTRY_AGE_S_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    BLOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    BLOB_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOB_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOB_BYTES_ALL_JOBS_FIELD_NUMBER: _ClassVar[int]
    BATCH_GROUPS_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    KEEP_ZERO_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAM_GROUPS_FIELD_NUMBER: _ClassVar[int]
    GATE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    GROUP_BYTES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    trainer_version: int
    groups_accepted: int
    groups_running: int
    groups_consumed: int
    rejected: _containers.RepeatedCompositeFieldContainer[RejectionCount]
    groups_duplicate: int
    zero_variance_kept: int
    steps_accepted: int
    steps_consumed: int
    stream_length: int
    stream_pending: int
    oldest_entry_age_s: float
    dead_letters: int
    blob_count: int
    blob_bytes: int
    blob_budget_bytes: int
    blob_bytes_all_jobs: int
    batch_groups: int
    max_staleness: int
    keep_zero_variance: bool
    max_stream_groups: int
    gate_capacity: int
    group_bytes: int
    def __init__(self, job_id: _Optional[str] = ..., trainer_version: _Optional[int] = ..., groups_accepted: _Optional[int] = ..., groups_running: _Optional[int] = ..., groups_consumed: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[RejectionCount, _Mapping]]] = ..., groups_duplicate: _Optional[int] = ..., zero_variance_kept: _Optional[int] = ..., steps_accepted: _Optional[int] = ..., steps_consumed: _Optional[int] = ..., stream_length: _Optional[int] = ..., stream_pending: _Optional[int] = ..., oldest_entry_age_s: _Optional[float] = ..., dead_letters: _Optional[int] = ..., blob_count: _Optional[int] = ..., blob_bytes: _Optional[int] = ..., blob_budget_bytes: _Optional[int] = ..., blob_bytes_all_jobs: _Optional[int] = ..., batch_groups: _Optional[int] = ..., max_staleness: _Optional[int] = ..., keep_zero_variance: _Optional[bool] = ..., max_stream_groups: _Optional[int] = ..., gate_capacity: _Optional[int] = ..., group_bytes: _Optional[int] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ("job_id", "groups", "pending", "dead_letters", "blobs", "blob_bytes", "blob_refs", "keys")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    BLOB_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOB_REFS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    groups: int
    pending: int
    dead_letters: int
    blobs: int
    blob_bytes: int
    blob_refs: int
    keys: int
    def __init__(self, job_id: _Optional[str] = ..., groups: _Optional[int] = ..., pending: _Optional[int] = ..., dead_letters: _Optional[int] = ..., blobs: _Optional[int] = ..., blob_bytes: _Optional[int] = ..., blob_refs: _Optional[int] = ..., keys: _Optional[int] = ...) -> None: ...
