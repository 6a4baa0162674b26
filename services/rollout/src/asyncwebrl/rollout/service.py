"""The everlasting episode pool: groups started within the staleness gate, episodes
run as slots free up, finished groups written to the buffer.

A group is n episodes of one task instance (same task, same seed; a fresh seed
per group). Its episodes wait for pool slots, so a finished episode's slot goes
at once to the next waiting one; a new group is started whenever fewer than n
episodes are waiting and the gate is open:

    (eta + v + 1) * B - (accepted + running) > 0

as the buffer computes it from every gateway's reported running count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
import uuid

import grpc

from asyncwebrl.common.cancel import end_if_cancelled
from asyncwebrl.common.inference import BadGeneration
from asyncwebrl.common.tasks import split_seed
from asyncwebrl.common.tasksets import TaskSetStore
from asyncwebrl.rollout import metrics
from asyncwebrl.rollout.config import DEFAULT_SOURCE, RolloutConfig
from asyncwebrl.rollout.episode import Policy, run_episode
from asyncwebrl.rollout.errors import EnvFault, JudgeError, NoDemonstration
from asyncwebrl.rollout.judge import Judge, Rubric
from asyncwebrl.rollout.tasksets import SetTask, load_taskset
from asyncwebrl.v1 import buffer_pb2, env_pb2


log = logging.getLogger("asyncwebrl.rollout")


def task_rng(config: RolloutConfig) -> random.Random:
    """What draws tasks and their seeds: from --seed alone, or mixed with --seed-salt (str seeds hash
    with SHA-512, so every salt gives its own sequence)."""
    return random.Random(f"{config.seed}/{config.seed_salt}" if config.seed_salt else config.seed)


class Gateway:
    def __init__(self, config: RolloutConfig, env, buffer, blobs, client, policy: Policy,
                 judge: Judge | None = None, rubrics: dict[str, Rubric] | None = None,
                 tasksets: TaskSetStore | None = None) -> None:
        self.config = config
        self.env = env
        self.buffer = buffer
        self.blobs = blobs
        self.client = client
        self.policy = policy
        self.judge = judge
        self.rubrics = rubrics or {}
        self.tasksets = tasksets
        self.set_tasks: dict[str, SetTask] = {}  # a --taskset's tasks by their group task name
        self.rng = task_rng(config)
        self.slots = asyncio.Semaphore(config.max_concurrent_episodes)
        self.running_groups = 0
        self.waiting_episodes = 0
        self.trainer_version = 0
        self.written_groups = 0
        self.dropped: dict[str, int] = {}
        self.tasks: list[env_pb2.TaskInfo] = []
        self._groups: set[asyncio.Task] = set()
        self._stop = asyncio.Event()
        # This life of the gateway owns its envfleet leases, renewed with every report: killed
        # without warning, its leases end after envfleet's --owner-ttl-s, not its idle lease timeout.
        self.owner = f"{re.sub(r'[^A-Za-z0-9_.:-]', '-', config.gateway_id)[:100]}.{uuid.uuid4().hex[:12]}"

    async def load_tasks(self) -> None:
        if self.config.taskset:
            await self._load_taskset()
            return
        reply = await self.env.ListTasks(env_pb2.ListTasksRequest(
            source="" if self.config.tasks else self.config.task_source or DEFAULT_SOURCE), timeout=30)
        wanted = set(self.config.tasks)
        self.tasks = [
            t for t in reply.tasks
            if (t.name in wanted if wanted else True)
            and t.difficulty in self.config.difficulties
            and (self.config.include_held_out or not t.held_out or t.name in wanted)
        ]
        missing = wanted - {t.name for t in self.tasks}
        if missing or not self.tasks:
            raise ValueError(f"tasks: envfleet does not serve {sorted(missing) or 'any matching task'}")

    async def _load_taskset(self) -> None:
        """--taskset: the set's tasks of --split, --taskset-levels and --difficulties, from Redis."""
        if self.judge is None:
            raise ValueError("judge_url: task sets need a judge: their reward is the judge's verdict")
        if self.tasksets is None:
            raise ValueError("taskset: this gateway has no task set store (Redis)")
        tasks = await load_taskset(self.tasksets, self.config.taskset, self.config.split, self.config.levels,
                                   self.config.difficulties)
        if self.config.demonstrations:
            # A set's reference agent is its records' reference_answer: tasks without one have no demonstration.
            answered = [t for t in tasks if t.rubric.reference_answer]
            if not answered:
                raise ValueError(f"demonstrations: no task of set {self.config.taskset!r} chosen for this split "
                                 "has a reference_answer to demonstrate")
            log.info("task set %s: %d of %d tasks have a reference answer to demonstrate", self.config.taskset,
                     len(answered), len(tasks))
            tasks = answered
        self.set_tasks = {t.name: t for t in tasks}
        self.tasks = [t.info() for t in tasks]
        log.info("task set %s: %d tasks (%d out-of-distribution)", self.config.taskset, len(tasks),
                 sum(t.ood for t in tasks))

    async def report_running(self) -> None:
        await self.buffer.ReportRunning(buffer_pb2.ReportRunningRequest(
            job_id=self.config.job_id, gateway=self.config.gateway_id, running_groups=self.running_groups,
            ttl_s=30), timeout=10)

    async def gate_open(self) -> bool:
        await self.report_running()
        stats = await self.buffer.Stats(buffer_pb2.BufferStatsRequest(job_id=self.config.job_id), timeout=10)
        metrics.GATE_CAPACITY.set(stats.gate_capacity)
        self.trainer_version = stats.trainer_version
        if stats.gate_capacity <= 0:
            return False
        if self.config.sync:
            # The barrier: no group of version v before the endpoints serve v.
            live = await self.client.registry.live()
            served = [_version(e.weight_version) for e in live]
            if not served or min(served) < stats.trainer_version:
                metrics.BARRIER_WAITS.inc()
                return False
        return True

    async def run(self) -> None:
        """Start groups until stopped (or --max-groups), then wait for the running ones."""
        reporter = asyncio.create_task(self._report_loop())
        try:
            while not self._stop.is_set():
                if self.config.max_groups:
                    if self.written_groups >= self.config.max_groups or self._given_up():
                        break
                    # A dropped group is replaced: --max-groups counts groups written (a warm-start's trainer
                    # waits for its demonstrations; an evaluation reports the groups it asked for).
                    if self.written_groups + self.running_groups >= self.config.max_groups:
                        await asyncio.sleep(0.05)
                        continue
                if self.waiting_episodes >= self.config.group_size:
                    await asyncio.sleep(0.05)
                    continue
                try:
                    is_open = await self.gate_open()
                except grpc.aio.AioRpcError as exc:
                    log.warning("buffer unavailable (%s); gate closed", exc.code().name)
                    is_open = False
                if not is_open:
                    metrics.GATE_WAITS.inc()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self.config.gate_poll_s)
                    continue
                self._start_group()
            if self._groups:
                await asyncio.gather(*self._groups, return_exceptions=True)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            self.running_groups = 0
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.report_running()

    def _given_up(self) -> bool:
        """With --max-groups: as many groups dropped as were asked for (e.g. every task's site down)."""
        dropped = sum(self.dropped.values())
        if dropped < self.config.max_groups:
            return False
        log.error("stopping after %d groups dropped (%s) and %d written of --max-groups %d", dropped,
                  self.dropped, self.written_groups, self.config.max_groups)
        return True

    def stop(self) -> None:
        self._stop.set()

    def cancel_running(self) -> int:
        """Cancels the groups still running; their episodes release their envfleet sessions on the way
        out (a gateway killed instead would hold them until envfleet's lease timeout)."""
        running = [g for g in self._groups if not g.done()]
        for g in running:
            g.cancel()
        return len(running)

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.report_running()
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.env.Renew(env_pb2.RenewRequest(owner=self.owner), timeout=REPORT_EVERY_S)
            end_if_cancelled()

    def _start_group(self) -> None:
        task = self.rng.choice(self.tasks)
        seed = split_seed(self.rng.randrange(1 << 31), self.config.split)
        self.running_groups += 1
        self.waiting_episodes += self.config.group_size
        metrics.GROUPS_RUNNING.set(self.running_groups)
        group = asyncio.create_task(self._group(task, seed))
        self._groups.add(group)
        group.add_done_callback(self._groups.discard)

    async def _group(self, task: env_pb2.TaskInfo, seed: int) -> None:
        group_id = f"{self.config.gateway_id}-{uuid.uuid4().hex[:16]}"
        try:
            episodes = await asyncio.gather(
                *(self._episode(task, seed, f"{group_id}-e{i}") for i in range(self.config.group_size)),
                return_exceptions=True,
            )
            faults = [e for e in episodes if isinstance(e, BaseException)]
            for fault in faults:
                # Only the failed episode is lost (AsyncWebRL drops failed episodes, not their group).
                reason = fault_reason(fault)
                metrics.EPISODES_LOST.labels(reason).inc()
                log.warning("episode left out of its group (%s): %s", reason, fault)
            episodes = [e for e in episodes if not isinstance(e, BaseException)]
            if len(episodes) < min(MIN_GROUP, self.config.group_size):
                kinds = {fault_reason(e) for e in faults}
                self._drop(sorted(kinds)[0] if len(kinds) == 1 else "error", faults[0])
                return
            versions = [v for e in episodes for s in e.steps for v in s.versions]
            group = buffer_pb2.Group(
                group_id=group_id, job_id=self.config.job_id, task=task.name, seed=seed,
                difficulty=task.difficulty, episodes=episodes, created_unix_ms=int(time.time() * 1000),
            )
            try:
                await self._put(group)
            except grpc.aio.AioRpcError as exc:
                self._drop("buffer_refused", exc)
                return
            self.written_groups += 1
            metrics.GROUPS_WRITTEN.inc()
            metrics.GROUP_VERSION_SPAN.observe(max(versions) - min(versions))
            metrics.GROUP_STALENESS.observe(max(0, self.trainer_version - min(versions)))
        finally:
            self.running_groups -= 1
            metrics.GROUPS_RUNNING.set(self.running_groups)

    async def _put(self, group: buffer_pb2.Group) -> None:
        """A finished group into the buffer; while the buffer (or its Redis) is away, keep trying for
        PUT_RETRY_S: a restart takes seconds to minutes, and the group's episodes are paid for."""
        request = buffer_pb2.PutGroupRequest()
        request.group.CopyFrom(group)
        deadline, delay = time.monotonic() + PUT_RETRY_S, 0.5
        while True:
            try:
                await self.buffer.PutGroup(request, timeout=60)
                return
            except grpc.aio.AioRpcError as exc:
                # Retries are safe: PutGroup is idempotent by group id.
                if (exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
                        or time.monotonic() + delay > deadline):
                    raise
                metrics.PUT_RETRIES.inc()
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    def _drop(self, reason: str, cause: BaseException) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        metrics.GROUPS_DROPPED.labels(reason).inc()
        log.warning("group dropped (%s): %s", reason, cause)

    async def _episode(self, task: env_pb2.TaskInfo, seed: int, episode_id: str) -> buffer_pb2.EpisodeRecord:
        async with self.slots:
            self.waiting_episodes -= 1
            metrics.EPISODES_RUNNING.inc()
            web = self.set_tasks.get(task.name)
            try:
                for attempt in range(self.config.env_retries + 1):
                    try:
                        return await run_episode(
                            env=self.env, blobs=self.blobs, client=self.client, policy=self.policy,
                            job_id=self.config.job_id, task=task.name, seed=seed, difficulty=task.difficulty,
                            episode_id=episode_id, step_limit=self.config.step_limit(task.difficulty),
                            timeout_s=self.config.episode_timeout_s, history_window=self.config.history_window,
                            sampling={"max_new_tokens": self.config.max_new_tokens,
                                      "temperature": self.config.temperature},
                            judge=self.judge, rubric=web.rubric if web else self.rubrics.get(task.name),
                            demonstrate=self.config.demonstrations, version=self.trainer_version,
                            reward_mode=self.config.reward, owner=self.owner, web_task=web,
                        )
                    except BadGeneration as exc:
                        # The engine's answer cannot be trained on (e.g. its prompt expansion
                        # differs from ours): loud, counted, never retried into a pass.
                        metrics.BAD_GENERATIONS.labels(exc.reason).inc()
                        log.error("episode %s: unusable generation: %s", episode_id, exc)
                        raise
                    except EnvFault as exc:
                        metrics.EPISODES.labels("env_error").inc()
                        if attempt == self.config.env_retries:
                            raise
                        log.info("episode %s hit an environment fault (%s); running it again", episode_id, exc)
            finally:
                metrics.EPISODES_RUNNING.dec()
        raise AssertionError("unreachable")


# Running counts to the buffer and lease renewals to envfleet (whose --owner-ttl-s, 20 s by default,
# must leave room for a few missed ones).
REPORT_EVERY_S = 5.0
# How long a finished group waits for the buffer to come back before it is dropped.
PUT_RETRY_S = 300.0
# A group is trained with at least this many of its episodes: two outcomes to compare.
MIN_GROUP = 2


def fault_reason(fault: BaseException) -> str:
    if isinstance(fault, EnvFault):
        return "env_error"
    if isinstance(fault, JudgeError):
        return fault.reason  # judge_unparseable | judge_unavailable
    if isinstance(fault, NoDemonstration):
        return "no_demonstration"
    if isinstance(fault, BadGeneration):
        return "bad_generation"
    return "error"


def _version(label: str) -> int:
    try:
        return int(label)
    except ValueError:
        return -1
