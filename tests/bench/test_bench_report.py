"""The training benchmarks' arithmetic and BENCHMARKS.md: rates from a run's metric rows, the
ideal speed-up from the synchronous run's stage times, and a page generated from result files
(every number in it comes from them)."""

from __future__ import annotations

import json
import math
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import e2e  # noqa: E402
import jobs  # noqa: E402
import learning  # noqa: E402
import normaliser  # noqa: E402
import report  # noqa: E402


def _row(step: int, unix: float, wait: float, train: float, publish: float = 0.5, episodes: int = 32,
         env_steps: int = 64, success: float = 0.5, rejected: dict | None = None) -> dict:
    return {"step": step, "unix": unix, "episodes": episodes, "env_steps": env_steps, "groups": 4,
            "success": success, "success_by_difficulty": {"easy": success}, "staleness_mean": 1.0,
            "length_success": 1.5, "length_failure": 4.0, "tokens_per_step": 30.0,
            "rejected": rejected or {}, "trajectories_per_hour": 1000.0,
            "seconds": {"wait": wait, "forward_backward": train * 0.7, "proximal": train * 0.3, "optimizer": 0.0,
                        "checkpoint": 0.0, "publish": publish}}


def _run(rows: list[dict], window: float = 100.0, step_seconds: float = 50.0) -> dict:
    return {"job": "j", "rows": rows, "window_s": window,
            "spec": {"rollout": {"concurrency": 16}},
            "envfleet": {"steps": 300.0, "step_seconds": step_seconds, "allocate_seconds": 30.0, "allocations": 50.0}}


def test_rates_are_steady_state_between_the_first_and_last_step():
    # Steps every 60 s; the first one (filling the pipeline) is not counted.
    rows = [_row(i, 1000.0 + 60 * i, wait=40, train=20) for i in range(1, 5)]
    t = jobs.throughput(_run(rows))
    assert t["trajectories_per_hour"] == pytest.approx(3600 * 3 * 32 / 180)
    assert t["env_steps_per_s"] == pytest.approx(3 * 64 / 180)
    assert t["trainer_busy_fraction"] == pytest.approx(3 * 20.5 / 180)
    assert t["browser_busy_fraction"] == pytest.approx(80 / (100 * 16))
    with pytest.raises(SystemExit, match="too few"):
        jobs.throughput(_run(rows[:1]))


def test_ideal_speedup_from_stage_times_and_stale_fraction():
    rows = [_row(i, 60.0 * i, wait=40, train=20, publish=1.0, rejected={"stale": 1, "zero_variance": 1})
            for i in range(1, 4)]
    s = jobs.stage_times(rows)
    assert s == pytest.approx({"rollout": 40.0, "train": 20.0, "sync": 1.0})
    assert (s["rollout"] + s["train"] + s["sync"]) / max(s["rollout"], s["train"]) == pytest.approx(61 / 40)
    assert jobs.rejected_fraction(rows) == pytest.approx(3 / (12 + 6))


def test_the_page_is_generated_from_the_result_files(tmp_path):
    sync = [_row(i, 60.0 * i, wait=40, train=20) for i in range(1, 5)]
    fast = [_row(i, 35.0 * i, wait=15, train=20) for i in range(1, 8)]
    modes = e2e.summarise({"sync": _run(sync), "eta_2": _run(fast)})
    assert modes["eta_2"]["trajectories_per_hour"] / modes["sync"]["trajectories_per_hour"] == pytest.approx(60 / 35)
    doc = {"benchmark": "e2e", "date": "2026-12-01T00:00:00+00:00", "command": "python bench/e2e.py --etas 2",
           "machine": {"cpus": 2}, "workload": {"tasks": ["a/b"], "group_size": 8, "batch_groups": 4,
                                                "concurrency": 16},
           "window_s": 100.0, "modes": modes, "sync_stage_seconds": jobs.stage_times(sync),
           "ideal_speedup": 1.5, "best_eta": "eta_2", "speedup": 60 / 35, "fraction_of_ideal": 60 / 35 / 1.5,
           "paper": "2.4-2.9x"}
    (tmp_path / "e2e.json").write_text(json.dumps(doc))
    curves = {"k10": [[_row(i, i, 1, 1, success=0.5 + 0.05 * i) for i in range(1, 7)]],
              "tau": [[_row(i, i, 1, 1, success=0.4) for i in range(1, 7)]]}
    summary = normaliser.summarise(curves)
    assert summary["k10"]["last"]["success"] == pytest.approx((0.75 + 0.8) / 2)
    assert summary["tau"]["first"]["success"] == pytest.approx(0.4)
    page = report.render(tmp_path, tmp_path / "BENCHMARKS.md")
    assert "**1.71x** (eta_2)" in page and "**1.50x**" in page and "114% of the ideal" in page
    assert "Not run: no normaliser.json" in page and "Not run: no staleness.json" in page
    assert "| end to end | async over sync, trained trajectories/h | 1.71x (ideal 1.50x) |" in page


def test_the_normaliser_difference_per_seed_and_its_standard_error():
    # 6 steps of 32 episodes each: the last third is steps 5 and 6 (64 episodes per normaliser).
    curves = {"k10": [[_row(i, i, 1, 1, success=0.75, env_steps=64) for i in range(1, 7)],
                      [_row(i, i, 1, 1, success=0.5, env_steps=96) for i in range(1, 7)]],
              "tau": [[_row(i, i, 1, 1, success=0.5, env_steps=96) for i in range(1, 7)],
                      [_row(i, i, 1, 1, success=0.5, env_steps=96) for i in range(1, 7)]]}
    for per_seed in curves.values():
        for rows in per_seed:
            for r in rows:
                r["steps_per_episode"] = r["env_steps"] / r["episodes"]
    d = normaliser.noise(curves, "k10")
    assert d["per_seed_last_third"] == [pytest.approx({"success": 0.25, "steps_per_episode": -1.0}),
                                        pytest.approx({"success": 0.0, "steps_per_episode": 0.0})]
    p = 0.625  # 1/k pooled over both seeds' last thirds (128 episodes); 1/|tau| 0.5
    assert d["success_difference_se"] == pytest.approx((p * (1 - p) / 128 + 0.25 / 128) ** 0.5)
    assert report.difference_lines(d, "1/k, k=10")[0] == (
        "Last third, 1/k, k=10 minus 1/|tau|, per seed: steps per episode -1.00, +0.00; success +0.25, +0.00 "
        "(standard error of the pooled success difference: 0.06).")
    assert report.difference_lines(None) == []
    summary = normaliser.summarise(curves)
    # Seed 1 shorter and better, seed 2 equal: pooled, 1/k is shorter at better success.
    assert normaliser.finding(summary, "k10") == {"episodes_shorter": True, "success_equal_or_better": True,
                                                  "holds": True}
    table = normaliser.per_seed(curves)
    assert table[0]["k10"]["last"]["success"] == pytest.approx(0.75) and table[1]["tau"]["first"]["success"] == 0.5


def test_a_collapse_is_a_stall_or_a_fall_to_under_a_third():
    held = [_row(i, i, 1, 1, success=s) for i, s in enumerate([0.3, 0.3, 0.4, 0.4, 0.5, 0.5], start=1)]
    fell = [_row(i, i, 1, 1, success=s) for i, s in enumerate([0.3, 0.3, 0.2, 0.1, 0.05, 0.0], start=1)]
    assert learning.verdict(held, 6, stalled=False)["collapsed"] is False
    assert learning.verdict(held, 6, stalled=True)["collapsed"] is True
    v = learning.verdict(fell, 6, stalled=False)
    assert v["collapsed"] is True and v["success_first_third"] == pytest.approx(0.3)
    assert v["success_last_third"] == pytest.approx(0.025)


def test_a_target_not_measured_is_not_reported_as_missed():
    assert report.measured(None, False) == "-"
    assert report.measured(5.6, True) == "yes" and report.measured(3.0, False) == "no"


def test_the_rate_standard_error_is_the_ratio_estimators():
    # Steps 60 s apart with 32 episodes each: a constant rate has no error.
    rows = [_row(i, 1000.0 + 60 * i, wait=40, train=20) for i in range(1, 6)]
    t = jobs.throughput(_run(rows))
    assert t["trajectories_per_hour_se"] == pytest.approx(0.0, abs=1e-9)
    # Alternating 30 s and 90 s steps of 32 episodes: r = 128 / 240 per s; residuals e - r d = +16, -16, +16, -16.
    times = [1000.0, 1030.0, 1120.0, 1150.0, 1240.0]
    rows = [_row(i + 1, u, wait=40, train=20) for i, u in enumerate(times)]
    se = jobs.rate_std_err(rows[1:], rows[0]["unix"])
    assert se == pytest.approx(math.sqrt(4 * 16 ** 2 / (4 * 3)) / 60)
    assert jobs.throughput(_run(rows))["trajectories_per_hour_se"] == pytest.approx(3600 * se)
    assert math.isnan(jobs.rate_std_err(rows[1:2], rows[0]["unix"])), "one interval has no spread"
    # A ratio's error from its parts: 2.0 +- 0.1 over 1.0 +- 0.05 is 2.0 with 2 * sqrt(0.05^2 + 0.05^2).
    assert jobs.ratio_std_err(2.0, 0.1, 1.0, 0.05) == pytest.approx(2 * math.sqrt(0.0025 + 0.0025))
