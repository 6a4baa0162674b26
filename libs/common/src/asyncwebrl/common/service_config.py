"""The configuration every service shares; each service subclasses it.

``ProcessConfig``: what every process has (where it binds its HTTP server, its
Redis key prefix, its logs, its shutdown grace). ``ServiceConfig`` adds what a
gRPC service has (its gRPC port and token, its Redis, its message size); the
engine, an HTTP server with no gRPC, builds on ``ProcessConfig``.
"""

from __future__ import annotations

import dataclasses

from asyncwebrl.common.config import option, require

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclasses.dataclass(kw_only=True)
class ProcessConfig:
    """Common process settings."""

    host: str = option("127.0.0.1", "Address the gRPC and HTTP servers bind to (0.0.0.0 in a pod).")
    http_port: int = option(9090, "HTTP port for /metrics, /healthz and /readyz; 0 picks a free one.")
    key_prefix: str = option("asyncwebrl:", "Prefix of every Redis key this deployment writes.")
    log_level: str = option("INFO", "Log level: DEBUG, INFO, WARNING or ERROR.")
    log_format: str = option("json", "Log format: json (one object per line) or text.")
    shutdown_grace_s: float = option(10.0, "Seconds in-flight RPCs get to finish after SIGTERM.")

    def __post_init__(self) -> None:
        require(0 <= self.http_port <= 65535, "http_port", f"must be in [0, 65535], got {self.http_port}")
        require(self.log_level.upper() in LOG_LEVELS, "log_level", f"must be one of {LOG_LEVELS}")
        self.log_level = self.log_level.upper()
        require(self.log_format in ("json", "text"), "log_format", "must be json or text")
        require(0 <= self.shutdown_grace_s <= 600, "shutdown_grace_s", "must be in [0, 600]")
        require(len(self.key_prefix) <= 64 and ":" in self.key_prefix, "key_prefix", "must contain ':' and be at most 64 chars")


@dataclasses.dataclass(kw_only=True)
class ServiceConfig(ProcessConfig):
    """Common service settings."""

    grpc_port: int = option(50051, "gRPC port; 0 picks a free one (logged at start).")
    auth_token: str = dataclasses.field(
        default="",
        metadata={"help": "Shared bearer token that every gRPC call must carry; empty disables auth.", "secret": True},
    )
    redis_url: str = option("redis://127.0.0.1:6379/0", "Redis URL (redis:// or rediss://).")
    redis_password: str = dataclasses.field(
        default="", metadata={"help": "Redis password (overrides one in the URL).", "secret": True}
    )
    max_message_bytes: int = option(16 * 1024 * 1024, "Largest gRPC message accepted or sent.")

    def __post_init__(self) -> None:
        require(0 <= self.grpc_port <= 65535, "grpc_port", f"must be in [0, 65535], got {self.grpc_port}")
        super().__post_init__()
        require(
            self.redis_url.startswith(("redis://", "rediss://", "unix://")),
            "redis_url",
            f"must start with redis://, rediss:// or unix://, got {self.redis_url!r}",
        )
        require(
            4 * 1024 * 1024 <= self.max_message_bytes <= 1024 * 1024 * 1024,
            "max_message_bytes",
            "must be between 4 MiB and 1 GiB",
        )
