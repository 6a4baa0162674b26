"""Weight-sync service configuration: flags, ``ASYNCWEBRL_*`` variables, defaults."""

from __future__ import annotations

import dataclasses
import re

from asyncwebrl.common.config import option, require
from asyncwebrl.common.keys import is_job_id
from asyncwebrl.common.registry import ENDPOINT_ID
from asyncwebrl.common.service_config import ServiceConfig

DISCOVERY = ("none", "static", "kubernetes")
TRANSPORTS = ("disk", "broadcast")
BROADCAST_BACKENDS = ("gloo", "nccl")
_STATIC = re.compile(r"^(?P<job>[A-Za-z0-9_-]{1,64})=(?P<id>[A-Za-z0-9_.:-]{1,128})@(?P<url>https?://\S+)$")


@dataclasses.dataclass(frozen=True)
class StaticEndpoint:
    job_id: str
    endpoint_id: str
    url: str


def parse_static(text: str) -> list[StaticEndpoint]:
    """``job=id@http://host:port,...`` -> endpoints; ValueError names the bad entry."""
    out = []
    for i, item in enumerate(p.strip() for p in text.split(",") if p.strip()):
        m = _STATIC.match(item)
        require(m is not None, "static_endpoints", f"entry {i} must be job=endpoint_id@http(s)://host:port, "
                f"got {item[:100]!r}")
        out.append(StaticEndpoint(m["job"], m["id"], m["url"].rstrip("/")))
    ids = [(e.job_id, e.endpoint_id) for e in out]
    require(len(set(ids)) == len(ids), "static_endpoints", "an endpoint id is listed twice for one job")
    return out


@dataclasses.dataclass(kw_only=True)
class WeightSyncConfig(ServiceConfig):
    """Weight-sync settings."""

    grpc_port: int = option(50065, "gRPC port; 0 picks a free one (logged at start).")
    http_port: int = option(9465, "HTTP port for /metrics, /healthz and /readyz; 0 picks a free one.")
    concurrency: int = option(4, "Endpoints loading at once per job (bound the reads of the checkpoint volume).")
    load_timeout_s: float = option(600.0, "Longest one endpoint may take to load a version.")
    retries: int = option(2, "Retries of a failed load before the endpoint is held back (unready).")
    retry_backoff_s: float = option(1.0, "Seconds before the first retry; doubles each retry and each catch-up "
                                         "round that fails.")
    registry_ttl_s: float = option(10.0, "Heartbeat age past which an endpoint counts as gone.")
    reconcile_interval_s: float = option(2.0, "Seconds between passes that catch up endpoints behind the "
                                              "published version and refresh statically listed ones.")
    checkpoint_roots: str = option("", "Comma-separated directories a published path must be inside; empty: any.")
    engine_api_key: str = dataclasses.field(
        default="", metadata={"help": "Bearer token of the inference endpoints' admin routes.", "secret": True})
    transport: str = option("disk", "How a version reaches the endpoints: disk (each loads the checkpoint, "
                                    "update_weights_from_disk) or broadcast (weightsync joins a process group "
                                    "with them as rank 0 and broadcasts the tensors, update_weights_from_distributed;"
                                    " an endpoint that cannot join or fails falls back to disk).")
    broadcast_host: str = option("127.0.0.1", "For --transport broadcast: the address engines reach weightsync's "
                                              "rendezvous at (master_address; this pod's address in a cluster).")
    broadcast_port: int = option(0, "For --transport broadcast: first rendezvous port (master_port) to try; "
                                    "0 picks any free port for each group.")
    broadcast_port_count: int = option(16, "Ports tried from --broadcast-port on (jobs and rebuilt groups each "
                                           "take one).")
    broadcast_backend: str = option("gloo", "Backend of the broadcast group: gloo (CPU tensors) or nccl "
                                            "(needs a GPU here and on every engine).")
    broadcast_timeout_s: float = option(120.0, "Longest a group may take to form, and a broadcast to finish, "
                                               "before the endpoints fall back to disk.")
    broadcast_bucket_mb: int = option(0, "Split a version into update requests of at most this many MiB "
                                         "(0: one request per version, applied all-or-nothing by the engine).")
    discovery: str = option("none", "Endpoints weightsync registers itself (SGLang pods, which do not "
                                    "heartbeat): none, static (--static-endpoints) or kubernetes (pods by label).")
    static_endpoints: str = option("", "For --discovery static: job=endpoint_id@http://host:port, comma-separated.")
    k8s_namespace: str = option("", "For --discovery kubernetes: namespace of the inference pods "
                                    "(default: this pod's own).")
    k8s_selector: str = option("app.kubernetes.io/component=inference", "Label selector of the inference pods.")
    k8s_job_label: str = option("asyncwebrl.io/job", "Pod label that names the job a pod serves.")
    k8s_port: int = option(30000, "Port of the inference server in each pod.")
    k8s_api: str = option("https://kubernetes.default.svc", "Kubernetes API server URL.")
    k8s_token_file: str = option("/var/run/secrets/kubernetes.io/serviceaccount/token", "Service account token.")
    k8s_ca_file: str = option("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", "CA of the API server; "
                                                                                     "empty: system CAs.")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(1 <= self.concurrency <= 1024, "concurrency", "must be in [1, 1024]")
        require(1 <= self.load_timeout_s <= 7200, "load_timeout_s", "must be in [1, 7200]")
        require(0 <= self.retries <= 10, "retries", "must be in [0, 10]")
        require(0 <= self.retry_backoff_s <= 300, "retry_backoff_s", "must be in [0, 300]")
        require(0.5 <= self.registry_ttl_s <= 3600, "registry_ttl_s", "must be in [0.5, 3600]")
        require(0.1 <= self.reconcile_interval_s <= 600, "reconcile_interval_s", "must be in [0.1, 600]")
        require(self.transport in TRANSPORTS, "transport", f"must be one of {TRANSPORTS}")
        require(0 < len(self.broadcast_host) <= 253 and " " not in self.broadcast_host, "broadcast_host",
                "must be a host name or address")
        require(0 <= self.broadcast_port <= 65535, "broadcast_port", "must be in [0, 65535]")
        require(1 <= self.broadcast_port_count <= 4096 and self.broadcast_port + self.broadcast_port_count <= 65536,
                "broadcast_port_count", "must be in [1, 4096] and stay below port 65536")
        require(self.broadcast_backend in BROADCAST_BACKENDS, "broadcast_backend",
                f"must be one of {BROADCAST_BACKENDS}")
        require(1 <= self.broadcast_timeout_s <= 3600, "broadcast_timeout_s", "must be in [1, 3600]")
        require(0 <= self.broadcast_bucket_mb <= 1 << 20, "broadcast_bucket_mb", "must be in [0, 2^20]")
        require(self.discovery in DISCOVERY, "discovery", f"must be one of {DISCOVERY}")
        require(self.discovery == "static" or not self.static_endpoints, "static_endpoints",
                "is only read with --discovery static")
        self.static = parse_static(self.static_endpoints)
        require(self.discovery != "static" or self.static, "static_endpoints",
                "must list at least one endpoint with --discovery static")
        require(1 <= self.k8s_port <= 65535, "k8s_port", "must be in [1, 65535]")
        require(self.k8s_api.startswith(("http://", "https://")), "k8s_api", "must be an http(s) URL")
        require(not self.k8s_namespace or re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", self.k8s_namespace)
                is not None, "k8s_namespace", "must be a DNS label")
        self.roots = [r.strip().rstrip("/") for r in self.checkpoint_roots.split(",") if r.strip()]
        for root in self.roots:
            require(root.startswith("/"), "checkpoint_roots", f"{root!r} must be an absolute path")
        for e in self.static:
            require(is_job_id(e.job_id) and ENDPOINT_ID.match(e.endpoint_id) is not None, "static_endpoints",
                    f"bad job or endpoint id in {e}")
