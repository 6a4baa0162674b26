"""The contract of the built-in sites ("webgym-lite").

A ``Site`` is a small server-rendered web application. Every episode gets its own
``Episode``: a seeded, mutable ``world`` (catalogue, inbox, settings ...) that
lives on the server, keyed by a cookie, created on Allocate and dropped on
Release, so concurrent sessions never see each other and the page cannot forge
success. A ``Template`` turns a seed into a concrete goal, says when the world
satisfies it (``check``) and, for the oracle agent, how to get there (``plan``).

Everything a site renders goes through ``html.escape`` (``esc``, with the other
shared fragments in ``sites.html``); every form value it reads goes through
``field``, which bounds its length.
"""

from __future__ import annotations

import abc
import dataclasses
import random
import re
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from asyncwebrl.envfleet.sites.html import esc

MAX_FIELD_CHARS = 500


def difficulty_of(optimal_steps: int) -> str:
    """easy <= 3 steps, medium 4-8, hard >= 9 (the issue's definition)."""
    if optimal_steps <= 3:
        return "easy"
    return "medium" if optimal_steps <= 8 else "hard"


def normalise(text: str) -> str:
    """What an answer is compared by: case, accents, punctuation, spacing and currency signs ignored."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    text = re.sub(r"[$€£,]", "", text)
    text = re.sub(r"[^a-z0-9.@:/ -]+", " ", text)
    text = re.sub(r"(\d)\.0+\b", r"\1", text)  # 12.00 == 12
    return " ".join(text.split()).strip(" .")


@dataclasses.dataclass
class Goal:
    instruction: str
    start: str  # path the episode opens at, e.g. "/shop/"
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    answer: str | None = None  # set for information lookup tasks, which end with answer(text)


@dataclasses.dataclass(frozen=True)
class PlanStep:
    """One oracle action. ``target`` finds an element in the observation:
    ``{"id": ...}``, or ``{"text": ..., "tag": ...}`` (exact visible text, optional tag)."""

    kind: str  # click | type | select | answer | scroll
    target: dict[str, str] | None = None
    text: str = ""
    enter: bool = False


@dataclasses.dataclass
class Episode:
    key: str
    site: Site
    template: Template
    seed: int
    world: dict[str, Any]
    goal: Goal
    answered: str | None = None


class Template(abc.ABC):
    """A family of tasks; ``goal(world, rng)`` picks one concrete instance."""

    name: str  # "<site>/<template>", unique
    optimal_steps: int  # what the oracle needs; the test checks it uses exactly this many
    ood: bool = False  # held out of train/test, for the out-of-distribution split

    @property
    def difficulty(self) -> str:
        return difficulty_of(self.optimal_steps)

    @property
    def site_name(self) -> str:
        return self.name.split("/", 1)[0]

    @abc.abstractmethod
    def goal(self, world: dict[str, Any], rng: random.Random) -> Goal: ...

    def check(self, world: dict[str, Any], goal: Goal) -> bool:
        """State tasks: does the world satisfy the goal? Answer tasks leave this False."""
        return False

    @abc.abstractmethod
    def plan(self, goal: Goal, world: dict[str, Any]) -> list[PlanStep]: ...


Handler = Callable[[web.Request, Episode], Awaitable[web.StreamResponse]]


class Site(abc.ABC):
    """A web application under ``/<name>/``; handlers get the request and its episode."""

    name: str
    title: str
    templates: list[Template]

    @abc.abstractmethod
    def world(self, rng: random.Random) -> dict[str, Any]:
        """The seeded initial state one episode starts from."""

    @abc.abstractmethod
    def routes(self) -> list[tuple[str, str, Handler]]:
        """(method, path under /<name>, handler); paths may hold {placeholders}."""


def field(form: Any, name: str, default: str = "") -> str:
    """A bounded, stripped form value (forms are outside input)."""
    value = form.get(name, default) if form is not None else default
    return str(value)[:MAX_FIELD_CHARS].strip()


def redirect(path: str) -> web.Response:
    # 303: a POST-then-GET, so Back and reload behave as on a real site.
    return web.Response(status=303, headers={"Location": path})


def page(site: Site, title: str, body: str, nav: list[tuple[str, str, str]] | None = None, active: str = "") -> web.Response:
    """The shared page frame: header with the site name and navigation, then ``body``.

    ``nav`` holds (key, label, href); each link gets the id ``nav-<key>``.
    """
    links = "".join(
        f'<a class="nav{" active" if key == active else ""}" id="nav-{esc(key)}" href="{esc(href)}">{esc(label)}</a>'
        for key, label, href in (nav or [])
    )
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)} · {esc(site.title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/style.css"></head>
<body class="site-{esc(site.name)}">
<header class="topbar"><a class="brand" id="brand" href="/{esc(site.name)}/">{esc(site.title)}</a>
<nav>{links}</nav></header>
<main>{body}</main>
<footer>© {esc(site.title)} · Help · Privacy · Terms</footer>
</body></html>"""
    return web.Response(text=document, content_type="text/html")
