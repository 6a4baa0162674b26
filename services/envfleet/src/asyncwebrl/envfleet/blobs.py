"""Screenshots stored through the buffer's ``PutBlobs``: envfleet holds no Redis access.

The buffer owns the blob store (content-addressed, TTL, reference counts,
memory budget). Its answers map onto what a step means:

- RESOURCE_EXHAUSTED: past the blob budget; ``BlobBudgetExceeded``, which the
  observer waits out (backpressure) for a bounded time;
- UNAVAILABLE, DEADLINE_EXCEEDED: the buffer (or its Redis) is away;
  ``Unavailable``, an environment fault the same call may get past later;
- INVALID_ARGUMENT, UNAUTHENTICATED and the rest: a bug or a misconfiguration
  (a token the buffer does not share); ``BufferRejected``, logged at ERROR with
  what to check.

``up`` is what readiness shows: whether the buffer answered last time. A
background probe (gRPC health) keeps it current, so a buffer that was briefly
down makes envfleet unready, not crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from asyncwebrl.common.blobstore import BlobBudgetExceeded, BlobRef
from asyncwebrl.common.grpcclient import aio_channel
from asyncwebrl.envfleet.errors import BufferRejected, Unavailable
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc

log = logging.getLogger(__name__)

BUFFER_SERVICE = buffer_pb2.DESCRIPTOR.services_by_name["BufferService"].full_name
# The buffer is away: the step is an environment fault, not a bug.
AWAY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# A restarted buffer is seen within a second: gRPC's default reconnect backoff grows to minutes, and
# calls fail at once (UNAVAILABLE) while it waits.
RECONNECT = (("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
             ("grpc.max_reconnect_backoff_ms", 1000))
_HINTS = {
    grpc.StatusCode.UNAUTHENTICATED: "envfleet and the buffer must share ASYNCWEBRL_AUTH_TOKEN",
    grpc.StatusCode.INVALID_ARGUMENT: "the buffer refused the screenshot as envfleet sent it (a bug)",
    grpc.StatusCode.UNIMPLEMENTED: "--buffer-target does not point at a buffer",
}


class BufferBlobs:
    """Puts screenshots into the buffer; one channel, each call bounded by ``timeout_s``."""

    def __init__(
        self, target: str, token: str, max_message_bytes: int, timeout_s: float, probe_s: float = 5.0
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.probe_s = probe_s
        self.channel = aio_channel(target, token, max_message_bytes, RECONNECT)
        self.stub = buffer_pb2_grpc.BufferServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.up = False
        self._probe: asyncio.Task | None = None

    async def start(self) -> None:
        """One health check (never fatal), then a background probe."""
        if not await self.check():
            log.warning("the buffer at %s does not answer yet: not ready until it does", self.target)
        self._probe = asyncio.create_task(self._probe_loop(), name="buffer-probe")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.channel.close()

    async def check(self) -> bool:
        """Whether the buffer's gRPC health says SERVING; updates ``up``."""
        try:
            answer = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.timeout_s)
            up = answer.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            up = False
        self._set_up(up)
        return up

    async def _probe_loop(self) -> None:
        while True:
            # Often while away (to be ready again soon), seldom while calls show it answering.
            await asyncio.sleep(1.0 if not self.up else self.probe_s)
            await self.check()

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            log.log(logging.INFO if up else logging.WARNING, "buffer at %s %s", self.target,
                    "answers" if up else "is away")
        self.up = up

    async def put(self, job_id: str, data: bytes, mime: str, width: int, height: int) -> BlobRef:
        request = buffer_pb2.PutBlobsRequest(
            job_id=job_id, blobs=[buffer_pb2.BlobData(data=data, mime=mime, width=width, height=height)]
        )
        try:
            response = await self.stub.PutBlobs(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                self._set_up(True)
                raise BlobBudgetExceeded(exc.details() or "the buffer's blob budget is spent") from exc
            if code in AWAY:
                self._set_up(False)
                raise Unavailable(f"blob store unavailable: buffer {code.name}: {exc.details()}") from exc
            hint = _HINTS.get(code, "see the buffer's log")
            log.error("PutBlobs to the buffer at %s failed: %s: %s (%s)", self.target, code.name, exc.details(), hint)
            raise BufferRejected(f"the buffer refused a screenshot: {code.name}: {exc.details()} ({hint})") from exc
        self._set_up(True)
        if len(response.refs) != 1:
            raise BufferRejected(f"the buffer answered {len(response.refs)} refs for one screenshot")
        r = response.refs[0]
        if r.sha256 != hashlib.sha256(data).hexdigest() or r.size_bytes != len(data):
            raise BufferRejected(f"the buffer answered a ref ({r.sha256[:16]}..., {r.size_bytes} bytes) that is not "
                                 "the screenshot's")
        return BlobRef(sha256=r.sha256, width=r.width, height=r.height, mime=r.mime, size_bytes=r.size_bytes)
