"""The built-in sites through the real envfleet: every template solved by the oracle, a random
agent that mostly fails, isolated concurrent sessions, and bad task specs refused."""

from __future__ import annotations

import random
import urllib.error
import urllib.request

import grpc
import pytest

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.envfleet.sites import all_sites
from asyncwebrl.envfleet.sites.agents import action_for, run_oracle, run_random
from asyncwebrl.envfleet.sites.base import Goal, PlanStep, Site, Template, difficulty_of, normalise
from asyncwebrl.envfleet.sites.server import SOURCE, SiteServer, instantiate, outcome_of
from asyncwebrl.envfleet.sites.splits import seeds, split_of, success_by_difficulty, tasks_for
from asyncwebrl.v1 import env_pb2, env_pb2_grpc
from tests.envfleet.conftest import TOKEN, start_envfleet

SITES = all_sites()
TEMPLATES = [t for s in SITES for t in s.templates]


@pytest.fixture(scope="module")
def lite(buffer, tmp_path_factory):
    svc = start_envfleet(tmp_path_factory.mktemp("lite"), buffer, "--task-sources", "webgym-lite",
                         "--contexts-per-browser", "3")
    yield env_pb2_grpc.EnvServiceStub(channel(svc.target, TOKEN))
    svc.stop()


def test_suite_shape():
    names = [t.name for t in TEMPLATES]
    assert len(names) == len(set(names))
    assert {s.name for s in SITES} >= {"shop"}
    for t in TEMPLATES:
        assert t.difficulty == difficulty_of(t.optimal_steps)
        world = SITES[[s.name for s in SITES].index(t.site_name)].world(random.Random(0))
        plan = t.plan(t.goal(world, random.Random(0)), world)
        assert len(plan) == t.optimal_steps, t.name


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.name)
def test_oracle_solves_every_template(lite, template):
    for seed in (0, 1, 2):
        result = run_oracle(lite, f"{SOURCE}/{template.name}", seed)
        assert result.done and result.reward == 1.0, (template.name, seed, result.steps)
        assert result.steps == template.optimal_steps


def test_random_agent_rarely_succeeds_on_medium_and_hard(lite):
    results = [(t.difficulty, run_random(lite, f"{SOURCE}/{t.name}", 7).reward == 1.0) for t in TEMPLATES]
    table = success_by_difficulty(results)
    assert table["all"]["episodes"] == len(TEMPLATES)
    for difficulty in ("medium", "hard"):
        assert table[difficulty]["success"] <= 0.2, table


def test_list_tasks_describes_the_suite(lite):
    tasks = {t.name: t for t in lite.ListTasks(env_pb2.ListTasksRequest(source=SOURCE)).tasks}
    assert len(tasks) == len(TEMPLATES)
    for t in TEMPLATES:
        info = tasks[f"{SOURCE}/{t.name}"]
        assert (info.difficulty, info.optimal_steps, info.held_out) == (t.difficulty, t.optimal_steps, t.ood)
        assert (info.default_viewport.width, info.default_viewport.height) == (1280, 720)


def test_concurrent_sessions_are_isolated(lite):
    task = f"{SOURCE}/shop/add-to-cart"
    a = lite.Allocate(env_pb2.AllocateRequest(task=task, seed=4, include_elements=True), timeout=60)
    b = lite.Allocate(env_pb2.AllocateRequest(task=task, seed=4, include_elements=True), timeout=60)
    try:
        site = next(s for s in SITES if s.name == "shop")
        template = next(t for t in site.templates if t.name == "shop/add-to-cart")
        episode = instantiate(site, template, 4)
        observation = a.observation
        reply = None
        for step in template.plan(episode.goal, episode.world):
            action = action_for(step, observation, 1280, 720)
            reply = lite.Step(env_pb2.StepRequest(session_id=a.session_id, action=action), timeout=60)
            observation = reply.observation
        assert reply.done and reply.reward == 1.0
        # The same task and seed in another session: its own world, an empty cart, no reward.
        cart = next(e for e in b.observation.elements if e.id == "nav-cart")
        r = lite.Step(env_pb2.StepRequest(session_id=b.session_id, action=env_pb2.Action(
            click=env_pb2.Click(at=env_pb2.Point(x=(cart.x + cart.width / 2) * 1000 / 1280,
                                                 y=(cart.y + cart.height / 2) * 1000 / 720)))), timeout=60)
        assert not r.done and r.reward == 0.0
        assert any(e.id == "nav-cart" and e.text == "Cart (0)" for e in r.observation.elements)
    finally:
        for s in (a, b):
            lite.Release(env_pb2.ReleaseRequest(session_id=s.session_id))


def test_pages_need_the_episode_cookie(lite):
    a = lite.Allocate(env_pb2.AllocateRequest(task=f"{SOURCE}/shop/find-product", seed=1), timeout=60)
    try:
        # Without the session's cookie the site refuses to serve (and so cannot leak another episode).
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(a.observation.url, timeout=10)
        assert err.value.code == 403
        req = urllib.request.Request(a.observation.url, headers={"Cookie": "wl_episode=" + "f" * 32})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(req, timeout=10)
    finally:
        lite.Release(env_pb2.ReleaseRequest(session_id=a.session_id))


def test_unknown_template_is_not_found(lite):
    with pytest.raises(grpc.RpcError) as err:
        lite.Allocate(env_pb2.AllocateRequest(task=f"{SOURCE}/shop/no-such-template"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# ---------------------------------------------------------------- in-process


class _Bad(Template):
    optimal_steps = 1

    def __init__(self, name):
        self.name = name

    def goal(self, world, rng):
        return Goal("x", "/")

    def plan(self, goal, world):
        return [PlanStep("answer", text="x")]


class _Site(Site):
    title = "Bad"

    def __init__(self, name, templates):
        self.name, self.templates = name, templates

    def world(self, rng):
        return {}

    def routes(self):
        return []


@pytest.mark.parametrize("names", [["other/x"], ["bad/x", "bad/x"], ["x"]])
def test_bad_template_specs_are_refused(names):
    with pytest.raises(ValueError, match="template name"):
        SiteServer([_Site("bad", [_Bad(n) for n in names])])


def test_episodes_are_made_and_dropped_per_session():
    server = SiteServer(SITES, max_episodes=2)
    one = server.open("shop/add-to-cart", 3)
    two = server.open("shop/add-to-cart", 3)
    assert one.key != two.key and one.world is not two.world
    assert one.goal == two.goal  # same (template, seed), same task instance
    with pytest.raises(RuntimeError):
        server.open("shop/add-to-cart", 4)
    server.close(one.key)
    server.close(two.key)
    assert server.episodes == {}
    with pytest.raises(KeyError):
        server.open("shop/nope", 1)


def test_answers_compare_normalised():
    site = next(s for s in SITES if s.name == "shop")
    template = next(t for t in site.templates if t.name == "shop/price-lookup")
    episode = instantiate(site, template, 5)
    expected = episode.goal.answer
    assert outcome_of(episode, None).done is False
    assert outcome_of(episode, f"  {expected.lower()} ").reward == 1.0
    assert outcome_of(episode, expected.replace("$", "") + " USD").reward == 0.0
    assert outcome_of(episode, "nothing").done and outcome_of(episode, "nothing").reward == 0.0
    assert normalise("Café  Ünïcode, $12.00.") == "cafe unicode 12"


def test_splits_are_disjoint_and_report_by_difficulty():
    train, test = set(seeds("train", 50)), set(seeds("test", 50))
    assert len(train) == len(test) == 50 and not train & test
    assert all(split_of(False, s) == "train" for s in train) and all(split_of(False, s) == "test" for s in test)
    ood = {t for t, _ in tasks_for("ood", TEMPLATES, 2)}
    in_dist = {t for t, _ in tasks_for("train", TEMPLATES, 2)}
    assert not ood & in_dist and ood | in_dist == {t.name for t in TEMPLATES}
    assert {s for _, s in tasks_for("ood", TEMPLATES, 2)} <= test
    table = success_by_difficulty([("easy", True), ("easy", False), ("hard", False)])
    assert table["easy"] == {"success": 0.5, "episodes": 2} and table["all"]["episodes"] == 3
    assert table["medium"] == {"success": 0.0, "episodes": 0}
    with pytest.raises(ValueError):
        seeds("validation", 3)
