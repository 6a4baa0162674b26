"""A gateway on a task set (--taskset): its tasks from Redis by split, level and band, each served inline by
envfleet (AllocateRequest.web_task), ended by its answer or its band's step limit, judged on its own rubric."""

from __future__ import annotations

import asyncio
import json
import pathlib

import grpc
import pytest

from asyncwebrl.api.config import ApiConfig
from asyncwebrl.api.jobargs import eval_gateway_args, rollout_args, warm_rollout_args
from asyncwebrl.api.jobspec import JobSpec
from asyncwebrl.api.store import Job
from asyncwebrl.common.config import parse_config
from asyncwebrl.common.redisclient import make_redis
from asyncwebrl.common.tasksets import TaskSetStore
from asyncwebrl.common.webgym import parse_webgym
from asyncwebrl.rollout import episode as episode_module
from asyncwebrl.rollout.config import RolloutConfig
from asyncwebrl.rollout.judge import Rubric, Verdict
from asyncwebrl.rollout.service import Gateway
from asyncwebrl.rollout.tasksets import group_task, load_taskset
from asyncwebrl.v1 import env_pb2
from tests.rollout.test_judge import SHOT, _AnsweringClient, _FakeBlobs, _FakeBuffer  # noqa: F401

PREFIX = "taskset-gw:"
JUDGE = "http://judge.test:9000"


def _task(tid, split, level, **extra):
    return {"task_id": tid, "task_name": f"Do {tid}", "website": f"https://{tid}.example.com/start?x=1",
            "difficulty": level, "evaluator_reference": [f"{tid} fact one", {"description": f"{tid} fact two"}],
            "reference_answer": f"answer-{tid}", "split": split} | extra


TASKS = [
    _task("tr-easy", "train", 2, allowed_origins=["https://cdn.example.net"]),
    _task("tr-med", "train", 5),
    _task("tr-hard", "train", 9),
    _task("te-easy", "test", 1),
    _task("ood-hard", "test_ood", 8),
    _task("has space", "test", 3, website="https://space.example.com"),  # envfleet refuses its id: left out
]


@pytest.fixture
async def store(redis_server):
    redis = make_redis(redis_server.url, redis_server.password)
    store = TaskSetStore(redis, PREFIX)
    await store.put("web", parse_webgym([json.dumps(t) for t in TASKS]), "0" * 64, replace=True)
    yield store
    await store.delete("web")
    await redis.aclose()


class _StubJudge:
    """Stands in for the judge model (none can run here): records what it is asked, passes answers that
    equal the rubric's reference."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Rubric, str]] = []

    async def judge(self, instruction, rubric, answer, screenshots):
        self.calls.append((instruction, rubric, answer))
        ok = answer == rubric.reference_answer
        facts = (True,) * len(rubric.facts) if ok else (False,) * len(rubric.facts)
        return Verdict(ok, facts, "VERDICT: " + ("PASS" if ok else "FAIL"), 0.01)


class _RecordingEnv:
    """A FAKE envfleet: records Allocate requests; a step is never done on its own (a live site has no
    reward), as envfleet serves an inline web task."""

    def __init__(self) -> None:
        self.allocations: list[env_pb2.AllocateRequest] = []

    def _obs(self) -> env_pb2.Observation:
        import hashlib

        shot = env_pb2.ScreenshotRef(sha256=hashlib.sha256(SHOT).hexdigest(), width=56, height=56, mime="image/png",
                                     size_bytes=len(SHOT))
        return env_pb2.Observation(instruction="envfleet's text", title="Page", screenshot=shot)

    async def Allocate(self, request, timeout=None):
        self.allocations.append(request)
        return env_pb2.AllocateResponse(session_id=f"s{len(self.allocations)}", observation=self._obs())

    async def Step(self, request, timeout=None):
        return env_pb2.StepResponse(observation=self._obs(), done=False, info=env_pb2.StepInfo(page_changed=True))

    async def Release(self, request, timeout=None):
        return env_pb2.ReleaseResponse()


class _ClickingClient(_AnsweringClient):
    """Never answers: clicks until the step limit."""

    def __init__(self, tokenizer) -> None:
        text = '<tool_call>{"name": "computer_use", "arguments": {"action": "click", "coordinate": [5, 5]}}</tool_call>'
        self.ids = tokenizer(text, add_special_tokens=False)["input_ids"]


def _config(**kw) -> RolloutConfig:
    kw = {"job_id": "ts", "taskset": "web", "judge_url": JUDGE, "judge_kind": "openai", "split": "train", **kw}
    return RolloutConfig(**kw)


async def _gateway(store, config, env=None, client=None, judge=None):
    from asyncwebrl.common.models.tiny import SHIPPED
    from asyncwebrl.rollout.__main__ import load_policy_io

    policy = load_policy_io(str(SHIPPED / "qwen2_5_vl"))
    client = client or _AnsweringClient
    gateway = Gateway(config, env or _RecordingEnv(), _FakeBuffer(), _FakeBlobs(), client(policy.tokenizer),
                      policy, judge if judge is not None else _StubJudge(), None, store)
    await gateway.load_tasks()
    return gateway


async def test_train_keeps_the_train_split_by_levels_and_band(store):
    gateway = await _gateway(store, _config())
    assert sorted(gateway.set_tasks) == sorted(group_task("web", "train", t) for t in ("tr-easy", "tr-med", "tr-hard"))
    assert {t.difficulty for t in gateway.tasks} == {"easy", "medium", "hard"}
    assert not any(t.held_out for t in gateway.tasks)
    gateway = await _gateway(store, _config(taskset_levels=("5", "9", "1")))
    assert sorted(t.task_id for t in gateway.set_tasks.values()) == ["tr-hard", "tr-med"]
    gateway = await _gateway(store, _config(taskset_levels=("5", "9"), difficulties=("hard",)))
    assert [t.task_id for t in gateway.set_tasks.values()] == ["tr-hard"]


async def test_test_keeps_test_and_marks_the_out_of_distribution_tasks(store):
    gateway = await _gateway(store, _config(split="test"))
    by_id = {t.task_id: t for t in gateway.set_tasks.values()}
    assert sorted(by_id) == ["ood-hard", "te-easy"]
    assert by_id["ood-hard"].ood and not by_id["te-easy"].ood
    info = {t.name: t for t in gateway.tasks}
    assert info["taskset/web/test_ood/ood-hard"].held_out and not info["taskset/web/test/te-easy"].held_out
    assert len(await load_taskset(store, "web", "any")) == len(TASKS) - 1


async def test_a_missing_or_emptied_set_fails_at_start(store):
    with pytest.raises(ValueError, match="^taskset: no task set 'nosuch'"):
        await _gateway(store, _config(taskset="nosuch"))
    with pytest.raises(ValueError, match="^taskset: no task of set 'web'"):
        await _gateway(store, _config(split="test", taskset_levels=("5",)))
    with pytest.raises(ValueError, match="^taskset: no task of set 'web'"):
        await _gateway(store, _config(difficulties=("medium",), taskset_levels=("2",)))


def test_flags_name_the_field_that_conflicts():
    ok = parse_config(RolloutConfig, ["--taskset", "web", "--taskset-levels", "1,10", "--judge-url", JUDGE],
                      environ={})
    assert ok.levels == {1, 10} and ok.taskset == "web"
    for kw, why in (
        ({"judge_url": ""}, "^judge_url: task sets need a judge"),
        ({"tasks": ("miniwob/click-test",)}, "^tasks: not with --taskset"),
        ({"task_source": "miniwob"}, "^task_source: not with --taskset"),
        ({"taskset_levels": ("0",)}, "^taskset_levels: must be integers 1-10"),
        ({"taskset_levels": ("11",)}, "^taskset_levels: must be integers 1-10"),
        ({"taskset": "Bad Name"}, "^taskset: must match"),
    ):
        with pytest.raises(ValueError, match=why):
            _config(**kw)
    with pytest.raises(ValueError, match="^taskset_levels: needs --taskset"):
        RolloutConfig(taskset_levels=("3",))
    with pytest.raises(SystemExit):
        parse_config(RolloutConfig, ["--taskset", "web"], environ={})


async def test_a_gateway_without_a_judge_refuses_a_task_set(store):
    gateway = Gateway(_config(), _RecordingEnv(), _FakeBuffer(), _FakeBlobs(), None, None, None, None, store)
    with pytest.raises(ValueError, match="^judge_url: task sets need a judge"):
        await gateway.load_tasks()


async def test_the_allocate_request_carries_the_task_inline(store):
    (task,) = [t for t in await load_taskset(store, "web", "train") if t.task_id == "tr-easy"]
    request = episode_module.allocate_request(task.name, 7, "ts", "gw.1", task)
    assert request.task == "" and request.seed == 7 and request.owner == "gw.1" and request.HasField("web_task")
    w = request.web_task
    assert (w.task_id, w.instruction, w.start_url) == ("tr-easy", "Do tr-easy", "https://tr-easy.example.com/start?x=1")
    assert list(w.allowed_origins) == ["https://tr-easy.example.com", "https://cdn.example.net"]
    assert not episode_module.allocate_request("miniwob/click-test", 1, "ts").HasField("web_task")
    # A group's task stays within the buffer's 256 characters whatever the id.
    long = group_task("s" * 60, "test_ood", "x" * 200)
    assert long.startswith(f"taskset/{'s' * 60}/test_ood/#") and len(long) <= 256
    assert group_task("web", "test", "x" * 200) == "taskset/web/test/" + "x" * 200


async def test_an_answered_episode_is_judged_on_the_records_rubric(store):
    judge = _StubJudge()
    gateway = await _gateway(store, _config(group_size=2, taskset_levels=("2",)), judge=judge)
    env = gateway.env
    (task,) = gateway.tasks
    await gateway._group(task, 3)
    (group,) = gateway.buffer.groups
    assert group.task == "taskset/web/train/tr-easy" and group.difficulty == "easy"
    assert [a.web_task.task_id for a in env.allocations] == ["tr-easy", "tr-easy"]
    for e in group.episodes:
        # The answer (4412) ends the episode at once, though envfleet's step is not done.
        assert e.finish_reason == "answer" and e.length == 1 and e.judged and not e.success
    instruction, rubric, answer = judge.calls[0]
    assert instruction == "Do tr-easy", "the task's instruction, not the page's"
    assert rubric == Rubric(("tr-easy fact one", "tr-easy fact two"), "answer-tr-easy") and answer == "4412"


async def test_a_demonstration_answers_the_records_reference_answer(store, redis_server):
    """The warm-start's reference agent on a task set: each train task's reference_answer, answered at its first
    step, written as the tool call the policy should have written and judged like any answer."""
    judge = _StubJudge()
    gateway = await _gateway(store, _config(group_size=1, demonstrations=True, taskset_levels=("5",)), judge=judge)
    (task,) = gateway.tasks
    await gateway._group(task, 3)
    (group,) = gateway.buffer.groups
    (e,) = group.episodes
    (step,) = e.steps
    assert json.loads(step.action) == {"action": "answer", "text": "answer-tr-med"}, step.action
    assert gateway.policy.decode(step.output_ids).startswith(step.text) and "answer-tr-med" in step.text
    assert list(step.logprobs) == [0.0] * len(step.output_ids) and not step.invalid_action
    assert e.finish_reason == "answer" and e.judged and e.success, "the judge passed the reference answer"
    assert [c[2] for c in judge.calls] == ["answer-tr-med"]
    # Tasks without a reference answer have no demonstration: left out, and a set with none is refused.
    redis = make_redis(redis_server.url, redis_server.password)
    bare = TaskSetStore(redis, PREFIX)
    records = [_task("tr-a", "train", 2), _task("tr-b", "train", 3, reference_answer="")]
    await bare.put("bare", parse_webgym([json.dumps(r) for r in records]), "1" * 64, replace=True)
    try:
        gateway = await _gateway(bare, _config(taskset="bare", demonstrations=True))
        assert [t.task_id for t in gateway.set_tasks.values()] == ["tr-a"]
        assert len((await _gateway(bare, _config(taskset="bare"))).set_tasks) == 2, "RL keeps both"
        with pytest.raises(ValueError, match="^demonstrations: no task of set 'bare'"):
            await _gateway(bare, _config(taskset="bare", demonstrations=True, taskset_levels=("3",)))
    finally:
        await bare.delete("bare")
        await redis.aclose()


@pytest.mark.parametrize(("level", "limit"), [("2", 3), ("5", 4), ("9", 5)])
async def test_the_step_limit_is_the_tasks_band(store, level, limit):
    judge = _StubJudge()
    gateway = await _gateway(store, _config(group_size=2, taskset_levels=(level,), steps_easy=3, steps_medium=4,
                                            steps_hard=5), client=_ClickingClient, judge=judge)
    (task,) = gateway.tasks
    await gateway._group(task, 3)
    (group,) = gateway.buffer.groups
    assert all(e.length == limit and e.finish_reason == "step_limit" and not e.success for e in group.episodes)
    assert not judge.calls, "only an answer is judged"


def _job(tasks: dict, judge: bool = True) -> Job:
    doc = {"name": "web", "tasks": tasks, "algorithm": {"warm_start_steps": 1}}
    if judge:
        doc["judge"] = {"url": "https://judge.example:8443/v1", "model": "judge-vl"}
    return Job("web-0a1b2c", JobSpec.model_validate(doc), "pending", 0, 0)


@pytest.mark.parametrize("levels", [[], [1, 10]])
def test_a_jobs_task_set_reaches_its_gateways(levels, tmp_path: pathlib.Path):
    job = _job({"taskset": "web", "taskset_difficulties": levels, "difficulties": ["easy", "hard"]})
    config = ApiConfig(run_dir=str(tmp_path), allow_no_token=True, weightsync_target="127.0.0.1:50065")
    model = tmp_path / "model"
    train = parse_config(RolloutConfig, rollout_args(config, job, model), environ={})
    ev = parse_config(RolloutConfig, eval_gateway_args(config, job, model, "web-0a1b2c-ev1", 4, 8), environ={})
    for gw, split in ((train, "train"), (ev, "test")):
        assert (gw.taskset, gw.levels, gw.split, gw.tasks, gw.task_source) == ("web", set(levels), split, (), "")
        assert gw.difficulties == ("easy", "hard") and gw.judge_url
    # The warm-start demonstrates the set's own train tasks (their reference answers).
    warm = parse_config(RolloutConfig, warm_rollout_args(config, job, model), environ={})
    assert (warm.taskset, warm.split, warm.tasks, warm.task_source) == ("web", "train", (), "") and warm.demonstrations
    # Without a judge the gateway refuses the job's task set, naming the field.
    with pytest.raises(SystemExit):
        parse_config(RolloutConfig, rollout_args(config, _job({"taskset": "web"}, judge=False), model), environ={})


class _AioError(grpc.aio.AioRpcError):
    def __init__(self, code, details):
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class _UnreachableEnv(_RecordingEnv):
    """A FAKE envfleet whose Allocate answers UNAVAILABLE: a site that does not load, or envfleet away (then the
    next call succeeds)."""

    def __init__(self, details: str, failures: int) -> None:
        super().__init__()
        self.details, self.failures = details, failures

    async def Allocate(self, request, timeout=None):
        if len(self.allocations) < self.failures:
            self.allocations.append(request)
            raise _AioError(grpc.StatusCode.UNAVAILABLE, self.details)
        return await super().Allocate(request, timeout)


async def test_an_unreachable_site_is_an_environment_fault_at_once_not_a_wait(store):
    """envfleet's UNAVAILABLE for a site that did not load is a fault of the episode's environment: retried
    --env-retries times, then the episode is lost (the group dropped as env_error), never waited on until the
    episode's timeout as an envfleet that is away is."""
    env = _UnreachableEnv("site unreachable: http://shop.test:9/: net::ERR_CONNECTION_REFUSED", failures=100)
    gateway = await _gateway(store, _config(group_size=2, taskset_levels=("2",), episode_timeout_s=8,
                                            env_retries=1), env=env)
    (task,) = gateway.tasks
    started = asyncio.get_running_loop().time()
    await gateway._group(task, 3)
    assert asyncio.get_running_loop().time() - started < 5
    assert not gateway.buffer.groups and gateway.dropped == {"env_error": 1}
    assert len(env.allocations) == 4, "each episode's Allocate, and once again for its retry"
    # envfleet itself away (its buffer down, a restart) is still waited for.
    env = _UnreachableEnv("buffer unavailable", failures=2)
    gateway = await _gateway(store, _config(group_size=2, taskset_levels=("2",), episode_timeout_s=60), env=env)
    await gateway._group(gateway.tasks[0], 3)
    assert len(gateway.buffer.groups) == 1 and not gateway.dropped


class _GatedBuffer(_FakeBuffer):
    """The FAKE buffer's gate, always open."""

    async def ReportRunning(self, request, timeout=None):
        return None

    async def Stats(self, request, timeout=None):
        from asyncwebrl.v1 import buffer_pb2

        return buffer_pb2.BufferStatsResponse(gate_capacity=8)


async def test_max_groups_counts_groups_written_and_gives_up_after_as_many_dropped(store):
    """A warm-start's trainer waits for the demonstrations it was promised, and an evaluation reports the groups
    it asked for: a group dropped for its site is replaced; a gateway whose every group drops stops after
    --max-groups of them instead of running on."""
    env = _UnreachableEnv("site unreachable: http://shop.test:9/: net::ERR_CONNECTION_REFUSED", failures=2)
    gateway = await _gateway(store, _config(group_size=2, taskset_levels=("2",), env_retries=0, max_groups=2,
                                            max_concurrent_episodes=2), env=env)
    gateway.buffer = _GatedBuffer()
    await asyncio.wait_for(gateway.run(), 60)
    assert gateway.dropped == {"env_error": 1} and gateway.written_groups == 2 and len(gateway.buffer.groups) == 2
    env = _UnreachableEnv("site unreachable: http://shop.test:9/: net::ERR_CONNECTION_REFUSED", failures=10 ** 6)
    gateway = await _gateway(store, _config(group_size=2, taskset_levels=("2",), env_retries=0, max_groups=3),
                             env=env)
    gateway.buffer = _GatedBuffer()
    await asyncio.wait_for(gateway.run(), 60)
    assert gateway.dropped == {"env_error": 3} and gateway.written_groups == 0
    assert len(env.allocations) == 6, "three groups of two, then it stopped"
