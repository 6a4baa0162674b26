"""The distributions of `make bench-scale`'s fakes, in one place: the fakes draw from them, and the
benchmark's analytical ideal integrates over them."""

from __future__ import annotations

import math
import os
import pathlib
import random
import subprocess
import sys

from asyncwebrl.common.localstack import ServiceProcess

Z90 = 1.2815515655446004  # the standard normal's 90th percentile


def lognormal(rng: random.Random, median: float, p90: float) -> float:
    """A lognormal with the given median and 90th percentile (p90 >= median > 0), cut at 10x the p90
    (a tail of hours would be a timeout, not a latency)."""
    sigma = math.log(p90 / median) / Z90 if p90 > median else 0.0
    return min(median * math.exp(sigma * rng.gauss(0.0, 1.0)), 10 * p90)


def geometric(rng: random.Random, mean: float) -> int:
    """1, 2, ... with the given mean (>= 1): the step at which an episode ends, a constant chance per step."""
    if mean <= 1:
        return 1
    p = 1.0 / mean
    return 1 + int(math.log(1.0 - rng.random()) / math.log(1.0 - p))


def episode_steps(rng: random.Random, env: dict, limit: int) -> tuple[int, bool]:
    """Steps of one episode and whether it succeeded: a success ends after about ``success_steps_mean``
    steps, a failure after ``failure_steps_mean``, and the step limit cuts both (a cut success fails)."""
    success = rng.random() < env["success_rate"]
    n = geometric(rng, env["success_steps_mean" if success else "failure_steps_mean"])
    return (n, success) if n <= limit else (limit, False)


def output_tokens(rng: random.Random, engine: dict, max_new_tokens: int) -> int:
    return max(1, min(max_new_tokens, round(lognormal(rng, engine["output_tokens_median"],
                                                      engine["output_tokens_p90"]))))


def ttft_s(engine: dict, prompt_tokens: int) -> float:
    """Time to first token: a fixed part and prefill, linear in the prompt."""
    return engine["ttft_base_s"] + engine["prefill_s_per_1k_tokens"] * prompt_tokens / 1000


def per_token_s(engine: dict, running: float) -> float:
    """Seconds per output token with ``running`` requests decoding on the endpoint (a bigger batch is slower)."""
    return engine["itl_s"] * (1 + running / engine["itl_knee"])


def generation_s(rng: random.Random, engine: dict, prompt_tokens: int, max_new_tokens: int, running: float) -> float:
    """One request's latency with ``running`` requests decoding on its endpoint (queueing not included)."""
    return ttft_s(engine, prompt_tokens) + output_tokens(rng, engine, max_new_tokens) * per_token_s(engine, running)


PROMPT_TOKENS = 2500  # two 1280x720 screenshots and the instruction, history and tool description


def decoding_per_engine(profile: dict, rng: random.Random, concurrency: int, engines: int) -> float:
    """Requests decoding at once on one endpoint with ``concurrency`` episodes in flight: only the share of an
    episode's time spent generating (itself longer the more decode together), found by fixed-point iteration."""
    env, engine, job = profile["env"], profile["engine"], profile["job"]
    per_engine = concurrency / engines
    allocate = sum(lognormal(rng, env["allocate_median_s"], env["allocate_p90_s"]) for _ in range(2000)) / 2000
    env_step = sum(lognormal(rng, env["step_median_s"], env["step_p90_s"]) for _ in range(2000)) / 2000
    steps = sum(episode_steps(rng, env, job["steps_medium"] if rng.random() < env["medium_fraction"]
                              else job["steps_easy"])[0] for _ in range(2000)) / 2000
    running = per_engine
    for _ in range(20):
        gen = sum(generation_s(rng, engine, PROMPT_TOKENS, job["max_new_tokens"], running) for _ in range(500)) / 500
        running = per_engine * steps * gen / (allocate + steps * (gen + env_step))
    return running


def episode_duration_samples(profile: dict, rng: random.Random, n: int, running_per_engine: float,
                             with_steps: bool = False):
    """``n`` episode durations (seconds, stated time) under the profile, with their step counts if asked."""
    env, engine, job = profile["env"], profile["engine"], profile["job"]
    durations, steps = [], []
    for _ in range(n):
        limit = job["steps_medium"] if rng.random() < env["medium_fraction"] else job["steps_easy"]
        k, _ = episode_steps(rng, env, limit)
        d = lognormal(rng, env["allocate_median_s"], env["allocate_p90_s"])
        for _ in range(k):
            d += generation_s(rng, engine, PROMPT_TOKENS, job["max_new_tokens"], running_per_engine)
            d += lognormal(rng, env["step_median_s"], env["step_p90_s"])
        durations.append(d)
        steps.append(k)
    return (durations, steps) if with_steps else durations


class ScriptProcess(ServiceProcess):
    """A fake of this folder (``python bench/<name>.py``) on free ports, started and health-checked like a
    service (``ServiceProcess`` runs ``python -m asyncwebrl.<name>``)."""

    def _spawn(self, module: str, args: list[str], env: dict[str, str] | None) -> None:
        script = pathlib.Path(__file__).resolve().parent / f"{module}.py"
        self.proc = subprocess.Popen([sys.executable, str(script), *args], env={**os.environ, **(env or {})},
                                     stdout=self._log, stderr=subprocess.STDOUT)
