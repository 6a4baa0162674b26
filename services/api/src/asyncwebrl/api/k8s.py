"""The Kubernetes launcher (``--launcher kubernetes``): a job's processes as workloads.

The same processes with the same flags as the local launcher (``launcher.engine_args`` and the others),
overriding only what a pod needs (ports, bind address, JSON logs, publishing through weightsync):

- inference: an ``apps/v1`` Deployment of ``resources.engines`` replicas, the embedded engine (registers
  itself in Redis under its pod name) or an SGLang server (registered by weightsync from its labels: give
  weightsync ``--k8s-selector app.kubernetes.io/component=inference,asyncwebrl.io/engine=sglang`` so it
  leaves the self-registering embedded engines alone; started at ``--weight-version 0`` with the Secret's
  engine key as its API and admin key, see ``sglang_args``);
- rollout: an ``apps/v1`` Deployment, the job's gateway;
- trainer: a ``batch/v1`` Job (``torchrun`` for more than one GPU), restarts bounded by its backoffLimit;
- with ``algorithm.warm_start_steps``, first a warm-start phase: the supervised trainer and the
  demonstrations gateway, both ``batch/v1`` Jobs; the RL workloads follow once it has succeeded.

Every object carries the job label; paths are those of the api because the checkpoints volume is mounted
at ``--run-dir`` everywhere; secrets come from an existing Secret by reference, never inline. A reconcile
loop polls the trainer Jobs: success or failure ends the job (its workloads are deleted but a finished
trainer Job, kept for its logs), and so does a gateway or engine container restarted more than ``--k8s-backoff-limit``
times; cancel deletes every object of the job. The api's service account needs create, get, list and
delete on ``batch`` jobs and ``apps`` deployments, and list on pods, in the namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import pathlib
import ssl
from typing import Any

import aiohttp
import grpc
from redis.exceptions import RedisError

from asyncwebrl.api import metrics
from asyncwebrl.api.config import ApiConfig
from asyncwebrl.api.jobargs import (LaunchError, engine_args, resolve_model, rollout_args, trainer_args,
                                    warm_job_id, warm_rollout_args, warm_trainer_args)
from asyncwebrl.api.k8s_settings import (DNS_LABEL, GPU, JOB_LABEL, K8sSettings, Resources,
                                         settings_from_config)
from asyncwebrl.api.store import FINAL, Job, JobStore
from asyncwebrl.common.cancel import cancelling, end_if_cancelled
from asyncwebrl.common.grpcclient import aio_channel
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.common.weights import latest_version
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc

log = logging.getLogger("asyncwebrl.api.k8s")

PART_OF = "app.kubernetes.io/part-of"
COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "app.kubernetes.io/managed-by"
ROLE_LABEL = "asyncwebrl.io/role"
ENGINE_LABEL = "asyncwebrl.io/engine"
MANAGER = "asyncwebrl-api"

# role -> app.kubernetes.io/component
ROLES = {"inference": "inference", "rollout": "rollout", "trainer": "trainer",
         "warm-rollout": "rollout", "warm-trainer": "trainer", "rollout-scaler": "rollout"}
RL_ROLES = ("inference", "rollout", "trainer")
WARM_ROLES = ("warm-rollout", "warm-trainer")
ENGINE_PORT = 30000
PORTS = {"trainer": (50064, 9464), "rollout": (50063, 9463)}  # (grpc, http) as the services' defaults

# The env var an SGLang container gets the engine key in, for $(...) expansion in its args.
SGLANG_KEY_ENV = "ASYNCWEBRL_ENGINE_API_KEY"
# Env var -> (key in the Secret, optional). Only what each process reads.
SECRET_ENV = {
    "asyncwebrl": {"ASYNCWEBRL_AUTH_TOKEN": ("auth-token", False),
                   "ASYNCWEBRL_REDIS_PASSWORD": ("redis-password", False),
                   "ASYNCWEBRL_ENGINE_API_KEY": ("engine-api-key", True)},
    "embedded": {"ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": ("redis-password", False),
                 "ASYNCWEBRL_API_KEY": ("engine-api-key", True)},
    # SGLang's --api-key and --admin-api-key (sglang_args): the key the gateway, trainer and weightsync send.
    # Required: were it missing, the kubelet would pass "$(ASYNCWEBRL_ENGINE_API_KEY)" itself as the key.
    "sglang": {SGLANG_KEY_ENV: ("engine-api-key", False)},
}

MAX_NAME = 63
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
TMP_SIZE = "16Gi"  # the /tmp emptyDir: caches of a read-only root


def resolve_namespace(config: ApiConfig) -> str:
    """--k8s-namespace, else the api pod's own (beside the service account token), else default."""
    if config.k8s_namespace:
        return config.k8s_namespace
    if config.k8s_token_file:
        ns_file = pathlib.Path(config.k8s_token_file).with_name("namespace")
        if ns_file.is_file():
            return ns_file.read_text().strip()
    return "default"


# --- manifests ------------------------------------------------------------------------------------

def object_name(job_id: str, role: str) -> str:
    """``<job>-<role>``, at most 63 characters; a longer one keeps a hash of the whole."""
    name = f"{job_id}-{role}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{job_id[:MAX_NAME - len(role) - 10].rstrip('-')}-{digest}-{role}"


def labels(settings: K8sSettings, job_id: str, role: str) -> dict[str, str]:
    out = {PART_OF: "asyncwebrl", COMPONENT: ROLES[role], MANAGED_BY: MANAGER, JOB_LABEL: job_id, ROLE_LABEL: role}
    out[settings.job_label] = job_id
    return out


def _override(args: list[str], values: dict[str, str], extra: tuple[str, ...] = ()) -> list[str]:
    """``args`` with the values of flags in ``values`` replaced (each must be there), then ``extra``."""
    out = list(args)
    for flag, value in values.items():
        out[out.index(flag) + 1] = value
    return [*out, *extra]


def pod_args(role: str, args: list[str], settings: K8sSettings) -> list[str]:
    """The local launcher's flags with what differs in a pod."""
    if role == "inference":
        return _override(args, {"--http-port": str(ENGINE_PORT), "--host": "0.0.0.0", "--endpoint-id": "$(POD_NAME)",
                                "--log-format": "json"}, ("--advertise-url", f"http://$(POD_IP):{ENGINE_PORT}"))
    grpc_port, http_port = PORTS[role.removeprefix("warm-")]
    values = {"--grpc-port": str(grpc_port), "--http-port": str(http_port), "--log-format": "json"}
    if role == "trainer":
        return _override(args, values, ("--host", "0.0.0.0"))
    if role == "rollout":  # replicas of one job's gateway (its HPA) each need their own name in the buffer
        return _override(args, values | {"--gateway-id": "$(POD_NAME)"}, ("--host", "0.0.0.0"))
    return _override(args, values, ("--host", "0.0.0.0"))


def _resources(res: Resources, gpus: int) -> dict:
    amounts: dict[str, str | int] = {"cpu": res.cpu, "memory": res.memory}
    if gpus:
        amounts[GPU] = gpus
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _secret_env(settings: K8sSettings, kind: str) -> list[dict]:
    return [{"name": env, "valueFrom": {"secretKeyRef": {"name": settings.secret, "key": key, "optional": optional}}}
            for env, (key, optional) in SECRET_ENV[kind].items()]


def _torch_threads_env(container: str) -> dict:
    """torch's threads from the container's CPU limit (rounded up): in a pod torch would count the node's
    cores and run many more threads than it has CPU. The local launcher passes --torch-threads instead."""
    return {"name": "ASYNCWEBRL_TORCH_THREADS",
            "valueFrom": {"resourceFieldRef": {"containerName": container, "resource": "limits.cpu", "divisor": "1"}}}


def _container(settings: K8sSettings, name: str, image: str, command: list[str], args: list[str], env: list[dict],
               res: Resources, gpus: int, shm: bool) -> dict:
    mounts = [{"name": "checkpoints", "mountPath": settings.run_dir}, {"name": "tmp", "mountPath": "/tmp"}]
    if settings.models_claim:
        mounts.append({"name": "models", "mountPath": settings.model_roots[0], "readOnly": True})
    if shm:
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    mounts.sort(key=lambda m: m["mountPath"].count("/"))  # a run dir under /tmp mounts after /tmp
    return {
        "name": name, "image": image, "imagePullPolicy": settings.image_pull_policy, "command": command,
        "args": args,
        # A read-only root: caches (Hugging Face, Triton, torch) go to the /tmp emptyDir.
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
                {"name": "PYTHONUNBUFFERED", "value": "1"}, *env],
        "resources": _resources(res, gpus), "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
    }


def _pod_spec(settings: K8sSettings, container: dict, gpu: bool, shm: bool, restart: str) -> dict:
    volumes: list[dict] = [{"name": "checkpoints", "persistentVolumeClaim": {"claimName": settings.checkpoints_claim}},
                           {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}}]
    if settings.models_claim:
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": settings.models_claim,
                                                                     "readOnly": True}})
    if shm:
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}})
    spec: dict[str, Any] = {
        "restartPolicy": restart, "automountServiceAccountToken": False, "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "securityContext": {"runAsNonRoot": True, "runAsUser": settings.run_as_user,
                            "runAsGroup": settings.run_as_user, "fsGroup": settings.run_as_user,
                            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container], "volumes": volumes,
    }
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    if gpu:
        if settings.gpu_node_selector:
            spec["nodeSelector"] = dict(settings.gpu_node_selector)
        if settings.gpu_tolerations:
            spec["tolerations"] = [t.manifest() for t in settings.gpu_tolerations]
    return spec


def _metadata(settings: K8sSettings, job_id: str, role: str, extra: dict[str, str] | None = None) -> dict:
    return {"name": object_name(job_id, role), "namespace": settings.namespace,
            "labels": {**labels(settings, job_id, role), **(extra or {})}}


def _deployment(settings: K8sSettings, job_id: str, role: str, replicas: int, pod: dict,
                extra_labels: dict[str, str] | None = None, strategy: str = "RollingUpdate") -> dict:
    meta = _metadata(settings, job_id, role, extra_labels)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
        "replicas": replicas, "strategy": {"type": strategy},
        "selector": {"matchLabels": {JOB_LABEL: job_id, ROLE_LABEL: role}},
        "template": {"metadata": {"labels": meta["labels"]}, "spec": pod}}}


def _job(settings: K8sSettings, job_id: str, role: str, pod: dict) -> dict:
    meta = _metadata(settings, job_id, role)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": {
        "backoffLimit": settings.backoff_limit, "completions": 1, "parallelism": 1,
        "template": {"metadata": {"labels": meta["labels"]}, "spec": pod}}}


def _http_probe(path: str, port: int, period: int, failures: int) -> dict:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "timeoutSeconds": 5,
            "failureThreshold": failures}


def _check_gpus(job: Job) -> None:
    r = job.spec.resources
    if r.engine_kind == "sglang" and r.engine_gpus < 1:
        raise LaunchError("resources.engine_gpus: SGLang endpoints need at least one GPU each")
    if r.device == "cuda" and r.engine_gpus < 1:
        raise LaunchError("resources.engine_gpus: device cuda needs at least one GPU per engine in Kubernetes")
    if r.device == "cuda" and r.trainer_gpus < 1:
        raise LaunchError("resources.trainer_gpus: device cuda needs at least one trainer GPU in Kubernetes")


def sglang_args(model: pathlib.Path, gpus: int) -> list[str]:
    """``sglang.launch_server`` flags, as deploy/sglang/launch.sh gives them in compose: /metrics for the
    PodMonitor; the starting checkpoint as weight version 0 (SGLang says "default" until told), which the
    gateway and weightsync compare with published versions; the engine key from the Secret, by reference
    (``$(VAR)``, expanded by the kubelet from the container's environment, never in the manifest), as the
    API key and the admin key (with an admin key SGLang accepts only it on the weight and pause routes).
    Every flag is in SGLang 0.5.20's and 0.5.23's ServerArgs (srt/arg_groups/fields/serving.py,
    observability.py, parallel.py, model.py)."""
    key = f"$({SGLANG_KEY_ENV})"
    return ["--model-path", str(model), "--host", "0.0.0.0", "--port", str(ENGINE_PORT), "--enable-metrics",
            "--weight-version", "0", "--api-key", key, "--admin-api-key", key,
            *(["--tp-size", str(gpus)] if gpus > 1 else [])]


def inference_manifest(job: Job, settings: K8sSettings, model: pathlib.Path, ckpt: pathlib.Path) -> dict:
    r = job.spec.resources
    gpus = r.engine_gpus
    if r.engine_kind == "sglang":
        if not settings.image_sglang:
            raise LaunchError("resources.engine_kind sglang: the api has no --k8s-image-sglang")
        if model.is_relative_to(SHIPPED):
            raise LaunchError("model.path: a shipped tiny model is only in the asyncwebrl images, not SGLang's")
        image, kind, command = settings.image_sglang, "sglang", ["python", "-m", "sglang.launch_server"]
        args = sglang_args(model, gpus)
    else:
        image, kind, command = settings.image_engine, "embedded", ["python", "-m", "asyncwebrl.engine"]
        args = pod_args("inference", engine_args(settings, job, model, ckpt, 0, "engine"), settings)
    env = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}, *_secret_env(settings, kind)]
    if kind == "embedded":
        env.append(_torch_threads_env("inference"))
    container = _container(settings, "inference", image, command, args, env, settings.engine_resources, gpus, True)
    container["ports"] = [{"name": "http", "containerPort": ENGINE_PORT}]
    # The embedded engine's /ready is false while it is paused for a weight update; SGLang has /health.
    container["readinessProbe"] = _http_probe("/ready" if kind == "embedded" else "/health", ENGINE_PORT, 5, 3)
    container["startupProbe"] = _http_probe("/health", ENGINE_PORT, 10,
                                            max(1, math.ceil(settings.engine_start_timeout_s / 10)))
    pod = _pod_spec(settings, container, gpu=gpus > 0, shm=True, restart="Always")
    # Recreate: a new pod must not wait for GPUs the old one still holds.
    return _deployment(settings, job.job_id, "inference", r.engines, pod, {ENGINE_LABEL: kind}, "Recreate")


def _service_container(settings: K8sSettings, role: str, image: str, command: list[str], args: list[str],
                       res: Resources, gpus: int) -> dict:
    container = _container(settings, role.removeprefix("warm-"), image, command, pod_args(role, args, settings),
                           _secret_env(settings, "asyncwebrl"), res, gpus, shm=gpus > 0)
    grpc_port, http_port = PORTS[role.removeprefix("warm-")]
    container["ports"] = [{"name": "grpc", "containerPort": grpc_port}, {"name": "metrics", "containerPort": http_port}]
    return container


def _trainer_command(gpus: int) -> list[str]:
    if gpus > 1:
        return ["torchrun", "--standalone", "--nproc-per-node", str(gpus), "-m", "asyncwebrl.trainer"]
    return ["python", "-m", "asyncwebrl.trainer"]


def trainer_manifest(job: Job, settings: K8sSettings, role: str, args: list[str]) -> dict:
    gpus = job.spec.resources.trainer_gpus
    container = _service_container(settings, role, settings.image_trainer, _trainer_command(gpus), args,
                                   settings.trainer_resources, gpus)
    container["env"].append(_torch_threads_env(container["name"]))
    return _job(settings, job.job_id, role, _pod_spec(settings, container, gpu=gpus > 0, shm=gpus > 0,
                                                      restart="Never"))


def rollout_manifest(job: Job, settings: K8sSettings, role: str, args: list[str]) -> dict:
    container = _service_container(settings, role, settings.image_rollout, ["python", "-m", "asyncwebrl.rollout"],
                                   args, settings.rollout_resources, 0)
    if role == "warm-rollout":  # it ends after its demonstrations
        return _job(settings, job.job_id, role, _pod_spec(settings, container, gpu=False, shm=False,
                                                          restart="Never"))
    container["readinessProbe"] = _http_probe("/readyz", PORTS["rollout"][1], 5, 3)
    container["env"] = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        *container.get("env", [])]
    return _deployment(settings, job.job_id, role, 1, _pod_spec(settings, container, gpu=False, shm=False,
                                                                restart="Always"))


def gateway_autoscaler(job: Job, settings: K8sSettings) -> dict:
    """The gateway Deployment between 1 and resources.max_gateways replicas, on CPU: episodes are CPU
    work in the gateway (prompts, image encoding) while browsers and engines scale on their own."""
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": _metadata(settings, job.job_id, "rollout-scaler"), "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                   "name": object_name(job.job_id, "rollout")},
                "minReplicas": 1, "maxReplicas": job.spec.resources.max_gateways,
                "metrics": [{"type": "Resource", "resource": {
                    "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]}}


def job_dir(settings: K8sSettings, job_id: str) -> pathlib.Path:
    return pathlib.Path(settings.run_dir) / job_id


def manifests(job: Job, settings: K8sSettings, *, phase: str = "rl", model: pathlib.Path | None = None) -> list[dict]:
    """The job's objects in creation order: ``rl`` (inference, rollout, trainer) or ``warm_start``.
    ``model``: the starting policy (default: the job's model.path). Raises LaunchError for a job that
    cannot run here, with the field to change."""
    if not DNS_LABEL.match(job.job_id) or len(job.job_id) > MAX_NAME:
        raise LaunchError(f"job id {job.job_id[:80]!r} is not a DNS label")
    _check_gpus(job)
    start = model or resolve_model(job.spec, settings.model_roots)
    ckpt = job_dir(settings, job.job_id) / "checkpoints"
    # The helpers read redis_url, key_prefix and the targets, which the settings carry as ApiConfig does.
    if phase == "warm_start":
        warm = job_dir(settings, job.job_id) / "warm"
        return [rollout_manifest(job, settings, "warm-rollout", warm_rollout_args(settings, job, start)),
                trainer_manifest(job, settings, "warm-trainer",
                                 warm_trainer_args(settings, job, start, warm))]
    return [inference_manifest(job, settings, start, ckpt),
            rollout_manifest(job, settings, "rollout", rollout_args(settings, job, start)),
            *([gateway_autoscaler(job, settings)] if job.spec.resources.max_gateways > 1 else []),
            trainer_manifest(job, settings, "trainer", trainer_args(settings, job, start, ckpt))]


# --- the Kubernetes API -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str

    def path(self, namespace: str, name: str = "") -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        return f"{base}/namespaces/{namespace}/{self.plural}" + (f"/{name}" if name else "")


KINDS = {"Job": Kind("batch/v1", "Job", "jobs"), "Deployment": Kind("apps/v1", "Deployment", "deployments"),
         "HorizontalPodAutoscaler": Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
         "Pod": Kind("v1", "Pod", "pods")}
WORKLOADS = ("Job", "Deployment", "HorizontalPodAutoscaler")  # what the launcher creates; pods are only read


class KubeError(Exception):
    """A Kubernetes API call that failed; the message names the call."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class KubeClient:
    """Create, get, delete and list namespaced objects with the pod's service account. Every call has a
    timeout; 5xx, 429, timeouts and connection errors are retried ``retries`` times."""

    def __init__(self, api: str, namespace: str, token_file: str = "", ca_file: str = "", timeout_s: float = 10.0,
                 retries: int = 2, backoff_s: float = 0.25) -> None:
        self.api = api.rstrip("/")
        self.namespace = namespace
        self.token_file = token_file
        self.ca_file = ca_file
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool | None = None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        # Read at every call: projected service account tokens rotate.
        if self.token_file and pathlib.Path(self.token_file).is_file():
            headers["Authorization"] = f"Bearer {pathlib.Path(self.token_file).read_text().strip()}"
        return headers

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if self._ssl is None:
            self._ssl = True
            if self.api.startswith("https://") and self.ca_file and pathlib.Path(self.ca_file).is_file():
                self._ssl = ssl.create_default_context(cafile=self.ca_file)
        return self._ssl

    async def _once(self, method: str, path: str, body: dict | None, params: dict | None) -> tuple[int, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.request(method, self.api + path, json=body, params=params, headers=self._headers(),
                                         ssl=self._ssl_context(), timeout=self.timeout) as resp:
            raw = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                raw += chunk
                if len(raw) > MAX_RESPONSE_BYTES:
                    raise KubeError(f"kubernetes {method} {path}: answer larger than {MAX_RESPONSE_BYTES} bytes")
            try:
                return resp.status, json.loads(raw) if raw else {}
            except ValueError:
                return resp.status, {"message": raw[:300].decode(errors="replace")}

    async def request(self, method: str, path: str, body: dict | None = None,
                      params: dict | None = None) -> tuple[int, Any]:
        """(status, body) of the last try; KubeError when every try failed or timed out."""
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                status, answer = await self._once(method, path, body, params)
            except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                error = f"timed out after {self.timeout.total:g}s" if isinstance(exc, asyncio.TimeoutError) \
                    else f"{type(exc).__name__}: {exc}"[:300]
                continue
            if status < 500 and status != 429:
                return status, answer
            error = f"answered {status}: {_message(answer)}"
        raise KubeError(f"kubernetes {method} {path} {error} ({self.retries + 1} tries)")

    async def create(self, obj: dict) -> bool:
        """True when created, False when it already existed (409)."""
        path = KINDS[obj["kind"]].path(self.namespace)
        status, answer = await self.request("POST", path, obj)
        if status == 409:
            return False
        if status not in (200, 201, 202):
            raise KubeError(f"kubernetes POST {path} ({obj['metadata']['name']}) answered {status}: "
                            f"{_message(answer)}", status)
        return True

    async def get(self, kind: str, name: str) -> dict | None:
        path = KINDS[kind].path(self.namespace, name)
        status, answer = await self.request("GET", path)
        if status == 404:
            return None
        if status != 200:
            raise KubeError(f"kubernetes GET {path} answered {status}: {_message(answer)}", status)
        return answer

    async def delete(self, kind: str, name: str) -> bool:
        """Background propagation (the Job's pods, the Deployment's ReplicaSets go after it). False: not there."""
        path = KINDS[kind].path(self.namespace, name)
        status, answer = await self.request("DELETE", path, {"apiVersion": "v1", "kind": "DeleteOptions",
                                                             "propagationPolicy": "Background"})
        if status == 404:
            return False
        if status not in (200, 202):
            raise KubeError(f"kubernetes DELETE {path} answered {status}: {_message(answer)}", status)
        return True

    async def list(self, kind: str, selector: str, max_pages: int = 20) -> list[dict]:
        path = KINDS[kind].path(self.namespace)
        items: list[dict] = []
        params = {"labelSelector": selector, "limit": "500"}
        for _ in range(max_pages):
            status, answer = await self.request("GET", path, params=params)
            if status != 200 or not isinstance(answer, dict):
                raise KubeError(f"kubernetes GET {path}?labelSelector={selector} answered {status}: "
                                f"{_message(answer)}", status)
            items += [i for i in answer.get("items") or [] if isinstance(i, dict)]
            token = (answer.get("metadata") or {}).get("continue")
            if not token:
                return items
            params = {**params, "continue": token}
        raise KubeError(f"kubernetes GET {path}: more than {max_pages} pages")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _message(answer: Any) -> str:
    """A Kubernetes Status's message, bounded."""
    if isinstance(answer, dict):
        return str(answer.get("message") or answer.get("reason") or "")[:300]
    return str(answer)[:300]


# --- the launcher -------------------------------------------------------------------------------

def _role(obj: dict) -> str:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(ROLE_LABEL, "")


def _true(status: dict, kind: str) -> dict | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind and c.get("status") == "True"),
                None)


def job_outcome(obj: dict) -> tuple[str, str] | None:
    """("succeeded" | "failed", reason naming the Job) once a batch/v1 Job has finished, else None."""
    name, status = obj["metadata"]["name"], obj.get("status") or {}
    if int(status.get("succeeded") or 0) >= 1 or _true(status, "Complete"):
        return "succeeded", f"{_role(obj)} Job {name} succeeded"
    failed = _true(status, "Failed")
    if failed:
        return "failed", (f"{_role(obj)} Job {name} failed: {failed.get('reason', '')}: "
                          f"{failed.get('message', '')}").rstrip(": ")[:400]
    return None


def crashed(pod: dict, limit: int) -> str | None:
    """Why a pod counts as crashed once too often (a container restarted more than ``limit`` times)."""
    for c in (pod.get("status") or {}).get("containerStatuses") or []:
        restarts = int(c.get("restartCount") or 0)
        if restarts > limit:
            waiting = ((c.get("state") or {}).get("waiting") or {}).get("reason", "")
            last = ((c.get("lastState") or {}).get("terminated") or {})
            detail = ", ".join(x for x in (waiting, f"last exit {last['exitCode']}" if "exitCode" in last else "",
                                           last.get("reason", "")) if x)
            return f"{_role(pod)} pod {pod['metadata'].get('name', '?')} restarted {restarts} times" + \
                (f" ({detail})" if detail else "")
    return None


def leftovers(objects: list[dict]) -> list[dict]:
    """What a succeeded or failed job must not keep: all but its finished trainer Job (kept for its logs)."""
    return [o for o in objects if _role(o) != "trainer" or o["kind"] != "Job" or job_outcome(o) is None]


def workload_view(obj: dict) -> dict:
    """One workload in GET /v1/jobs/{id}: role, name, kind and its pod counts."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    view = {"role": _role(obj), "name": meta.get("name", ""), "kind": obj.get("kind", "")}
    if obj.get("kind") == "HorizontalPodAutoscaler":
        return view | {"replicas": int(status.get("currentReplicas") or 0), "min": int(spec.get("minReplicas") or 1),
                       "max": int(spec.get("maxReplicas") or 1), "desired": int(status.get("desiredReplicas") or 0)}
    if obj.get("kind") == "Job":
        return view | {"replicas": int(spec.get("parallelism") or 1), "ready": int(status.get("ready") or 0),
                       "active": int(status.get("active") or 0), "succeeded": int(status.get("succeeded") or 0),
                       "failed": int(status.get("failed") or 0)}
    return view | {"replicas": int(spec.get("replicas") or 0), "ready": int(status.get("readyReplicas") or 0),
                   "available": int(status.get("availableReplicas") or 0), "succeeded": None, "failed": None}


class KubernetesLauncher:
    """The app's launcher when ``--launcher kubernetes``: the LocalLauncher's interface over the API."""

    def __init__(self, config: ApiConfig, store: JobStore) -> None:
        self.config = config
        self.store = store
        self.settings = settings_from_config(config, resolve_namespace(config))
        self.kube = KubeClient(config.k8s_api, self.settings.namespace, config.k8s_token_file, config.k8s_ca_file,
                               config.k8s_timeout_s)
        self._channel = aio_channel(config.buffer_target, config.auth_token)
        self.buffer = buffer_pb2_grpc.BufferServiceStub(self._channel)
        self._launches: dict[str, asyncio.Task] = {}
        self._watched: set[str] = set()  # jobs this api launched or resumed: their trainer Job is polled
        self._phases: dict[str, str] = {}
        self._launched: dict[str, float] = {}  # loop time each job's last launch finished
        self._reconciler: asyncio.Task | None = None
        self._closing = False

    # --- the app's interface -------------------------------------------------------------------

    def start(self, job: Job) -> None:
        """Schedules the creation of the job's workloads (its state: running once created, or failed)."""
        self._start(job)

    def _start(self, job: Job) -> asyncio.Task:
        self._ensure_reconciler()
        jid = job.job_id
        task = self._launches.get(jid)
        if task is None or task.done():
            task = self._launches[jid] = asyncio.create_task(self._launch(job))
            task.add_done_callback(lambda t: self._launches.pop(jid, None) if self._launches.get(jid) is t else None)
        return task

    async def resume(self) -> None:
        """Jobs the store says are pending or running: their workloads are created where missing."""
        self._ensure_reconciler()
        offset, tasks = 0, []
        while True:
            jobs, nxt = await self.store.list(200, offset)
            for job in jobs:
                if job.state not in FINAL:
                    log.info("resuming %s", job.job_id)
                    tasks.append(self._start(job))
            if nxt is None:
                break
            offset = nxt
        if tasks:
            await asyncio.wait(tasks)

    async def cancel(self, job_id: str) -> None:
        """State cancelled, then every object of the job deleted (retried by the reconcile loop if the API fails)."""
        await self.store.set_state(job_id, "cancelled", "cancelled by request")
        self._watched.discard(job_id)
        self._phases[job_id] = "cancelled"
        task = self._launches.pop(job_id, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        metrics.JOBS_FINISHED.labels("cancelled").inc()
        try:
            await self._delete(await self._objects(job_id))
        except KubeError as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            log.warning("cancel of %s: %s; the reconcile loop retries", job_id, exc)

    async def status(self, job_id: str) -> list[dict]:
        try:
            objects = await self._objects(job_id)
        except KubeError as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            return [{"role": "kubernetes", "error": str(exc)}]
        order = {r: i for i, r in enumerate((*WARM_ROLES, *RL_ROLES))}
        return [workload_view(o) for o in sorted(objects, key=lambda o: order.get(_role(o), 99))]

    def phase(self, job_id: str) -> str | None:
        """pending, warm_start, rl, or the final state; None for a job this api has not launched."""
        return self._phases.get(job_id)

    async def close(self) -> None:
        """api shutdown: the workloads keep running; resume() picks their jobs up again."""
        self._closing = True
        tasks = [t for t in (self._reconciler, *self._launches.values()) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.kube.close()
        await self._channel.close()

    # --- launching ----------------------------------------------------------------------------

    async def _launch(self, job: Job) -> None:
        jid = job.job_id
        self._phases.setdefault(jid, "pending")
        try:
            objects, phase = await self._plan(job)
            for obj in objects:
                if await self.kube.create(obj):
                    log.info("created %s %s", obj["kind"], obj["metadata"]["name"], extra={"job": jid})
            current = await self.store.get(jid)
            end_if_cancelled()
            if current is None or current.state in FINAL:
                return
            if current.state != "running":
                await self.store.set_state(jid, "running")
            self._phases[jid] = phase
            self._watched.add(jid)
            self._launched[jid] = asyncio.get_running_loop().time()
        except Exception as exc:  # noqa: BLE001 - any error fails the job, never the api
            if cancelling():  # api shutdown or cancel: the job stays as it is
                raise asyncio.CancelledError from exc
            if isinstance(exc, (LaunchError, KubeError, grpc.aio.AioRpcError, OSError)):
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                reason = f"launch: {detail}"
            else:
                log.exception("launcher error in %s", jid)
                reason = f"launch: internal error ({type(exc).__name__}); see the api log"
            await self._end(jid, "failed", reason, every=True)

    async def _plan(self, job: Job) -> tuple[list[dict], str]:
        """The objects of the job's current phase, after the buffer has its settings."""
        r, a = job.spec.rollout, job.spec.algorithm
        model = await asyncio.to_thread(resolve_model, job.spec, self.settings.model_roots)
        timeout = self.config.k8s_timeout_s
        await self.buffer.ConfigureJob(buffer_pb2.ConfigureJobRequest(
            job_id=job.job_id, batch_groups=r.batch_groups, max_staleness=r.max_staleness,
            keep_zero_variance=a.keep_zero_variance), timeout=timeout)
        if a.warm_start_steps:
            warm = await asyncio.to_thread(latest_version, job_dir(self.settings, job.job_id) / "warm")
            if warm is None or warm[0].version < a.warm_start_steps:
                await self.buffer.ConfigureJob(buffer_pb2.ConfigureJobRequest(
                    job_id=warm_job_id(job.job_id), batch_groups=a.warm_start_batch, max_staleness=64,
                    keep_zero_variance=True), timeout=timeout)
                return manifests(job, self.settings, phase="warm_start", model=model), "warm_start"
            model = warm[1]
        return manifests(job, self.settings, model=model), "rl"

    # --- the reconcile loop --------------------------------------------------------------------

    def _ensure_reconciler(self) -> None:
        if self._reconciler is None or self._reconciler.done():
            self._reconciler = asyncio.create_task(self._reconcile_forever())

    async def _reconcile_forever(self) -> None:
        while not self._closing:
            try:
                await self.reconcile_once()
                end_if_cancelled()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive an error or a bug in one round
                if cancelling():
                    raise asyncio.CancelledError from exc
                if isinstance(exc, (KubeError, RedisError, OSError)):
                    log.warning("reconcile: %s", exc)
                else:
                    log.exception("reconcile error")
            await asyncio.sleep(self.config.k8s_poll_s)

    async def reconcile_once(self) -> None:
        """One pass: end the jobs whose trainer Job finished; delete what final jobs left behind."""
        started = asyncio.get_running_loop().time()
        by_job: dict[str, list[dict]] = {}
        for obj in await self._objects(None):
            by_job.setdefault(obj["metadata"]["labels"][JOB_LABEL], []).append(obj)
        pods: dict[str, list[dict]] = {}
        if self._watched:
            for pod in await self.kube.list("Pod", f"{MANAGED_BY}={MANAGER}"):
                pods.setdefault(((pod.get("metadata") or {}).get("labels") or {}).get(JOB_LABEL, ""), []).append(pod)
        for jid in sorted(set(by_job) | self._watched):
            task = self._launches.get(jid)
            # What was listed is older than a launch still running or done since: the next pass sees it.
            if (task is not None and not task.done()) or self._launched.get(jid, -math.inf) >= started:
                continue
            try:
                await self._reconcile_job(jid, by_job.get(jid, []), pods.get(jid, []))
                end_if_cancelled()
            except (KubeError, RedisError, OSError) as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                log.warning("reconcile of %s: %s", jid, exc)

    async def _reconcile_job(self, jid: str, objects: list[dict], pods: list[dict]) -> None:
        job = await self.store.get(jid)
        if job is None:
            return  # not this api's job (another install in the namespace)
        if job.state in FINAL:
            self._watched.discard(jid)
            await self._delete(objects if job.state == "cancelled" else leftovers(objects))
        elif jid in self._watched:
            await self._advance(job, {_role(o): o for o in objects}, pods)

    async def _advance(self, job: Job, objects: dict[str, dict], pods: list[dict]) -> None:
        jid = job.job_id
        if "trainer" in objects:
            await self._delete([objects[r] for r in WARM_ROLES if r in objects])  # left by an api restart
            outcome = job_outcome(objects["trainer"])
            if outcome is None:
                reason = next((r for r in (crashed(p, self.settings.backoff_limit) for p in pods
                                           if _role(p) in ("rollout", "inference")) if r), None)
                outcome = ("failed", reason) if reason else None
            if outcome is not None:
                await self._end(jid, *outcome)
            return
        if "warm-trainer" in objects:
            outcomes = [job_outcome(objects[r]) for r in WARM_ROLES if r in objects]
            failed = next((o[1] for o in outcomes if o and o[0] == "failed"), None)
            if failed:
                await self._end(jid, "failed", f"warm-start: {failed}")
                return
            if job_outcome(objects["warm-trainer"]) is None:
                return
            steps = job.spec.algorithm.warm_start_steps
            warm = await asyncio.to_thread(latest_version, job_dir(self.settings, jid) / "warm")
            if warm is None or warm[0].version < steps:
                await self._end(jid, "failed", "warm-start: the trainer exited without writing its last version",
                                every=True)
                return
            log.info("warm-start of %s done; starting RL", jid)
            await self._delete([objects[r] for r in WARM_ROLES if r in objects])
            self._start(job)
            return
        await self._end(jid, "failed", f"trainer Job {object_name(jid, 'trainer')} is gone (deleted outside the api?)")

    async def _end(self, job_id: str, state: str, reason: str, every: bool = False) -> None:
        """Final state (unless the job already has one), then its Deployments (``every``: all objects) go."""
        self._watched.discard(job_id)
        try:
            job = await self.store.get(job_id)
            if job is not None and job.state not in FINAL:
                await self.store.set_state(job_id, state, reason)
                self._phases[job_id] = state
                metrics.JOBS_FINISHED.labels(state).inc()
                log.info("job %s %s: %s", job_id, state, reason)
            objects = await self._objects(job_id)
            await self._delete(objects if every else leftovers(objects))
        except (KubeError, RedisError, OSError) as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            log.warning("ending %s: %s; the reconcile loop retries the clean-up", job_id, exc)

    async def _objects(self, job_id: str | None) -> list[dict]:
        """This launcher's objects: of one job, or of every job."""
        selector = f"{MANAGED_BY}={MANAGER}" + (f",{JOB_LABEL}={job_id}" if job_id else "")
        out = []
        for kind in WORKLOADS:
            for obj in await self.kube.list(kind, selector):
                obj.setdefault("kind", kind)  # list items carry no kind
                if isinstance((obj.get("metadata") or {}).get("labels"), dict) and \
                        obj["metadata"]["labels"].get(JOB_LABEL):
                    out.append(obj)
        return out

    async def _delete(self, objects: list[dict]) -> None:
        for obj in objects:
            if await self.kube.delete(obj["kind"], obj["metadata"]["name"]):
                log.info("deleted %s %s", obj["kind"], obj["metadata"]["name"])
