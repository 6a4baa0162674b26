#!/usr/bin/env python
"""Replay a click workload on the miniwob package's own gymnasium environment.

Run with bench/peers/.venv-miniwob/bin/python:
    python run_miniwob_gym.py --workload W.json --concurrency N

Setup (in each worker; nothing installed is modified):
  * MINIWOB_CHROME_BINARY=/usr/bin/chromium and MINIWOB_CHROMEDRIVER=
    /usr/bin/chromedriver (honoured by miniwob together).
  * selenium's webdriver.Chrome is wrapped to append the project's Chromium
    flags to the ChromeOptions miniwob builds (it only adds
    headless/disable-gpu/no-sandbox itself).
  * data_mode="default": miniwob's gym calls core.setDataMode("train") on every
    reset by default, BrowserGym never calls it (page default 'default'); a few
    *-transfer / email-*-nl tasks read it, so we align on the page default.
  * core.EPISODE_MAX_TIME is set on the loaded page right after env
    construction (miniwob loads the page once and only re-seeds and calls
    core.startEpisodeReal() on reset, so the value persists).
One env per distinct task in a worker's share, all built before the barrier
(a miniwob env is bound to one task page). reset(seed) runs
Math.seedrandom(seed) then core.startEpisodeReal(). Clicks use the CLICK_COORDS
action: coords are CSS pixels from the viewport's top-left (the task area is
at the top-left, so these are also task-area coordinates).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402


def _apply_patches():
    os.environ["MINIWOB_CHROME_BINARY"] = _common.CHROMIUM
    os.environ["MINIWOB_CHROMEDRIVER"] = _common.CHROMEDRIVER
    from selenium import webdriver

    if getattr(webdriver.Chrome, "_asyncwebrl_patched", False):
        return
    Base = webdriver.Chrome

    class Chrome(Base):
        _asyncwebrl_patched = True

        def __init__(self, *a, options=None, **kw):
            if options is None:
                options = webdriver.ChromeOptions()
            for flag in _common.CHROME_FLAGS:
                if flag not in options.arguments:
                    options.add_argument(flag)
            super().__init__(*a, options=options, **kw)

    # miniwob.selenium_instance does `from selenium import webdriver` and calls
    # webdriver.Chrome(...) at driver creation time, so patching the module
    # attribute reaches it.
    webdriver.Chrome = Chrome


class MiniwobGymPeer:
    def __init__(self):
        self.envs = {}

    def _make(self, task):
        import gymnasium as gym

        env = gym.make(f"miniwob/{task}-v1", render_mode=None, data_mode="default")
        env.unwrapped.instance.driver.execute_script(
            f"core.EPISODE_MAX_TIME = {_common.EPISODE_MAX_TIME_MS};"
        )
        self.envs[task] = env
        return env

    def prepare(self, episodes):
        _apply_patches()
        import gymnasium as gym
        import miniwob

        gym.register_envs(miniwob)
        for ep in episodes:
            if ep["task"] not in self.envs:
                self._make(ep["task"])

    def run_episode(self, ep, rec):
        import numpy as np
        from miniwob.action import ActionTypes

        env = self.envs.get(ep["task"]) or self._make(ep["task"])
        t0 = time.perf_counter()
        env.reset(seed=int(ep["seed"]))
        rec["reset_s"] = time.perf_counter() - t0
        info = {}
        for x, y in ep["clicks"]:
            action = env.unwrapped.create_action(
                ActionTypes.CLICK_COORDS,
                coords=np.array([x, y], dtype=np.float32),
            )
            t0 = time.perf_counter()
            obs, reward, terminated, truncated, info = env.step(action)
            rec["latencies"].append(time.perf_counter() - t0)
            rec["steps"] += 1
            assert obs["screenshot"] is not None
            if terminated or truncated:
                break
        # step() returns the time-scaled reward (get_original_reward); the raw
        # page value WOB_RAW_REWARD_GLOBAL is info["raw_reward"].
        rec["reward"] = info.get("raw_reward")

    def close(self):
        for env in self.envs.values():
            env.close()


def main():
    args = _common.parse_args(with_delays_flag=True)  # --no-delays: no-op here
    return _common.main(
        "miniwob-gym",
        MiniwobGymPeer,
        {},
        args.concurrency,
        args.workload,
        False,
    )


if __name__ == "__main__":
    sys.exit(main())
