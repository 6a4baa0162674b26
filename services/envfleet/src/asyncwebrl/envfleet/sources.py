"""envfleet's task sources by name (--task-sources): MiniWoB, the built-in sites, static pages."""

from __future__ import annotations

import os

from asyncwebrl.envfleet.sites.server import SiteSource
from asyncwebrl.envfleet.tasks import MiniWoBSource, StaticSource, TaskSource


def build_sources(task_sources: tuple[str, ...], static_dirs: tuple[str, ...], miniwob_episode_ms: int) -> list[TaskSource]:
    sources: list[TaskSource] = []
    for name in task_sources:
        if name == "webgym-lite":
            sources.append(SiteSource())
        if name == "miniwob":
            sources.append(MiniWoBSource(miniwob_episode_ms))
        elif name == "static":
            sources.append(StaticSource(tuple(os.fspath(d) for d in static_dirs)))
    return sources
