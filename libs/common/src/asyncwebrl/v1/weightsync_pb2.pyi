from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PublishRequest(_message.Message):
    __slots__ = ("job_id", "version", "path", "manifest_checksum")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    path: str
    manifest_checksum: str
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ..., path: _Optional[str] = ..., manifest_checksum: _Optional[str] = ...) -> None: ...

class EndpointResult(_message.Message):
    __slots__ = ("endpoint_id", "ok", "seconds", "error", "attempts")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    ok: bool
    seconds: float
    error: str
    attempts: int
    def __init__(self, endpoint_id: _Optional[str] = ..., ok: _Optional[bool] = ..., seconds: _Optional[float] = ..., error: _Optional[str] = ..., attempts: _Optional[int] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("version", "results", "seconds", "verify_seconds", "bytes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    VERIFY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    version: int
    results: _containers.RepeatedCompositeFieldContainer[EndpointResult]
    seconds: float
    verify_seconds: float
    bytes: int
    def __init__(self, version: _Optional[int] = ..., results: _Optional[_Iterable[_Union[EndpointResult, _Mapping]]] = ..., seconds: _Optional[float] = ..., verify_seconds: _Optional[float] = ..., bytes: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class EndpointStatus(_message.Message):
    __slots__ = ("endpoint_id", "url", "kind", "weight_version", "fresh", "ready", "routable", "held", "last_sync_seconds", "last_error", "failures", "heartbeat_age_s")
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRESH_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    ROUTABLE_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    LAST_SYNC_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AGE_S_FIELD_NUMBER: _ClassVar[int]
    endpoint_id: str
    url: str
    kind: str
    weight_version: str
    fresh: bool
    ready: bool
    routable: bool
    held: str
    last_sync_seconds: float
    last_error: str
    failures: int
    heartbeat_age_s: float
    def __init__(self, endpoint_id: _Optional[str] = ..., url: _Optional[str] = ..., kind: _Optional[str] = ..., weight_version: _Optional[str] = ..., fresh: _Optional[bool] = ..., ready: _Optional[bool] = ..., routable: _Optional[bool] = ..., held: _Optional[str] = ..., last_sync_seconds: _Optional[float] = ..., last_error: _Optional[str] = ..., failures: _Optional[int] = ..., heartbeat_age_s: _Optional[float] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("published_version", "published_path", "endpoints", "last_publish_seconds")
    PUBLISHED_VERSION_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_PATH_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    LAST_PUBLISH_SECONDS_FIELD_NUMBER: _ClassVar[int]
    published_version: int
    published_path: str
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointStatus]
    last_publish_seconds: float
    def __init__(self, published_version: _Optional[int] = ..., published_path: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[EndpointStatus, _Mapping]]] = ..., last_publish_seconds: _Optional[float] = ...) -> None: ...
