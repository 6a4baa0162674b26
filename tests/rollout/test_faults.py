"""The gateway under faults: Chromium killed, an engine killed, weights updated mid-generation."""

from __future__ import annotations

import os
import signal
import time
import uuid

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.common.models.loading import load_policy
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.v1 import buffer_pb2, env_pb2, env_pb2_grpc
from tests.engine.conftest import call, wait_running
from tests.rollout.conftest import RecordingProxy, TOKEN, buffer_for, engine_for, gateway_for, metric, wait_until


def _configure(buf, job: str) -> None:
    buf.ConfigureJob(buffer_pb2.ConfigureJobRequest(job_id=job, batch_groups=64, max_staleness=8,
                                                    keep_zero_variance=True))


def _groups(buf, job: str, n: int) -> list[buffer_pb2.Group]:
    items = list(buf.GetBatch(buffer_pb2.GetBatchRequest(job_id=job, consumer="t", groups=n, current_version=1,
                                                         max_staleness=8)))
    return [i.group for i in items[1:]]


def test_chromium_killed_mid_run_is_an_environment_fault_not_a_failure(stack, redis_server):
    job = f"crash-{uuid.uuid4().hex[:6]}"
    ch, buf = buffer_for(stack)
    _configure(buf, job)
    engine = engine_for(stack, redis_server, job)
    gateway = gateway_for(stack, job, "--max-new-tokens", "24")
    env_ch = channel(stack["envfleet"].target, TOKEN)
    env = env_pb2_grpc.EnvServiceStub(env_ch)
    try:
        wait_until(lambda: env.Stats(env_pb2.StatsRequest()).sessions > 0, timeout=60)
        os.kill(env.Stats(env_pb2.StatsRequest()).browser[0].pid, signal.SIGKILL)
        before = buf.Stats(buffer_pb2.BufferStatsRequest(job_id=job)).groups_accepted
        wait_until(lambda: buf.Stats(buffer_pb2.BufferStatsRequest(job_id=job)).groups_accepted >= before + 2,
                   timeout=120)
        faults = metric(gateway, "asyncwebrl_rollout_episodes_total", 'outcome="env_error"')
        dropped = metric(gateway, "asyncwebrl_rollout_groups_dropped_total", 'reason="env_error"')
        assert faults >= 1, "the crash reached the gateway as an environment fault"
        assert dropped <= faults
    finally:
        assert gateway.stop() == 0, gateway.logs()[-3000:]
        engine.stop()
        env_ch.close()
    # What was written is whole: every episode has its steps; nothing carries a made-up reward.
    groups = _groups(buf, job, 64)
    assert groups
    for g in groups:
        for e in g.episodes:
            assert e.length == len(e.steps) >= 1 and -1.0 <= e.reward <= 1.0 and e.success == (e.reward > 0)
    ch.close()


def test_an_engine_killed_mid_run_loses_no_group(stack, redis_server):
    job = f"kill-{uuid.uuid4().hex[:6]}"
    ch, buf = buffer_for(stack)
    _configure(buf, job)
    engines = [engine_for(stack, redis_server, job, name=f"{job}-e{i}") for i in range(2)]
    gateway = gateway_for(stack, job, "--max-groups", "4", "--max-new-tokens", "64")
    try:
        wait_running(engines[0].url)
        engines[0].stop(signal.SIGKILL)
        assert gateway.proc.wait(240) == 0, gateway.logs()[-3000:]
    finally:
        gateway.stop()
        for e in engines:
            e.stop()
    stats = buf.Stats(buffer_pb2.BufferStatsRequest(job_id=job))
    assert stats.groups_accepted == 4 and stats.groups_duplicate == 0, stats
    groups = _groups(buf, job, 8)
    assert len(groups) == 4 and len({g.group_id for g in groups}) == 4
    ch.close()


def test_weights_updated_mid_generation_leave_both_versions_in_the_record(stack, redis_server, tmp_path):
    job = f"upd-{uuid.uuid4().hex[:6]}"
    ch, buf = buffer_for(stack)
    _configure(buf, job)
    engine = engine_for(stack, redis_server, job, "--model-roots", str(tmp_path))
    v1 = tmp_path / "v1"
    load_policy(SHIPPED / "qwen2_5_vl", device="cpu").model.save_pretrained(v1)
    gateway = gateway_for(stack, job, "--max-groups", "1", "--max-new-tokens", "600", "--steps-easy", "1")
    try:
        wait_running(engine.url)
        time.sleep(0.2)
        assert call(engine.url, "/pause_generation", {"mode": "abort"}, key=None)[0] == 200
        assert call(engine.url, "/update_weights_from_disk", {"model_path": str(v1), "weight_version": "1"},
                    key=None)[0] == 200
        assert call(engine.url, "/continue_generation", {}, key=None)[0] == 200
        assert gateway.proc.wait(240) == 0, gateway.logs()[-3000:]
    finally:
        gateway.stop()
        engine.stop()
    (group,) = _groups(buf, job, 1)
    steps = [s for e in group.episodes for s in e.steps]
    mixed = [s for s in steps if set(s.versions) == {0, 1}]
    assert mixed, [sorted(set(s.versions)) for s in steps]
    for s in mixed:
        assert list(s.versions) == sorted(s.versions) and len(s.versions) == len(s.output_ids) == len(s.logprobs)
    ch.close()


def test_a_stopped_gateway_releases_its_sessions_within_the_grace(stack, redis_server):
    """SIGTERM with long episodes in flight: they get --shutdown-grace-s to finish, then are cancelled
    and release their envfleet sessions; a gateway that only waited would be SIGKILLed by its launcher
    and strand them until envfleet's lease timeout (5 minutes), starving the next job of contexts."""
    job = f"term-{uuid.uuid4().hex[:6]}"
    ch, buf = buffer_for(stack)
    _configure(buf, job)
    engine = engine_for(stack, redis_server, job)
    gateway = gateway_for(stack, job, "--steps-easy", "40", "--max-new-tokens", "48", "--shutdown-grace-s", "1")
    env_ch = channel(stack["envfleet"].target, TOKEN)
    env = env_pb2_grpc.EnvServiceStub(env_ch)
    try:
        wait_until(lambda: env.Stats(env_pb2.StatsRequest()).sessions >= 2, timeout=60)
        wait_until(lambda: metric(gateway, "asyncwebrl_rollout_episodes_running") >= 2, timeout=30)
        started = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(20) == 0, gateway.logs()[-3000:]
        took = time.monotonic() - started
        wait_until(lambda: env.Stats(env_pb2.StatsRequest()).sessions == 0, timeout=10)
        assert took < 15, f"the gateway took {took:.1f}s to stop"
        assert "cancelled, their sessions released" in gateway.logs()
    finally:
        gateway.stop()
        engine.stop()
        env_ch.close()
        ch.close()


def test_a_failed_episode_costs_only_itself(stack, redis_server):
    """The engine's answer for one episode cannot be trained on (its prompt expansion differs from the
    gateway's): that episode is left out and counted, the other two of its group are written."""
    job = f"lose1-{uuid.uuid4().hex[:6]}"
    ch, buf = buffer_for(stack)
    _configure(buf, job)
    proxy = RecordingProxy()
    proxy.tamper = lambda i, out: {**out, "prompt_token_ids": out["prompt_token_ids"] + [7]} if i == 0 else out
    engine = engine_for(stack, redis_server, job, "--advertise-url", proxy.url)
    proxy.target = engine.url
    gateway = gateway_for(stack, job, "--group-size", "3", "--max-groups", "1", "--steps-easy", "1")
    try:
        assert gateway.proc.wait(180) == 0, gateway.logs()[-3000:]
        logs = gateway.logs()
        # Loud: the expansion mismatch and the episode left out are logged (and counted in the metrics).
        assert logs.count("unusable generation: prompt_expansion") == 1, logs[-3000:]
        assert logs.count("episode left out of its group (bad_generation)") == 1
        assert "group dropped" not in logs
    finally:
        gateway.stop()
        engine.stop()
        proxy.close()
    (group,) = _groups(buf, job, 4)
    assert len(group.episodes) == 2, "the group is trained with the two episodes that did not fail"
    ch.close()


def test_a_gateway_killed_without_warning_frees_its_leases_long_before_the_lease_timeout(stack, redis_server):
    job = f"kill-{uuid.uuid4().hex[:6]}"
    ch, buf = buffer_for(stack)
    _configure(buf, job)
    engine = engine_for(stack, redis_server, job)
    # Long episodes (step limit 10), so leases are held when the gateway dies.
    gateway = gateway_for(stack, job, "--steps-easy", "10", "--max-new-tokens", "32")
    env_ch = channel(stack["envfleet"].target, TOKEN)
    env = env_pb2_grpc.EnvServiceStub(env_ch)
    try:
        wait_until(lambda: env.Stats(env_pb2.StatsRequest()).sessions >= 2, timeout=60, what="leases held")
        gateway.proc.send_signal(signal.SIGKILL)
        gateway.proc.wait(timeout=30)
        killed = time.monotonic()
        # envfleet's defaults: --owner-ttl-s 20 against a --lease-timeout-s of 300.
        wait_until(lambda: env.Stats(env_pb2.StatsRequest()).sessions == 0, timeout=90,
                   what="the dead gateway's leases released")
        assert time.monotonic() - killed < 60
        lost = metric(stack["envfleet"], "asyncwebrl_envfleet_owner_lost_sessions_total")
        assert lost >= 2, "the lost episodes are counted"
    finally:
        gateway.stop()
        engine.stop()
        env_ch.close()
        ch.close()
