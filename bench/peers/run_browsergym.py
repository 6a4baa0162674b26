#!/usr/bin/env python
"""Replay a click workload on BrowserGym's MiniWoB environment.

Run with bench/peers/.venv-browsergym/bin/python:
    python run_browsergym.py --workload W.json --concurrency N [--no-delays]

Patches applied in each worker (nothing installed is modified):
  * playwright's BrowserType.launch gets executable_path=/usr/bin/chromium and
    the project's Chromium flags (BrowserGym has no option to add args: its
    pw_chromium_kwargs cannot carry `args`, which it already passes itself).
  * BrowserGym seeds the page with Math.seedrandom(RandomState(seed).randint(0,
    1e6)); we make that draw return the workload seed itself so the page runs
    Math.seedrandom(seed) before core.startEpisodeReal(), as the miniwob gym does.
  * core.EPISODE_MAX_TIME is set through BrowserGym's own task kwarg
    episode_max_time (its default is 1000000 ms).
Clicks use BrowserGym's coordinate action set: mouse_click(x, y) in screenshot
pixels; BrowserGym's MiniWoB screenshots are taken at a 1.5 device scale factor
(page._bgym_scale_factor) and mouse_click divides by it, so CSS (x, y) is sent
as mouse_click(1.5 x, 1.5 y).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402


def _apply_patches():
    from playwright.sync_api._generated import BrowserType

    if getattr(BrowserType.launch, "_asyncwebrl_patched", False):
        return
    orig = BrowserType.launch

    def launch(self, *a, **kw):
        kw["executable_path"] = _common.CHROMIUM
        args = list(kw.get("args") or [])
        kw["args"] = args + [f for f in _common.CHROME_FLAGS if f not in args]
        return orig(self, *a, **kw)

    launch._asyncwebrl_patched = True
    BrowserType.launch = launch

    from browsergym.miniwob.base import AbstractMiniwobTask

    class _SeedAsIs:
        """Stands in for task.random: setup() draws the JS seed with randint."""

        def __init__(self, seed):
            self.seed = seed

        def randint(self, low, high=None, *a, **kw):
            return self.seed

    orig_init = AbstractMiniwobTask.__init__

    def init(self, seed, *a, **kw):
        orig_init(self, seed, *a, **kw)
        self.random = _SeedAsIs(int(seed))

    AbstractMiniwobTask.__init__ = init


class BrowserGymPeer:
    def __init__(self, delays: bool):
        self.delays = delays
        self.env = None
        self.task = None

    def _make(self, task):
        import gymnasium as gym
        from browsergym.core.action.highlevel import HighLevelActionSet

        kwargs = dict(
            action_mapping=HighLevelActionSet(subsets=["coord"]).to_python_code,
            task_kwargs={"episode_max_time": _common.EPISODE_MAX_TIME_MS},
        )
        if not self.delays:
            # BrowserGym's deliberate waits: the task's Playwright slow_mo
            # (100 ms per Playwright call for MiniWoB) and the env's
            # pre_observation_delay (0.5 s sleep after every action).
            kwargs.update(slow_mo=0, pre_observation_delay=0.0)
        if self.env is not None:
            self.env.close()
        self.env = gym.make(f"browsergym/miniwob.{task}", **kwargs)
        self.task = task

    def prepare(self, episodes):
        os.environ["MINIWOB_URL"] = "file://" + _common.miniwob_html_dir() + "/"
        import logging

        logging.getLogger("browsergym").setLevel(logging.ERROR)
        _apply_patches()
        import browsergym.miniwob  # noqa: F401  (registers the tasks)

        if episodes:
            # gym.make only builds the python object; BrowserGym launches the
            # browser inside reset() (every reset), which is timed.
            self._make(episodes[0]["task"])

    def run_episode(self, ep, rec):
        if ep["task"] != self.task:
            self._make(ep["task"])  # cheap; closes the previous browser
        env = self.env
        t0 = time.perf_counter()
        env.reset(seed=int(ep["seed"]))
        rec["reset_s"] = time.perf_counter() - t0
        page = env.unwrapped.page
        scale = getattr(page, "_bgym_scale_factor", 1.0)
        info = {}
        for x, y in ep["clicks"]:
            action = f"mouse_click({float(x) * scale!r}, {float(y) * scale!r})"
            t0 = time.perf_counter()
            obs, reward, terminated, truncated, info = env.step(action)
            rec["latencies"].append(time.perf_counter() - t0)
            rec["steps"] += 1
            assert obs["screenshot"] is not None
            err = env.unwrapped.last_action_error
            if err:
                rec["errors"].append(f"step {rec['steps']}: {err}")
            if terminated or truncated:
                break
        # BrowserGym's reward is float(RAW > 0); the raw page value is in
        # info["task_info"]["RAW_REWARD_GLOBAL"], which is what we record.
        ti = info.get("task_info") or {}
        rec["reward"] = ti.get("RAW_REWARD_GLOBAL")

    def close(self):
        if self.env is not None:
            self.env.close()


def main():
    args = _common.parse_args(with_delays_flag=True)
    delays = not args.no_delays
    return _common.main(
        "browsergym-miniwob",
        BrowserGymPeer,
        {"delays": delays},
        args.concurrency,
        args.workload,
        delays,
    )


if __name__ == "__main__":
    sys.exit(main())
