"""Engine configuration: flags, ``ASYNCWEBRL_*`` variables, defaults."""

from __future__ import annotations

import dataclasses

from asyncwebrl.common.config import option, require
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.common.service_config import ProcessConfig


@dataclasses.dataclass(kw_only=True)
class EngineConfig(ProcessConfig):
    """Embedded inference engine (SGLang's native HTTP API)."""

    host: str = option("127.0.0.1", "Address the HTTP server binds to (0.0.0.0 in a pod).")
    http_port: int = option(30000, "HTTP port (SGLang's default); 0 picks a free one (logged at start).")
    api_key: str = dataclasses.field(
        default="",
        metadata={"help": "Bearer key for every endpoint but /health and /metrics; empty disables.", "secret": True},
    )
    admin_api_key: str = dataclasses.field(
        default="",
        metadata={"help": "Key for the weight and pause endpoints (default: the api key).", "secret": True},
    )
    model_path: str = option(str(SHIPPED / "qwen2_5_vl"), "Checkpoint directory (config.json, safetensors, ...).")
    model_roots: tuple[str, ...] = option(
        (), "Directories update_weights_from_disk may load from (comma-separated; default: model_path's parent)."
    )
    device: str = option("auto", "cpu, cuda, cuda:N or auto (cuda when available).")
    torch_threads: int = option(0, "CPU threads torch uses (0: its default, one per core); set it when "
                                   "processes share the cores.")
    dtype: str = option("auto", "auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16 or float16.")
    weight_version: str = option("0", "Version label of the weights loaded at start.")
    max_batch_size: int = option(32, "Most requests decoded together.")
    max_new_tokens_limit: int = option(4096, "Largest max_new_tokens a request may ask for.")
    default_max_new_tokens: int = option(128, "max_new_tokens when a request gives none (SGLang's default).")
    max_prompt_tokens: int = option(32768, "Longest prompt (after image placeholders are expanded).")
    max_images: int = option(16, "Most images in one request.")
    max_body_bytes: int = option(64 * 1024 * 1024, "Largest request body.")
    image_dir: str = option("", "Directory image_data file paths must be under; empty refuses file paths.")
    allow_image_urls: bool = option(False, "Fetch http(s) image_data URLs (off: a pod should not fetch for callers).")
    url_timeout_s: float = option(10.0, "Timeout of one image URL fetch.")
    image_cache_mb: int = option(512, "Memory for processed images kept by content hash (0 = no cache).")
    shutdown_grace_s: float = option(10.0, "Seconds in-flight requests get to finish after SIGTERM.")
    seed: int = option(0, "Seed of the sampler (requests may give their own sampling_seed).")
    registry_redis_url: str = option("", "Redis of the endpoint registry; empty: do not register.")
    registry_redis_password: str = dataclasses.field(
        default="", metadata={"help": "Password of the registry's Redis.", "secret": True}
    )
    job_id: str = option("default", "Job whose rollout gateways this engine serves.")
    endpoint_id: str = option("", "Name in the registry (default: <hostname>-<port>).")
    advertise_url: str = option("", "URL gateways reach this engine at (default: http://<host or hostname>:<port>).")
    heartbeat_s: float = option(2.0, "Seconds between registry heartbeats.")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device",
                "must be auto, cpu or cuda[:N]")
        require(self.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype",
                "must be auto, float32, bfloat16 or float16")
        require(0 <= self.torch_threads <= 1024, "torch_threads", "must be in [0, 1024]")
        require(0 < len(self.weight_version) <= 64, "weight_version", "must be 1-64 characters")
        require(1 <= self.max_batch_size <= 1024, "max_batch_size", "must be in [1, 1024]")
        require(1 <= self.max_new_tokens_limit <= 1 << 20, "max_new_tokens_limit", "must be in [1, 2^20]")
        require(1 <= self.default_max_new_tokens <= self.max_new_tokens_limit, "default_max_new_tokens",
                "must be in [1, max_new_tokens_limit]")
        require(1 <= self.max_prompt_tokens <= 1 << 22, "max_prompt_tokens", "must be in [1, 2^22]")
        require(0 <= self.max_images <= 256, "max_images", "must be in [0, 256]")
        require(1024 <= self.max_body_bytes <= 1 << 30, "max_body_bytes", "must be in [1 KiB, 1 GiB]")
        require(0.1 <= self.url_timeout_s <= 120, "url_timeout_s", "must be in [0.1, 120]")
        require(0 <= self.image_cache_mb <= 1 << 20, "image_cache_mb", "must be in [0, 2^20]")
        require(0.1 <= self.heartbeat_s <= 60, "heartbeat_s", "must be in [0.1, 60]")
        require(not self.registry_redis_url or self.registry_redis_url.startswith(("redis://", "rediss://", "unix://")),
                "registry_redis_url", "must start with redis://, rediss:// or unix://")
