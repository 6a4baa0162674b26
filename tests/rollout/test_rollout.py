"""The rollout gateway against a real envfleet (Chromium), engine, buffer and Redis."""

from __future__ import annotations

import time
import uuid

from transformers import Qwen2VLImageProcessorPil

from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.v1 import buffer_pb2
from tests.rollout.conftest import PREFIX, TASK, RecordingProxy, buffer_for, engine_for, gateway_for, metric, wait_until

def test_a_short_run_writes_complete_consistent_groups(stack, redis_server):
    job = f"run-{uuid.uuid4().hex[:6]}"
    ch, buf = buffer_for(stack)
    # A random policy fails alike in every episode: keep zero-variance groups to look at them.
    buf.ConfigureJob(buffer_pb2.ConfigureJobRequest(job_id=job, batch_groups=2, max_staleness=2,
                                                    keep_zero_variance=True))
    proxy = RecordingProxy()
    engine = engine_for(stack, redis_server, job, "--advertise-url", proxy.url)
    proxy.target = engine.url
    gateway = gateway_for(stack, job, "--max-groups", "2")
    try:
        assert gateway.proc.wait(180) == 0, gateway.logs()[-3000:]
    finally:
        gateway.stop()
        engine.stop()
        proxy.close()
    # On the wire, SGLang's request shape: one pad per image, which the engine expands to what is trained on.
    assert len(proxy.exchanges) >= 4
    for body, status, answer in proxy.exchanges:
        assert status == 200 and body["return_prompt_token_ids"] is True
        pads = [i for i, t in enumerate(body["input_ids"]) if t == 5]
        assert len(pads) == len(body["image_data"]) >= 1, "one <|image_pad|> per image"
        assert all(body["input_ids"][i - 1] == 3 and body["input_ids"][i + 1] == 4 for i in pads), \
            "each pad alone between <|vision_start|> and <|vision_end|>"
        assert len(answer["prompt_token_ids"]) > len(body["input_ids"])
    sent_expanded = {tuple(answer["prompt_token_ids"]) for _, _, answer in proxy.exchanges}
    stats = buf.Stats(buffer_pb2.BufferStatsRequest(job_id=job))
    assert stats.groups_accepted == 2 and stats.groups_running == 0, stats
    items = list(buf.GetBatch(buffer_pb2.GetBatchRequest(job_id=job, consumer="t", groups=2)))
    groups = [i.group for i in items[1:]]
    assert len(groups) == 2
    processor = Qwen2VLImageProcessorPil.from_pretrained(SHIPPED / "qwen2_5_vl", local_files_only=True)
    r = redis_server.client()
    for g in groups:
        assert g.task == TASK and g.difficulty == "easy" and len(g.episodes) == 2
        assert len({e.episode_id for e in g.episodes}) == 2
        for e in g.episodes:
            assert 1 <= e.length == len(e.steps) <= 2 and e.finish_reason in ("step_limit", "done", "answer")
            # GRPO sees success; MiniWoB's own reward (-1 for a wrong click) is kept beside it.
            assert e.reward == float(e.success) and e.success == (e.raw_reward > 0) and -1 <= e.raw_reward <= 1
            for s in e.steps:
                assert 1 <= len(s.output_ids) <= 12
                assert len(s.output_ids) == len(s.logprobs) == len(s.versions) and set(s.versions) == {0}
                assert all(lp <= 0 for lp in s.logprobs)
                assert 1 <= len(s.screenshots) <= 2 and s.action
                pads = sum(processor.get_number_of_image_patches(ref.height, ref.width, {}) // 4
                           for ref in s.screenshots)
                assert list(s.prompt_ids).count(5) == pads, "one placeholder per merged patch of every image"
                assert tuple(s.prompt_ids) in sent_expanded, "trained on the engine's own expansion"
                for ref in s.screenshots:
                    assert r.hget(f"{PREFIX}job:{job}:blob:{ref.sha256}", "data"), "screenshot refs resolve"
    ch.close()


def test_the_gate_holds_until_the_version_moves(stack, redis_server):
    job = f"gate-{uuid.uuid4().hex[:6]}"
    ch, buf = buffer_for(stack)
    # B = 1, eta = 0: (0 + v + 1) * 1 - (accepted + running) > 0 admits one group per version.
    buf.ConfigureJob(buffer_pb2.ConfigureJobRequest(job_id=job, batch_groups=1, max_staleness=0))
    engine = engine_for(stack, redis_server, job)
    gateway = gateway_for(stack, job, "--gate-poll-s", "0.2")
    try:
        wait_until(lambda: buf.Stats(buffer_pb2.BufferStatsRequest(job_id=job)).groups_accepted == 1)
        time.sleep(3)
        s = buf.Stats(buffer_pb2.BufferStatsRequest(job_id=job))
        assert s.groups_accepted == 1 and s.groups_running == 0 and s.gate_capacity == 0, "held at the bound"
        buf.SetTrainerVersion(buffer_pb2.SetTrainerVersionRequest(job_id=job, version=1))
        wait_until(lambda: buf.Stats(buffer_pb2.BufferStatsRequest(job_id=job)).groups_accepted == 2)
        time.sleep(2)
        assert buf.Stats(buffer_pb2.BufferStatsRequest(job_id=job)).groups_accepted == 2
    finally:
        assert gateway.stop() == 0, gateway.logs()[-3000:]
        engine.stop()
        ch.close()


def test_synchronous_mode_makes_b_groups_per_version_behind_a_barrier(stack, redis_server, tmp_path):
    from asyncwebrl.common.models.loading import load_policy

    job = f"sync-{uuid.uuid4().hex[:6]}"
    ch, buf = buffer_for(stack)
    buf.ConfigureJob(buffer_pb2.ConfigureJobRequest(job_id=job, batch_groups=2, max_staleness=0,
                                                    keep_zero_variance=True))
    engine = engine_for(stack, redis_server, job, "--model-roots", str(tmp_path))
    gateway = gateway_for(stack, job, "--sync", "--gate-poll-s", "0.2")
    stats = lambda: buf.Stats(buffer_pb2.BufferStatsRequest(job_id=job))  # noqa: E731
    try:
        wait_until(lambda: stats().groups_accepted == 2)
        time.sleep(2)
        assert stats().groups_accepted == 2, "exactly B groups for version 0"
        # The trainer moves to version 1, but the engine still serves 0: the barrier holds.
        buf.SetTrainerVersion(buffer_pb2.SetTrainerVersionRequest(job_id=job, version=1))
        time.sleep(3)
        assert stats().groups_accepted == 2 and stats().groups_running == 0
        # Version 1 is served: exactly B more.
        copy = tmp_path / "v1"
        load_policy(SHIPPED / "qwen2_5_vl", device="cpu").model.save_pretrained(copy)
        from tests.engine.conftest import call

        status, out = call(engine.url, "/update_weights_from_disk", {"model_path": str(copy), "weight_version": "1"},
                           key=None)
        assert status == 200, out
        wait_until(lambda: stats().groups_accepted == 4)
        time.sleep(2)
        assert stats().groups_accepted == 4
        items = list(buf.GetBatch(buffer_pb2.GetBatchRequest(job_id=job, consumer="t", groups=4,
                                                             current_version=1, max_staleness=1)))
        versions = sorted({v for i in items[1:] for e in i.group.episodes for s in e.steps for v in s.versions})
        assert versions == [0, 1]
    finally:
        assert gateway.stop() == 0, gateway.logs()[-3000:]
        engine.stop()
        ch.close()


def test_more_episodes_than_browser_contexts_wait_for_one_instead_of_failing(stack, redis_server):
    """envfleet has 4 contexts; 8 episodes at once: the extra Allocate calls are refused as full and
    retried, not counted as environment faults, and every group completes."""
    job = f"full-{uuid.uuid4().hex[:6]}"
    ch, buf = buffer_for(stack)
    buf.ConfigureJob(buffer_pb2.ConfigureJobRequest(job_id=job, batch_groups=2, max_staleness=2,
                                                    keep_zero_variance=True))
    engine = engine_for(stack, redis_server, job)
    gateway = gateway_for(stack, job, "--max-groups", "2", "--group-size", "4", "--max-concurrent-episodes", "8",
                          "--env-retries", "0")
    try:
        wait_until(lambda: metric(gateway, "asyncwebrl_rollout_allocate_waits_total") > 0, 120,
                   "an Allocate refused because envfleet is full")
        assert metric(gateway, "asyncwebrl_rollout_episodes_total", 'outcome="env_error"') == 0
        assert gateway.proc.wait(300) == 0, gateway.logs()[-3000:]
        assert "Allocate: RESOURCE_EXHAUSTED" not in gateway.logs()
    finally:
        gateway.stop()
        engine.stop()
    stats = buf.Stats(buffer_pb2.BufferStatsRequest(job_id=job))
    assert stats.groups_accepted == 2, stats
    ch.close()
