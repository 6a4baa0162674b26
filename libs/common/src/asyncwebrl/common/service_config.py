"""The configuration every service shares; each service subclasses it.

``BaseConfig``: what every process has (where it binds its HTTP server, its
logs, its shutdown grace). ``ProcessConfig`` adds the Redis key prefix; the
engine, an HTTP server with no gRPC, builds on it. ``GrpcConfig`` adds what a
gRPC service has (its gRPC port and token, its message size) and no Redis:
envfleet, which reaches Redis only through the buffer, builds on it.
``ServiceConfig`` is a gRPC service with Redis (URL, password, key prefix).
"""

from __future__ import annotations

import dataclasses

from asyncwebrl.common.config import option, require

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclasses.dataclass(kw_only=True)
class BaseConfig:
    """Settings of every process."""

    host: str = option("127.0.0.1", "Address the gRPC and HTTP servers bind to (0.0.0.0 in a pod).")
    http_port: int = option(9090, "HTTP port for /metrics, /healthz and /readyz; 0 picks a free one.")
    log_level: str = option("INFO", "Log level: DEBUG, INFO, WARNING or ERROR.")
    log_format: str = option("json", "Log format: json (one object per line) or text.")
    shutdown_grace_s: float = option(10.0, "Seconds in-flight RPCs get to finish after SIGTERM.")

    def __post_init__(self) -> None:
        require(0 <= self.http_port <= 65535, "http_port", f"must be in [0, 65535], got {self.http_port}")
        require(self.log_level.upper() in LOG_LEVELS, "log_level", f"must be one of {LOG_LEVELS}")
        self.log_level = self.log_level.upper()
        require(self.log_format in ("json", "text"), "log_format", "must be json or text")
        require(0 <= self.shutdown_grace_s <= 600, "shutdown_grace_s", "must be in [0, 600]")


@dataclasses.dataclass(kw_only=True)
class ProcessConfig(BaseConfig):
    """Common process settings: a process that writes Redis keys."""

    key_prefix: str = option("asyncwebrl:", "Prefix of every Redis key this deployment writes.")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(len(self.key_prefix) <= 64 and ":" in self.key_prefix, "key_prefix", "must contain ':' and be at most 64 chars")


@dataclasses.dataclass(kw_only=True)
class GrpcConfig(BaseConfig):
    """A gRPC service with no Redis of its own."""

    grpc_port: int = option(50051, "gRPC port; 0 picks a free one (logged at start).")
    auth_token: str = dataclasses.field(
        default="",
        metadata={"help": "Shared bearer token that every gRPC call must carry; empty disables auth.", "secret": True},
    )
    max_message_bytes: int = option(16 * 1024 * 1024, "Largest gRPC message accepted or sent.")

    def __post_init__(self) -> None:
        require(0 <= self.grpc_port <= 65535, "grpc_port", f"must be in [0, 65535], got {self.grpc_port}")
        super().__post_init__()
        require(
            4 * 1024 * 1024 <= self.max_message_bytes <= 1024 * 1024 * 1024,
            "max_message_bytes",
            "must be between 4 MiB and 1 GiB",
        )


@dataclasses.dataclass(kw_only=True)
class ServiceConfig(GrpcConfig, ProcessConfig):
    """Common service settings: a gRPC service with its Redis."""

    redis_url: str = option("redis://127.0.0.1:6379/0", "Redis URL (redis:// or rediss://).")
    redis_password: str = dataclasses.field(
        default="", metadata={"help": "Redis password (overrides one in the URL).", "secret": True}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.redis_url.startswith(("redis://", "rediss://", "unix://")),
            "redis_url",
            f"must start with redis://, rediss:// or unix://, got {self.redis_url!r}",
        )


def is_target(target: str) -> bool:
    """``HOST:PORT`` (a name, an IPv4 address or a bracketed IPv6 one; port 1-65535), as gRPC dials it."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or not host:
        return False
    if host.startswith("["):
        return host.endswith("]") and len(host) > 2
    return all(c.isalnum() or c in "-._" for c in host)


def require_target(target: str, field: str) -> None:
    """Raise ``ValueError`` naming ``field`` unless ``target`` is ``HOST:PORT``."""
    require(is_target(target), field, f"must be HOST:PORT, got {target!r}")
