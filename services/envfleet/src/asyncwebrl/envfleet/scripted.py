"""A scripted agent for a few MiniWoB tasks, driven only through the gRPC API.

It reads the instruction and the element boxes of the first observation, plans
its actions, and sends them in the 0-1000 coordinate space a Qwen-style model
would use. The demo, the tests and the benchmark use it to prove the
environment end to end without a model.
"""

from __future__ import annotations

import dataclasses
import re

from asyncwebrl.v1 import env_pb2

SOLVABLE = ("miniwob/click-test", "miniwob/click-button", "miniwob/click-button-sequence",
            "miniwob/click-collapsible", "miniwob/enter-text", "miniwob/enter-password", "miniwob/login-user")


@dataclasses.dataclass
class Episode:
    task: str
    seed: int
    instruction: str = ""
    reward: float = 0.0
    done: bool = False
    steps: int = 0
    screenshots: list[str] = dataclasses.field(default_factory=list)


def _quoted(instruction: str) -> list[str]:
    return re.findall(r'"([^"]*)"', instruction)


def _centre(el: env_pb2.Element, width: int, height: int) -> env_pb2.Point:
    return env_pb2.Point(x=(el.x + el.width / 2) * 1000 / width, y=(el.y + el.height / 2) * 1000 / height)


def _find(elements, *, tag: str | None = None, id: str | None = None, text: str | None = None) -> env_pb2.Element:
    for el in elements:
        if (tag is None or el.tag == tag) and (id is None or el.id == id) and (text is None or el.text == text):
            return el
    raise LookupError(f"no element tag={tag} id={id} text={text!r}")


def plan(task: str, observation: env_pb2.Observation, width: int, height: int) -> list[env_pb2.Action]:
    """The actions that solve ``task`` from its first observation."""
    els = observation.elements
    words = _quoted(observation.instruction)

    def click(el):
        return env_pb2.Action(click=env_pb2.Click(at=_centre(el, width, height)))

    def type_into(el, text):
        return env_pb2.Action(type=env_pb2.TypeText(text=text, at=_centre(el, width, height), clear=True))

    if task == "miniwob/click-test":
        return [click(_find(els, id="subbtn"))]
    if task == "miniwob/click-button":
        return [click(_find(els, tag="button", text=words[0]))]
    if task == "miniwob/click-button-sequence":
        return [click(_find(els, id="subbtn")), click(_find(els, id="subbtn2"))]
    if task == "miniwob/click-collapsible":
        # Submit moves once the section opens; the oracle replans from each page, so step 2 finds it there.
        return [click(_find(els, tag="h3")), click(_find(els, id="subbtn"))]
    if task == "miniwob/enter-text":
        return [type_into(_find(els, tag="input"), words[0]), click(_find(els, id="subbtn"))]
    if task == "miniwob/enter-password":
        return [type_into(_find(els, id="password"), words[0]), type_into(_find(els, id="verify"), words[0]),
                click(_find(els, id="subbtn"))]
    if task == "miniwob/login-user":
        user, password = words[:2]
        return [
            type_into(_find(els, id="username"), user),
            type_into(_find(els, id="password"), password),
            click(_find(els, id="subbtn")),
        ]
    raise ValueError(f"task: no script for {task}")


def run_episode(stub, task: str, seed: int, timeout: float = 30.0) -> Episode:
    """Allocate, follow the plan, release; the reward is what the page said. The plan is made
    again from every page (as the oracle does), so a target that moved is found where it is now."""
    episode = Episode(task, seed)
    allocated = stub.Allocate(env_pb2.AllocateRequest(task=task, seed=seed, include_elements=True), timeout=timeout)
    try:
        episode.instruction = allocated.observation.instruction
        episode.screenshots.append(allocated.observation.screenshot.sha256)
        vp = allocated.viewport
        observation = allocated.observation
        while episode.steps < len(actions := plan(task, observation, vp.width, vp.height)):
            result = stub.Step(env_pb2.StepRequest(session_id=allocated.session_id, action=actions[episode.steps]),
                               timeout=timeout)
            observation = result.observation
            episode.steps += 1
            episode.screenshots.append(result.observation.screenshot.sha256)
            episode.reward, episode.done = result.reward, result.done
            if result.done:
                break
    finally:
        stub.Release(env_pb2.ReleaseRequest(session_id=allocated.session_id), timeout=timeout)
    return episode
