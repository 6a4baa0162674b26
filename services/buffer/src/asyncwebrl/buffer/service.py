"""The gRPC BufferService: request checks and status codes around the store.

Groups are large (hundreds of KB). PutGroup keeps the request's own bytes for
the group instead of serialising it again, and GetBatch frames stored bytes
into responses without parsing them twice; both through custom (de)serialisers
registered in ``add_to_server``.
"""

from __future__ import annotations

import logging

import grpc
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from asyncwebrl.buffer import metrics
from asyncwebrl.buffer.config import BufferConfig
from asyncwebrl.buffer.errors import BufferError, Conflict, Exhausted, InvalidArgument, NotFound, Unavailable
from asyncwebrl.buffer.store import GroupStore
from asyncwebrl.buffer.validate import check_group, check_job_id, check_name, read_request
from asyncwebrl.common.blobstore import BlobBudgetExceeded, BlobStore
from asyncwebrl.v1 import buffer_pb2, env_pb2

log = logging.getLogger("asyncwebrl.buffer")

_STATUS = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Exhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}
SERVICE = buffer_pb2.DESCRIPTOR.services_by_name["BufferService"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    return -1, pos


def group_bytes(raw_request: bytes, request: buffer_pb2.PutGroupRequest) -> bytes | memoryview:
    """The group's bytes inside a PutGroupRequest: a view of them when the request
    is just field 1 once (what every client sends; no copy of ~500 KB), else a
    fresh serialisation."""
    if raw_request[:1] == b"\x0a":
        length, start = _read_varint(raw_request, 1)
        if start + length == len(raw_request):
            return memoryview(raw_request)[start:]
    return request.group.SerializeToString()


def frame_group(data: bytes) -> bytes:
    """A GetBatchResponse whose ``group`` (field 2) is ``data``, without parsing it."""
    return b"\x12" + _varint(len(data)) + data


class BufferServicer:
    def __init__(self, store: GroupStore, blobs: BlobStore, config: BufferConfig) -> None:
        self.store = store
        self.blobs = blobs
        self.config = config

    async def _fail(self, context: grpc.aio.ServicerContext, exc: Exception, method: str):
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
            log.warning("%s: redis unavailable: %s", method, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"redis unavailable: {exc}")
        if isinstance(exc, RedisError):  # a command Redis refused: our bug, not the caller's
            log.error("%s: redis error: %s", method, exc)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in the buffer's storage")
        code = _STATUS.get(type(exc), grpc.StatusCode.INTERNAL)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("%s failed", method)
        await context.abort(code, str(exc))

    async def PutGroup(self, raw: bytes, context):
        try:
            request = read_request(raw)
            group = request.group
            check_job_id(group.job_id, "group.job_id")
            settings, version = await self.store.admission(group.job_id)
            summary = check_group(group, self.config.limits, version)
            try:
                duplicate, entry = await self.store.put(
                    group.job_id, group.group_id, group_bytes(raw, request), summary, settings
                )
            except InvalidArgument as exc:
                raise _name_missing_blob(group, exc) from exc
        except InvalidArgument as exc:
            metrics.GROUPS_PUT.labels("invalid").inc()
            await self._fail(context, exc, "PutGroup")
        except Exhausted as exc:
            metrics.GROUPS_PUT.labels("full").inc()
            await self._fail(context, exc, "PutGroup")
        except (BufferError, RedisError) as exc:
            await self._fail(context, exc, "PutGroup")
        metrics.GROUPS_PUT.labels("duplicate" if duplicate else "stored").inc()
        if not duplicate:
            metrics.STEPS_PUT.inc(summary.steps)
            metrics.GROUP_BYTES.inc(len(raw))
        return buffer_pb2.PutGroupResponse(duplicate=duplicate, entry_id=entry)

    async def GetBatch(self, request, context):
        try:
            check_job_id(request.job_id)
            check_name(request.consumer, "consumer")
            if not 1 <= request.groups <= self.config.max_batch_groups:
                raise InvalidArgument("groups", f"must be in [1, {self.config.max_batch_groups}]")
            if request.current_version < 0:
                raise InvalidArgument("current_version", "must be >= 0")
            if request.max_staleness < -1:
                raise InvalidArgument("max_staleness", "must be >= 0, or -1 for the job's bound")
            if not 0 <= request.wait_ms <= 600_000:
                raise InvalidArgument("wait_ms", "must be in [0, 600000]")
            batch = await self.store.get_batch(
                request.job_id, request.consumer, request.groups, request.current_version,
                request.max_staleness, request.wait_ms, request.take_own_pending,
            )
        except (BufferError, RedisError) as exc:
            await self._fail(context, exc, "GetBatch")
        for reason, n in batch.rejected.items():
            metrics.GROUPS_REJECTED.labels(reason).inc(n)
        metrics.GROUPS_DELIVERED.inc(len(batch.groups))
        header = buffer_pb2.BatchHeader(
            batch_id=batch.batch_id,
            groups=len(batch.groups),
            steps=batch.steps,
            rejected=[buffer_pb2.RejectionCount(reason=k, groups=v) for k, v in sorted(batch.rejected.items())],
            zero_variance_kept=batch.zero_variance_kept,
            reclaimed=batch.reclaimed,
        )
        yield buffer_pb2.GetBatchResponse(header=header).SerializeToString()
        for data in batch.groups:
            yield frame_group(data)

    async def Ack(self, request, context):
        try:
            check_job_id(request.job_id)
            check_name(request.consumer, "consumer")
            if not 1 <= len(request.batch_id) <= 64 or not request.batch_id.isalnum():
                raise InvalidArgument("batch_id", "not a batch id this service issued")
            if request.trainer_version < 0:
                raise InvalidArgument("trainer_version", "must be >= 0")
            acked, lost, already = await self.store.ack(
                request.job_id, request.batch_id, request.consumer, request.trainer_version
            )
        except (BufferError, RedisError) as exc:
            await self._fail(context, exc, "Ack")
        metrics.GROUPS_ACKED.inc(acked)
        if lost:
            log.warning("batch %s: %d groups were taken over by another consumer", request.batch_id, lost)
        return buffer_pb2.AckResponse(groups=acked, already_acked=already, lost=lost)

    async def ConfigureJob(self, request, context):
        try:
            check_job_id(request.job_id)
            if not 1 <= request.batch_groups <= 100000:
                raise InvalidArgument("batch_groups", "must be in [1, 100000]")
            if not 0 <= request.max_staleness <= 1000:
                raise InvalidArgument("max_staleness", "must be in [0, 1000]")
            if not 0 <= request.max_stream_groups <= 10**7:
                raise InvalidArgument("max_stream_groups", "must be in [0, 1e7] (0 = derived)")
            if request.max_stream_groups and request.max_stream_groups < request.batch_groups:
                raise InvalidArgument("max_stream_groups", "must hold at least one batch (>= batch_groups)")
            settings = await self.store.configure(
                request.job_id, request.batch_groups, request.max_staleness,
                request.keep_zero_variance, request.max_stream_groups,
            )
        except (BufferError, RedisError) as exc:
            await self._fail(context, exc, "ConfigureJob")
        return buffer_pb2.ConfigureJobResponse(max_stream_groups=settings.max_stream_groups)

    async def SetTrainerVersion(self, request, context):
        try:
            check_job_id(request.job_id)
            if request.version < 0:
                raise InvalidArgument("version", "must be >= 0")
            version = await self.store.set_trainer_version(request.job_id, request.version)
        except (BufferError, RedisError) as exc:
            await self._fail(context, exc, "SetTrainerVersion")
        return buffer_pb2.SetTrainerVersionResponse(version=version)

    async def ReportRunning(self, request, context):
        try:
            check_job_id(request.job_id)
            check_name(request.gateway, "gateway")
            if not 0 <= request.running_groups <= 10**6:
                raise InvalidArgument("running_groups", "must be in [0, 1e6]")
            if not 0 <= request.ttl_s <= 3600:
                raise InvalidArgument("ttl_s", "must be in [0, 3600] (0 = server default)")
            ttl = request.ttl_s or self.config.running_ttl_s
            await self.store.report_running(request.job_id, request.gateway, request.running_groups, ttl)
        except (BufferError, RedisError) as exc:
            await self._fail(context, exc, "ReportRunning")
        return buffer_pb2.ReportRunningResponse()

    async def PutBlobs(self, request, context):
        try:
            check_job_id(request.job_id)
            if not 1 <= len(request.blobs) <= self.config.max_blobs_per_call:
                raise InvalidArgument("blobs", f"count must be in [1, {self.config.max_blobs_per_call}]")
            items = [(b.data, b.mime, b.width, b.height) for b in request.blobs]
            try:
                refs = await self.blobs.put_many(request.job_id, items)
            except ValueError as exc:
                field, _, message = str(exc).partition(": ")
                raise InvalidArgument(f"blobs.{field}", message) from exc
            except BlobBudgetExceeded as exc:
                metrics.BLOB_PUTS.labels("refused").inc(len(items))
                raise Exhausted(str(exc)) from exc
        except (BufferError, RedisError) as exc:
            await self._fail(context, exc, "PutBlobs")
        metrics.BLOB_PUTS.labels("stored").inc(len(items))
        return buffer_pb2.PutBlobsResponse(
            refs=[
                env_pb2.ScreenshotRef(sha256=r.sha256, width=r.width, height=r.height, mime=r.mime, size_bytes=r.size_bytes)
                for r in refs
            ]
        )

    async def GetBlobs(self, request, context):
        try:
            check_job_id(request.job_id)
            if not 1 <= len(request.sha256) <= self.config.max_blobs_per_call:
                raise InvalidArgument("sha256", f"count must be in [1, {self.config.max_blobs_per_call}]")
            try:
                found = await self.blobs.get_full_many(request.job_id, list(request.sha256))
            except ValueError as exc:
                raise InvalidArgument("sha256", str(exc).partition(": ")[2]) from exc
        except (BufferError, RedisError) as exc:
            await self._fail(context, exc, "GetBlobs")
        for sha, item in zip(request.sha256, found):
            if item is None:
                yield buffer_pb2.GetBlobsResponse(sha256=sha, found=False)
            else:
                data, ref = item
                blob = buffer_pb2.BlobData(data=data, mime=ref.mime, width=ref.width, height=ref.height)
                yield buffer_pb2.GetBlobsResponse(sha256=sha, found=True, blob=blob)

    async def Stats(self, request, context):
        try:
            check_job_id(request.job_id)
            return await self.store.stats(request.job_id)
        except (BufferError, RedisError) as exc:
            await self._fail(context, exc, "Stats")

    async def DeleteJob(self, request, context):
        try:
            check_job_id(request.job_id)
            c = await self.store.delete_job(request.job_id)
        except (BufferError, RedisError) as exc:
            await self._fail(context, exc, "DeleteJob")
        return buffer_pb2.DeleteJobResponse(
            job_id=request.job_id, groups=c.groups, pending=c.pending, dead_letters=c.dead_letters,
            blobs=c.blobs, blob_bytes=c.blob_bytes, blob_refs=c.blob_refs, keys=c.keys,
        )


def _name_missing_blob(group: buffer_pb2.Group, exc: InvalidArgument) -> InvalidArgument:
    """Point at the first step that references the missing blob."""
    sha = str(exc).rsplit("blob ", 1)[-1].split(" ", 1)[0]
    for i, episode in enumerate(group.episodes):
        for j, step in enumerate(episode.steps):
            for k, ref in enumerate(step.screenshots):
                if ref.sha256 == sha:
                    return InvalidArgument(
                        f"group.episodes[{i}].steps[{j}].screenshots[{k}].sha256",
                        f"blob {sha} is not in the store (expired, or never written for job {group.job_id})",
                    )
    return exc


def add_to_server(servicer: BufferServicer, server: grpc.aio.Server) -> None:
    """Register every BufferService method; PutGroup takes raw bytes and
    GetBatch yields pre-framed bytes (see the module docstring)."""
    identity = None  # grpc passes bytes through unchanged when no (de)serialiser is set
    handlers = {}
    for method in SERVICE.methods:
        request_cls = getattr(buffer_pb2, method.input_type.name)
        response_cls = getattr(buffer_pb2, method.output_type.name)
        deserialize = identity if method.name == "PutGroup" else request_cls.FromString
        serialize = identity if method.name == "GetBatch" else response_cls.SerializeToString
        factory = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = factory(
            getattr(servicer, method.name), request_deserializer=deserialize, response_serializer=serialize
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
