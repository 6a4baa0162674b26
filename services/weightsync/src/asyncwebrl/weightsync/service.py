"""The gRPC WeightSyncService: request checks and status codes around ``WeightSync``."""

from __future__ import annotations

import logging

import grpc
from redis.exceptions import RedisError

from asyncwebrl.common.keys import is_job_id
from asyncwebrl.v1 import weightsync_pb2, weightsync_pb2_grpc
from asyncwebrl.weightsync import metrics
from asyncwebrl.weightsync.errors import Refused
from asyncwebrl.weightsync.sync import WeightSync

log = logging.getLogger("asyncwebrl.weightsync")
SERVICE = weightsync_pb2.DESCRIPTOR.services_by_name["WeightSyncService"]
_CODES = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "old": grpc.StatusCode.FAILED_PRECONDITION,
          "busy": grpc.StatusCode.ABORTED}


class WeightSyncServicer(weightsync_pb2_grpc.WeightSyncServiceServicer):
    def __init__(self, sync: WeightSync) -> None:
        self.sync = sync

    async def Publish(self, request, context):
        job = request.job_id
        if not is_job_id(job):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id: must match [A-Za-z0-9_-]{1,64}")
        try:
            r = await self.sync.publish(job, request.version, request.path, request.manifest_checksum)
        except Refused as exc:
            metrics.PUBLISHES.labels(job, "refused_old" if exc.kind == "old" else exc.kind).inc()
            log.warning("publish refused", extra={"job": job, "version": request.version, "error": str(exc)})
            await context.abort(_CODES[exc.kind], str(exc))
        except RedisError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"redis: {exc}")
        return weightsync_pb2.PublishResponse(
            version=r.version, seconds=r.seconds, verify_seconds=r.verify_seconds, bytes=r.bytes,
            results=[weightsync_pb2.EndpointResult(endpoint_id=o.endpoint_id, ok=o.ok, seconds=o.seconds,
                                                   error=o.error, attempts=o.attempts) for o in r.outcomes])

    async def Status(self, request, context):
        if not is_job_id(request.job_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id: must match [A-Za-z0-9_-]{1,64}")
        try:
            published, rows = await self.sync.status(request.job_id)
        except RedisError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"redis: {exc}")
        reply = weightsync_pb2.StatusResponse()
        if published is not None:
            reply.published_version, reply.published_path = published.version, published.path
        for row in rows:
            e = row["endpoint"]
            reply.endpoints.add(endpoint_id=e.endpoint_id, url=e.url, kind=e.kind, weight_version=e.weight_version,
                                fresh=row["fresh"], ready=e.ready, routable=row["routable"], held=row["held"],
                                last_sync_seconds=row["last_sync_seconds"], last_error=row["last_error"],
                                failures=row["failures"], heartbeat_age_s=row["age_s"])
        return reply


def add_to_server(servicer: WeightSyncServicer, server: grpc.aio.Server) -> None:
    weightsync_pb2_grpc.add_WeightSyncServiceServicer_to_server(servicer, server)
