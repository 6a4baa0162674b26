"""One episode, step by step (ARCHITECTURE.md "One episode"), into an EpisodeRecord."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import time

import grpc

from asyncwebrl.common.agent.actions import format_action, parse_action
from asyncwebrl.common.agent.prompt import HistoryStep, collapse_image_tokens, prompt_ids, render
from asyncwebrl.common.agent.vision import image_tokens
from asyncwebrl.common.blobstore import BlobStore
from asyncwebrl.common.inference import InferenceClient
from asyncwebrl.common.rewards import succeeded, trained_reward
from asyncwebrl.common.webgym import SITE_UNREACHABLE
from asyncwebrl.rollout import metrics
from asyncwebrl.rollout.errors import EnvFault, NoDemonstration
from asyncwebrl.rollout.judge import Judge, Rubric
from asyncwebrl.rollout.tasksets import SetTask
from asyncwebrl.v1 import buffer_pb2, env_pb2

log = logging.getLogger("asyncwebrl.rollout")

# envfleet answers these when the environment, not the policy, failed.
ENV_FAULT_CODES = (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                   grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED)


END_MARKERS = ("<|im_end|>", "<|endoftext|>")


@dataclasses.dataclass
class Policy:
    """What the gateway needs of the model: its tokenizer and image processor."""

    tokenizer: object
    image_processor: object
    image_token_id: int

    def image_tokens(self, ref: env_pb2.ScreenshotRef) -> int:
        return image_tokens(self.image_processor, ref.height, ref.width)

    def decode(self, ids: list[int]) -> str:
        """Output text for the parser. Special tokens are kept (a tokenizer may mark
        ``<tool_call>`` special, and skipping it would hide the call); only the
        end-of-turn markers go."""
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        for marker in END_MARKERS:
            text = text.replace(marker, "")
        return text


def _versions(raw: list[str]) -> list[int]:
    try:
        return [int(v) for v in raw]
    except ValueError as exc:
        raise ValueError(f"weight versions must be integers to be trained on, got {raw[:3]}") from exc


async def _demonstration(env, session: str, policy: Policy, rubric: Rubric | None,
                         web_task: SetTask | None) -> tuple[str, list[int]]:
    """The reference agent's next action: envfleet's Oracle, or for a task set's task its record's
    ``reference_answer`` answered at once (such a task has no other reference agent)."""
    if web_task is not None:
        if rubric is None or not rubric.reference_answer:
            raise NoDemonstration(f"task set task {web_task.task_id!r} has no reference_answer")
        action = env_pb2.Action(answer=env_pb2.Answer(text=rubric.reference_answer))
    else:
        try:
            reply = await env.Oracle(env_pb2.OracleRequest(session_id=session), timeout=60)
        except grpc.aio.AioRpcError as exc:
            raise EnvFault(f"Oracle: {exc.code().name}: {exc.details()}") from exc
        if not reply.available:
            raise NoDemonstration(reply.reason)
        action = reply.action
    text = format_action(action)
    ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"]
    return text, [*ids, policy.tokenizer.convert_tokens_to_ids("<|im_end|>")]


async def _allocate(env, request: env_pb2.AllocateRequest, deadline: float) -> env_pb2.AllocateResponse:
    """A lease; while envfleet is full (RESOURCE_EXHAUSTED: every context leased) or away (UNAVAILABLE:
    restarting) wait for it, as that is capacity, not a fault of this episode; failing at once would burn
    through whole groups while envfleet restarts. Anything else, or still waiting at the deadline, is an
    EnvFault."""
    delay = 0.1
    while True:
        try:
            return await env.Allocate(request, timeout=60)
        except grpc.aio.AioRpcError as exc:
            waits = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
            # A task's site that cannot be loaded is UNAVAILABLE too, but waiting for it would hold the episode
            # until its timeout (600 s by default): it is an environment fault at once.
            site = exc.code() == grpc.StatusCode.UNAVAILABLE and (exc.details() or "").startswith(SITE_UNREACHABLE)
            if exc.code() not in waits or site or time.monotonic() + delay > deadline:
                raise EnvFault(f"Allocate: {exc.code().name}: {exc.details()}") from exc
            metrics.ALLOCATE_WAITS.inc()
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)


def allocate_request(task: str, seed: int, job_id: str, owner: str = "",
                     web_task: SetTask | None = None) -> env_pb2.AllocateRequest:
    """What Allocate gets: envfleet's task by name, or a task set's task inline (``web_task``; ``task`` is then
    empty: envfleet serves the inline task in a fresh context)."""
    if web_task is None:
        return env_pb2.AllocateRequest(task=task, seed=seed, job_id=job_id, owner=owner)
    return env_pb2.AllocateRequest(seed=seed, job_id=job_id, owner=owner, web_task=web_task.web_task())


async def run_episode(
    *, env, blobs: BlobStore, client: InferenceClient, policy: Policy, job_id: str, task: str, seed: int,
    difficulty: str, episode_id: str, step_limit: int, timeout_s: float, history_window: int,
    sampling: dict, judge: Judge | None = None, rubric: Rubric | None = None,
    demonstrate: bool = False, version: int = 0, reward_mode: str = "success", owner: str = "",
    web_task: SetTask | None = None,
) -> buffer_pb2.EpisodeRecord:
    """``demonstrate``: the reference agent (envfleet's Oracle; a task set's reference answer) acts instead
    of the policy, and its action is recorded as the tool call the policy should have
    written (logprob 0, the trainer's current ``version``), for supervised warm-starts.
    ``web_task``: a task set's task, allocated inline; its instruction is the agent's and the judge's."""
    started = time.monotonic()
    lease = await _allocate(env, allocate_request(task, seed, job_id, owner, web_task), started + timeout_s)
    session = lease.session_id
    observation = lease.observation
    instruction = web_task.instruction if web_task is not None else observation.instruction
    shots = [observation.screenshot]
    history: list[HistoryStep] = []
    steps: list[buffer_pb2.StepRecord] = []
    reward, finish, answer = 0.0, "step_limit", ""
    try:
        for _ in range(step_limit):
            if time.monotonic() - started > timeout_s:
                finish = "timeout"
                break
            shown = shots[-(history_window + 1):]
            data = await blobs.get_many(job_id, [s.sha256 for s in shown])
            if any(d is None for d in data):
                raise EnvFault("a screenshot expired from the blob store")
            text = render(instruction, history, len(shown))
            ids = prompt_ids(policy.tokenizer, text, policy.image_token_id, [policy.image_tokens(s) for s in shown])
            images = [f"data:{s.mime};base64,{base64.b64encode(d).decode()}" for s, d in zip(shown, data)]
            if demonstrate:
                output, output_ids = await _demonstration(env, session, policy, rubric, web_task)
                logprobs, versions = [0.0] * len(output_ids), [version] * len(output_ids)
            else:
                t = time.monotonic()
                # SGLang takes one pad per image and expands it; the trainer trains on ``ids``.
                gen = await client.generate(collapse_image_tokens(ids, policy.image_token_id), images, sampling,
                                            expanded_ids=ids, image_token_id=policy.image_token_id)
                metrics.GENERATE_SECONDS.observe(time.monotonic() - t)
                output_ids, logprobs, versions = gen.output_ids, gen.logprobs, _versions(gen.versions)
                output = policy.decode(output_ids)
            metrics.TOKENS_PER_STEP.observe(len(output_ids))
            action = parse_action(output)
            steps.append(buffer_pb2.StepRecord(
                prompt_ids=ids, screenshots=shown, output_ids=output_ids, logprobs=logprobs,
                versions=versions, text=output[:65536], action=action.to_json()[:65536],
                invalid_action=not action.valid,
            ))
            try:
                reply = await env.Step(env_pb2.StepRequest(session_id=session, action=action.to_env()), timeout=60)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:  # the task ended on its own
                    finish = "done"
                    break
                raise EnvFault(f"Step: {exc.code().name}: {exc.details()}") from exc
            history.append(HistoryStep(reply.observation.title, action.summary(), reply.info.page_changed))
            shots.append(reply.observation.screenshot)
            reward = reply.reward
            if action.valid and action.action == "answer":
                answer = action.arguments["text"]
            # A task set's task ends on its answer whatever envfleet says: the judge decides.
            if reply.done or (web_task is not None and answer):
                finish = "answer" if answer else "done"
                break
    finally:
        try:
            await env.Release(env_pb2.ReleaseRequest(session_id=session), timeout=10)
        except grpc.aio.AioRpcError:
            pass  # the lease expires on its own
    if not steps:
        raise EnvFault("the episode ended before its first step")
    judged, judge_text, judge_latency = False, "", 0.0
    if rubric is not None:
        # Only an answered episode is judged; any other end is a failure.
        reward = 0.0
        if finish == "answer" and judge is not None:
            last = shots[-2:]
            data = await blobs.get_many(job_id, [s.sha256 for s in last])
            if any(d is None for d in data):
                raise EnvFault("a final screenshot expired before judging")
            verdict = await judge.judge(instruction, rubric, answer, [(s.mime, d) for s, d in zip(last, data)])
            reward, judged, judge_text, judge_latency = float(verdict.passed), True, verdict.text, verdict.latency_s
            metrics.JUDGED.labels("pass" if verdict.passed else "fail").inc()
    success = succeeded(reward)
    metrics.EPISODES.labels("success" if success else "failure").inc()
    metrics.STEPS_PER_EPISODE.labels("success" if success else "failure").observe(len(steps))
    metrics.RAW_REWARD.observe(reward)
    return buffer_pb2.EpisodeRecord(episode_id=episode_id, steps=steps, reward=trained_reward(reward, reward_mode),
                                    raw_reward=reward, success=success, length=len(steps), finish_reason=finish,
                                    judged=judged, judge_text=judge_text, judge_latency_s=judge_latency)
