"""The Kubernetes launcher's manifests: a job's processes as workloads, built from the same command lines as
the local launcher's (``jobargs``), overriding only what a pod needs (ports, bind address, JSON logs,
its own name), ``pod_args``:

- inference: an ``apps/v1`` Deployment of ``resources.engines`` replicas, the embedded engine (registers
  itself in Redis under its pod name) or an SGLang server (registered by weightsync from its labels: give
  weightsync ``--k8s-selector app.kubernetes.io/component=inference,asyncwebrl.io/engine=sglang`` so it
  leaves the self-registering embedded engines alone; started at ``--weight-version 0`` with the Secret's
  engine key as its API and admin key, see ``sglang_args``);
- rollout: an ``apps/v1`` Deployment, the job's gateway (with an autoscaler when ``resources.max_gateways``
  is above 1);
- trainer: a ``batch/v1`` Job (``torchrun`` for more than one GPU), restarts bounded by its backoffLimit;
- with ``algorithm.warm_start_steps``, first a warm-start phase: the supervised trainer and the
  demonstrations gateway, both ``batch/v1`` Jobs;
- an evaluation (``eval_manifests``): an embedded engine Deployment serving the evaluated version and a
  gateway ``batch/v1`` Job that ends after its groups, labelled with the evaluation's number.

Every object carries the job label; paths are those of the api because the checkpoints volume is mounted
at ``--run-dir`` everywhere; secrets come from an existing Secret by reference, never inline.
"""

from __future__ import annotations

import hashlib
import math
import pathlib
from typing import Any

from asyncwebrl.api.errors import LaunchError
from asyncwebrl.api.jobargs import (engine_args, eval_engine_args, eval_gateway_args, resolve_model, rollout_args,
                                    trainer_args, warm_rollout_args, warm_trainer_args)
from asyncwebrl.api.k8s_settings import DNS_LABEL, GPU, JOB_LABEL, K8sSettings, Resources
from asyncwebrl.api.store import Job
from asyncwebrl.common.models.tiny import SHIPPED

PART_OF = "app.kubernetes.io/part-of"
COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "app.kubernetes.io/managed-by"
ROLE_LABEL = "asyncwebrl.io/role"
ENGINE_LABEL = "asyncwebrl.io/engine"
MANAGER = "asyncwebrl-api"

# role -> app.kubernetes.io/component
ROLES = {"inference": "inference", "rollout": "rollout", "trainer": "trainer",
         "warm-rollout": "rollout", "warm-trainer": "trainer", "rollout-scaler": "rollout",
         "eval-inference": "inference", "eval-rollout": "rollout"}
RL_ROLES = ("inference", "rollout", "trainer")
WARM_ROLES = ("warm-rollout", "warm-trainer")
EVAL_ROLES = ("eval-inference", "eval-rollout")
EVAL_LABEL = "asyncwebrl.io/evaluation"  # an evaluation's workloads: its number
ENGINE_PORT = 30000
PORTS = {"trainer": (50064, 9464), "rollout": (50063, 9463)}  # (grpc, http) as the services' defaults

# The env var an SGLang container gets the engine key in, for $(...) expansion in its args.
SGLANG_KEY_ENV = "ASYNCWEBRL_ENGINE_API_KEY"
# Env var -> (key in the Secret, optional). Only what each process reads.
SECRET_ENV = {
    # The trainer never calls an engine (weightsync publishes): no engine key.
    "trainer": {"ASYNCWEBRL_AUTH_TOKEN": ("auth-token", False),
                "ASYNCWEBRL_REDIS_PASSWORD": ("redis-password", False)},
    "rollout": {"ASYNCWEBRL_AUTH_TOKEN": ("auth-token", False),
                "ASYNCWEBRL_REDIS_PASSWORD": ("redis-password", False),
                "ASYNCWEBRL_ENGINE_API_KEY": ("engine-api-key", True)},
    "embedded": {"ASYNCWEBRL_REGISTRY_REDIS_PASSWORD": ("redis-password", False),
                 "ASYNCWEBRL_API_KEY": ("engine-api-key", True)},
    # SGLang's --api-key and --admin-api-key (sglang_args): the key the gateway and weightsync send.
    # Required: were it missing, the kubelet would pass "$(ASYNCWEBRL_ENGINE_API_KEY)" itself as the key.
    "sglang": {SGLANG_KEY_ENV: ("engine-api-key", False)},
}

MAX_NAME = 63
TMP_SIZE = "16Gi"  # the /tmp emptyDir: caches of a read-only root


# --- manifests ------------------------------------------------------------------------------------

def object_name(job_id: str, role: str) -> str:
    """``<job>-<role>``, at most 63 characters; a longer one keeps a hash of the whole."""
    name = f"{job_id}-{role}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{job_id[:MAX_NAME - len(role) - 10].rstrip('-')}-{digest}-{role}"


def base_role(role: str) -> str:
    """The process a role runs: ``warm-trainer`` and ``eval-rollout`` are a trainer and a gateway."""
    return role.removeprefix("warm-").removeprefix("eval-")


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
    if base_role(role) == "inference":
        return _override(args, {"--http-port": str(ENGINE_PORT), "--host": "0.0.0.0", "--endpoint-id": "$(POD_NAME)",
                                "--log-format": "json"}, ("--advertise-url", f"http://$(POD_IP):{ENGINE_PORT}"))
    grpc_port, http_port = PORTS[base_role(role)]
    values = {"--grpc-port": str(grpc_port), "--http-port": str(http_port), "--log-format": "json"}
    if role == "trainer":
        return _override(args, values, ("--host", "0.0.0.0"))
    if role == "rollout":  # replicas of one job's gateway (its HPA): each its own name in the buffer and its own tasks
        return _override(args, values | {"--gateway-id": "$(POD_NAME)"},
                         ("--host", "0.0.0.0", "--seed-salt", "$(POD_NAME)"))
    return _override(args, values, ("--host", "0.0.0.0"))


def _resources(res: Resources, gpus: int) -> dict:
    amounts: dict[str, str | int] = {"cpu": res.cpu, "memory": res.memory}
    if gpus:
        amounts[GPU] = gpus
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _secret_env(settings: K8sSettings, kind: str) -> list[dict]:
    return [{"name": env, "valueFrom": {"secretKeyRef": {"name": settings.secret, "key": key, "optional": optional}}}
            for env, (key, optional) in SECRET_ENV[kind].items()]


JUDGE_KEY_ENV = "ASYNCWEBRL_JUDGE_API_KEY"
JUDGE_KEY = "judge-api-key"  # the conventional key of the release's Secret


def judge_env(job: Job, settings: K8sSettings) -> list[dict]:
    """The judge's key for a gateway, by reference: ``judge.api_key_secret`` names a key of the release's
    Secret or ``<secret>/<key>``. Required: a pod whose judge key is missing does not start, rather than
    judging with none."""
    ref = job.spec.judge.api_key_secret if job.spec.judge else ""
    if not ref:
        return []
    name, key = ref.split("/", 1) if "/" in ref else (settings.secret, ref)
    return [{"name": JUDGE_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": name, "key": key, "optional": False}}}]


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


def eval_name(job_id: str, n: int, role: str) -> str:
    """Evaluation ``n``'s object of ``role`` (eval-inference, eval-rollout): ``<job>-ev<n>-<process>``."""
    return object_name(job_id, f"ev{n}-{base_role(role)}")


def _metadata(settings: K8sSettings, job_id: str, role: str, extra: dict[str, str] | None = None) -> dict:
    name = eval_name(job_id, int(extra[EVAL_LABEL]), role) if extra and EVAL_LABEL in extra else \
        object_name(job_id, role)
    return {"name": name, "namespace": settings.namespace,
            "labels": {**labels(settings, job_id, role), **(extra or {})}}


def _deployment(settings: K8sSettings, job_id: str, role: str, replicas: int, pod: dict,
                extra_labels: dict[str, str] | None = None, strategy: str = "RollingUpdate") -> dict:
    meta = _metadata(settings, job_id, role, extra_labels)
    selector = {JOB_LABEL: job_id, ROLE_LABEL: role, **({EVAL_LABEL: meta["labels"][EVAL_LABEL]}
                                                        if EVAL_LABEL in meta["labels"] else {})}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
        "replicas": replicas, "strategy": {"type": strategy}, "selector": {"matchLabels": selector},
        "template": {"metadata": {"labels": meta["labels"]}, "spec": pod}}}


def _job(settings: K8sSettings, job_id: str, role: str, pod: dict, extra_labels: dict[str, str] | None = None) -> dict:
    meta = _metadata(settings, job_id, role, extra_labels)
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
    pod = _inference_pod(settings, kind, image, command, args, gpus)
    # Recreate: a new pod must not wait for GPUs the old one still holds.
    return _deployment(settings, job.job_id, "inference", r.engines, pod, {ENGINE_LABEL: kind}, "Recreate")


def _inference_pod(settings: K8sSettings, kind: str, image: str, command: list[str], args: list[str],
                   gpus: int) -> dict:
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
    return _pod_spec(settings, container, gpu=gpus > 0, shm=True, restart="Always")


def _service_container(settings: K8sSettings, role: str, image: str, command: list[str], args: list[str],
                       res: Resources, gpus: int) -> dict:
    container = _container(settings, base_role(role), image, command, pod_args(role, args, settings),
                           _secret_env(settings, base_role(role)), res, gpus, shm=gpus > 0)
    grpc_port, http_port = PORTS[base_role(role)]
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
    container["env"] += judge_env(job, settings)
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


def eval_manifests(job: Job, settings: K8sSettings, n: int, eval_job: str, version: int, model: pathlib.Path,
                   groups: int, group_size: int) -> list[dict]:
    """Evaluation ``n`` of ``job`` (buffer job ``eval_job``) in creation order: the embedded engine serving
    ``model`` as ``version`` (a Deployment of one), then the gateway (a Job: it ends after ``groups``
    groups). The command lines are the local evaluation's (``jobargs.eval_engine_args``,
    ``eval_gateway_args``) with the pod differences; the engine is the embedded one whatever the job's
    ``resources.engine_kind``, as in a local evaluation."""
    if not DNS_LABEL.match(job.job_id) or len(job.job_id) > MAX_NAME:
        raise LaunchError(f"job id {job.job_id[:80]!r} is not a DNS label")
    _check_gpus(job)
    extra = {EVAL_LABEL: str(n)}
    gpus = job.spec.resources.engine_gpus
    args = pod_args("eval-inference", eval_engine_args(settings, job, model, 0, eval_job, version), settings)
    pod = _inference_pod(settings, "embedded", settings.image_engine, ["python", "-m", "asyncwebrl.engine"], args,
                         gpus)
    engine = _deployment(settings, job.job_id, "eval-inference", 1, pod, {ENGINE_LABEL: "embedded", **extra},
                         "Recreate")
    container = _service_container(settings, "eval-rollout", settings.image_rollout,
                                   ["python", "-m", "asyncwebrl.rollout"],
                                   eval_gateway_args(settings, job, model, eval_job, group_size, groups),
                                   settings.rollout_resources, 0)
    container["env"] += judge_env(job, settings)
    gateway = _job(settings, job.job_id, "eval-rollout",
                   _pod_spec(settings, container, gpu=False, shm=False, restart="Never"), extra)
    return [engine, gateway]
