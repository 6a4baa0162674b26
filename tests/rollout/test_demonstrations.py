"""Demonstrations: envfleet's Oracle RPC, and the gateway writing the reference agent's
episodes as the tool calls the policy should have written."""

from __future__ import annotations

import uuid

import grpc
import pytest

from asyncwebrl.common.agent.actions import parse_action
from asyncwebrl.common.grpcclient import channel
from asyncwebrl.v1 import buffer_pb2, env_pb2, env_pb2_grpc
from tests.rollout.conftest import TASK, TOKEN, buffer_for, engine_for, gateway_for


def test_the_oracle_names_the_next_action_and_nothing_after_the_end(stack):
    ch = channel(stack["envfleet"].target, TOKEN)
    env = env_pb2_grpc.EnvServiceStub(ch)
    lease = env.Allocate(env_pb2.AllocateRequest(task=TASK, seed=7))
    try:
        reply = env.Oracle(env_pb2.OracleRequest(session_id=lease.session_id))
        assert reply.available and reply.action.WhichOneof("kind") == "click"
        step = env.Step(env_pb2.StepRequest(session_id=lease.session_id, action=reply.action))
        assert step.done and step.reward == 1.0
        with pytest.raises(grpc.RpcError) as err:
            env.Oracle(env_pb2.OracleRequest(session_id=lease.session_id))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        env.Release(env_pb2.ReleaseRequest(session_id=lease.session_id))
    other = env.Allocate(env_pb2.AllocateRequest(task="miniwob/click-dialog", seed=1))
    try:
        reply = env.Oracle(env_pb2.OracleRequest(session_id=other.session_id))
        assert not reply.available and "no reference agent" in reply.reason
    finally:
        env.Release(env_pb2.ReleaseRequest(session_id=other.session_id))
    with pytest.raises(grpc.RpcError) as err:
        env.Oracle(env_pb2.OracleRequest(session_id="0" * 32))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    ch.close()


def test_the_gateway_writes_demonstrations(stack, redis_server):
    job = f"demo-{uuid.uuid4().hex[:6]}"
    ch, buf = buffer_for(stack)
    buf.ConfigureJob(buffer_pb2.ConfigureJobRequest(job_id=job, batch_groups=3, max_staleness=2,
                                                    keep_zero_variance=True))
    engine = engine_for(stack, redis_server, job)
    gateway = gateway_for(stack, job, "--demonstrations", "--group-size", "1", "--max-groups", "3")
    try:
        assert gateway.proc.wait(180) == 0, gateway.logs()[-3000:]
    finally:
        gateway.stop()
        engine.stop()
    items = list(buf.GetBatch(buffer_pb2.GetBatchRequest(job_id=job, consumer="t", groups=3, wait_ms=1000)))
    groups = [i.group for i in items[1:]]
    assert len(groups) == 3 and len({g.seed for g in groups}) == 3
    for g in groups:
        (e,) = g.episodes
        assert e.success and e.reward == 1.0 and e.length == 1
        (s,) = e.steps
        action = parse_action(s.text)
        assert action.valid and action.action == "click" and not s.invalid_action
        assert s.output_ids[-1] == 2, "ends with <|im_end|>, as a generation would"
        assert set(s.logprobs) == {0.0} and len(s.versions) == len(s.output_ids)
    ch.close()


def test_outputs_keep_tool_call_markers_even_when_the_tokenizer_marks_them_special():
    from asyncwebrl.common.models.tiny import SHIPPED
    from asyncwebrl.rollout.__main__ import load_policy_io

    policy = load_policy_io(str(SHIPPED / "qwen2_5_vl"))
    text = '<tool_call>{"name": "computer_use", "arguments": {"action": "go_back"}}</tool_call>'
    ids = policy.tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert policy.tokenizer.decode(ids, skip_special_tokens=True) != text, "the tiny tokenizer marks them special"
    assert policy.decode(ids) == text and parse_action(policy.decode(ids)).valid
