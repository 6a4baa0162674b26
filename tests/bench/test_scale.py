"""`make bench-scale`: its distributions and arithmetic, and one small point of it run for real (the real
buffer, weightsync, rollout gateway and trainer loop against the FAKE SGLang endpoints and environment)."""

from __future__ import annotations

import pathlib
import random
import statistics
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import scale  # noqa: E402
import sim_common  # noqa: E402


def test_lognormal_has_the_stated_median_and_p90():
    rng = random.Random(1)
    xs = sorted(sim_common.lognormal(rng, 0.6, 2.0) for _ in range(20000))
    assert statistics.median(xs) == pytest.approx(0.6, rel=0.05)
    assert xs[int(0.9 * len(xs))] == pytest.approx(2.0, rel=0.05)
    assert max(xs) <= 20.0  # cut at 10x the p90
    assert sim_common.lognormal(rng, 1.0, 1.0) == 1.0  # no spread stated, none drawn


def test_episode_lengths_follow_the_paper_and_the_step_limit():
    rng = random.Random(2)
    env = dict(scale.PROFILE["env"], success_rate=1.0)
    wins = [sim_common.episode_steps(rng, env, 10_000) for _ in range(20000)]
    assert statistics.fmean(n for n, _ in wins) == pytest.approx(5.1, rel=0.05) and all(ok for _, ok in wins)
    env = dict(env, success_rate=0.0)
    assert statistics.fmean(sim_common.episode_steps(rng, env, 10_000)[0] for _ in range(20000)) == \
        pytest.approx(12.5, rel=0.05)
    # A success the step limit cuts short is a failure at the limit.
    cut = [sim_common.episode_steps(rng, dict(env, success_rate=1.0), 3) for _ in range(2000)]
    assert all(n <= 3 for n, _ in cut) and all(n == 3 for n, ok in cut if not ok)
    # P(a geometric of mean 5.1 runs past 3) = (1 - 1/5.1)^3
    assert statistics.fmean(not ok for _, ok in cut) == pytest.approx((1 - 1 / 5.1) ** 3, abs=0.04)


def test_the_ideal_speedup_comes_from_the_longest_episode_of_a_batch():
    rng = random.Random(3)
    ideal = scale.ideal_speedup(32, 32, 4, train_s=20.0, publish_s=1.0, rng=rng)
    assert ideal["batch_longest_episode_s"] > 2 * ideal["episode_mean_s"]  # the long tail a sync batch waits for
    assert ideal["sync_step_s"] == pytest.approx(ideal["batch_longest_episode_s"] + 21.0)
    assert ideal["async_step_s"] == pytest.approx(max(ideal["episode_mean_s"], 21.0))
    assert ideal["ideal"] == pytest.approx(ideal["sync_step_s"] / ideal["async_step_s"])
    # A trainer much slower than rollout leaves little to overlap.
    slow = scale.ideal_speedup(32, 32, 4, train_s=1000.0, publish_s=1.0, rng=rng)
    assert 1.0 < slow["ideal"] < 1.1


def _point(c: int, achieved: float, cores: dict, ms: float = 5.0) -> dict:
    return {"concurrency": c, "achieved_fraction": achieved, "core_fraction": cores,
            "gateway_cpu_ms_per_env_step": ms, "cpu_ms_per_env_step": {"buffer": 1.0, "redis": 0.5, "weightsync": 0.1},
            "redis_commands_per_s": 100.0 * c, "env_steps_per_s": 10.0 * c}


def test_saturation_and_the_replicas_of_a_1000_episode_cluster():
    points = [_point(32, 0.99, {"gateway0": 0.2, "buffer": 0.1}), _point(256, 0.95, {"gateway0": 0.92, "buffer": 0.3}),
              _point(1024, 0.4, {"gateway0": 1.0, "buffer": 0.5}, ms=50.0)]
    sat = scale.saturation(points)
    assert sat["throughput_below_80pct_at"] == 1024
    assert sat["core_90pct_at"]["gateway0"] == 256 and sat["core_90pct_at"]["buffer"] is None
    assert sat["busiest_at_knee"] == "gateway0" and sat["all_processes_cores_at_knee"] == pytest.approx(1.5)
    assert sat["max_env_steps_per_s"] == 10.0 * 1024
    cluster = scale.replicas(points, random.Random(4))
    # Sized from the points that kept up (5 ms per step), not the saturated one (50 ms).
    assert cluster["gateway"]["cpu_ms_per_env_step"] == pytest.approx(5.0)
    assert cluster["gateway"]["cores"] == pytest.approx(cluster["env_steps_per_s"] * 0.005)
    assert cluster["gateway"]["replicas"] == max(1, -(-cluster["gateway"]["cores"] // scale.REPLICA_CORES))
    assert cluster["redis_commands_per_s"] == pytest.approx(10.0 * cluster["env_steps_per_s"])


def test_a_small_point_runs_through_the_real_services(tmp_path, monkeypatch):
    """Async, 16 episodes on 2 fake endpoints, stated times divided by 20: the gateway's episodes reach the
    trainer loop, whose versions weightsync publishes to the fake endpoints; CPU and Redis are measured.
    No simulated browser crashes here (test_sim_env has them): one leaves its episode out of its group,
    so a batch would hold 15 episodes."""
    monkeypatch.setitem(scale.PROFILE["env"], "crash_rate", 0.0)
    point = scale.Point(tmp_path, mode="async", concurrency=16, engines=2, gateways=1, train_s=4.0, time_scale=20,
                        batch_groups=2, max_staleness=2, seed=0)
    m = scale.measure(point, warmup_s=1, window_s=3, min_steps=2, max_wait_s=240)
    rows = m["trainer_rows"]
    assert len(rows) >= 3 and [r["version"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(r["groups"] == 2 and r["episodes"] == 16 for r in rows)
    assert all(r["seconds"]["publish"] > 0 for r in rows)
    assert m["env_steps_per_s"] > 0 and m["episodes_per_s"] > 0 and m["redis_commands_per_s"] > 0
    assert {"buffer", "weightsync", "gateway0", "trainer", "redis", "sim_env", "sim_sglang"} <= set(m["core_fraction"])
    assert m["gateway_cpu_ms_per_env_step"] > 0
    # Every process the point started is gone.
    for p in point.procs.values():
        assert p.proc.poll() is not None
    assert point.sglang.poll() == 0 and point.redis.proc.poll() is not None


def test_a_point_that_fails_to_start_leaves_nothing_running(tmp_path, monkeypatch):
    """A gateway that cannot start (no tokenizer at its model path) fails the point, and every process the
    point had started by then is stopped."""
    monkeypatch.setattr(scale, "MODEL", tmp_path / "no-model")
    point = scale.Point(tmp_path, mode="async", concurrency=8, engines=1, gateways=1, train_s=1.0, time_scale=20,
                        batch_groups=1, max_staleness=1, seed=0)
    with pytest.raises(RuntimeError, match="rollout exited"):
        scale.measure(point, warmup_s=0, window_s=1)
    assert {"buffer", "weightsync", "sim_env", "trainer", "gateway0"} <= set(point.procs)
    assert all(p.proc.poll() is not None for p in point.procs.values())
    assert point.sglang.poll() is not None and point.redis.proc.poll() is not None


def test_derive_recomputes_what_follows_from_the_measurements():
    point = dict(_point(64, 0.0, {"gateway0": 0.3}), engines=16, time_scale=1.0, env_steps_per_s=20.0)
    results = {"concurrency": [point]}
    scale.derive(results, random.Random(5))
    assert point["offered_env_steps_per_s"] == pytest.approx(scale.offered_steps_per_s(64, 16, random.Random(6), 1.0),
                                                             rel=0.1)
    assert point["achieved_fraction"] == pytest.approx(20.0 / point["offered_env_steps_per_s"])
    # An episode's CPU is its steps' (about 7 under the profile), not what the window's few new episodes cost.
    steps = point["cpu_ms_per_episode"]["buffer"] / point["cpu_ms_per_env_step"]["buffer"]
    assert 6 < steps < 8.5
    assert "saturation" in results and results["cluster"]["episodes"] == scale.CLUSTER_EPISODES


def _rows(step_s: float, wait_s: float, stale: int, steps: int = 6) -> list[dict]:
    """Trainer rows as metrics.jsonl has them: 32 episodes a step, every ``step_s`` seconds."""
    return [{"unix": 1000.0 + i * step_s, "episodes": 32, "rejected": {"stale": stale} if i else {},
             "seconds": {"publish": 2.0, "wait": wait_s}} for i in range(steps)]


def test_the_ratio_runs_every_eta_interleaved_and_judges_each_against_the_ideal(tmp_path, monkeypatch):
    """run_ratio's bookkeeping, with the measurement itself replaced (the real points are run by
    test_a_small_point_runs_through_the_real_services): the order alternates round by round, every
    async bound gets its speed-up over the same sync runs, and the report names each."""
    import argparse
    import json

    import report

    calls = []
    step_s = {"sync": 90.0, 2: 30.0, 4: 24.0}

    def fake_measure(point, **kwargs):
        key = point.mode if point.mode == "sync" else point.spec.rollout.max_staleness
        calls.append(key)
        return {"trainer_rows": _rows(step_s[key], 5.0 if key == 2 else 0.5, 1 if key == 2 else 0),
                "engines": point.engines}

    monkeypatch.setattr(scale, "measure", fake_measure)
    args = argparse.Namespace(etas="2,4", repeats=2, time_scale=1.0, engines=4, train_s=21.0, min_steps=3)
    r = scale.run_ratio(args, tmp_path, random.Random(0))
    assert calls == ["sync", 2, 4, 4, 2, "sync"]
    assert set(r["runs"]) == {"sync", "async_eta2", "async_eta4"}
    assert r["by_eta"]["async_eta4"]["speedup"] == pytest.approx(90 / 24)
    assert r["speedup"] == r["by_eta"]["async_eta2"]["speedup"] == pytest.approx(3.0)  # the first eta heads
    assert r["runs"]["async_eta2"][0]["stale_rejected"] == 5

    results = {"ratio": r, "date": "2026-12-05T00:00:00+00:00", "command": "python bench/scale.py"}
    scale.derive(results, random.Random(1))
    ideal = r["ideal"]["ideal"]
    assert r["by_eta"]["async_eta4"]["fraction_of_ideal"] == pytest.approx(90 / 24 / ideal)
    assert results["targets"]["eta4"]["speedup_ge_2_4"] and set(results["targets"]) == {"eta2", "eta4"}

    (tmp_path / "scale.json").write_text(json.dumps(results))
    lines, rows = report.scale_section(results, tmp_path, tmp_path / "BENCHMARKS.md")
    page = "\n".join(lines)
    assert "| async, eta 4 | 2 |" in page and f"{90 / 24:.2f}" in page
    assert [row[1] for row in rows] == ["async (eta 2) over sync, balanced stages (simulated GPUs)",
                                        "async (eta 4) over sync, balanced stages (simulated GPUs)"]


def test_a_part_rerun_keeps_the_other_parts_and_their_provenance(tmp_path, monkeypatch):
    import json

    out = tmp_path / "scale.json"
    saved = {"benchmark": "scale", "date": "2026-12-01T00:00:00+00:00", "command": "python bench/scale.py",
             "minutes": 30.0, "concurrency": [dict(_point(64, 0.0, {"gateway0": 0.3}), engines=16, time_scale=1.0,
                                                   env_steps_per_s=20.0)]}
    out.write_text(json.dumps(saved))
    monkeypatch.setattr(scale, "run_sweep", lambda args, tmp, rng, kind, values: [
        dict(_point(32, 0.0, {"gateway0": 0.1}), engines=v, time_scale=1.0, env_steps_per_s=10.0) for v in values])
    monkeypatch.setattr(sys, "argv", ["scale.py", "--parts", "engines", "--engine-counts", "4,8", "--out", str(out)])
    assert scale.main() == 0
    doc = json.loads(out.read_text())
    assert [p["engines"] for p in doc["engines"]] == [4, 8]
    assert doc["concurrency"][0]["concurrency"] == 64  # kept, and derived again
    assert doc["part_runs"]["concurrency"]["date"] == "2026-12-01T00:00:00+00:00"
    assert doc["part_runs"]["engines"]["command"].endswith(f"--out {out}")
    monkeypatch.setattr(sys, "argv", ["scale.py", "--parts", "ratio,nonsense"])
    with pytest.raises(SystemExit):
        scale.main()
