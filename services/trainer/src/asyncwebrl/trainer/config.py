"""Trainer configuration: flags, ``ASYNCWEBRL_*`` variables, defaults."""

from __future__ import annotations

import dataclasses

from asyncwebrl.common.config import option, require
from asyncwebrl.common.keys import is_job_id
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.common.service_config import ServiceConfig
from asyncwebrl.trainer.algorithm import STEP_NORMS
from asyncwebrl.trainer.step import OBJECTIVES, StepConfig

# weightsync is the one publisher; "endpoints" (the trainer loading its engines itself) was removed.
PUBLISH_MODES = ("weightsync", "none")


@dataclasses.dataclass(kw_only=True)
class TrainerConfig(ServiceConfig):
    """GRPO trainer for one job (run under torchrun for several processes)."""

    grpc_port: int = option(50064, "gRPC port (health only, rank 0); 0 picks a free one.")
    http_port: int = option(9464, "HTTP port for /metrics, /healthz and /readyz (rank 0); 0 picks a free one.")
    job_id: str = option("default", "The job this trainer trains.")
    consumer: str = option("trainer-0", "This trainer's consumer name in the buffer (keep it across restarts).")
    buffer_target: str = option("127.0.0.1:50062", "buffer gRPC address.")
    model_path: str = option(str(SHIPPED / "qwen2_5_vl"), "Starting checkpoint (Hugging Face directory).")
    checkpoint_dir: str = option("./checkpoints", "Where versions (v<N>/) and full checkpoints (full/) are written.")
    device: str = option("auto", "auto, cpu or cuda.")
    torch_threads: int = option(0, "CPU threads torch uses (0: its default, one per core); set it when "
                                   "processes share the cores.")
    dtype: str = option("float32", "Master weight dtype: float32 (recommended), bfloat16.")
    compute_dtype: str = option("auto", "FSDP2 compute dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16.")
    objective: str = option("grpo", "grpo, or sft: supervised warm-start on demonstration groups.")
    batch_groups: int = option(16, "Groups per training batch (B); the job's B in the buffer (ConfigureJob, sent "
                                   "by the api) should match.")
    max_staleness: int = option(2, "Staleness bound eta in versions: the job's, which the api sets in the buffer "
                                   "(ConfigureJob) and the buffer applies; not sent by the trainer.")
    keep_zero_variance: bool = option(False, "Train on groups whose rewards are all equal (no signal under GRPO): "
                                             "the job's, which the api sets in the buffer; not sent by the trainer.")
    batch_wait_s: float = option(5.0, "Longest single wait for a batch; the trainer keeps asking until it has one.")
    min_batch_groups: int = option(0, "Train once at least this many groups are there (0 = a full batch).")
    step_norm: str = option("constant", "Step advantage normaliser: constant (A/k) or trajectory (A/|tau|).")
    k: float = option(10.0, "The constant k of step_norm constant.")
    epochs: int = option(1, "PPO epochs over each batch.")
    minibatches: int = option(1, "Optimizer steps per epoch.")
    token_budget: int = option(16384, "Padded tokens (rows x longest row) of one micro-batch.")
    lr: float = option(1e-6, "Peak learning rate (AdamW).")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    beta1: float = option(0.9, "AdamW beta1.")
    beta2: float = option(0.999, "AdamW beta2.")
    lr_schedule: str = option("constant", "constant or cosine.")
    warmup_steps: int = option(0, "Linear warm-up steps.")
    total_steps: int = option(1000, "Steps of the cosine schedule.")
    min_lr_ratio: float = option(0.0, "Cosine floor as a fraction of lr.")
    max_grad_norm: float = option(1.0, "Gradient-norm clip.")
    clip_eps: float = option(0.2, "PPO ratio clip.")
    dual_clip: float = option(3.0, "Dual clip c (> 1).")
    behav_cap: float = option(5.0, "Tokens whose behaviour weight exceeds this are masked out.")
    kl_coef: float = option(0.0, "KL penalty to the starting model (0 = off, no reference model loaded).")
    max_step_kl: float = option(0.0, "Trust region: a step whose KL(before || after) per token over its own batch "
                                     "exceeds this is undone and taken again at half the learning rate, up to "
                                     "--step-backtracks times, then skipped (0 = off; costs one forward pass and "
                                     "a copy of the weights and optimizer state).")
    step_backtracks: int = option(3, "Halvings of the learning rate a step may try under --max-step-kl.")
    temperature: float = option(1.0, "Sampling temperature of the engines (logprobs are taken at it).")
    max_steps: int = option(0, "Stop after this many training steps (0 = until stopped).")
    full_every: int = option(10, "Full checkpoint (weights, optimizer, RNG) every N versions.")
    keep_versions: int = option(3, "Published versions kept on disk.")
    keep_full: int = option(2, "Full checkpoints kept on disk.")
    publish: str = option("none", "weightsync: Publish each version through the weight-sync service "
                                  "(--weightsync-target), which loads it into the job's engines; "
                                  "none: only write versions.")
    weightsync_target: str = option("", "host:port of the weight-sync service (with --publish weightsync).")
    publish_timeout_s: float = option(600.0, "Longest wait for weightsync to publish one version.")
    metrics_log: str = option("", "JSONL file of per-step metrics (default: <checkpoint_dir>/metrics.jsonl).")
    seed: int = option(0, "Seed of shuffling and of torch.")
    archive_dir: str = option("", "Where episodes are kept for the trajectory viewer (default: "
                                  "<checkpoint_dir>/episodes).")
    archive_per_step: int = option(2, "Episodes of each batch kept for the viewer (a success and a failure "
                                      "first); 0 = none.")
    archive_keep: int = option(200, "Newest episodes kept in the archive.")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(is_job_id(self.job_id), "job_id", "must match [A-Za-z0-9_-]{1,64}")
        require(0 <= self.archive_per_step <= 64, "archive_per_step", "must be in [0, 64]")
        require(1 <= self.archive_keep <= 100_000, "archive_keep", "must be in [1, 100000]")
        require(bool(self.consumer) and len(self.consumer) <= 64, "consumer", "must be 1-64 characters")
        require(self.device in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda")
        require(0 <= self.torch_threads <= 1024, "torch_threads", "must be in [0, 1024]")
        require(self.dtype in ("float32", "bfloat16"), "dtype", "must be float32 or bfloat16")
        require(self.compute_dtype in ("auto", "float32", "bfloat16"), "compute_dtype", "must be auto, float32 or bfloat16")
        require(self.objective in OBJECTIVES, "objective", f"must be one of {OBJECTIVES}")
        require(1 <= self.batch_groups <= 1024, "batch_groups", "must be in [1, 1024]")
        require(0 <= self.max_staleness <= 64, "max_staleness", "must be in [0, 64]")
        require(0 <= self.min_batch_groups <= self.batch_groups, "min_batch_groups", "must be in [0, batch_groups]")
        require(0.01 <= self.batch_wait_s <= 300, "batch_wait_s", "must be in [0.01, 300]")
        require(self.step_norm in STEP_NORMS, "step_norm", f"must be one of {STEP_NORMS}")
        require(self.k > 0, "k", "must be positive")
        require(1 <= self.epochs <= 100 and 1 <= self.minibatches <= 1024, "epochs", "epochs in [1, 100], minibatches in [1, 1024]")
        require(self.token_budget >= 16, "token_budget", "must be >= 16")
        require(0 < self.lr <= 1, "lr", "must be in (0, 1]")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1", "beta1 and beta2 must be in [0, 1)")
        require(self.lr_schedule in ("constant", "cosine"), "lr_schedule", "must be constant or cosine")
        require(self.warmup_steps >= 0 and self.total_steps >= 1, "total_steps", "warmup >= 0, total >= 1")
        require(self.max_grad_norm > 0, "max_grad_norm", "must be positive")
        require(0 < self.clip_eps < 1, "clip_eps", "must be in (0, 1)")
        require(self.dual_clip > 1, "dual_clip", "must be > 1")
        require(self.behav_cap >= 1, "behav_cap", "must be >= 1")
        require(self.kl_coef >= 0, "kl_coef", "must be >= 0")
        require(0 <= self.max_step_kl <= 10, "max_step_kl", "must be in [0, 10]")
        require(0 <= self.step_backtracks <= 10, "step_backtracks", "must be in [0, 10]")
        require(0 < self.temperature <= 10, "temperature", "must be in (0, 10]")
        require(self.max_steps >= 0, "max_steps", "must be >= 0")
        require(self.full_every >= 1 and self.keep_versions >= 1 and self.keep_full >= 1, "full_every",
                "full_every, keep_versions and keep_full must be >= 1")
        require(self.publish != "endpoints", "publish", "endpoints was removed: weightsync is the one publisher "
                "(--publish weightsync --weightsync-target HOST:PORT), or none to only write versions")
        require(self.publish in PUBLISH_MODES, "publish", f"must be one of {PUBLISH_MODES}")
        require((self.publish == "weightsync") == bool(self.weightsync_target), "weightsync_target",
                "is required with --publish weightsync, and only read then")

    def step_config(self, step: int) -> StepConfig:
        return StepConfig(
            objective=self.objective, epochs=self.epochs, minibatches=self.minibatches,
            token_budget=self.token_budget, clip_eps=self.clip_eps, dual_clip=self.dual_clip,
            behav_cap=self.behav_cap, max_grad_norm=self.max_grad_norm, temperature=self.temperature,
            kl_coef=self.kl_coef, max_step_kl=self.max_step_kl, step_backtracks=self.step_backtracks, seed=self.seed * 1_000_003 + step,
        )
