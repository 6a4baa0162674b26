"""api configuration: flags, ``ASYNCWEBRL_*`` variables, defaults."""

from __future__ import annotations

import dataclasses
import ipaddress

from asyncwebrl.common.config import option, require
from asyncwebrl.api.k8s_settings import check_config
from asyncwebrl.common.service_config import ServiceConfig


# The shortest bearer token the api accepts (the chart's values schema is checked against it).
MIN_TOKEN_CHARS = 16

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
    max_taskset_bytes: int = option(8 * 1024 * 1024, "Largest task file POST /v1/tasksets accepts (413 above "
                                                       "it); that route's bound instead of --max-body-bytes.")
    max_taskset_tasks: int = option(10_000, "Most tasks in one task set (422 above it).")
    taskset_roots: tuple[str, ...] = option((), "Directories POST /v1/tasksets?path=REL may load task files from "
                                                "(comma-separated); none by default.")
    launcher: str = option("none", "local: run each job's engines, gateway and trainer as child processes; "
                                   "kubernetes: create them as workloads (--k8s-* flags); "
                                   "none: only store jobs (another launcher acts on them).")
    run_dir: str = option("runs", "local launcher: <run-dir>/<job>/ holds checkpoints and logs.")
    envfleet_target: str = option("127.0.0.1:50061", "envfleet gRPC address the job's gateway uses.")
    buffer_target: str = option("127.0.0.1:50062", "buffer gRPC address of the job's gateway and trainer.")
    model_roots: tuple[str, ...] = option((), "Directories a job's model.path is looked up in (comma-separated).")
    max_restarts: int = option(3, "local launcher: times one crashed child is started again before the job fails.")
    engine_start_timeout_s: float = option(300.0, "local launcher: longest wait for an engine to load its model.")
    torch_threads: int = option(0, "local launcher: CPU threads of each job's trainer and engines; 0 divides this "
                                   "machine's cores among them (each would otherwise take all of them).")

    # --- kubernetes launcher (--launcher kubernetes; asyncwebrl.api.k8s) ------------------------------
    k8s_api: str = option("https://kubernetes.default.svc", "kubernetes launcher: API server URL.")
    k8s_namespace: str = option("", "kubernetes launcher: namespace of the job workloads (default: the api pod's own).")
    k8s_token_file: str = option("/var/run/secrets/kubernetes.io/serviceaccount/token",
                                 "kubernetes launcher: service account token, read at every call; empty: none "
                                 "(e.g. kubectl proxy).")
    k8s_ca_file: str = option("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
                              "kubernetes launcher: CA of the API server; empty: the system CAs.")
    k8s_timeout_s: float = option(10.0, "kubernetes launcher: timeout of one API call (5xx and timeouts are "
                                        "tried 3 times, then the job fails with the call named).")
    k8s_poll_s: float = option(5.0, "kubernetes launcher: seconds between polls of the jobs' trainer Jobs.")
    k8s_image_trainer: str = option("asyncwebrl/trainer:0.1.0", "kubernetes launcher: image of the trainer.")
    k8s_image_rollout: str = option("asyncwebrl/rollout:0.1.0", "kubernetes launcher: image of the rollout gateway.")
    k8s_image_engine: str = option("asyncwebrl/engine:0.1.0", "kubernetes launcher: image of the embedded engine.")
    k8s_image_sglang: str = option("", "kubernetes launcher: image of SGLang servers (jobs with resources.engine_kind "
                                       "sglang); empty: such jobs fail at launch.")
    k8s_image_pull_policy: str = option("IfNotPresent", "kubernetes launcher: Always, IfNotPresent or Never.")
    k8s_secret: str = option("asyncwebrl", "kubernetes launcher: existing Secret the workloads read keys auth-token, "
                                           "redis-password and (optional) engine-api-key from, by reference.")
    k8s_checkpoints_claim: str = option("asyncwebrl-checkpoints", "kubernetes launcher: PersistentVolumeClaim "
                                        "(ReadWriteMany) mounted at --run-dir in every workload, as in the api.")
    k8s_models_claim: str = option("", "kubernetes launcher: PersistentVolumeClaim mounted read-only at the first "
                                       "--model-roots directory; empty: model roots are in the images.")
    k8s_service_account: str = option("", "kubernetes launcher: service account of the workloads (default: the "
                                          "namespace's); its token is not mounted.")
    k8s_run_as_user: int = option(10001, "kubernetes launcher: non-root UID, GID and fsGroup of the workloads.")
    k8s_gpu_node_selector: str = option("", "kubernetes launcher: node labels of GPU pods, label=value "
                                            "comma-separated.")
    k8s_gpu_tolerations: str = option("nvidia.com/gpu:NoSchedule", "kubernetes launcher: tolerations of GPU pods, "
                                      "key[=value][:effect] comma-separated (no value: operator Exists).")
    k8s_trainer_resources: str = option("4,32Gi", "kubernetes launcher: CPU,memory of a trainer pod (requests = "
                                                  "limits); its GPUs are the job's resources.trainer_gpus.")
    k8s_rollout_resources: str = option("2,4Gi", "kubernetes launcher: CPU,memory of a rollout gateway pod.")
    k8s_engine_resources: str = option("4,32Gi", "kubernetes launcher: CPU,memory of an inference pod; its GPUs "
                                                 "are the job's resources.engine_gpus.")
    k8s_shm_size: str = option("16Gi", "kubernetes launcher: size of the memory-backed /dev/shm of inference and "
                                       "GPU trainer pods (counts against their memory limit).")
    k8s_backoff_limit: int = option(3, "kubernetes launcher: restarts of a crashed trainer pod (the Job's "
                                       "backoffLimit), gateway or engine container before the job fails.")
    k8s_job_label: str = option("asyncwebrl.io/job", "kubernetes launcher: weightsync's --k8s-job-label, carried "
                                                     "beside asyncwebrl.io/job when it differs.")
    engine_host: str = option("127.0.0.1", "local launcher: the address its engines bind to; 0.0.0.0 where "
                                           "weightsync runs in another container (compose), the engines then "
                                           "advertising http://<this host's name>:<port>.")
    engine_api_key: str = dataclasses.field(
        default="", metadata={"help": "local launcher: the key its engines require (their --api-key; the gateways "
                                      "and weightsync send it too); required unless --engine-host is loopback.",
                              "secret": True})
    weightsync_target: str = option("", "weightsync gRPC address the trainers publish to: the one publisher of "
                                        "versions to the engines (required with --launcher local or kubernetes; "
                                        "`asyncwebrl up` starts one).")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.api_port <= 65535, "api_port", f"must be in [0, 65535], got {self.api_port}")
        require(bool(self.api_token) or self.allow_no_token, "api_token",
                "required (or pass --allow-no-token for a loopback development server)")
        require(not self.api_token or len(self.api_token) >= MIN_TOKEN_CHARS, "api_token",
                f"must be at least {MIN_TOKEN_CHARS} characters")
        require(1024 <= self.max_body_bytes <= 16 * 1024 * 1024, "max_body_bytes", "must be in [1 KiB, 16 MiB]")
        require(1 <= self.max_jobs <= 1_000_000, "max_jobs", "must be in [1, 1000000]")
        require(1024 <= self.max_taskset_bytes <= 64 * 1024 * 1024, "max_taskset_bytes", "must be in [1 KiB, 64 MiB]")
        require(1 <= self.max_taskset_tasks <= 100_000, "max_taskset_tasks", "must be in [1, 100000]")
        require(self.launcher in ("none", "local", "kubernetes"), "launcher",
                f"must be none, local or kubernetes, got {self.launcher!r}")
        require(0 <= self.max_restarts <= 100, "max_restarts", "must be in [0, 100]")
        require(0 <= self.torch_threads <= 1024, "torch_threads", "must be in [0, 1024]")
        require(1 <= self.engine_start_timeout_s <= 3600, "engine_start_timeout_s", "must be in [1, 3600]")
        try:
            loopback = ipaddress.ip_address(self.engine_host).is_loopback
        except ValueError:
            raise ValueError(f"engine_host: must be an IP address, got {self.engine_host[:80]!r}") from None
        require(loopback or bool(self.engine_api_key), "engine_api_key",
                f"required with --engine-host {self.engine_host}: engines reachable from other hosts need a key")
        require(self.launcher == "none" or bool(self.weightsync_target), "weightsync_target",
                f"required with --launcher {self.launcher}: weightsync publishes every version to the engines")
        if self.launcher == "kubernetes":
            check_config(self)
