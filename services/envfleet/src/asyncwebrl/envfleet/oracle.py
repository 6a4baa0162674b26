"""The reference agent's next action for a session: the built-in sites follow their
template's plan, the scripted MiniWoB tasks their script; both find their targets
in the page's element boxes as they are now."""

from __future__ import annotations

from typing import Any

from asyncwebrl.envfleet import scripted
from asyncwebrl.envfleet.sites.agents import action_for
from asyncwebrl.envfleet.sites.server import SOURCE
from asyncwebrl.v1 import env_pb2


class NoOracle(Exception):
    """This task, or this moment of it, has no reference action."""


def next_action(task: str, episode: Any, index: int, observation: env_pb2.Observation, width: int,
                height: int) -> env_pb2.Action:
    if task.startswith(SOURCE + "/") and episode is not None:
        plan = episode.template.plan(episode.goal, episode.world)
    elif task in scripted.SOLVABLE:
        plan = None
    else:
        raise NoOracle(f"task {task} has no reference agent")
    try:
        if plan is None:
            # The MiniWoB scripts plan from the page they see; the step index picks the next action.
            actions = scripted.plan(task, observation, width, height)
            if index >= len(actions):
                raise NoOracle(f"the script of {task} has {len(actions)} actions, all taken")
            return actions[index]
        if index >= len(plan):
            raise NoOracle(f"the plan of {task} has {len(plan)} steps, all taken")
        return action_for(plan[index], observation, width, height)
    except (LookupError, ValueError) as exc:
        raise NoOracle(f"the reference agent cannot act on this page: {exc}") from exc
