"""Reference agents for the built-in sites, driven only through the gRPC API.

``run_oracle`` knows the goal the way the site does (the same seeded
instantiation) and follows its template's plan with coordinate actions found in
the observation's element boxes: it proves a task solvable in its optimal step
count, and its trajectories can serve as demonstrations. ``run_random`` clicks,
types and scrolls at random: the floor a learning agent must clear.
"""

from __future__ import annotations

import dataclasses
import random

from asyncwebrl.common.tasks import STEP_LIMITS
from asyncwebrl.envfleet.sites import all_sites
from asyncwebrl.envfleet.sites.base import PlanStep
from asyncwebrl.envfleet.sites.server import SOURCE, instantiate
from asyncwebrl.v1 import env_pb2


@dataclasses.dataclass
class Result:
    task: str
    seed: int
    difficulty: str
    reward: float = 0.0
    done: bool = False
    steps: int = 0
    actions: list[env_pb2.Action] = dataclasses.field(default_factory=list)


def _template(task: str):
    name = task.removeprefix(SOURCE + "/")
    for site in all_sites():
        for template in site.templates:
            if template.name == name:
                return site, template
    raise KeyError(f"task: {task!r} is not a built-in site task")


def _find(observation: env_pb2.Observation, target: dict[str, str]) -> env_pb2.Element:
    for el in observation.elements:
        if "id" in target and el.id != target["id"]:
            continue
        if "text" in target and el.text != target["text"]:
            continue
        if "tag" in target and el.tag != target["tag"]:
            continue
        return el
    raise LookupError(f"no visible element matches {target}")


def _point(el: env_pb2.Element, width: int, height: int, left: bool = False) -> env_pb2.Point:
    x = el.x + (min(8.0, el.width / 2) if left else el.width / 2)
    return env_pb2.Point(x=x * 1000 / width, y=(el.y + el.height / 2) * 1000 / height)


def action_for(step: PlanStep, observation: env_pb2.Observation, width: int, height: int) -> env_pb2.Action:
    if step.kind == "answer":
        return env_pb2.Action(answer=env_pb2.Answer(text=step.text))
    if step.kind == "scroll":
        return env_pb2.Action(scroll=env_pb2.Scroll(direction=env_pb2.SCROLL_DIRECTION_DOWN))
    el = _find(observation, step.target or {})
    if step.kind == "click":
        return env_pb2.Action(click=env_pb2.Click(at=_point(el, width, height)))
    if step.kind == "type":
        return env_pb2.Action(type=env_pb2.TypeText(text=step.text, at=_point(el, width, height, left=True),
                                                    clear=True, enter=step.enter))
    raise ValueError(f"plan step kind {step.kind!r}")


def _run(stub, task: str, seed: int, difficulty: str, choose) -> Result:
    result = Result(task, seed, difficulty)
    allocated = stub.Allocate(env_pb2.AllocateRequest(task=task, seed=seed, include_elements=True), timeout=60)
    try:
        observation, vp = allocated.observation, allocated.viewport
        for index in range(STEP_LIMITS[difficulty]):
            action = choose(index, observation, vp.width, vp.height)
            if action is None:
                break
            reply = stub.Step(env_pb2.StepRequest(session_id=allocated.session_id, action=action), timeout=60)
            result.actions.append(action)
            result.steps += 1
            observation = reply.observation
            result.reward, result.done = reply.reward, reply.done
            if reply.done:
                break
    finally:
        stub.Release(env_pb2.ReleaseRequest(session_id=allocated.session_id), timeout=60)
    return result


def run_oracle(stub, task: str, seed: int) -> Result:
    site, template = _template(task)
    episode = instantiate(site, template, seed)
    plan = template.plan(episode.goal, episode.world)

    def choose(index, observation, width, height):
        return action_for(plan[index], observation, width, height) if index < len(plan) else None

    return _run(stub, task, seed, template.difficulty, choose)


_WORDS = ["hello", "test", "blue", "order", "2", "Lyon", "yes", "admin", "42", "search"]


def run_random(stub, task: str, seed: int) -> Result:
    _, template = _template(task)
    rng = random.Random(f"random-agent:{task}:{seed}")

    def choose(index, observation, width, height):
        roll = rng.random()
        point = env_pb2.Point(x=rng.uniform(0, 1000), y=rng.uniform(0, 1000))
        if roll < 0.65:
            return env_pb2.Action(click=env_pb2.Click(at=point))
        if roll < 0.8:
            return env_pb2.Action(type=env_pb2.TypeText(text=rng.choice(_WORDS), at=point, enter=rng.random() < 0.5))
        if roll < 0.92:
            direction = rng.choice([env_pb2.SCROLL_DIRECTION_DOWN, env_pb2.SCROLL_DIRECTION_UP])
            return env_pb2.Action(scroll=env_pb2.Scroll(direction=direction))
        if roll < 0.97:
            return env_pb2.Action(go_back=env_pb2.GoBack())
        return env_pb2.Action(answer=env_pb2.Answer(text=rng.choice(_WORDS)))

    return _run(stub, task, seed, template.difficulty, choose)
