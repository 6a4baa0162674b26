"""api configuration: flags, ``ASYNCWEBRL_*`` variables, defaults."""

from __future__ import annotations

import dataclasses

from asyncwebrl.common.config import option, require
from asyncwebrl.common.service_config import ServiceConfig


@dataclasses.dataclass(kw_only=True)
class ApiConfig(ServiceConfig):
    """REST api settings (gRPC and the side HTTP port serve health and metrics, as every service)."""

    grpc_port: int = option(50070, "gRPC port (health only); 0 picks a free one.")
    http_port: int = option(9470, "HTTP port for /metrics, /healthz and /readyz; 0 picks a free one.")
    api_port: int = option(8080, "Port of the REST api; 0 picks a free one (logged at start).")
    api_token: str = dataclasses.field(
        default="", metadata={"help": "Bearer token every REST call but health and metrics must carry.",
                              "secret": True})
    allow_no_token: bool = option(False, "Serve without a token (loopback development only).")
    max_body_bytes: int = option(64 * 1024, "Largest request body accepted (413 above it).")
    max_jobs: int = option(10_000, "Jobs kept; creating more is refused until some are deleted.")
    launcher: str = option("none", "local: run each job's engines, gateway and trainer as child processes; "
                                   "none: only store jobs (another launcher acts on them).")
    run_dir: str = option("runs", "local launcher: <run-dir>/<job>/ holds checkpoints and logs.")
    envfleet_target: str = option("127.0.0.1:50061", "envfleet gRPC address the job's gateway uses.")
    buffer_target: str = option("127.0.0.1:50062", "buffer gRPC address of the job's gateway and trainer.")
    model_roots: tuple[str, ...] = option((), "Directories a job's model.path is looked up in (comma-separated).")
    max_restarts: int = option(3, "local launcher: times one crashed child is started again before the job fails.")
    engine_start_timeout_s: float = option(300.0, "local launcher: longest wait for an engine to load its model.")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.api_port <= 65535, "api_port", f"must be in [0, 65535], got {self.api_port}")
        require(bool(self.api_token) or self.allow_no_token, "api_token",
                "required (or pass --allow-no-token for a loopback development server)")
        require(1024 <= self.max_body_bytes <= 16 * 1024 * 1024, "max_body_bytes", "must be in [1 KiB, 16 MiB]")
        require(1 <= self.max_jobs <= 1_000_000, "max_jobs", "must be in [1, 1000000]")
        require(self.launcher in ("none", "local"), "launcher", f"must be none or local, got {self.launcher!r}")
        require(0 <= self.max_restarts <= 100, "max_restarts", "must be in [0, 100]")
        require(1 <= self.engine_start_timeout_s <= 3600, "engine_start_timeout_s", "must be in [1, 3600]")
