"""A job's task set (``--taskset``): WebGym tasks read from Redis at start (``common.tasksets``), kept by split,
level and difficulty band, and served inline by envfleet (``AllocateRequest.web_task``; envfleet has no Redis).

Split (``--split``): train keeps the set's train tasks; test its test and test_ood tasks, the test_ood ones
marked (``held_out``, and ``test_ood`` in their group's task name) so an evaluation reports them apart; any
keeps every task. Each task's group is named ``taskset/<set>/<split>/<task id>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any

from asyncwebrl.common.tasksets import TaskSetStore
from asyncwebrl.common.webgym import origin
from asyncwebrl.rollout.judge import Rubric
from asyncwebrl.v1 import env_pb2

log = logging.getLogger("asyncwebrl.rollout")

SPLITS = {"train": ("train",), "test": ("test", "test_ood"), "any": ("train", "test", "test_ood")}
PREFIX = "taskset/"
MAX_GROUP_TASK = 256  # the buffer's bound on a group's task
MAX_ORIGINS = 32  # envfleet's bound on WebTask.allowed_origins


@dataclasses.dataclass(frozen=True)
class SetTask:
    """One task of a task set, as the gateway runs it."""

    name: str  # the group's task: taskset/<set>/<split>/<id>
    task_id: str
    instruction: str
    website: str
    allowed_origins: tuple[str, ...]  # the website's origin first, then the task's extra ones
    difficulty: str  # easy | medium | hard: the step limit's band
    level: int  # 1-10
    split: str  # train | test | test_ood
    rubric: Rubric

    @property
    def ood(self) -> bool:
        return self.split == "test_ood"

    def info(self) -> env_pb2.TaskInfo:
        """The task as the gateway's sampler sees envfleet's tasks."""
        return env_pb2.TaskInfo(name=self.name, source="taskset", difficulty=self.difficulty, held_out=self.ood,
                                description=self.instruction[:200])

    def web_task(self):
        """The inline task of the Allocate request (``env_pb2.WebTask``)."""
        return env_pb2.WebTask(task_id=self.task_id, instruction=self.instruction, start_url=self.website,
                               allowed_origins=list(self.allowed_origins))


def _fact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return value.get("description") or value.get("fact") or value.get("text") or ""


def servable(task_id: str) -> bool:
    """Whether envfleet takes the id in a WebTask (1-200 printable characters, no whitespace)."""
    return 0 < len(task_id) <= 200 and task_id.isprintable() and not any(c.isspace() for c in task_id)


def _origins(record: dict[str, Any]) -> tuple[str, ...]:
    """The website's origin, then the task's extra ones; the website's is left out where it would pass
    envfleet's bound (it allows the start URL's origin anyway)."""
    extra = tuple(record.get("allowed_origins") or ())
    both = tuple(dict.fromkeys((origin(record["website"]), *extra)))
    return both if len(both) <= MAX_ORIGINS else extra[:MAX_ORIGINS]


def group_task(taskset: str, split: str, task_id: str) -> str:
    """``taskset/<set>/<split>/<id>``; an id that would make it longer than a group's task may be (256) or is not
    printable stands as ``#`` and 16 hex digits of its sha256."""
    name = f"{PREFIX}{taskset}/{split}/{task_id}"
    if len(name) <= MAX_GROUP_TASK and name.isprintable():
        return name
    return f"{PREFIX}{taskset}/{split}/#{hashlib.sha256(task_id.encode()).hexdigest()[:16]}"


def set_task(taskset: str, record: dict[str, Any]) -> SetTask:
    """A stored record (``WebGymTask.record()``) as the gateway runs it; its rubric is its own
    ``evaluator_reference`` and ``reference_answer``."""
    task_id = str(record["id"])
    facts = tuple(_fact(f) for f in record["evaluator_reference"])
    return SetTask(
        name=group_task(taskset, record["split"], task_id), task_id=task_id,
        instruction=record["instruction"], website=record["website"],
        allowed_origins=_origins(record),
        difficulty=record["difficulty"], level=int(record["level"]), split=record["split"],
        rubric=Rubric(facts, record.get("reference_answer") or ""),
    )


async def load_taskset(store: TaskSetStore, name: str, split: str, levels: frozenset[int] = frozenset(),
                       difficulties: tuple[str, ...] = ("easy", "medium", "hard")) -> list[SetTask]:
    """The set's tasks of ``split`` (train | test | any), of ``levels`` (empty: all) and ``difficulties``;
    ValueError naming ``taskset`` if the set is missing or nothing is left."""
    if not await store.exists(name):
        raise ValueError(f"taskset: no task set {name!r} in Redis (register it with POST /v1/tasksets)")
    records = list(await store.tasks(name))
    splits = SPLITS[split]
    chosen = [r for r in records
              if r["split"] in splits and (not levels or int(r["level"]) in levels) and r["difficulty"] in difficulties]
    kept = [set_task(name, r) for r in chosen if servable(str(r["id"]))]
    if len(kept) < len(chosen):
        log.warning("task set %s: %d tasks left out: envfleet takes task ids of 1-200 printable characters "
                    "without whitespace", name, len(chosen) - len(kept))
    if not kept:
        raise ValueError(
            f"taskset: no task of set {name!r} ({len(records)} tasks) is in split {'/'.join(splits)}, "
            f"levels {','.join(map(str, sorted(levels))) or 'any'} and difficulties {','.join(difficulties)}")
    return kept
