"""The Kubernetes launcher (``--launcher kubernetes``): a job's processes as workloads (``k8s_manifests``),
created through the Kubernetes API (``k8s_client``), and the reconcile loop that follows them.

A reconcile loop polls the trainer Jobs: success or failure ends the job (its workloads are deleted but a
finished trainer Job, kept for its logs), and so does a gateway or engine container restarted more than
``--k8s-backoff-limit`` times; cancel deletes every object of the job. A finished warm-start phase is
followed by the RL phase (the job's launch again: the buffer's settings are sent again with it).
Evaluations run their engine and gateway as workloads too (``run_evaluation``); the loop deletes those an
earlier api process left behind. The api's service account needs create, get, list and delete on
``batch`` jobs, ``apps`` deployments and ``autoscaling`` horizontalpodautoscalers, and list on pods, in
the namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

import grpc
from redis.exceptions import RedisError

from asyncwebrl.api import metrics
from asyncwebrl.api.config import ApiConfig
from asyncwebrl.api.errors import KubeError, LaunchError
from asyncwebrl.api.evaluate import EvalPlan, Evaluations
from asyncwebrl.api.jobargs import resolve_model
from asyncwebrl.api.jobbuffer import configure_job, job_settings
from asyncwebrl.api.launchers import stop_evaluations
from asyncwebrl.api.k8s_client import WORKLOADS, KubeClient
from asyncwebrl.api.k8s_manifests import (EVAL_LABEL, MANAGED_BY, MANAGER, RL_ROLES, ROLE_LABEL, WARM_ROLES,
                                          eval_manifests, job_dir, manifests, object_name)
from asyncwebrl.api.k8s_settings import JOB_LABEL, resolve_namespace, settings_from_config
from asyncwebrl.api.store import FINAL, Job, JobStore
from asyncwebrl.common.cancel import cancelling, end_if_cancelled
from asyncwebrl.common.grpcclient import aio_channel
from asyncwebrl.common.weights import latest_version
from asyncwebrl.v1 import buffer_pb2_grpc

log = logging.getLogger("asyncwebrl.api.k8s")


def _labels(obj: dict) -> dict:
    return (obj.get("metadata") or {}).get("labels") or {}


def _evaluation(obj: dict) -> int | None:
    """The number of the evaluation an object belongs to, None for a job's own."""
    n = _labels(obj).get(EVAL_LABEL)
    return int(n) if isinstance(n, str) and n.isdigit() else None


def _role(obj: dict) -> str:
    return _labels(obj).get(ROLE_LABEL, "")


def _true(status: dict, kind: str) -> dict | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind and c.get("status") == "True"),
                None)


def job_outcome(obj: dict) -> tuple[str, str] | None:
    """("succeeded" | "failed", reason naming the Job) once a batch/v1 Job has finished, else None."""
    name, status = obj["metadata"]["name"], obj.get("status") or {}
    if int(status.get("succeeded") or 0) >= 1 or _true(status, "Complete"):
        return "succeeded", f"{_role(obj)} Job {name} succeeded"
    failed = _true(status, "Failed")
    if failed:
        return "failed", (f"{_role(obj)} Job {name} failed: {failed.get('reason', '')}: "
                          f"{failed.get('message', '')}").rstrip(": ")[:400]
    return None


def crashed(pod: dict, limit: int) -> str | None:
    """Why a pod counts as crashed once too often (a container restarted more than ``limit`` times)."""
    for c in (pod.get("status") or {}).get("containerStatuses") or []:
        restarts = int(c.get("restartCount") or 0)
        if restarts > limit:
            waiting = ((c.get("state") or {}).get("waiting") or {}).get("reason", "")
            last = ((c.get("lastState") or {}).get("terminated") or {})
            detail = ", ".join(x for x in (waiting, f"last exit {last['exitCode']}" if "exitCode" in last else "",
                                           last.get("reason", "")) if x)
            return f"{_role(pod)} pod {pod['metadata'].get('name', '?')} restarted {restarts} times" + \
                (f" ({detail})" if detail else "")
    return None


def leftovers(objects: list[dict]) -> list[dict]:
    """What a succeeded or failed job must not keep: all but its finished trainer Job (kept for its logs)."""
    return [o for o in objects if _role(o) != "trainer" or o["kind"] != "Job" or job_outcome(o) is None]


def workload_view(obj: dict) -> dict:
    """One workload in GET /v1/jobs/{id}: role, name, kind and its pod counts."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    view = {"role": _role(obj), "name": meta.get("name", ""), "kind": obj.get("kind", "")}
    if obj.get("kind") == "HorizontalPodAutoscaler":
        return view | {"replicas": int(status.get("currentReplicas") or 0), "min": int(spec.get("minReplicas") or 1),
                       "max": int(spec.get("maxReplicas") or 1), "desired": int(status.get("desiredReplicas") or 0)}
    if obj.get("kind") == "Job":
        return view | {"replicas": int(spec.get("parallelism") or 1), "ready": int(status.get("ready") or 0),
                       "active": int(status.get("active") or 0), "succeeded": int(status.get("succeeded") or 0),
                       "failed": int(status.get("failed") or 0)}
    return view | {"replicas": int(spec.get("replicas") or 0), "ready": int(status.get("readyReplicas") or 0),
                   "available": int(status.get("availableReplicas") or 0), "succeeded": None, "failed": None}


class KubernetesLauncher:
    """The api's launcher with ``--launcher kubernetes`` (a ``launchers.Launcher``)."""

    def __init__(self, config: ApiConfig, store: JobStore) -> None:
        self.config = config
        self.store = store
        self.settings = settings_from_config(config, resolve_namespace(config))
        self.kube = KubeClient(config.k8s_api, self.settings.namespace, config.k8s_token_file, config.k8s_ca_file,
                               config.k8s_timeout_s)
        self._channel = aio_channel(config.buffer_target, config.auth_token)
        self.buffer = buffer_pb2_grpc.BufferServiceStub(self._channel)
        # The api reads the checkpoints and writes the episodes where the pods do: --run-dir is the volume.
        self.evaluations = Evaluations(store, self.buffer, self.settings.run_dir, self.settings.model_roots,
                                       self.run_evaluation)
        self._launches: dict[str, asyncio.Task] = {}
        self._watched: set[str] = set()  # jobs this api launched or resumed: their trainer Job is polled
        self._phases: dict[str, str] = {}
        self._launched: dict[str, float] = {}  # loop time each job's last launch finished
        self._reconciler: asyncio.Task | None = None
        self._closing = False

    # --- the app's interface -------------------------------------------------------------------

    def start(self, job: Job) -> None:
        """Schedules the creation of the job's workloads (its state: running once created, or failed)."""
        self._start(job)

    def _start(self, job: Job) -> asyncio.Task:
        self._ensure_reconciler()
        jid = job.job_id
        task = self._launches.get(jid)
        if task is None or task.done():
            task = self._launches[jid] = asyncio.create_task(self._launch(job))
            task.add_done_callback(lambda t: self._launches.pop(jid, None) if self._launches.get(jid) is t else None)
        return task

    async def resume(self) -> None:
        """Jobs the store says are pending or running: their workloads are created where missing."""
        self._ensure_reconciler()
        offset, tasks = 0, []
        while True:
            jobs, nxt = await self.store.list(200, offset)
            for job in jobs:
                if job.state not in FINAL:
                    log.info("resuming %s", job.job_id)
                    tasks.append(self._start(job))
            if nxt is None:
                break
            offset = nxt
        if tasks:
            await asyncio.wait(tasks)

    async def cancel(self, job_id: str) -> None:
        """State cancelled, then every object of the job deleted (retried by the reconcile loop if the API fails)."""
        await self.store.set_state(job_id, "cancelled", "cancelled by request")
        self._watched.discard(job_id)
        self._phases[job_id] = "cancelled"
        task = self._launches.pop(job_id, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        metrics.JOBS_FINISHED.labels("cancelled").inc()
        try:
            await self._delete(await self._objects(job_id))
        except KubeError as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            log.warning("cancel of %s: %s; the reconcile loop retries", job_id, exc)

    async def stop(self, job_id: str, timeout_s: float) -> list[str]:
        """Before a purge: the job cancelled if it still runs, its evaluations too, then every workload of
        the job (evaluations' included) deleted and waited for until none is listed."""
        job = await self.store.get(job_id)
        if job is not None and job.state not in FINAL:
            await self.cancel(job_id)
        left = await stop_evaluations(self.evaluations, job_id, timeout_s)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while True:
                objects = await self._all_objects(job_id)
                if not objects or loop.time() >= deadline:
                    break
                await self._delete(objects)
                await asyncio.sleep(min(2.0, max(0.0, deadline - loop.time())))
        except KubeError as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            return [*left, f"kubernetes: {exc}"]
        left += [f"{o['kind']} {o['metadata']['name']}" for o in objects]
        if not left:
            self._watched.discard(job_id)
            self._phases.pop(job_id, None)
        return left

    async def status(self, job_id: str) -> list[dict]:
        try:
            objects = await self._objects(job_id)
        except KubeError as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            return [{"role": "kubernetes", "error": str(exc)}]
        order = {r: i for i, r in enumerate((*WARM_ROLES, *RL_ROLES))}
        return [workload_view(o) for o in sorted(objects, key=lambda o: order.get(_role(o), 99))]

    def phase(self, job_id: str) -> str | None:
        """pending, warm_start, rl, or the final state; None for a job this api has not launched."""
        return self._phases.get(job_id)

    async def close(self) -> None:
        """api shutdown: the workloads keep running; resume() picks their jobs up again."""
        self._closing = True
        await self.evaluations.close()
        tasks = [t for t in (self._reconciler, *self._launches.values()) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.kube.close()
        await self._channel.close()

    # --- launching ----------------------------------------------------------------------------

    async def _launch(self, job: Job) -> None:
        jid = job.job_id
        self._phases.setdefault(jid, "pending")
        try:
            objects, phase = await self._plan(job)
            for obj in objects:
                if await self.kube.create(obj):
                    log.info("created %s %s", obj["kind"], obj["metadata"]["name"], extra={"job": jid})
            current = await self.store.get(jid)
            end_if_cancelled()
            if current is None or current.state in FINAL:
                return
            if current.state != "running":
                await self.store.set_state(jid, "running")
            self._phases[jid] = phase
            self._watched.add(jid)
            self._launched[jid] = asyncio.get_running_loop().time()
        except Exception as exc:  # noqa: BLE001 - any error fails the job, never the api
            if cancelling():  # api shutdown or cancel: the job stays as it is
                raise asyncio.CancelledError from exc
            if isinstance(exc, (LaunchError, KubeError, grpc.aio.AioRpcError, OSError)):
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                reason = f"launch: {detail}"
            else:
                log.exception("launcher error in %s", jid)
                reason = f"launch: internal error ({type(exc).__name__}); see the api log"
            await self._end(jid, "failed", reason, every=True)

    async def _plan(self, job: Job) -> tuple[list[dict], str]:
        """The objects of the job's current phase, after the buffer has its settings."""
        a = job.spec.algorithm
        model = await asyncio.to_thread(resolve_model, job.spec, self.settings.model_roots)
        timeout = self.config.k8s_timeout_s
        await configure_job(self.buffer, job_settings(job), timeout)
        if a.warm_start_steps:
            warm = await asyncio.to_thread(latest_version, job_dir(self.settings, job.job_id) / "warm")
            if warm is None or warm[0].version < a.warm_start_steps:
                await configure_job(self.buffer, job_settings(job, "warm_start"), timeout)
                return manifests(job, self.settings, phase="warm_start", model=model), "warm_start"
            model = warm[1]
        return manifests(job, self.settings, model=model), "rl"

    # --- the reconcile loop --------------------------------------------------------------------

    def _ensure_reconciler(self) -> None:
        if self._reconciler is None or self._reconciler.done():
            self._reconciler = asyncio.create_task(self._reconcile_forever())

    async def _reconcile_forever(self) -> None:
        while not self._closing:
            try:
                await self.reconcile_once()
                end_if_cancelled()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive an error or a bug in one round
                if cancelling():
                    raise asyncio.CancelledError from exc
                if isinstance(exc, (KubeError, RedisError, OSError)):
                    log.warning("reconcile: %s", exc)
                else:
                    log.exception("reconcile error")
            await asyncio.sleep(self.config.k8s_poll_s)

    async def reconcile_once(self) -> None:
        """One pass: end the jobs whose trainer Job finished; delete what final jobs left behind."""
        started = asyncio.get_running_loop().time()
        by_job: dict[str, list[dict]] = {}
        evaluations: list[dict] = []
        for obj in await self._all_objects(None):
            if _evaluation(obj) is not None:
                evaluations.append(obj)
            else:
                by_job.setdefault(obj["metadata"]["labels"][JOB_LABEL], []).append(obj)
        await self._delete_stray_evaluations(evaluations)
        pods: dict[str, list[dict]] = {}
        if self._watched:
            for pod in await self.kube.list("Pod", f"{MANAGED_BY}={MANAGER}"):
                pods.setdefault(((pod.get("metadata") or {}).get("labels") or {}).get(JOB_LABEL, ""), []).append(pod)
        for jid in sorted(set(by_job) | self._watched):
            task = self._launches.get(jid)
            # What was listed is older than a launch still running or done since: the next pass sees it.
            if (task is not None and not task.done()) or self._launched.get(jid, -math.inf) >= started:
                continue
            try:
                await self._reconcile_job(jid, by_job.get(jid, []), pods.get(jid, []))
                end_if_cancelled()
            except (KubeError, RedisError, OSError) as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                log.warning("reconcile of %s: %s", jid, exc)

    async def _reconcile_job(self, jid: str, objects: list[dict], pods: list[dict]) -> None:
        job = await self.store.get(jid)
        if job is None:
            return  # not this api's job (another install in the namespace)
        if job.state in FINAL:
            self._watched.discard(jid)
            await self._delete(objects if job.state == "cancelled" else leftovers(objects))
        elif jid in self._watched:
            await self._advance(job, {_role(o): o for o in objects}, pods)

    async def _advance(self, job: Job, objects: dict[str, dict], pods: list[dict]) -> None:
        jid = job.job_id
        if "trainer" in objects:
            await self._delete([objects[r] for r in WARM_ROLES if r in objects])  # left by an api restart
            outcome = job_outcome(objects["trainer"])
            if outcome is None:
                reason = next((r for r in (crashed(p, self.settings.backoff_limit) for p in pods
                                           if _role(p) in ("rollout", "inference")) if r), None)
                outcome = ("failed", reason) if reason else None
            if outcome is not None:
                await self._end(jid, *outcome)
            return
        if "warm-trainer" in objects:
            outcomes = [job_outcome(objects[r]) for r in WARM_ROLES if r in objects]
            failed = next((o[1] for o in outcomes if o and o[0] == "failed"), None)
            if failed:
                await self._end(jid, "failed", f"warm-start: {failed}")
                return
            if job_outcome(objects["warm-trainer"]) is None:
                return
            steps = job.spec.algorithm.warm_start_steps
            warm = await asyncio.to_thread(latest_version, job_dir(self.settings, jid) / "warm")
            if warm is None or warm[0].version < steps:
                await self._end(jid, "failed", "warm-start: the trainer exited without writing its last version",
                                every=True)
                return
            log.info("warm-start of %s done; starting RL", jid)
            await self._delete([objects[r] for r in WARM_ROLES if r in objects])
            self._start(job)
            return
        await self._end(jid, "failed", f"trainer Job {object_name(jid, 'trainer')} is gone (deleted outside the api?)")

    async def _end(self, job_id: str, state: str, reason: str, every: bool = False) -> None:
        """Final state (unless the job already has one), then its Deployments (``every``: all objects) go."""
        self._watched.discard(job_id)
        try:
            job = await self.store.get(job_id)
            if job is not None and job.state not in FINAL:
                await self.store.set_state(job_id, state, reason)
                self._phases[job_id] = state
                metrics.JOBS_FINISHED.labels(state).inc()
                log.info("job %s %s: %s", job_id, state, reason)
            objects = await self._objects(job_id)
            await self._delete(objects if every else leftovers(objects))
        except (KubeError, RedisError, OSError) as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            log.warning("ending %s: %s; the reconcile loop retries the clean-up", job_id, exc)

    async def _objects(self, job_id: str | None) -> list[dict]:
        """This launcher's objects of one job, or of every job; not those of evaluations."""
        return [o for o in await self._all_objects(job_id) if _evaluation(o) is None]

    async def _all_objects(self, job_id: str | None) -> list[dict]:
        selector = f"{MANAGED_BY}={MANAGER}" + (f",{JOB_LABEL}={job_id}" if job_id else "")
        out = []
        for kind in WORKLOADS:
            for obj in await self.kube.list(kind, selector):
                obj.setdefault("kind", kind)  # list items carry no kind
                if isinstance((obj.get("metadata") or {}).get("labels"), dict) and \
                        obj["metadata"]["labels"].get(JOB_LABEL):
                    out.append(obj)
        return out

    async def _delete(self, objects: list[dict]) -> None:
        for obj in objects:
            if await self.kube.delete(obj["kind"], obj["metadata"]["name"]):
                log.info("deleted %s %s", obj["kind"], obj["metadata"]["name"])

    # --- evaluations ---------------------------------------------------------------------------

    async def run_evaluation(self, plan: EvalPlan) -> None:
        """The evaluation's engine (a Deployment) until it is ready, then its gateway (a Job) until it has
        succeeded; both are deleted after. Raises LaunchError when a call, the engine or the gateway fails."""
        engine, gateway = eval_manifests(plan.job, self.settings, plan.n, plan.eval_job, plan.version, plan.model,
                                         plan.groups, plan.group_size)
        try:
            await self.kube.create(engine)
            await self._eval_wait(plan, engine, self._engine_ready, self.settings.engine_start_timeout_s,
                                  "the evaluation's engine is not ready")
            await self.kube.create(gateway)
            await self._eval_wait(plan, gateway, self._gateway_done, math.inf, "")
        except KubeError as exc:
            raise LaunchError(str(exc)) from exc
        finally:
            await self._delete_evaluation([engine, gateway])

    async def _eval_wait(self, plan: EvalPlan, obj: dict, done, timeout: float, what: str) -> None:
        """Polls until ``done(current object)`` is true; a crash-looping pod of the evaluation, or the object
        gone, fails it."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        selector = f"{MANAGED_BY}={MANAGER},{JOB_LABEL}={plan.job.job_id},{EVAL_LABEL}={plan.n}"
        while True:
            current = await self.kube.get(kind, name)
            if current is None:
                raise LaunchError(f"{kind} {name} is gone (deleted outside the api?)")
            if done(current):
                return
            for pod in await self.kube.list("Pod", selector):
                reason = crashed(pod, self.settings.backoff_limit)
                if reason:
                    raise LaunchError(reason)
            if loop.time() > deadline:
                raise LaunchError(f"{what} after {timeout:.0f}s ({kind} {name})")
            await asyncio.sleep(self.config.k8s_poll_s)

    @staticmethod
    def _engine_ready(obj: dict) -> bool:
        return int((obj.get("status") or {}).get("readyReplicas") or 0) >= 1

    @staticmethod
    def _gateway_done(obj: dict) -> bool:
        outcome = job_outcome(obj)
        if outcome is not None and outcome[0] == "failed":
            raise LaunchError(f"the evaluation's gateway: {outcome[1]}")
        return outcome is not None

    async def _delete_evaluation(self, objects: list[dict]) -> None:
        try:
            await self._delete(objects)
        except KubeError as exc:
            log.warning("deleting an evaluation's workloads: %s; the reconcile loop retries", exc)

    async def _delete_stray_evaluations(self, objects: list[dict]) -> None:
        """Workloads of evaluations that no longer run in this api (an earlier api process stopped)."""
        for obj in objects:
            jid, n = obj["metadata"]["labels"][JOB_LABEL], _evaluation(obj)
            if self.evaluations.running(jid, n) or await self.store.get(jid) is None:
                continue  # running, or not this api's job (another install in the namespace)
            await self._delete([obj])
