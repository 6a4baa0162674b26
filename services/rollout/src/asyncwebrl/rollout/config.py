"""Rollout gateway configuration: flags, ``ASYNCWEBRL_*`` variables, defaults."""

from __future__ import annotations

import dataclasses
import re

from asyncwebrl.common.rewards import REWARD_MODES
from asyncwebrl.common.config import option, require
from asyncwebrl.common.keys import is_job_id
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.common.service_config import ServiceConfig
from asyncwebrl.common.tasks import STEP_LIMITS
from asyncwebrl.common.tasksets import NAME as TASKSET_NAME

JUDGE_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
MAX_URL = 512
DEFAULT_SOURCE = "webgym-lite"


@dataclasses.dataclass(kw_only=True)
class RolloutConfig(ServiceConfig):
    """Rollout gateway for one job."""

    grpc_port: int = option(50063, "gRPC port (health only); 0 picks a free one.")
    http_port: int = option(9463, "HTTP port for /metrics, /healthz and /readyz; 0 picks a free one.")
    job_id: str = option("default", "The job this gateway produces groups for.")
    gateway_id: str = option("gateway-0", "This gateway's name in the buffer's running counts.")
    envfleet_target: str = option("127.0.0.1:50061", "envfleet gRPC address.")
    buffer_target: str = option("127.0.0.1:50062", "buffer gRPC address.")
    model_path: str = option(str(SHIPPED / "qwen2_5_vl"), "Checkpoint directory for the tokenizer and image processor.")
    engine_api_key: str = dataclasses.field(
        default="", metadata={"help": "API key of the inference endpoints.", "secret": True}
    )
    tasks: tuple[str, ...] = option((), "Tasks to sample from (comma-separated); empty: every task of --task-source.")
    task_source: str = option("", f"envfleet task source when --tasks is empty (empty: {DEFAULT_SOURCE}).")
    taskset: str = option("", "A task set stored in Redis (POST /v1/tasksets; WebGym tasks served inline by envfleet "
                          "and judged): --split train draws its train tasks, test its test and test_ood tasks, any "
                          "all. Not with --tasks or --task-source; needs --judge-url.")
    taskset_levels: tuple[str, ...] = option((), "With --taskset: only tasks of these 1-10 levels (comma-separated; "
                                             "empty: every level). --difficulties applies too, by each task's band.")
    difficulties: tuple[str, ...] = option(("easy", "medium", "hard"), "Difficulties to sample (comma-separated).")
    include_held_out: bool = option(False, "Also sample tasks reserved for the out-of-distribution split.")
    group_size: int = option(8, "Episodes per GRPO group (same task, same seed).")
    max_concurrent_episodes: int = option(32, "Episodes running at once.")
    max_groups: int = option(0, "Stop after this many groups are written (0 = run until stopped); a dropped "
                             "group is replaced, until as many have been dropped.")
    steps_easy: int = option(STEP_LIMITS["easy"], "Step limit of easy tasks.")
    steps_medium: int = option(STEP_LIMITS["medium"], "Step limit of medium tasks.")
    steps_hard: int = option(STEP_LIMITS["hard"], "Step limit of hard tasks.")
    episode_timeout_s: float = option(600.0, "Wall-clock limit of one episode.")
    history_window: int = option(1, "Earlier screenshots shown with the current one.")
    max_new_tokens: int = option(256, "Token budget of one step's output.")
    temperature: float = option(1.0, "Sampling temperature.")
    generate_timeout_s: float = option(120.0, "Timeout of one call to an inference endpoint.")
    seed: int = option(0, "Seed of task and task-seed sampling.")
    seed_salt: str = option("", "Mixed into --seed, so that replicas of one gateway (a Deployment's pods, each "
                                "passing its own name) draw different task instances; empty: --seed alone, the same "
                                "sequence every time, as evaluations need.")
    split: str = option("any", "Task seeds drawn from: train (seed mod 10 != 0), test (seed mod 10 == 0, the held-out "
                               "seeds of evaluations; the built-in sites' split rule), or any.")
    registry_ttl_s: float = option(10.0, "An endpoint whose heartbeat is older than this gets no requests.")
    gate_poll_s: float = option(0.5, "How often a closed staleness gate is checked again.")
    reward: str = option("success", "What GRPO sees: success (1 or 0, the task's own check) or raw (the task's "
                         "own reward, e.g. MiniWoB's -1 for a wrong action); the raw reward is kept either way.")
    env_retries: int = option(1, "Times an episode hit by an environment fault is run again.")
    rubrics: str = option("", "JSONL of rubric tasks ({task, evaluator_reference, reference_answer}); judged.")
    judge_url: str = option("", "Judge endpoint for rubric tasks (SGLang /generate or OpenAI-compatible).")
    judge_kind: str = option("sglang", "sglang or openai.")
    judge_model: str = option("", "Model name sent to an OpenAI-compatible judge.")
    judge_api_key: str = dataclasses.field(
        default="", metadata={"help": "API key of the judge (sent as a bearer token).", "secret": True}
    )
    judge_concurrency: int = option(8, "Calls to the judge at once (more wait for a slot).")
    judge_timeout_s: float = option(120.0, "Timeout of one call to the judge.")
    judge_retries: int = option(3, "Times a call to the judge is made again after a timeout, a refused "
                                "connection or a 5xx/429 answer; then the episode is void (judge_unavailable).")
    judge_backoff_s: float = option(1.0, "First pause before a judge call is made again; doubles each time.")
    judge_backoff_cap_s: float = option(30.0, "Longest pause between calls to the judge.")
    demonstrations: bool = option(
        False, "Write the reference agent's episodes (envfleet's Oracle; with --taskset, each task's "
        "reference_answer answered at once, tasks without one left out) as the tool calls the policy should "
        "have written, instead of sampling the policy: data for a trainer with --objective sft.",
    )
    sync: bool = option(
        False, "Synchronous mode (use with the job's eta = 0): after each version's groups, wait until every "
        "ready endpoint serves the trainer's version before starting more.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(is_job_id(self.job_id), "job_id", "must match [A-Za-z0-9_-]{1,64}")
        require(1 <= self.group_size <= 64, "group_size", "must be in [1, 64]")
        require(len(self.seed_salt) <= 253 and self.seed_salt.isprintable(), "seed_salt",
                "must be at most 253 printable characters (a pod name)")
        require(1 <= self.max_concurrent_episodes <= 4096, "max_concurrent_episodes", "must be in [1, 4096]")
        require(self.max_groups >= 0, "max_groups", "must be >= 0")
        for name in ("steps_easy", "steps_medium", "steps_hard"):
            require(1 <= getattr(self, name) <= 500, name, "must be in [1, 500]")
        require(1 <= self.episode_timeout_s <= 86400, "episode_timeout_s", "must be in [1, 86400]")
        require(0 <= self.history_window <= 8, "history_window", "must be in [0, 8]")
        require(1 <= self.max_new_tokens <= 32768, "max_new_tokens", "must be in [1, 32768]")
        require(0 <= self.temperature <= 10, "temperature", "must be in [0, 10]")
        require(0 <= self.env_retries <= 5, "env_retries", "must be in [0, 5]")
        require(self.split in ("any", "train", "test"), "split", f"must be any, train or test, got {self.split!r}")
        require(self.judge_kind in ("sglang", "openai"), "judge_kind", "must be sglang or openai")
        require(not self.judge_url or bool(JUDGE_URL.match(self.judge_url)) and len(self.judge_url) <= MAX_URL,
                "judge_url", f"must be an http(s) URL of at most {MAX_URL} characters")
        require(1 <= self.judge_concurrency <= 256, "judge_concurrency", "must be in [1, 256]")
        require(1 <= self.judge_timeout_s <= 3600, "judge_timeout_s", "must be in [1, 3600]")
        require(0 <= self.judge_retries <= 10, "judge_retries", "must be in [0, 10]")
        require(0 <= self.judge_backoff_s <= 60, "judge_backoff_s", "must be in [0, 60]")
        require(self.judge_backoff_s <= self.judge_backoff_cap_s <= 600, "judge_backoff_cap_s",
                "must be in [judge_backoff_s, 600]")
        require(self.reward in REWARD_MODES, "reward", f"must be one of {', '.join(REWARD_MODES)}")
        require(not self.rubrics or bool(self.judge_url), "judge_url", "rubric tasks need a judge endpoint")
        require(set(self.difficulties) <= {"easy", "medium", "hard"} and self.difficulties, "difficulties",
                "must be among easy, medium, hard")
        require(not self.taskset or re.fullmatch(TASKSET_NAME, self.taskset) is not None, "taskset",
                f"must match {TASKSET_NAME}")
        require(all(re.fullmatch(r"[1-9]|10", v) for v in self.taskset_levels) and len(self.taskset_levels) <= 10,
                "taskset_levels", f"must be integers 1-10, got {','.join(self.taskset_levels)[:80]!r}")
        require(not self.taskset_levels or bool(self.taskset), "taskset_levels", "needs --taskset")
        if self.taskset:
            require(not self.tasks, "tasks", "not with --taskset (a task set names its own tasks)")
            require(not self.task_source, "task_source", "not with --taskset (a task set names its own tasks)")
            require(not self.rubrics, "rubrics", "not with --taskset (its rubrics come from the set's records)")
            require(bool(self.judge_url), "judge_url", "task sets need a judge: their reward is the judge's "
                    "verdict (--judge-url, the job's judge section)")

    @property
    def levels(self) -> frozenset[int]:
        """--taskset-levels as integers (empty: every level)."""
        return frozenset(int(v) for v in self.taskset_levels)

    def step_limit(self, difficulty: str) -> int:
        return {"easy": self.steps_easy, "medium": self.steps_medium}.get(difficulty, self.steps_hard)
