"""The gRPC EnvService: request checks and status codes around the fleet."""

from __future__ import annotations

import base64

import grpc

from asyncwebrl.envfleet.errors import (
    BufferRejected,
    EnvError,
    EnvFault,
    EpisodeOver,
    Exhausted,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from asyncwebrl.envfleet.fleet import Fleet
from asyncwebrl.envfleet.tasks import TaskSpec
from asyncwebrl.v1 import env_pb2, env_pb2_grpc


_STATUS = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Exhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    EpisodeOver: grpc.StatusCode.FAILED_PRECONDITION,
    # ABORTED, not UNAVAILABLE: retrying the same Step cannot help, the episode is void.
    EnvFault: grpc.StatusCode.ABORTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    BufferRejected: grpc.StatusCode.INTERNAL,
}
MAX_PAGE_SIZE = 1000


def _page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def _offset(token: str) -> int:
    if not token:
        return 0
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind == "o" and value.isdigit():
            return int(value)
    except (ValueError, UnicodeDecodeError):
        pass
    raise InvalidArgument("page_token", "not a token this service issued")


def _task_info(spec: TaskSpec) -> env_pb2.TaskInfo:
    return env_pb2.TaskInfo(
        name=spec.name,
        source=spec.source,
        difficulty=spec.difficulty,
        default_viewport=env_pb2.Viewport(width=spec.viewport[0], height=spec.viewport[1]),
        description=spec.description,
        held_out=spec.held_out,
        optimal_steps=spec.optimal_steps,
    )


class EnvServicer(env_pb2_grpc.EnvServiceServicer):
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    async def _fail(self, context: grpc.aio.ServicerContext, exc: Exception):
        code = next((_STATUS[k] for k in type(exc).__mro__ if k in _STATUS), grpc.StatusCode.INTERNAL)
        await context.abort(code, str(exc))

    async def ListTasks(self, request, context):
        try:
            if not 0 <= request.page_size <= MAX_PAGE_SIZE:
                raise InvalidArgument("page_size", f"must be in [0, {MAX_PAGE_SIZE}]")
            specs = self.fleet.list_tasks(request.source)
            start = _offset(request.page_token)
            size = request.page_size or MAX_PAGE_SIZE
            page = specs[start : start + size]
        except EnvError as exc:
            await self._fail(context, exc)
        response = env_pb2.ListTasksResponse(
            next_page_token=_page_token(start + size) if start + size < len(specs) else ""
        )
        response.tasks.extend(_task_info(spec) for spec in page)
        return response

    async def Allocate(self, request, context):
        try:
            session, observation = await self.fleet.allocate(request)
        except EnvError as exc:
            await self._fail(context, exc)
        return env_pb2.AllocateResponse(
            session_id=session.id,
            observation=observation,
            task=_task_info(session.task),
            viewport=env_pb2.Viewport(width=session.width, height=session.height),
            lease_timeout_s=self.fleet.config.lease_timeout_s,
        )

    async def Step(self, request, context):
        if not request.HasField("action"):
            await self._fail(context, InvalidArgument("action", "is required"))
        try:
            return await self.fleet.step(request.session_id, request.action)
        except EnvError as exc:
            await self._fail(context, exc)

    async def Release(self, request, context):
        try:
            return env_pb2.ReleaseResponse(released=await self.fleet.release(request.session_id))
        except InvalidArgument as exc:
            await self._fail(context, exc)

    async def Renew(self, request, context):
        try:
            sessions = self.fleet.renew(request.owner)
        except InvalidArgument as exc:
            await self._fail(context, exc)
        return env_pb2.RenewResponse(sessions=sessions, owner_ttl_s=self.fleet.config.owner_ttl_s)

    async def Oracle(self, request, context):
        try:
            return await self.fleet.oracle(request.session_id)
        except EnvError as exc:
            await self._fail(context, exc)

    async def Stats(self, request, context):
        return self.fleet.stats()
