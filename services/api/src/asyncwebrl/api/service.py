"""The REST api (FastAPI): the api service's HTTP app. Errors are
application/problem+json (RFC 9457) and name the field; every route but health,
metrics and the schemas needs the bearer token; bodies are bounded before they
are parsed. Jobs are run by a ``launchers.Launcher`` (local or Kubernetes), or by
none (``--launcher none``: jobs are only stored)."""

from __future__ import annotations

import asyncio
import hmac
import pathlib
from typing import Annotated

import grpc
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPBearer
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from asyncwebrl.api import metrics, runs
from asyncwebrl.api.config import ApiConfig
from asyncwebrl.api.errors import BadPageToken, EvalConflict, Problem, StoreFull
from asyncwebrl.api.evaluate import Evaluations
from asyncwebrl.api.jobargs import eval_job_id, warm_job_id
from asyncwebrl.api.jobspec import EvaluateRequest, JobSpec
from asyncwebrl.api.launchers import Launcher
from asyncwebrl.api.openapi import PROBLEM, status_title, with_problems
from asyncwebrl.api.store import FINAL, Job, JobStore, decode_token, encode_token
from asyncwebrl.api.tasksets import ROUTE as TASKSETS_ROUTE
from asyncwebrl.api.tasksets import tasksets_router
from asyncwebrl.api.viewer import viewer_router
from asyncwebrl.common.grpcclient import aio_channel
from asyncwebrl.common.keys import is_job_id
from asyncwebrl.common.tasksets import TaskSetStore
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc

PURGE_COUNTS = ("groups", "pending", "dead_letters", "blobs", "blob_bytes", "blob_refs", "keys")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def problem(status: int, title: str, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def field_name(loc) -> str:
    """('body', 'algorithm', 'k') -> 'algorithm.k'; list indices as [i]."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path") else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or str(loc[0] if loc else "body")


def allowed_methods(app: FastAPI, path: str, root_path: str = "") -> list[str]:
    """Every method some route of the app accepts at ``path`` (the router stops at the first route whose path
    matches, so its own 405 names that route's methods only)."""
    out = []
    for method in METHODS:
        scope = {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": [],
                 "query_string": b""}
        if any(route.matches(scope)[0] == Match.FULL for route in app.router.routes):
            out.append(method)
    return out


def job_view(job: Job, progress: dict | None = None) -> dict:
    view = {"id": job.job_id, "name": job.spec.name, "state": job.state, "reason": job.reason,
            "created_ms": job.created_ms, "updated_ms": job.updated_ms, "spec": job.spec.model_dump()}
    if progress is not None:
        view["progress"] = progress
    return view


def create_app(config: ApiConfig, store: JobStore, launcher: Launcher | None = None) -> FastAPI:
    """``launcher``: the local or the Kubernetes launcher, or None when another launcher acts on stored jobs."""
    app = FastAPI(title="asyncwebrl", version="0.1.0", description="Jobs of asynchronous multi-step RL for "
                  "vision-language web agents.\n\n"
                  "`DELETE /v1/jobs/{id}` cancels a job and keeps its data; `DELETE /v1/jobs/{id}?purge=true` "
                  "also deletes it: the job's record (a later GET answers 404) and all it keeps in the buffer "
                  "(groups, screenshots, counters).")

    @app.middleware("http")
    async def bounded_body(request: Request, call_next):
        # A task file (POST /v1/tasksets) has its own, larger bound.
        limit = (config.max_taskset_bytes if request.method == "POST" and request.scope["path"] == TASKSETS_ROUTE
                 else config.max_body_bytes)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return problem(413, "Payload Too Large", f"body: larger than {limit} bytes")
        if request.method in ("POST", "PUT", "PATCH") and length is None:
            # Chunked: read at most the limit + 1 and hand the route what was read.
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    return problem(413, "Payload Too Large", f"body: larger than {limit} bytes")
            request._body = body
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": field_name(e.get("loc", ())), "message": str(e.get("msg", ""))[:300]}
                  for e in exc.errors()[:50]]
        first = errors[0] if errors else {"field": "body", "message": "invalid"}
        metrics.REJECTED.labels("invalid").inc()
        return problem(422, "Unprocessable Content", f"{first['field']}: {first['message']}", errors=errors)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers, detail = dict(getattr(exc, "headers", None) or {}), str(exc.detail)
        if exc.status_code == 405:
            allow = allowed_methods(app, request.scope["path"], request.scope.get("root_path", ""))
            headers["Allow"] = ", ".join(allow)
            detail = f"method: {request.method[:20]} is not allowed here; this path accepts {', '.join(allow)}"
        return problem(exc.status_code, status_title(exc.status_code), detail, headers=headers or None)

    @app.exception_handler(Problem)
    async def our_problem(_request: Request, exc: Problem) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, **exc.extra)

    @app.exception_handler(RedisError)
    async def redis_down(_request: Request, exc: RedisError) -> JSONResponse:
        return problem(503, "Service Unavailable", f"redis: {type(exc).__name__}")

    # Declared so the document carries the scheme (and every route that takes it, its 401); checked below.
    bearer = HTTPBearer(auto_error=False, scheme_name="bearer",
                        description="The api's token (--api-token, ASYNCWEBRL_API_TOKEN).")

    async def authorized(request: Request) -> None:
        if not config.api_token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), config.api_token.encode()):
            metrics.REJECTED.labels("unauthorized").inc()
            raise HTTPException(401, "authorization: a valid bearer token is required",
                                headers={"WWW-Authenticate": 'Bearer realm="asyncwebrl"'})

    auth = [Depends(bearer), Depends(authorized)]

    async def existing(job_id: str) -> Job:
        job = await store.get(job_id) if is_job_id(job_id) else None
        if job is None:
            raise Problem(404, "Not Found", f"job_id: no job {job_id[:80]!r}")
        return job

    @app.get("/v1/schema/job", tags=["schemas"])
    async def job_schema() -> dict:
        """The job document's JSON Schema (the same document the CLI reads from YAML)."""
        return JobSpec.model_json_schema()

    taskset_store: list[TaskSetStore] = []

    def tasksets() -> TaskSetStore:
        if not taskset_store:
            taskset_store.append(TaskSetStore(store.redis, store.prefix))
        return taskset_store[0]

    @app.post("/v1/jobs", status_code=201, dependencies=auth, tags=["jobs"])
    async def create_job(spec: JobSpec) -> dict:
        if spec.tasks.taskset and not await tasksets().exists(spec.tasks.taskset):
            message = f"no task set {spec.tasks.taskset!r} (register it with POST /v1/tasksets)"
            raise Problem(422, "Unprocessable Content", f"tasks.taskset: {message}",
                          errors=[{"field": "tasks.taskset", "message": message}])
        try:
            job = await store.create(spec)
        except StoreFull as exc:
            raise Problem(409, "Conflict", f"jobs: {exc}") from exc
        metrics.JOBS_CREATED.inc()
        if launcher is not None:
            launcher.start(job)
        return job_view(job)

    @app.get("/v1/jobs", dependencies=auth, tags=["jobs"])
    async def list_jobs(page_size: Annotated[int, Query(ge=1, le=200)] = 50,
                        page_token: Annotated[str, Query(max_length=200)] = "") -> dict:
        try:
            offset = decode_token(page_token) if page_token else 0
        except BadPageToken as exc:
            raise Problem(400, "Bad Request", str(exc)) from exc
        jobs, nxt = await store.list(page_size, offset)
        return {"jobs": [job_view(j) for j in jobs], "next_page_token": encode_token(nxt) if nxt is not None else ""}

    @app.get("/v1/jobs/{job_id}", dependencies=auth, tags=["jobs"])
    async def get_job(job_id: str) -> dict:
        job = await existing(job_id)
        view = job_view(job, await store.progress(job.job_id))
        if launcher is not None:
            view["processes"] = await launcher.status(job.job_id)
            view["phase"] = launcher.phase(job.job_id)
        return view

    run_dir = pathlib.Path(config.run_dir)

    @app.get("/v1/jobs/{job_id}/metrics", dependencies=auth, tags=["jobs"])
    async def job_metrics(job_id: str, since_step: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
                          limit: Annotated[int, Query(ge=1, le=5000)] = 500,
                          phase: Annotated[str, Query(pattern="^(rl|warm_start)$")] = "rl") -> dict:
        """The trainer's per-step metrics after ``since_step``, oldest first (``phase=warm_start``: the
        supervised warm-start's)."""
        job = await existing(job_id)
        rows, last = await asyncio.to_thread(runs.series, runs.metrics_path(run_dir / job.job_id, phase),
                                             since_step, limit)
        return {"job_id": job.job_id, "phase": phase, "series": rows, "next_since_step": last}

    @app.get("/v1/jobs/{job_id}/logs/{role}", dependencies=auth, tags=["jobs"], response_class=PlainTextResponse)
    async def job_logs(job_id: str, role: Annotated[str, Path(max_length=40)],
                       tail_bytes: Annotated[int, Query(ge=1, le=4 * 1024 * 1024)] = 64 * 1024) -> PlainTextResponse:
        """The end of one process's log: trainer, rollout, engine-<i>, warm-trainer, warm-rollout,
        eval-<n>-engine, eval-<n>-rollout."""
        job = await existing(job_id)
        data = await asyncio.to_thread(runs.log_tail, run_dir / job.job_id, role, tail_bytes)
        if data is None:
            raise Problem(404, "Not Found", f"role: no log {role[:40]!r} for job {job.job_id}")
        return PlainTextResponse(data.decode(errors="replace"))

    def evaluations() -> Evaluations:
        if launcher is None:
            raise Problem(409, "Conflict", "evaluate: this api runs no jobs, so no evaluations "
                                           "(start it with --launcher local or --launcher kubernetes)")
        return launcher.evaluations

    @app.post("/v1/jobs/{job_id}/evaluate", status_code=202, dependencies=auth, tags=["evaluations"])
    async def evaluate(job_id: str, request: EvaluateRequest | None = None) -> dict:
        """The test split (held-out seeds) with one version of the policy; poll the evaluation it returns."""
        job = await existing(job_id)
        try:
            return await evaluations().start(job, request or EvaluateRequest())
        except EvalConflict as exc:
            raise Problem(409, "Conflict", str(exc)) from exc

    @app.get("/v1/jobs/{job_id}/evaluations", dependencies=auth, tags=["evaluations"])
    async def list_evaluations(job_id: str) -> dict:
        job = await existing(job_id)
        return {"job_id": job.job_id, "evaluations": await evaluations().list(job.job_id)}

    @app.get("/v1/jobs/{job_id}/evaluations/{eval_id}", dependencies=auth, tags=["evaluations"])
    async def get_evaluation(job_id: str, eval_id: Annotated[str, Path(pattern=r"^eval-[0-9]{1,6}$")]) -> dict:
        job = await existing(job_id)
        doc = await evaluations().get(job.job_id, int(eval_id.split("-")[1]))
        if doc is None:
            raise Problem(404, "Not Found", f"eval_id: no evaluation {eval_id} of job {job.job_id}")
        return doc

    buffer_stub: list = []  # the api's own buffer client, made on first use when no launcher brings one

    def buffer() -> buffer_pb2_grpc.BufferServiceStub:
        if launcher is not None:
            return launcher.buffer
        if not buffer_stub:
            buffer_stub.append(buffer_pb2_grpc.BufferServiceStub(aio_channel(config.buffer_target, config.auth_token)))
        return buffer_stub[0]

    async def purge(job: Job) -> dict:
        if launcher is None:
            if job.state not in FINAL:
                raise Problem(409, "Conflict", f"job_id: job {job.job_id} is {job.state} and this api runs no "
                                               "jobs, so it cannot stop it; cancel it where it runs, then purge")
        else:
            if job.state not in FINAL:
                metrics.JOBS_CANCELLED.inc()
            left = await launcher.stop(job.job_id, config.shutdown_grace_s + 30)
            if left:
                raise Problem(409, "Conflict", f"job_id: job {job.job_id} could not be stopped, so its data was "
                                               f"not deleted; still running: {', '.join(left)[:400]}",
                              still_running=left)
        ns = await store.evaluation_numbers(job.job_id)
        buffer_jobs = [j for j in (job.job_id, warm_job_id(job.job_id), *(eval_job_id(job.job_id, n) for n in ns))
                       if is_job_id(j)]
        totals = dict.fromkeys(PURGE_COUNTS, 0)
        for bj in buffer_jobs:
            try:
                reply = await buffer().DeleteJob(buffer_pb2.DeleteJobRequest(job_id=bj), timeout=60)
            except grpc.aio.AioRpcError as exc:
                raise Problem(503, "Service Unavailable", f"buffer: deleting {bj}: {exc.code().name}: "
                                                          f"{exc.details()}; the job is kept, retry the purge") from exc
            for k in PURGE_COUNTS:
                totals[k] += getattr(reply, k)
        await store.delete(job.job_id)
        return {"id": job.job_id, "name": job.spec.name, "state": "deleted", "buffer_jobs": buffer_jobs,
                "deleted": totals}

    @app.delete("/v1/jobs/{job_id}", dependencies=auth, tags=["jobs"])
    async def cancel_job(job_id: str, purge_: Annotated[bool, Query(alias="purge")] = False) -> dict:
        """Cancel: the job's processes stop, its data stays; the job's view is returned (state cancelled).

        ``purge=true``: delete the job. It is cancelled first if it still runs (its evaluations too) and its
        processes are waited for; then everything the buffer keeps for it (its groups, pending and
        dead-letter entries, counters and settings, screenshot blobs and their references, for the job, its
        warm-start and its evaluations) is deleted, and so is its record: the answer is
        ``{"id", "state": "deleted", "deleted": {counts}}`` and a later GET (or purge) of the job answers
        404. Files the job wrote under the run directory (checkpoints, metrics, logs) are kept. 409 when
        the job's processes cannot be stopped (nothing is deleted then); 503 when the buffer cannot be
        reached (the job is kept: retry)."""
        job = await existing(job_id)
        if purge_:
            return await purge(job)
        if job.state not in FINAL:
            if launcher is not None:
                await launcher.cancel(job.job_id)
            else:
                await store.set_state(job.job_id, "cancelled", "cancelled by request")
            metrics.JOBS_CANCELLED.inc()
        return job_view(await existing(job_id))

    app.include_router(viewer_router(run_dir, auth, existing))
    app.include_router(tasksets_router(config, auth, tasksets, lambda: store))

    def contract() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = with_problems(get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes,
                tags=app.openapi_tags, servers=app.servers))
        return app.openapi_schema

    app.openapi = contract  # type: ignore[method-assign]
    return app
