"""Buffer service configuration: flags, ``ASYNCWEBRL_*`` variables, defaults."""

from __future__ import annotations

import dataclasses

from asyncwebrl.common.config import option, require
from asyncwebrl.common.service_config import ServiceConfig


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one group; anything past them is INVALID_ARGUMENT."""

    max_episodes: int
    max_steps: int
    max_prompt_tokens: int
    max_output_tokens: int
    max_images_per_step: int
    max_text_chars: int
    max_version_lead: int


@dataclasses.dataclass(kw_only=True)
class BufferConfig(ServiceConfig):
    """Trajectory and screenshot buffer."""

    grpc_port: int = option(50062, "gRPC port; 0 picks a free one (logged at start).")
    http_port: int = option(9462, "HTTP port for /metrics, /healthz and /readyz; 0 picks a free one.")
    max_message_bytes: int = option(64 * 1024 * 1024, "Largest gRPC message accepted or sent (one group).")

    # Job defaults, until ConfigureJob sets them.
    batch_groups: int = option(16, "Default groups per training batch (B) for jobs not configured.")
    max_staleness: int = option(2, "Default staleness bound eta (versions) for jobs not configured.")
    keep_zero_variance: bool = option(False, "Default: keep groups whose rewards are all equal.")
    stream_cap_factor: int = option(
        2, "A job's stream holds at most factor * (eta + 2) * B groups (at least 64) unless configured."
    )

    # Delivery.
    claim_idle_s: float = option(
        600.0, "A batch not acked for this long goes back to other trainers; longer than one training step."
    )
    max_deliveries: int = option(3, "An entry that fails validation on read this many times is dead-lettered.")
    dead_letter_cap: int = option(10000, "Dead letters kept per job (MAXLEN ~).")
    dedup_window_s: int = option(86400, "How long a group id is remembered, so a retried PutGroup stores once.")
    running_ttl_s: int = option(30, "A gateway's running count expires after this long without a report.")

    # Blobs.
    blob_budget_bytes: int = option(
        2 * 1024**3, "Screenshot bytes for all jobs past which new blobs are refused (0 = no budget)."
    )
    blob_ttl_s: int = option(3600, "Lifetime of a blob put through PutBlobs until a stored group references it.")
    blob_release_grace_s: int = option(
        60, "After its last group is acked or rejected, a blob lives this long (0 = delete at once)."
    )
    max_blob_bytes: int = option(8 * 1024 * 1024, "Largest screenshot accepted.")
    max_blobs_per_call: int = option(256, "Most blobs in one PutBlobs or GetBlobs call.")
    sweep_interval_s: float = option(5.0, "How often expired blobs are reclaimed and gauges refreshed.")

    # Bounds on one group.
    max_episodes: int = option(64, "Most episodes in one group.")
    max_steps: int = option(128, "Most steps in one episode.")
    max_prompt_tokens: int = option(65536, "Most prompt tokens in one step.")
    max_output_tokens: int = option(16384, "Most output tokens in one step.")
    max_images_per_step: int = option(16, "Most screenshots in one step's prompt.")
    max_text_chars: int = option(65536, "Longest output text or action stored with a step.")
    max_version_lead: int = option(
        4, "A token's weight version may be at most this far ahead of the trainer version the buffer knows."
    )
    max_batch_groups: int = option(1024, "Most groups one GetBatch may ask for.")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(1 <= self.batch_groups <= 100000, "batch_groups", "must be in [1, 100000]")
        require(0 <= self.max_staleness <= 1000, "max_staleness", "must be in [0, 1000]")
        require(1 <= self.stream_cap_factor <= 100, "stream_cap_factor", "must be in [1, 100]")
        require(0.05 <= self.claim_idle_s <= 86400, "claim_idle_s", "must be in [0.05, 86400]")
        require(1 <= self.max_deliveries <= 100, "max_deliveries", "must be in [1, 100]")
        require(1 <= self.dead_letter_cap <= 10**7, "dead_letter_cap", "must be in [1, 1e7]")
        require(60 <= self.dedup_window_s <= 30 * 86400, "dedup_window_s", "must be in [60, 30 days]")
        require(1 <= self.running_ttl_s <= 3600, "running_ttl_s", "must be in [1, 3600]")
        require(self.blob_budget_bytes >= 0, "blob_budget_bytes", "must be >= 0")
        require(1 <= self.blob_ttl_s <= 7 * 86400, "blob_ttl_s", "must be in [1, 7 days]")
        require(0 <= self.blob_release_grace_s <= 86400, "blob_release_grace_s", "must be in [0, 86400]")
        require(1 <= self.max_blob_bytes <= 64 * 1024 * 1024, "max_blob_bytes", "must be in [1, 64 MiB]")
        require(1 <= self.max_blobs_per_call <= 10000, "max_blobs_per_call", "must be in [1, 10000]")
        require(0.1 <= self.sweep_interval_s <= 3600, "sweep_interval_s", "must be in [0.1, 3600]")
        for name, top in (
            ("max_episodes", 4096),
            ("max_steps", 4096),
            ("max_prompt_tokens", 1 << 22),
            ("max_output_tokens", 1 << 20),
            ("max_images_per_step", 1024),
            ("max_text_chars", 1 << 22),
            ("max_batch_groups", 100000),
        ):
            require(1 <= getattr(self, name) <= top, name, f"must be in [1, {top}]")
        require(0 <= self.max_version_lead <= 1000, "max_version_lead", "must be in [0, 1000]")

    @property
    def limits(self) -> Limits:
        return Limits(
            self.max_episodes,
            self.max_steps,
            self.max_prompt_tokens,
            self.max_output_tokens,
            self.max_images_per_step,
            self.max_text_chars,
            self.max_version_lead,
        )
