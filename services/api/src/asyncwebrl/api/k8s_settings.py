"""The Kubernetes launcher's settings from the api's flags, and their validation (ApiConfig calls
``check_config``): what the manifests need, apart from building them (``k8s_manifests``)."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import urllib.parse

from asyncwebrl.common.config import require

GPU = "nvidia.com/gpu"
JOB_LABEL = "asyncwebrl.io/job"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^(|(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


# --- settings -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Resources:
    cpu: str
    memory: str


@dataclasses.dataclass(frozen=True)
class Toleration:
    key: str
    value: str = ""
    effect: str = ""

    def manifest(self) -> dict:
        out: dict[str, str] = {"key": self.key, "operator": "Equal" if self.value else "Exists"}
        if self.value:
            out["value"] = self.value
        if self.effect:
            out["effect"] = self.effect
        return out


@dataclasses.dataclass(frozen=True)
class K8sSettings:
    """What the manifests need; built from ApiConfig by ``settings_from_config``. ``redis_url``,
    ``key_prefix``, ``envfleet_target`` and ``buffer_target`` are read by the launcher's flag helpers."""

    namespace: str
    run_dir: str
    redis_url: str
    key_prefix: str
    envfleet_target: str
    buffer_target: str
    weightsync_target: str
    model_roots: tuple[str, ...] = ()
    # Read by jobargs.engine_args as ApiConfig.engine_host is: an inference pod listens on its pod IP.
    engine_host: str = "0.0.0.0"
    image_trainer: str = "asyncwebrl/trainer:0.1.0"
    image_rollout: str = "asyncwebrl/rollout:0.1.0"
    image_engine: str = "asyncwebrl/engine:0.1.0"
    image_sglang: str = ""
    image_pull_policy: str = "IfNotPresent"
    secret: str = "asyncwebrl"
    checkpoints_claim: str = "asyncwebrl-checkpoints"
    models_claim: str = ""
    service_account: str = ""
    run_as_user: int = 10001
    gpu_node_selector: tuple[tuple[str, str], ...] = ()
    gpu_tolerations: tuple[Toleration, ...] = (Toleration(GPU, "", "NoSchedule"),)
    trainer_resources: Resources = Resources("4", "32Gi")
    rollout_resources: Resources = Resources("2", "4Gi")
    engine_resources: Resources = Resources("4", "32Gi")
    shm_size: str = "16Gi"
    backoff_limit: int = 3
    engine_start_timeout_s: float = 600.0
    job_label: str = JOB_LABEL  # weightsync's --k8s-job-label, when it is not the default


def parse_resources(text: str, field: str) -> Resources:
    parts = [p.strip() for p in text.split(",")]
    require(len(parts) == 2 and all(QUANTITY.match(p) for p in parts), field,
            f"must be CPU,MEMORY as Kubernetes quantities (e.g. 4,32Gi), got {text!r}")
    return Resources(parts[0], parts[1])


def _label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return bool(LABEL_NAME.match(name)) and (not prefix or bool(DNS_SUBDOMAIN.match(prefix)))


def parse_node_selector(text: str) -> tuple[tuple[str, str], ...]:
    out = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        key, eq, value = item.partition("=")
        require(bool(eq) and _label_key(key) and bool(LABEL_VALUE.match(value)), "k8s_gpu_node_selector",
                f"entries must be label=value, got {item[:100]!r}")
        out.append((key, value))
    return tuple(out)


def parse_tolerations(text: str) -> tuple[Toleration, ...]:
    out = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        kv, _, effect = item.partition(":")
        key, _, value = kv.partition("=")
        require(_label_key(key) and bool(LABEL_VALUE.match(value)) and (not effect or effect in EFFECTS),
                "k8s_gpu_tolerations", f"entries must be key[=value][:{'|'.join(EFFECTS)}], got {item[:100]!r}")
        out.append(Toleration(key, value, effect))
    return tuple(out)


def resolve_namespace(config) -> str:
    """--k8s-namespace, else the api pod's own (beside the service account token), else default. ``config``:
    an ApiConfig."""
    if config.k8s_namespace:
        return config.k8s_namespace
    if config.k8s_token_file:
        ns_file = pathlib.Path(config.k8s_token_file).with_name("namespace")
        if ns_file.is_file():
            return ns_file.read_text().strip()
    return "default"


def settings_from_config(config, namespace: str) -> K8sSettings:
    """``config``: an ApiConfig (not imported: the config module imports this one). Raises ValueError
    naming the field."""
    for field in ("k8s_image_trainer", "k8s_image_rollout", "k8s_image_engine", "k8s_image_sglang"):
        image = getattr(config, field)
        require(len(image) <= 512 and not any(c.isspace() for c in image), field, "must be an image reference")
    for field in ("k8s_image_trainer", "k8s_image_rollout", "k8s_image_engine"):
        require(bool(getattr(config, field)), field, "is required with --launcher kubernetes")
    require(config.k8s_image_pull_policy in PULL_POLICIES, "k8s_image_pull_policy", f"must be one of {PULL_POLICIES}")
    require(bool(DNS_SUBDOMAIN.match(config.k8s_secret)), "k8s_secret", "must name a Secret (DNS subdomain)")
    require(bool(DNS_SUBDOMAIN.match(config.k8s_checkpoints_claim)), "k8s_checkpoints_claim",
            "must name a PersistentVolumeClaim (DNS subdomain)")
    require(not config.k8s_models_claim or bool(DNS_SUBDOMAIN.match(config.k8s_models_claim)), "k8s_models_claim",
            "must name a PersistentVolumeClaim (DNS subdomain)")
    require(not config.k8s_models_claim or bool(config.model_roots), "k8s_models_claim",
            "is mounted at the first --model-roots directory: give one")
    require(not config.k8s_service_account or bool(DNS_SUBDOMAIN.match(config.k8s_service_account)),
            "k8s_service_account", "must name a ServiceAccount (DNS subdomain)")
    require(1 <= config.k8s_run_as_user <= 2**31 - 1, "k8s_run_as_user", "must be a non-root UID in [1, 2^31-1]")
    require(bool(QUANTITY.match(config.k8s_shm_size)), "k8s_shm_size", "must be a Kubernetes quantity (e.g. 16Gi)")
    require(0 <= config.k8s_backoff_limit <= 100, "k8s_backoff_limit", "must be in [0, 100]")
    require(_label_key(config.k8s_job_label), "k8s_job_label", "must be a label key")
    require(bool(DNS_LABEL.match(namespace)), "k8s_namespace", f"must be a DNS label, got {namespace[:80]!r}")
    require(len(config.weightsync_target) <= 255 and ":" in config.weightsync_target
            and not any(c.isspace() for c in config.weightsync_target), "weightsync_target", "must be host:port")
    require(config.run_dir.startswith("/"), "run_dir",
            "must be absolute with --launcher kubernetes (the checkpoints volume is mounted there)")
    require(config.run_dir.rstrip("/") not in ("", "/tmp") and not config.run_dir.startswith("/dev/"), "run_dir",
            "cannot be /, /tmp or under /dev with --launcher kubernetes")
    for root in config.model_roots:
        require(root.startswith("/"), "model_roots", f"{root!r} must be absolute with --launcher kubernetes")
    require(urllib.parse.urlsplit(config.redis_url).password is None, "redis_url",
            "must not carry a password with --launcher kubernetes (it would be in the manifests): "
            "the workloads read it from --k8s-secret")
    return K8sSettings(
        namespace=namespace, run_dir=config.run_dir.rstrip("/"), redis_url=config.redis_url,
        key_prefix=config.key_prefix, envfleet_target=config.envfleet_target, buffer_target=config.buffer_target,
        weightsync_target=config.weightsync_target, model_roots=config.model_roots,
        image_trainer=config.k8s_image_trainer, image_rollout=config.k8s_image_rollout,
        image_engine=config.k8s_image_engine, image_sglang=config.k8s_image_sglang,
        image_pull_policy=config.k8s_image_pull_policy, secret=config.k8s_secret,
        checkpoints_claim=config.k8s_checkpoints_claim, models_claim=config.k8s_models_claim,
        service_account=config.k8s_service_account, run_as_user=config.k8s_run_as_user,
        gpu_node_selector=parse_node_selector(config.k8s_gpu_node_selector),
        gpu_tolerations=parse_tolerations(config.k8s_gpu_tolerations),
        trainer_resources=parse_resources(config.k8s_trainer_resources, "k8s_trainer_resources"),
        rollout_resources=parse_resources(config.k8s_rollout_resources, "k8s_rollout_resources"),
        engine_resources=parse_resources(config.k8s_engine_resources, "k8s_engine_resources"),
        shm_size=config.k8s_shm_size, backoff_limit=config.k8s_backoff_limit,
        engine_start_timeout_s=config.engine_start_timeout_s, job_label=config.k8s_job_label)


def check_config(config) -> None:
    """ApiConfig's validation of the kubernetes flags (the namespace is checked when it is known)."""
    require(config.k8s_api.startswith(("http://", "https://")), "k8s_api", "must be an http(s) URL")
    require(not config.k8s_namespace or bool(DNS_LABEL.match(config.k8s_namespace)), "k8s_namespace",
            "must be a DNS label")
    require(0.1 <= config.k8s_timeout_s <= 120, "k8s_timeout_s", "must be in [0.1, 120]")
    require(0.05 <= config.k8s_poll_s <= 600, "k8s_poll_s", "must be in [0.05, 600]")
    settings_from_config(config, config.k8s_namespace or "default")
