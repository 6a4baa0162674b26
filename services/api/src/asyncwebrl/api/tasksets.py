"""``/v1/tasksets``: WebGym task files registered by name (``common.tasksets`` keeps them in Redis).

A file is posted as the body (JSONL: ``application/x-ndjson``, ``application/jsonl``, ``text/plain`` or
``application/json``; at most ``--max-taskset-bytes``, the service's size middleware applies that bound to
this route instead of ``--max-body-bytes``), or named by ``path`` relative to one of ``--taskset-roots``. It is
validated line by line (``common.webgym``): every bad line is a 422 whose ``errors`` name ``line[N].field``.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from asyncwebrl.api.errors import Problem
from asyncwebrl.api.store import FINAL, JobStore
from asyncwebrl.common.tasksets import NAME, TaskSetExists, TaskSetsFull, TaskSetStore, sha256_of
from asyncwebrl.common.webgym import WebGymFormatError, parse_webgym

ROUTE = "/v1/tasksets"
MEDIA = ("application/x-ndjson", "application/jsonl", "text/plain", "application/json")
MAX_PATH_CHARS = 1024
MAX_ERRORS = 50
NameParam = Annotated[str, Path(pattern=NAME, max_length=64)]

BODY_DOC = {
    "requestBody": {
        "required": False,
        "description": "The task file (WebGym JSONL, one task per line); none when ``path`` names one.",
        "content": {m: {"schema": {"type": "string"}} for m in MEDIA},
    }
}


def format_problem(exc: WebGymFormatError) -> Problem:
    errors = [{"field": f"line[{n}].{field}" if n else field, "message": what[:300]}
              for n, field, what in exc.problems[:MAX_ERRORS]]
    more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
    n, field, what = exc.problems[0]
    first = f"line {n}: {field}: {what}" if n else f"{field}: {what}"  # line 0: the file as a whole
    return Problem(422, "Unprocessable Content", first[:400] + more, errors=errors)


def resolve_under_roots(roots: tuple[str, ...], rel: str) -> pathlib.Path:
    """The file ``rel`` names under one of ``roots`` (the first that holds it): a Problem when no roots are
    configured (422), ``rel`` is absolute, has a '..' part or resolves (symlinks followed) outside its root
    (422), or no root holds a regular file by that name (404)."""
    if not roots:
        raise Problem(422, "Unprocessable Content", "path: this api loads no task files by path (no --taskset-roots)",
                      errors=[{"field": "path", "message": "no --taskset-roots configured"}])
    parts = rel.replace("\\", "/").split("/")
    if (not rel or rel.startswith(("/", "\\")) or ".." in parts or "\x00" in rel or len(rel) > MAX_PATH_CHARS
            or pathlib.PurePath(rel).is_absolute()):
        raise Problem(422, "Unprocessable Content", "path: must be relative to a task-set root, without '..'",
                      errors=[{"field": "path", "message": "must be relative, without '..'"}])
    for root in roots:
        base = pathlib.Path(root).resolve()
        candidate = base / rel
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if not real.is_relative_to(base):
            raise Problem(422, "Unprocessable Content", "path: resolves outside its task-set root",
                          errors=[{"field": "path", "message": "resolves outside its root (a symlink?)"}])
        if real.is_file():
            return real
    raise Problem(404, "Not Found", f"path: no task file {rel[:200]!r} under the task-set roots")


def _read(path: pathlib.Path, limit: int) -> bytes:
    with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW)) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise Problem(413, "Payload Too Large", f"path: the file is larger than {limit} bytes")
    return data


async def jobs_naming(jobs: JobStore, name: str) -> list[str]:
    """The ids of the jobs, not finished, whose document names task set ``name`` (at most --max-jobs read)."""
    out = []
    for raw in await jobs.redis.zrange(jobs.index, 0, -1):
        job = await jobs.get(raw.decode() if isinstance(raw, bytes) else raw)
        if job is not None and job.state not in FINAL and job.spec.tasks.taskset == name:
            out.append(job.job_id)
    return out


def tasksets_router(config, auth: list, tasksets: Callable[[], TaskSetStore],
                    jobs: Callable[[], JobStore]) -> APIRouter:
    router = APIRouter(dependencies=auth, tags=["tasksets"])
    roots = tuple(config.taskset_roots)

    @router.post(ROUTE, status_code=201, openapi_extra=BODY_DOC)
    async def add_taskset(request: Request, name: Annotated[str, Query(pattern=NAME, max_length=64)],
                          path: Annotated[str | None, Query(max_length=MAX_PATH_CHARS)] = None,
                          replace: bool = False) -> dict:
        """Register a WebGym task file as task set ``name``: the body, or ``path`` under --taskset-roots. Every
        line is validated; a bad file is a 422 naming each bad line and field. The set's meta is returned."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await request.body()
        if media and media not in MEDIA and body:
            raise Problem(415, "Unsupported Media Type",
                          f"content-type: {media[:60]!r} is not one of {', '.join(MEDIA)}")
        if path is not None:
            if body:
                raise Problem(422, "Unprocessable Content", "path: give the file as the body or by path, not both",
                              errors=[{"field": "path", "message": "the request also carries a body"}])
            file = resolve_under_roots(roots, path)
            data = await asyncio.to_thread(_read, file, config.max_taskset_bytes)
            source = f"path:{path}"
        else:
            data, source = body, "upload"
        if len(data) > config.max_taskset_bytes:
            raise Problem(413, "Payload Too Large", f"body: larger than {config.max_taskset_bytes} bytes")
        try:
            tasks = await asyncio.to_thread(parse_webgym, data.split(b"\n"), name, config.max_taskset_tasks)
        except WebGymFormatError as exc:
            raise format_problem(exc) from exc
        try:
            return await tasksets().put(name, tasks, sha256_of(data), source, replace=replace)
        except (TaskSetExists, TaskSetsFull) as exc:
            raise Problem(409, "Conflict", str(exc)) from exc

    @router.get(ROUTE)
    async def list_tasksets(limit: Annotated[int, Query(ge=1, le=200)] = 50,
                            cursor: Annotated[str, Query(pattern=f"^$|{NAME}", max_length=64)] = "") -> dict:
        """Task sets in name order: ``limit`` of them after ``cursor`` (the ``next_cursor`` of the page before)."""
        metas, nxt = await tasksets().list(cursor, limit)
        return {"tasksets": metas, "next_cursor": nxt}

    @router.get(ROUTE + "/{name}")
    async def get_taskset(name: NameParam, limit: Annotated[int, Query(ge=0, le=1000)] = 100,
                          cursor: Annotated[int, Query(ge=0, le=10_000_000)] = 0) -> dict:
        """The set's meta and ``limit`` of its tasks from ``cursor`` (0, then the ``next_cursor`` before; null at
        the end)."""
        page = await tasksets().get(name, cursor, limit)
        if page is None:
            raise Problem(404, "Not Found", f"name: no task set {name!r}")
        return {"taskset": page.meta, "tasks": page.tasks, "next_cursor": page.next_cursor}

    @router.delete(ROUTE + "/{name}")
    async def delete_taskset(name: NameParam) -> dict:
        """Delete the set; 409 while a job that is not finished names it."""
        if not await tasksets().exists(name):
            raise Problem(404, "Not Found", f"name: no task set {name!r}")
        users = await jobs_naming(jobs(), name)
        if users:
            raise Problem(409, "Conflict", f"name: task set {name!r} is used by job(s) not finished: "
                                           f"{', '.join(users)[:300]}; cancel them first")
        await tasksets().delete(name)
        return {"name": name, "state": "deleted"}

    return router
