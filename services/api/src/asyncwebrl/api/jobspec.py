"""The job document: one pydantic schema for the REST body, the CLI's YAML and
the launchers. Every field is bounded; unknown fields are refused so a typo in a
YAML file is an error, not a silently ignored setting."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator, model_validator

from asyncwebrl.common.rewards import REWARD_MODES
from asyncwebrl.common.tasks import DIFFICULTIES
from asyncwebrl.common.tasksets import NAME as TASKSET_NAME

NAME = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"  # also a DNS label, so workloads can carry it
TASK = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}){1,3}$"  # source/name, webgym-lite/<site>/<template>
ESCAPE = r"^/|(^|/)\.\.(/|$)"  # an absolute path, or one with a '..' part

# Rules between fields, stated in the JSON Schema (/v1/schema/job, /openapi.json) where JSON Schema can state
# them; the validators below enforce them all. Not expressible: that eval_seed differs from train_seed when
# both are given (JSON Schema compares no two values of one document; $data is no standard keyword); only the
# cases where one of them takes its default are stated.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    path: str = Field("tiny/qwen2_5_vl", min_length=1, max_length=512,
                      description="Checkpoint directory under the model roots, or tiny/<family> for a shipped "
                                  "tiny model.", pattern=r"^[A-Za-z0-9_./-]+$",
                      json_schema_extra={"not": {"pattern": ESCAPE}})
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"

    @field_validator("path")
    @classmethod
    def _no_escape(cls, path: str) -> str:
        if re.search(ESCAPE, path):
            raise ValueError("must be relative to the model roots, without '..'")
        return path


def _seeds_differ(schema: dict, cls) -> None:
    """eval_seed != train_seed where one of them is left to its default (see the note at the top)."""
    train, held_out = cls.model_fields["train_seed"].default, cls.model_fields["eval_seed"].default
    schema["allOf"] = [
        {"if": {"not": {"required": ["eval_seed"]}},
         "then": {"properties": {"train_seed": {"not": {"const": held_out}}}}},
        {"if": {"not": {"required": ["train_seed"]}},
         "then": {"properties": {"eval_seed": {"not": {"const": train}}}}},
    ]


class TaskSpec(_Strict):
    model_config = ConfigDict(json_schema_extra=_seeds_differ)

    tasks: list[Annotated[str, StringConstraints(pattern=TASK)]] = Field(default_factory=list, max_length=256,
                             description="Task names (source/name); empty: every task of `source`.")
    source: str = Field("builtin", pattern=r"^[a-z0-9_-]{1,32}$")
    difficulties: list[Literal[DIFFICULTIES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["easy", "medium", "hard"], min_length=1, max_length=3)
    train_seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of task sampling in training (the "
                            "warm-start's demonstrations draw from it, RL from train_seed + 1000).")
    eval_seed: int = Field(4242, ge=0, le=2**31 - 1, validate_default=True,  # train_seed 4242 alone is refused
                           description="Seed of the held-out evaluation episodes; must differ from train_seed.")
    eval_groups: int = Field(16, ge=1, le=1024, description="Groups of the test split run by evaluate.")
    taskset: str = Field("", pattern=f"^$|{TASKSET_NAME}", max_length=64, description="A task set registered "
                         "with POST /v1/tasksets (WebGym tasks; empty: none): training draws from its train split, "
                         "evaluation from test and test_ood. Must exist when the job is submitted. "
                         "`difficulties` applies to it too (by each task's band).")
    taskset_difficulties: list[Annotated[int, Field(ge=1, le=10)]] = Field(
        default_factory=list, max_length=10, description="With `taskset`: only tasks of these 1-10 levels "
                                                         "(WebGym's difficulty); empty: every level.")

    @field_validator("eval_seed")
    @classmethod
    def _held_out(cls, seed: int, info: ValidationInfo) -> int:
        if seed == info.data.get("train_seed"):
            raise ValueError("must differ from train_seed (held-out episodes)")
        return seed


class AlgorithmSpec(_Strict):
    step_norm: Literal["constant", "trajectory"] = "constant"
    k: float = Field(10.0, gt=0, le=1000)
    lr: float = Field(1e-6, gt=0, le=1.0)
    warmup_steps: int = Field(0, ge=0, le=100_000)
    epochs: int = Field(1, ge=1, le=16)
    minibatches: int = Field(1, ge=1, le=64)
    clip_eps: float = Field(0.2, gt=0, lt=1.0)
    kl_coef: float = Field(0.0, ge=0, le=10.0)
    max_step_kl: float = Field(0.0, ge=0, le=10.0, description="Trust region: a step whose KL per token (before "
                               "vs after, over its batch) exceeds this is undone and retried at half the learning "
                               "rate, up to step_backtracks times, then skipped; 0 = off.")
    step_backtracks: int = Field(3, ge=0, le=10, description="Halvings of the learning rate under max_step_kl.")
    keep_zero_variance: bool = False
    reward: Literal[REWARD_MODES] = Field(  # type: ignore[valid-type]
        "success", description="What GRPO sees: success (1 or 0) or raw (the task's own reward, e.g. MiniWoB's "
                               "-1 for a wrong action). The raw reward is kept with every episode either way.")
    max_steps: int = Field(0, ge=0, le=10_000_000, description="Training steps; 0 = until cancelled.")
    warm_start_steps: int = Field(0, ge=0, le=100_000,
                                  description="Supervised steps on oracle demonstrations before RL.")
    warm_start_lr: float = Field(3e-3, gt=0, le=1.0, description="Learning rate of the warm-start.")
    warm_start_epochs: int = Field(8, ge=1, le=64, description="Passes over each batch of demonstrations.")
    warm_start_batch: int = Field(16, ge=1, le=1024, description="Demonstration episodes per warm-start step.")


class RolloutSpec(_Strict):
    # mode sync: max_staleness 0 (given, or by default in sync mode: see _sync_default).
    model_config = ConfigDict(json_schema_extra={
        "if": {"required": ["mode"], "properties": {"mode": {"const": "sync"}}},
        "then": {"properties": {"max_staleness": {"const": 0}}}})

    mode: Literal["async", "sync"] = "async"
    group_size: int = Field(8, ge=2, le=64)
    batch_groups: int = Field(4, ge=1, le=1024)
    max_staleness: int = Field(2, ge=0, le=64, description="Versions a group may lag the trainer (eta); must "
                               "be 0 in sync mode, and is 0 there by default.")
    concurrency: int = Field(16, ge=1, le=4096, description="Episodes running at once (per gateway).")
    temperature: float = Field(1.0, ge=0, le=5.0)
    max_new_tokens: int = Field(64, ge=1, le=8192)
    steps_easy: int = Field(10, ge=1, le=500, description="Step limit of easy tasks.")
    steps_medium: int = Field(20, ge=1, le=500, description="Step limit of medium tasks.")
    steps_hard: int = Field(30, ge=1, le=500, description="Step limit of hard tasks.")

    @model_validator(mode="before")
    @classmethod
    def _sync_default(cls, data):
        # Synchronous means eta = 0; saying "sync" alone should not need it spelled out.
        if isinstance(data, dict) and data.get("mode") == "sync" and "max_staleness" not in data:
            return {**data, "max_staleness": 0}
        return data

    @field_validator("max_staleness")
    @classmethod
    def _sync(cls, eta: int, info: ValidationInfo) -> int:
        if info.data.get("mode") == "sync" and eta != 0:
            raise ValueError("must be 0 in sync mode")
        return eta


class ResourceSpec(_Strict):
    engines: int = Field(1, ge=1, le=256, description="Inference endpoints.")
    engine_kind: Literal["embedded", "sglang"] = "embedded"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    trainer_gpus: int = Field(0, ge=0, le=64)
    engine_gpus: int = Field(0, ge=0, le=8, description="GPUs per inference endpoint.")
    max_gateways: int = Field(1, ge=1, le=64, description="Kubernetes: the rollout gateway scales from 1 to this "
                              "many replicas on CPU (an HPA), each running rollout.concurrency episodes.")


JUDGE_URL = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"  # as the gateway's --judge-url accepts it
# A key of the release's Secret (--k8s-secret), or <secret>/<key> for a key of another Secret.
SECRET_KEY_REF = r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[-._a-zA-Z0-9]{1,253}$"


class JudgeSpec(_Strict):
    """The judge of rubric tasks: a vision-language model behind an HTTP endpoint. Its key is never
    in the job: ``api_key_secret`` names where it is."""

    url: str = Field(..., min_length=8, max_length=512, pattern=JUDGE_URL,
                     description="Judge endpoint (http or https), without the API path.")
    kind: Literal["sglang", "openai"] = Field("openai", description="sglang: SGLang's /generate; openai: an "
                                              "OpenAI-compatible /v1/chat/completions.")
    model: str = Field("", max_length=256, pattern=r"^[A-Za-z0-9_.:/@+-]*$",
                       description="Model name sent to an OpenAI-compatible judge.")
    api_key_secret: str = Field("", max_length=507, pattern=r"^$|^" + SECRET_KEY_REF[1:],
                                description="Where the judge's key is, never the key itself: Kubernetes, a key "
                                "of the release's Secret (`judge-api-key`) or `<secret>/<key>` of another "
                                "Secret; locally, the api's own ASYNCWEBRL_JUDGE_API_KEY is passed on. Empty: "
                                "no key.")
    concurrency: int = Field(8, ge=1, le=256, description="Calls to the judge at once, per gateway.")
    timeout_s: float = Field(120.0, ge=1, le=3600, description="Timeout of one call to the judge.")
    retries: int = Field(3, ge=0, le=10, description="Times a call that timed out, could not connect or was "
                         "answered 5xx/429 is made again (exponential backoff); then the episode is void.")


class EvaluateRequest(_Strict):
    """``POST /v1/jobs/{id}/evaluate``: the test split with one version of the policy."""

    version: int | None = Field(None, ge=0, le=10_000_000, description="Version to evaluate; default the newest "
                                "(0 is the starting policy, after any warm-start).")
    groups: int | None = Field(None, ge=1, le=1024, description="Groups to run; default tasks.eval_groups.")
    group_size: int | None = Field(None, ge=1, le=64, description="Episodes per group; default rollout.group_size.")
    base: bool = Field(False, description="Evaluate the model the job started from, before any warm-start "
                                          "(version is then ignored).")


class JobSpec(_Strict):
    name: str = Field(..., pattern=NAME, description="Lower-case DNS label; the job id is derived from it.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    tasks: TaskSpec = Field(default_factory=TaskSpec)
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    judge: JudgeSpec | None = Field(None, description="The judge of rubric tasks; absent: no judge.")
