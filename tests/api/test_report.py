"""A job's report (asyncwebrl.api.report): which evaluations it takes, the margins and their standard errors,
the rows by task, difficulty and split, and the files it writes (the learning curve drawn by matplotlib)."""

from __future__ import annotations

import json
import math
import pathlib

from PIL import Image

from asyncwebrl.api.report import pick_evaluations, std_err, write_report


def _result(success: float, episodes: int, **extra) -> dict:
    return {"success": success, "episodes": episodes, "groups": episodes // 4, "mean_steps": 2.0,
            "mean_steps_success": 1.5, "mean_steps_failure": 3.0, "valid_actions": 0.9, **extra}


def _eval(n: int, version: int, success: float, base: bool = False, state: str = "succeeded", **extra) -> dict:
    return {"id": f"eval-{n}", "n": n, "version": version, "base": base, "state": state,
            "result": _result(success, 128, **extra) if state == "succeeded" else None}


def test_it_takes_the_newest_finished_evaluation_of_each_policy():
    evals = [_eval(1, 0, 0.1, base=True), _eval(2, 0, 0.3), _eval(3, 5, 0.4), _eval(4, 9, 0.5),
             _eval(5, 9, 0.55), _eval(6, 12, 0.9, state="failed"), _eval(7, 0, 0.2, base=True, state="running"),
             _eval(8, 3, 0.6)]
    picked = pick_evaluations(evals)
    assert {k: v["id"] for k, v in picked.items()} == {"base": "eval-1", "warm": "eval-2", "final": "eval-5"}
    assert pick_evaluations([_eval(1, 4, 0.2, state="failed")]) == {}


def test_margins_goal_rows_and_files(tmp_path: pathlib.Path):
    by_split = {"test": _result(0.5, 96), "test_ood": _result(0.25, 32)}
    by_difficulty = {"hard": _result(0.25, 32), "easy": _result(0.5, 96)}
    evals = {"base": _eval(1, 0, 0.1, base=True), "warm": _eval(2, 0, 0.3),
             "final": _eval(3, 40, 0.45, by_split=by_split, by_difficulty=by_difficulty,
                            by_task={"taskset/web/test/a": _result(0.5, 96), "taskset/web/test_ood/b": _result(0.25, 32)})}
    job = {"id": "web-0a1b2c", "state": "succeeded", "spec": {"tasks": {"eval_seed": 4242}}}
    rl = [{"step": i, "unix": 1000.0 + 10 * i, "success": i / 40, "episodes": 32, "env_steps": 64,
           "seconds": {"wait": 4.0, "train": 6.0}, "train_tokens_per_s": 100.0, "staleness_mean": 1.0}
          for i in range(1, 41)]
    warm = [{"step": i} for i in range(1, 9)]
    out, text = write_report(tmp_path / "r", job, evals, warm, rl, title="t", goal=(0.30, 0.10), wall_s=12.3)

    se = math.sqrt(std_err(0.3, 128) ** 2 + std_err(0.45, 128) ** 2)
    assert math.isclose(out["rl_margin"], 0.15) and math.isclose(out["rl_margin_std_err"], round(se, 4))
    assert out["rl_margin_clear"] == (0.15 > 2 * se)
    assert math.isclose(out["total_margin"], 0.35) and math.isclose(out["warm_start_margin"], 0.2)
    assert out["goal_met"] == out["rl_margin_clear"], "0.35 >= 0.30 and 0.15 >= 0.10: the s.e. decides"
    assert out["throughput"]["rl_steps"] == 40 and out["throughput"]["trajectories_per_hour"] == 32 * 40 * 3600 / 400
    assert json.loads((tmp_path / "r" / "report.json").read_text()) == out
    assert (tmp_path / "r" / "report.md").read_text() == text

    rows = [line for line in text.splitlines() if line.startswith("| after RL |")]
    parts = [r.split("|")[3].strip() for r in rows]
    assert parts == ["all", "taskset/web/test/a", "taskset/web/test_ood/b", "difficulty easy", "difficulty hard",
                     "split test", "split test_ood"], parts
    assert "| after RL | 40 | split test_ood | 32 | 0.250 (0.077) |" in text
    assert "Goal (+0.30 in all, RL +0.10" in text and "| untrained model | 0 | all | 128 | 0.100" in text
    with Image.open(tmp_path / "r" / "learning_curve.png") as png:
        assert png.size == (960, 540)
        colours = png.convert("RGB").getcolors(1 << 20)
        assert len(colours) > 50, "a drawn plot, not a blank image"


def test_a_job_without_evaluations_says_how_to_get_one(tmp_path: pathlib.Path):
    job = {"id": "j", "state": "running", "spec": {}}
    out, text = write_report(tmp_path, job, {}, [], [])
    assert out["evaluations"] == {} and "asyncwebrl eval JOB --wait" in text and "rl_margin" not in out
