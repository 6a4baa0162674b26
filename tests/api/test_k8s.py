"""The Kubernetes launcher. No cluster runs here, so:

- every manifest is validated offline against the Kubernetes 1.30 and 1.33 schemas
  (``kubernetes-validate --strict``), and its args are held against the local launcher's;
- KubernetesLauncher, through the official client (``kubernetes_asyncio``, over real HTTP), is driven
  against a FAKE Kubernetes API server: a loopback aiohttp app that implements only POST, GET, DELETE and
  list (label selectors with ``=``) of Jobs, Deployments and autoscalers, and list of pods, and whose
  tests set the Jobs' and Deployments' status by hand. The job store is a real JobStore on a real Redis,
  and ConfigureJob goes to a real buffer, which evaluations read their groups back from.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import re
import shutil
import types

import kubernetes_validate
import pytest
from aiohttp import web

from asyncwebrl.api import errors, k8s, k8s_client, k8s_manifests, k8s_settings
from asyncwebrl.api.config import ApiConfig
from asyncwebrl.api.jobargs import eval_engine_args, eval_gateway_args, resolve_model
from asyncwebrl.api.jobspec import EvaluateRequest, JobSpec
from asyncwebrl.api.launcher import JobRun
from asyncwebrl.api.store import Job, JobStore
from asyncwebrl.common.config import parse_config
from asyncwebrl.common.grpcclient import channel
from asyncwebrl.common.localstack import ServiceProcess, free_port, wait_for_port
from asyncwebrl.common.models.tiny import SHIPPED
from asyncwebrl.common.redisclient import make_redis
from asyncwebrl.common.weights import version_dir, write_manifest
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc
from tests.api.test_api import call
from tests.buffer.conftest import make_group, put_blobs
from tests.engine.sglang_side import packages as sglang_packages
from tests.helpers import fake_http_server

SHARED = "k8s-shared-token-value"
REDIS_PASSWORD = "k8s-redis-password-value"
API_TOKEN = "k8s-api-token-value"
KUBE_TOKEN = "fake-service-account-token"
NAMESPACE = "rl-jobs"
WEIGHTSYNC = "weightsync.rl.svc:50065"
VERSIONS = ("1.30", "1.33")

SPECS = {
    "embedded-cpu": {"name": "cpu", "resources": {"engines": 2, "device": "cpu"}},
    "sglang-gpu": {"name": "sglang", "model": {"path": "qwen"},
                   "resources": {"engines": 4, "engine_kind": "sglang", "engine_gpus": 2, "trainer_gpus": 1}},
    "torchrun": {"name": "fsdp", "resources": {"engines": 2, "engine_gpus": 1, "trainer_gpus": 4, "device": "cuda"}},
    "sync": {"name": "sync", "rollout": {"mode": "sync"}, "algorithm": {"keep_zero_variance": True},
             "tasks": {"tasks": ["miniwob/click-test"], "difficulties": ["easy"]}},
    "long-name": {"name": "a" * 40, "resources": {"engines": 1}},
    "judged": {"name": "judged", "judge": {"url": "https://judge.example:8443", "kind": "openai", "model": "judge-vl",
                                          "api_key_secret": "judge-keys/vl-key", "concurrency": 4, "timeout_s": 30,
                                          "retries": 2}},
}


def config(run_dir: str | pathlib.Path, **overrides) -> ApiConfig:
    values = dict(launcher="kubernetes", run_dir=str(run_dir), api_token=API_TOKEN, auth_token=SHARED,
                  redis_password=REDIS_PASSWORD, weightsync_target=WEIGHTSYNC, k8s_namespace=NAMESPACE,
                  k8s_image_sglang="lmsysorg/sglang:v0.5.4", k8s_secret="rl-secrets",
                  k8s_checkpoints_claim="rl-checkpoints", k8s_gpu_node_selector="nvidia.com/gpu.present=true",
                  k8s_service_account="rl-workloads")
    return ApiConfig(**(values | overrides))


def job_of(key: str, job_id: str | None = None) -> Job:
    spec = JobSpec.model_validate(SPECS[key])
    return Job(job_id or f"{spec.name}-0a1b2c", spec, "pending", 0, 0)


@pytest.fixture
def models(tmp_path) -> pathlib.Path:
    """A model root with one (tiny) checkpoint, as an SGLang job needs."""
    shutil.copytree(SHIPPED / "qwen2_5_vl", tmp_path / "models" / "qwen")
    return tmp_path / "models"


def containers(objects: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["labels"][k8s_manifests.ROLE_LABEL]: o["spec"]["template"]["spec"]["containers"][0]
            for o in objects}


def replaced(args: list[str], values: dict[str, str]) -> list[str]:
    out = list(args)
    for flag, value in values.items():
        out[out.index(flag) + 1] = value
    return out


# --- manifests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(SPECS))
def test_manifests_are_valid_kubernetes_and_tied_to_the_job(key, tmp_path, models):
    cfg = config(tmp_path / "runs", model_roots=(str(models),))
    settings = k8s_settings.settings_from_config(cfg, NAMESPACE)
    job = job_of(key)
    objects = k8s_manifests.manifests(job, settings)
    assert [(o["kind"], o["metadata"]["labels"][k8s_manifests.ROLE_LABEL]) for o in objects] == [
        ("Deployment", "inference"), ("Deployment", "rollout"), ("Job", "trainer")]
    text = json.dumps(objects)
    for secret in (SHARED, REDIS_PASSWORD, API_TOKEN):
        assert secret not in text
    for obj in objects:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        meta, pod = obj["metadata"], obj["spec"]["template"]["spec"]
        role = meta["labels"][k8s_manifests.ROLE_LABEL]
        assert len(meta["name"]) <= 63 and k8s_settings.DNS_LABEL.match(meta["name"])
        assert meta["namespace"] == NAMESPACE
        for where in (meta["labels"], obj["spec"]["template"]["metadata"]["labels"]):
            assert where["app.kubernetes.io/part-of"] == "asyncwebrl"
            assert where["app.kubernetes.io/component"] == role
            assert where["asyncwebrl.io/job"] == job.job_id
        if obj["kind"] == "Deployment":
            selector = obj["spec"]["selector"]["matchLabels"]
            assert selector.items() <= obj["spec"]["template"]["metadata"]["labels"].items()
        c = pod["containers"][0]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "rl-workloads"
        assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "rl-checkpoints"}} in pod["volumes"]
        assert {"name": "checkpoints", "mountPath": str(tmp_path / "runs")} in c["volumeMounts"]
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
        for env in c["env"]:
            assert "value" not in env or env["name"] in ("HOME", "XDG_CACHE_HOME", "PYTHONUNBUFFERED"), env
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            # The judge's key may be in a Secret of its own (judge.api_key_secret "<secret>/<key>").
            assert ref is None or ref["name"] == "rl-secrets" or env["name"] == "ASYNCWEBRL_JUDGE_API_KEY"
        gpus = c["resources"]["limits"].get("nvidia.com/gpu", 0)
        assert c["resources"]["requests"].get("nvidia.com/gpu", 0) == gpus
        expected = {"trainer": job.spec.resources.trainer_gpus, "rollout": 0,
                    "inference": job.spec.resources.engine_gpus}[role]
        assert gpus == expected
        assert ("nodeSelector" in pod) == (gpus > 0)
        if gpus:
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"])


def test_engines_sglang_and_torchrun(tmp_path, models):
    settings = k8s_settings.settings_from_config(config(tmp_path, model_roots=(str(models),)), NAMESPACE)
    sglang = k8s_manifests.manifests(job_of("sglang-gpu"), settings)[0]
    c = sglang["spec"]["template"]["spec"]["containers"][0]
    assert sglang["spec"]["replicas"] == 4
    assert sglang["metadata"]["labels"][k8s_manifests.ENGINE_LABEL] == "sglang"
    assert c["command"] == ["python", "-m", "sglang.launch_server"]
    assert c["args"] == ["--model-path", str(models / "qwen"), "--host", "0.0.0.0", "--port", "30000",
                         "--enable-metrics", "--weight-version", "0",
                         "--api-key", "$(ASYNCWEBRL_ENGINE_API_KEY)", "--admin-api-key", "$(ASYNCWEBRL_ENGINE_API_KEY)",
                         "--tp-size", "2"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": 30000}
    assert c["startupProbe"]["httpGet"] == {"path": "/health", "port": 30000}
    assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]

    trainer = containers(k8s_manifests.manifests(job_of("torchrun"), settings))["trainer"]
    assert trainer["command"] == ["torchrun", "--standalone", "--nproc-per-node", "4", "-m", "asyncwebrl.trainer"]
    one = containers(k8s_manifests.manifests(job_of("sglang-gpu"), settings))["trainer"]
    assert one["command"] == ["python", "-m", "asyncwebrl.trainer"]


# The sglang.launch_server flags the launcher gives, and where SGLang defines them: ServerArgs fields
# (CLI flag = "--" + field name with "-" for "_"), read in the 0.5.20 and 0.5.23 wheels on 2026-12-04.
SGLANG_FLAGS = {
    "--model-path": "srt/arg_groups/fields/model.py: model_path (0.5.20 line 52, 0.5.23 line 51)",
    "--host": "srt/arg_groups/fields/serving.py: host (72, 65)",
    "--port": "srt/arg_groups/fields/serving.py: port (73, 66)",
    "--enable-metrics": "srt/arg_groups/fields/observability.py: enable_metrics (77, 70)",
    "--weight-version": "srt/arg_groups/fields/serving.py: weight_version (167, 172)",
    "--api-key": "srt/arg_groups/fields/serving.py: api_key (155, 160)",
    "--admin-api-key": "srt/arg_groups/fields/serving.py: admin_api_key (159, 164)",
    "--tp-size": "srt/arg_groups/fields/parallel.py: tp_size (52, 45)",
}


def sglang_cli_flags(package: pathlib.Path) -> set[str]:
    """The flags ``sglang.launch_server`` takes, read from its source without importing it: the ServerArgs
    fields (``name: A[...]``, in srt/arg_groups/fields/ in 0.5.20 and 0.5.23), their ``aliases`` and
    ``cli_name``, and the flags srt/server_args.py adds with ``parser.add_argument``."""
    files = [package / "srt" / "server_args.py", *sorted((package / "srt" / "arg_groups").rglob("*.py"))]
    flags: set[str] = set()
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        fields = re.findall(r"^\s+([a-z][a-z0-9_]*)\s*:\s*(?:A|Annotated)\[", text, re.M)
        flags |= {"--" + name.replace("_", "-") for name in fields}
        for listed in re.findall(r"aliases\s*=\s*\[([^\]]*)\]", text):
            flags |= set(re.findall(r"[\"'](--[a-z0-9][a-z0-9-]*)[\"']", listed))
        flags |= set(re.findall(r"(?:cli_name\s*=\s*|add_argument\(\s*)[\"'](--[a-z0-9][a-z0-9-]*)[\"']", text))
    return flags


def test_sglang_flags_exist_in_sglang(tmp_path, models):
    settings = k8s_settings.settings_from_config(config(tmp_path, model_roots=(str(models),)), NAMESPACE)
    c = k8s_manifests.manifests(job_of("sglang-gpu"), settings)[0]["spec"]["template"]["spec"]["containers"][0]
    flags = {a for a in c["args"] if a.startswith("--")}
    assert flags == set(SGLANG_FLAGS)
    sources = sglang_packages()
    for package in sources:
        known = sglang_cli_flags(package)
        assert len(known) > 100, f"{package}: not an sglang package (found {len(known)} flags)"
        assert not flags - known, f"{package}: sglang.launch_server has no {sorted(flags - known)}"


def test_sglang_key_comes_from_the_secret(tmp_path, models):
    """SGLang's API key and admin key are the engine key of the Secret, by reference: the env var comes
    from a secretKeyRef and the args name it as $(VAR), which the kubelet expands."""
    settings = k8s_settings.settings_from_config(config(tmp_path, model_roots=(str(models),)), NAMESPACE)
    objects = k8s_manifests.manifests(job_of("sglang-gpu"), settings)
    c = containers(objects)["inference"]
    env = {e["name"]: e for e in c["env"]}
    args = c["args"]
    refs = {args[args.index(flag) + 1] for flag in ("--api-key", "--admin-api-key")}
    (ref,) = refs  # one key for both
    var = re.fullmatch(r"\$\(([A-Z_][A-Z0-9_]*)\)", ref).group(1)
    assert "value" not in env[var]
    assert env[var]["valueFrom"] == {"secretKeyRef": {"name": "rl-secrets", "key": "engine-api-key", "optional": False}}
    # The gateway sends that same key (weightsync too: the chart gives it engine-api-key); the trainer,
    # which never calls an engine, is not given it.
    sender = {e["name"]: e for e in containers(objects)["rollout"]["env"]}["ASYNCWEBRL_ENGINE_API_KEY"]
    assert sender["valueFrom"]["secretKeyRef"] | {"optional": False} == env[var]["valueFrom"]["secretKeyRef"]
    assert "ASYNCWEBRL_ENGINE_API_KEY" not in {e["name"] for e in containers(objects)["trainer"]["env"]}
    # The kubelet expands $(VAR) only for a variable of the container's env; no other reference is in the args.
    assert [a for a in args if "$(" in a] == [ref, ref]
    # The embedded engine keeps its own flags (no SGLang ones).
    embedded = containers(k8s_manifests.manifests(job_of("embedded-cpu"), settings))["inference"]
    assert not {"--api-key", "--admin-api-key", "--weight-version"} & set(embedded["args"])


def test_the_judge_is_named_in_the_job_and_its_key_comes_from_a_secret(tmp_path, models):
    """A job's judge section becomes gateway flags that RolloutConfig parses (train and evaluation gateways);
    its key is a secretKeyRef (a named Secret, or a key of the release's), never on argv."""
    from asyncwebrl.rollout.config import RolloutConfig

    settings = k8s_settings.settings_from_config(config(tmp_path, model_roots=(str(models),)), NAMESPACE)
    job = job_of("judged")
    gateways = [containers(k8s_manifests.manifests(job, settings))["rollout"],
                containers(k8s_manifests.eval_manifests(job, settings, 1, "judged-0a1b2c-ev1", 3, models / "qwen",
                                                        2, 2))["eval-rollout"]]
    for c in gateways:
        env = {e["name"]: e for e in c["env"]}
        assert env["ASYNCWEBRL_JUDGE_API_KEY"] == {"name": "ASYNCWEBRL_JUDGE_API_KEY", "valueFrom": {
            "secretKeyRef": {"name": "judge-keys", "key": "vl-key", "optional": False}}}
        parsed = parse_config(RolloutConfig, c["args"], environ={"ASYNCWEBRL_JUDGE_API_KEY": "sk-judge-secret"})
        assert (parsed.judge_url, parsed.judge_kind, parsed.judge_model) == ("https://judge.example:8443", "openai",
                                                                              "judge-vl")
        assert (parsed.judge_concurrency, parsed.judge_timeout_s, parsed.judge_retries) == (4, 30.0, 2)
        assert parsed.judge_api_key == "sk-judge-secret"
        assert not any("key" in a.lower() for a in c["args"] if a.startswith("--judge")), c["args"]
    # A bare key name: a key of the release's Secret. No judge: no judge flags, no key.
    bare = Job("judged-0a1b2c", JobSpec.model_validate(
        {"name": "judged", "judge": {"url": "http://10.0.0.7:30000", "kind": "sglang",
                                     "api_key_secret": "judge-api-key"}}), "pending", 0, 0)
    env = {e["name"]: e for e in containers(k8s_manifests.manifests(bare, settings))["rollout"]["env"]}
    assert env["ASYNCWEBRL_JUDGE_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "rl-secrets"
    plain = containers(k8s_manifests.manifests(job_of("embedded-cpu"), settings))["rollout"]
    assert "ASYNCWEBRL_JUDGE_API_KEY" not in {e["name"] for e in plain["env"]}
    assert not [a for a in plain["args"] if a.startswith("--judge")]
    # The key itself is no field of the job.
    with pytest.raises(ValueError):
        JobSpec.model_validate({"name": "x", "judge": {"url": "https://j.example", "api_key": "sk-1"}})
    for url in ("ftp://j.example", "https://j.example/v1?key=sk-1", "https://" + "a" * 600):
        with pytest.raises(ValueError):
            JobSpec.model_validate({"name": "x", "judge": {"url": url}})


def test_pod_args_are_the_local_launchers_with_the_pod_differences(tmp_path):
    """Each workload runs what LocalLauncher runs for the same job, changed only where a pod must be."""
    cfg = config(tmp_path / "runs")
    settings = k8s_settings.settings_from_config(cfg, NAMESPACE)
    for key in ("embedded-cpu", "sync"):
        job = job_of(key)
        local = {c.role: c.args[1:] for c in
                 JobRun(types.SimpleNamespace(config=cfg), job)._plan(resolve_model(job.spec, ()))}
        pods = containers(k8s_manifests.manifests(job, settings))
        # A pod's torch threads come from its CPU limit, not from the api's machine.
        for role, container in (("trainer", "trainer"), ("engine", "inference")):
            at = local[role].index("--torch-threads")
            del local[role][at:at + 2]
            threads = {e["name"]: e for e in pods[container]["env"]}["ASYNCWEBRL_TORCH_THREADS"]
            assert threads["valueFrom"]["resourceFieldRef"] == {"containerName": container, "resource": "limits.cpu",
                                                                "divisor": "1"}
        # One publisher: weightsync, for a local job as for a pod (jobargs.publish_args).
        at = local["trainer"].index("--publish")
        assert local["trainer"][at:at + 4] == ["--publish", "weightsync", "--weightsync-target", WEIGHTSYNC]
        assert pods["trainer"]["args"] == [
            *replaced(local["trainer"], {"--grpc-port": "50064", "--http-port": "9464", "--log-format": "json"}),
            "--host", "0.0.0.0"]
        assert pods["rollout"]["args"] == [
            *replaced(local["rollout"], {"--grpc-port": "50063", "--http-port": "9463", "--log-format": "json",
                                         "--gateway-id": "$(POD_NAME)"}),
            "--host", "0.0.0.0", "--seed-salt", "$(POD_NAME)"]
        assert {e["name"]: e for e in pods["rollout"]["env"]}["POD_NAME"]["valueFrom"]["fieldRef"] == {
            "fieldPath": "metadata.name"}
        # Readiness of the embedded engine is false during a weight update (its /ready).
        assert pods["inference"]["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 30000}
        assert pods["inference"]["args"] == [
            *replaced(local["engine"], {"--http-port": "30000", "--host": "0.0.0.0", "--endpoint-id": "$(POD_NAME)",
                                        "--log-format": "json"}),
            "--advertise-url", "http://$(POD_IP):30000"]
        assert ("--sync" in pods["rollout"]["args"]) == (key == "sync")
        names = {e["name"]: e for e in pods["inference"]["env"]}
        assert names["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert names["ASYNCWEBRL_REGISTRY_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "redis-password"
        assert {e["name"] for e in pods["trainer"]["env"]} >= {"ASYNCWEBRL_AUTH_TOKEN", "ASYNCWEBRL_REDIS_PASSWORD"}


def test_warm_start_phase_manifests(tmp_path):
    settings = k8s_settings.settings_from_config(config(tmp_path / "runs"), NAMESPACE)
    job = Job("warm-0a1b2c", JobSpec.model_validate({"name": "warm", "algorithm": {"warm_start_steps": 3}}),
              "pending", 0, 0)
    objects = k8s_manifests.manifests(job, settings, phase="warm_start")
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("Job", "warm-0a1b2c-warm-rollout"), ("Job", "warm-0a1b2c-warm-trainer")]
    for obj in objects:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    pods = containers(objects)
    assert "--demonstrations" in pods["warm-rollout"]["args"]
    assert pods["warm-trainer"]["args"][pods["warm-trainer"]["args"].index("--objective") + 1] == "sft"


def test_names_are_bounded_and_distinct():
    long_ids = ["x" * 64, "x" * 63 + "y", "a" * 47]
    names = {k8s_manifests.object_name(j, role) for j in long_ids for role in k8s_manifests.ROLES}
    assert len(names) == len(long_ids) * len(k8s_manifests.ROLES)
    assert all(len(n) <= 63 and k8s_settings.DNS_LABEL.match(n) for n in names)
    assert k8s_manifests.object_name("cpu-0a1b2c", "trainer") == "cpu-0a1b2c-trainer"


def test_jobs_that_cannot_run_here_fail_with_the_field(tmp_path):
    settings = k8s_settings.settings_from_config(config(tmp_path, k8s_image_sglang=""), NAMESPACE)
    bad = [({"name": "x", "resources": {"engine_kind": "sglang", "engine_gpus": 1}}, "k8s-image-sglang"),
           ({"name": "x", "resources": {"engine_kind": "sglang"}}, "resources.engine_gpus"),
           ({"name": "x", "resources": {"device": "cuda", "engine_gpus": 1}}, "resources.trainer_gpus"),
           ({"name": "x", "model": {"path": "missing"}}, "model.path")]
    for spec, field in bad:
        with pytest.raises(errors.LaunchError, match=field):
            k8s_manifests.manifests(Job("x-0a1b2c", JobSpec.model_validate(spec), "pending", 0, 0), settings)


def test_config_flags_and_their_validation(tmp_path):
    cfg = parse_config(ApiConfig, [
        "--launcher", "kubernetes", "--run-dir", "/runs", "--allow-no-token", "--weightsync-target", WEIGHTSYNC,
        "--k8s-namespace", NAMESPACE, "--k8s-image-trainer", "reg.example/trainer:1", "--k8s-secret", "s",
        "--k8s-gpu-tolerations", "nvidia.com/gpu=present:NoSchedule,dedicated", "--k8s-trainer-resources", "8,64Gi"],
        environ={})
    s = k8s_settings.settings_from_config(cfg, NAMESPACE)
    assert s.image_trainer == "reg.example/trainer:1" and s.trainer_resources == k8s_settings.Resources("8", "64Gi")
    assert [t.manifest() for t in s.gpu_tolerations] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Exists"}]
    bad = [({"weightsync_target": ""}, "weightsync_target"), ({"run_dir": "runs"}, "run_dir"),
           ({"k8s_gpu_tolerations": "a:Never"}, "k8s_gpu_tolerations"),
           ({"k8s_gpu_node_selector": "novalue"}, "k8s_gpu_node_selector"),
           ({"k8s_trainer_resources": "4"}, "k8s_trainer_resources"), ({"k8s_namespace": "Bad_NS"}, "k8s_namespace"),
           ({"k8s_api": "kubernetes"}, "k8s_api"), ({"redis_url": "redis://:pw@redis:6379/0"}, "redis_url"),
           ({"k8s_run_as_user": 0}, "k8s_run_as_user"), ({"k8s_secret": "Not A Name"}, "k8s_secret"),
           ({"k8s_models_claim": "models"}, "k8s_models_claim"), ({"k8s_image_engine": ""}, "k8s_image_engine")]
    for overrides, field in bad:
        with pytest.raises(ValueError, match=field):
            config(overrides.pop("run_dir", tmp_path), **overrides)
    config(tmp_path, launcher="none", weightsync_target="")  # the k8s flags are only read with kubernetes


# --- the launcher against a FAKE Kubernetes API -------------------------------------------------------

class FakeKubernetes:
    """A FAKE Kubernetes API server: Jobs and Deployments in a dict, create/get/delete/list by label, and
    a list of pods the test writes. ``fail``: object name -> "500" or "hang" for its POST; ``down``: every
    call answers 503."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict] = {}
        self.pods: list[dict] = []
        self.calls: list[tuple[str, str]] = []
        self.deletes: list[dict] = []
        self.fail: dict[str, str] = {}
        self.down = False
        self.uid = 0
        self.released = asyncio.Event()  # set at the end of a test: hanging calls return

    def routes(self):
        base = "/apis/{group}/{version}/namespaces/{ns}/{plural}"
        return [("POST", base, self.create), ("GET", base, self.list), ("GET", base + "/{name}", self.get),
                ("DELETE", base + "/{name}", self.delete), ("GET", "/api/v1/namespaces/{ns}/pods", self.list_pods)]

    @staticmethod
    def status(code: int, reason: str, message: str) -> web.Response:
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                                  "message": message, "code": code}, status=code)

    def check(self, request: web.Request, core: bool = False) -> web.Response | None:
        self.calls.append((request.method, request.path))
        if request.headers.get("Authorization") != f"Bearer {KUBE_TOKEN}":
            return self.status(401, "Unauthorized", "no or a wrong token")
        if self.down:
            return self.status(503, "ServiceUnavailable", "the fake is down")
        m = request.match_info
        if core:
            return None if m["ns"] == NAMESPACE else self.status(404, "NotFound", f"no {request.path}")
        if m["ns"] != NAMESPACE or (m["group"], m["version"], m["plural"]) not in (
                ("batch", "v1", "jobs"), ("apps", "v1", "deployments"),
                ("autoscaling", "v2", "horizontalpodautoscalers")):
            return self.status(404, "NotFound", f"no {request.path}")
        return None

    async def create(self, request: web.Request) -> web.Response:
        if (bad := self.check(request)) is not None:
            return bad
        obj = await request.json()
        name, plural = obj["metadata"]["name"], request.match_info["plural"]
        if {"jobs": "Job", "deployments": "Deployment",
                "horizontalpodautoscalers": "HorizontalPodAutoscaler"}[plural] != obj["kind"] or \
                obj["metadata"].get("namespace") != NAMESPACE:
            return self.status(400, "BadRequest", "kind or namespace does not match the path")
        if self.fail.get(name) == "500":
            return self.status(500, "InternalError", "etcdserver: request timed out")
        if self.fail.get(name) == "hang":
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.released.wait(), 30)
        if (plural, name) in self.objects:
            return self.status(409, "AlreadyExists", f'{plural} "{name}" already exists')
        self.uid += 1
        obj["metadata"]["uid"] = f"uid-{self.uid}"
        obj["status"] = {}
        self.objects[(plural, name)] = obj
        return web.json_response(obj, status=201)

    async def get(self, request: web.Request) -> web.Response:
        if (bad := self.check(request)) is not None:
            return bad
        obj = self.objects.get((request.match_info["plural"], request.match_info["name"]))
        return web.json_response(obj) if obj else self.status(404, "NotFound", "not found")

    @staticmethod
    def selected(request: web.Request, objects) -> list[dict]:
        wanted = dict(p.split("=", 1) for p in request.query.get("labelSelector", "").split(",") if p)
        return [{k: v for k, v in o.items() if k != "kind"} for o in objects
                if wanted.items() <= o["metadata"]["labels"].items()]

    async def list(self, request: web.Request) -> web.Response:
        if (bad := self.check(request)) is not None:
            return bad
        of_kind = [o for (plural, _), o in self.objects.items() if plural == request.match_info["plural"]]
        return web.json_response({"kind": "List", "metadata": {}, "items": self.selected(request, of_kind)})

    async def list_pods(self, request: web.Request) -> web.Response:
        if (bad := self.check(request, core=True)) is not None:
            return bad
        return web.json_response({"kind": "PodList", "metadata": {}, "items": self.selected(request, self.pods)})

    async def delete(self, request: web.Request) -> web.Response:
        if (bad := self.check(request)) is not None:
            return bad
        self.deletes.append(await request.json())
        obj = self.objects.pop((request.match_info["plural"], request.match_info["name"]), None)
        return web.json_response({"kind": "Status", "status": "Success"}) if obj else \
            self.status(404, "NotFound", "not found")

    def of(self, job_id: str) -> dict[str, dict]:
        return {o["metadata"]["labels"][k8s_manifests.ROLE_LABEL]: o for o in self.objects.values()
                if o["metadata"]["labels"]["asyncwebrl.io/job"] == job_id}

    def finish(self, job_id: str, role: str, condition: str, reason: str = "", message: str = "") -> None:
        job = self.of(job_id)[role]
        job["status"] = {"succeeded": 1 if condition == "Complete" else 0,
                         "failed": 0 if condition == "Complete" else 4,
                         "conditions": [{"type": condition, "status": "True", "reason": reason, "message": message}]}


@pytest.fixture(scope="module")
def buffer(redis_server, tmp_path_factory):
    logs = tmp_path_factory.mktemp("k8s-buffer")
    proc = ServiceProcess("buffer", ["--redis-url", redis_server.url, "--key-prefix", "k8s-test:", "--log-format",
                                     "text"], {"ASYNCWEBRL_AUTH_TOKEN": SHARED,
                                               "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password},
                          logs / "buffer.log")
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture
async def kube(redis_server, buffer, tmp_path, request):
    """(fake, launcher, store) on a fresh key prefix; ``request.param``: the API call timeout (default 5 s)."""
    fake = FakeKubernetes()
    token = tmp_path / "token"
    token.write_text(KUBE_TOKEN + "\n")
    redis = make_redis(redis_server.url, redis_server.password)
    prefix = f"k8s-{request.node.name[:30]}:"
    store = JobStore(redis, prefix, 100)
    async with fake_http_server(fake.routes()) as url:
        cfg = config(tmp_path / "runs", k8s_api=url, k8s_token_file=str(token), k8s_ca_file="", k8s_poll_s=0.05,
                     k8s_timeout_s=getattr(request, "param", 5.0), buffer_target=buffer.target, redis_url=redis_server.url, key_prefix=prefix)
        launcher = k8s.KubernetesLauncher(cfg, store)
        yield fake, launcher, store
        await launcher.close()
        fake.released.set()
    await redis.aclose()


def buffer_stub_for(svc: ServiceProcess, token: str):
    """A sync (channel, stub) of the buffer with ``token``."""
    ch = channel(svc.target, token)
    return ch, buffer_pb2_grpc.BufferServiceStub(ch)


async def eventually(predicate, what: str, timeout: float = 10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not met in {timeout}s")


async def state_is(store: JobStore, job_id: str, state: str):
    return await eventually(lambda: _state(store, job_id, state), f"job {job_id} {state}")


async def _state(store: JobStore, job_id: str, state: str):
    job = await store.get(job_id)
    return job if job.state == state else None


async def create(store: JobStore, spec: dict) -> Job:
    return await store.create(JobSpec.model_validate(spec))


async def test_start_resume_and_success(kube):
    fake, launcher, store = kube
    job = await create(store, {"name": "ok", "resources": {"engines": 2}})
    launcher.start(job)
    await state_is(store, job.job_id, "running")
    objects = fake.of(job.job_id)
    assert sorted(objects) == ["inference", "rollout", "trainer"]
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "asyncwebrl" for o in objects.values())
    assert objects["inference"]["spec"]["replicas"] == 2
    assert launcher.phase(job.job_id) == "rl"

    # Resumed twice (an api restart, then another): nothing new, the 409s are success.
    posts = sum(m == "POST" for m, _ in fake.calls)
    await launcher.resume()
    await launcher.resume()
    assert len(fake.objects) == 3 and sum(m == "POST" for m, _ in fake.calls) == posts + 6
    assert (await store.get(job.job_id)).state == "running"

    views = {v["role"]: v for v in await launcher.status(job.job_id)}
    assert views["trainer"] == {"role": "trainer", "name": f"{job.job_id}-trainer", "kind": "Job", "replicas": 1,
                                "ready": 0, "active": 0, "succeeded": 0, "failed": 0}
    assert views["inference"]["kind"] == "Deployment" and views["inference"]["replicas"] == 2

    fake.finish(job.job_id, "trainer", "Complete")
    done = await state_is(store, job.job_id, "succeeded")
    assert f"{job.job_id}-trainer" in done.reason
    # Deployments go; the trainer Job stays for its logs.
    await eventually(lambda: _only_trainer(fake, job.job_id), "deployments deleted")
    assert all(d["propagationPolicy"] == "Background" for d in fake.deletes)


def test_a_job_with_several_gateways_gets_an_autoscaler(tmp_path):
    settings = k8s_settings.settings_from_config(config(tmp_path / "runs"), NAMESPACE)
    spec = JobSpec.model_validate({"name": "wide", "resources": {"max_gateways": 4}})
    objects = k8s_manifests.manifests(Job("wide-0a1b2c", spec, "pending", 0, 0), settings)
    hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")
    for version in VERSIONS:
        kubernetes_validate.validate(hpa, version, strict=True)
    gateway = next(o for o in objects if o["metadata"]["labels"][k8s_manifests.ROLE_LABEL] == "rollout")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": gateway["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert hpa["metadata"]["labels"]["asyncwebrl.io/job"] == "wide-0a1b2c"
    # One gateway by default: no autoscaler.
    assert not [o for o in k8s_manifests.manifests(job_of("embedded-cpu"), settings)
                if o["kind"] == "HorizontalPodAutoscaler"]


async def test_cancel_deletes_the_autoscaler_too(kube):
    fake, launcher, store = kube
    job = await create(store, {"name": "wide", "resources": {"max_gateways": 3}})
    launcher.start(job)
    await state_is(store, job.job_id, "running")
    assert sorted(fake.of(job.job_id)) == ["inference", "rollout", "rollout-scaler", "trainer"]
    views = {v["role"]: v for v in await launcher.status(job.job_id)}
    assert views["rollout-scaler"]["kind"] == "HorizontalPodAutoscaler" and views["rollout-scaler"]["max"] == 3
    await launcher.cancel(job.job_id)
    assert fake.of(job.job_id) == {}


async def _only_trainer(fake: FakeKubernetes, job_id: str) -> bool:
    return sorted(fake.of(job_id)) == ["trainer"]


async def test_cancel_deletes_every_object_of_the_job(kube):
    fake, launcher, store = kube
    keep = await create(store, {"name": "keep"})
    job = await create(store, {"name": "gone"})
    launcher.start(keep)
    launcher.start(job)
    await state_is(store, job.job_id, "running")
    await state_is(store, keep.job_id, "running")
    await launcher.cancel(job.job_id)
    assert (await store.get(job.job_id)).state == "cancelled"
    assert fake.of(job.job_id) == {} and len(fake.of(keep.job_id)) == 3
    assert fake.deletes and all(d["propagationPolicy"] == "Background" for d in fake.deletes)


async def test_trainer_job_failure_fails_the_job(kube):
    fake, launcher, store = kube
    job = await create(store, {"name": "crash"})
    launcher.start(job)
    await state_is(store, job.job_id, "running")
    fake.finish(job.job_id, "trainer", "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    failed = await state_is(store, job.job_id, "failed")
    assert f"trainer Job {job.job_id}-trainer failed: BackoffLimitExceeded" in failed.reason


@pytest.mark.parametrize("kube", [0.5], indirect=True)
async def test_api_errors_and_timeouts_fail_the_job_not_the_api(kube):
    fake, launcher, store = kube
    broken = await create(store, {"name": "broken"})
    slow = await create(store, {"name": "slow"})
    fake.fail[f"{broken.job_id}-trainer"] = "500"
    fake.fail[f"{slow.job_id}-rollout"] = "hang"
    launcher.start(broken)
    launcher.start(slow)
    failed = await state_is(store, broken.job_id, "failed")
    assert "POST /apis/batch/v1/namespaces/rl-jobs/jobs answered 500: etcdserver: request timed out" in failed.reason
    failed = await state_is(store, slow.job_id, "failed")
    assert "POST /apis/apps/v1/namespaces/rl-jobs/deployments timed out after 0.5s (3 tries)" in failed.reason
    # What was created before the failure is removed.
    await eventually(lambda: _none_left(fake, broken.job_id), "objects of the failed launch deleted")
    await eventually(lambda: _none_left(fake, slow.job_id), "objects of the timed-out launch deleted")

    # The API goes down: status says so, cancel still cancels, the loop deletes once it is back.
    fine = await create(store, {"name": "fine"})
    launcher.start(fine)
    await state_is(store, fine.job_id, "running")
    fake.down = True
    assert "answered 503" in (await launcher.status(fine.job_id))[0]["error"]
    await launcher.cancel(fine.job_id)
    assert (await store.get(fine.job_id)).state == "cancelled" and len(fake.of(fine.job_id)) == 3
    fake.down = False
    await eventually(lambda: _none_left(fake, fine.job_id), "objects deleted after the outage")


async def _none_left(fake: FakeKubernetes, job_id: str) -> bool:
    return fake.of(job_id) == {}


async def test_warm_start_then_rl(kube, tmp_path):
    fake, launcher, store = kube
    job = await create(store, {"name": "warm", "algorithm": {"warm_start_steps": 2}})
    launcher.start(job)
    await state_is(store, job.job_id, "running")
    assert sorted(fake.of(job.job_id)) == ["warm-rollout", "warm-trainer"]
    assert launcher.phase(job.job_id) == "warm_start"

    # The FAKE cannot run the warm trainer: write its last version where it would have.
    warm = version_dir(tmp_path / "runs" / job.job_id / "warm", 2)
    shutil.copytree(SHIPPED / "qwen2_5_vl", warm)
    write_manifest(warm, 2)
    fake.finish(job.job_id, "warm-trainer", "Complete")
    await eventually(lambda: _roles(fake, job.job_id, ["inference", "rollout", "trainer"]), "RL workloads")
    trainer = containers([fake.of(job.job_id)["trainer"]])["trainer"]
    assert trainer["args"][trainer["args"].index("--model-path") + 1] == str(warm)
    assert launcher.phase(job.job_id) == "rl"


async def _roles(fake: FakeKubernetes, job_id: str, roles: list[str]) -> bool:
    return sorted(fake.of(job_id)) == roles


async def test_the_api_process_launches_through_the_fake(redis_server, buffer, tmp_path):
    """``python -m asyncwebrl.api --launcher kubernetes`` end to end: REST in, objects in the FAKE API out."""
    fake = FakeKubernetes()
    token = tmp_path / "token"
    token.write_text(KUBE_TOKEN)
    async with fake_http_server(fake.routes()) as url:
        port = free_port()
        api = ServiceProcess("api", [
            "--redis-url", redis_server.url, "--key-prefix", "k8s-e2e:", "--log-format", "text",
            "--api-port", str(port), "--launcher", "kubernetes", "--run-dir", str(tmp_path / "runs"),
            "--buffer-target", buffer.target, "--weightsync-target", WEIGHTSYNC, "--k8s-api", url,
            "--k8s-namespace", NAMESPACE, "--k8s-token-file", str(token), "--k8s-ca-file", "",
            "--k8s-poll-s", "0.1"], {"ASYNCWEBRL_AUTH_TOKEN": SHARED, "ASYNCWEBRL_API_TOKEN": API_TOKEN,
                                     "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password}, tmp_path / "api.log")
        try:
            await asyncio.to_thread(api.wait_ready)
            await asyncio.to_thread(wait_for_port, port, 30, api.proc)
            api.api_port = port
            status, _, job = await asyncio.to_thread(call, api, "POST", "/v1/jobs", {"name": "e2e"}, API_TOKEN)
            assert status == 201, job

            async def running():
                _, _, got = await asyncio.to_thread(call, api, "GET", f"/v1/jobs/{job['id']}", None, API_TOKEN)
                return got if got["state"] == "running" and len(got["processes"]) == 3 else None

            got = await eventually(running, "job running with 3 workloads", 20)
            assert {p["role"] for p in got["processes"]} == {"inference", "rollout", "trainer"}
            assert got["phase"] == "rl"
            status, _, done = await asyncio.to_thread(call, api, "DELETE", f"/v1/jobs/{job['id']}", None, API_TOKEN)
            assert status == 200 and done["state"] == "cancelled" and fake.of(job["id"]) == {}
        finally:
            code = await asyncio.to_thread(api.stop)
        assert code == 0, api.logs()[-3000:]


async def test_a_crash_looping_gateway_fails_the_job(kube):
    fake, launcher, store = kube
    job = await create(store, {"name": "loop"})
    launcher.start(job)
    await state_is(store, job.job_id, "running")
    labels = fake.of(job.job_id)["rollout"]["spec"]["template"]["metadata"]["labels"]
    restarts = {"restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}
    fake.pods.append({"metadata": {"name": f"{job.job_id}-rollout-7d9f-x2b", "labels": labels},
                      "status": {"containerStatuses": [restarts | {"restartCount": 3}]}})
    await asyncio.sleep(0.3)  # 3 restarts: within --k8s-backoff-limit
    assert (await store.get(job.job_id)).state == "running"
    fake.pods[0]["status"]["containerStatuses"] = [restarts]
    failed = await state_is(store, job.job_id, "failed")
    assert failed.reason == (f"rollout pod {job.job_id}-rollout-7d9f-x2b restarted 4 times "
                             "(CrashLoopBackOff, last exit 1, Error)")
    await eventually(lambda: _none_left(fake, job.job_id), "every workload deleted, the running trainer too")


async def test_the_client_create_get_list_delete(tmp_path):
    fake = FakeKubernetes()
    token = tmp_path / "token"
    token.write_text(KUBE_TOKEN)
    settings = k8s_settings.settings_from_config(config(tmp_path / "runs"), NAMESPACE)
    obj = k8s_manifests.manifests(job_of("embedded-cpu"), settings)[1]
    async with fake_http_server(fake.routes()) as url:
        client = k8s_client.KubeClient(url, NAMESPACE, str(token), timeout_s=1)
        try:
            assert await client.create(obj) is True and await client.create(obj) is False
            got = await client.get("Deployment", obj["metadata"]["name"])
            assert got["metadata"]["labels"] == obj["metadata"]["labels"]
            assert [i["metadata"]["name"] for i in await client.list("Deployment", "asyncwebrl.io/role=rollout")] == \
                [obj["metadata"]["name"]]
            assert await client.list("Deployment", "asyncwebrl.io/role=trainer") == []
            assert await client.delete("Deployment", obj["metadata"]["name"]) is True
            assert await client.delete("Deployment", obj["metadata"]["name"]) is False
            assert await client.get("Deployment", obj["metadata"]["name"]) is None
            wrong = k8s_client.KubeClient(url, "elsewhere", str(token), timeout_s=1)
            with pytest.raises(errors.KubeError, match="answered 404"):
                await wrong.list("Job", "a=b")
            await wrong.close()
        finally:
            await client.close()


async def test_an_evaluation_runs_as_workloads_and_is_read_from_the_buffer(kube, buffer, tmp_path):
    """POST /v1/jobs/{id}/evaluate under Kubernetes: the evaluation's engine (a Deployment) and gateway (a Job)
    are created through the FAKE API with the local evaluation's command lines (and the pod differences), and
    the result is read back from the real buffer, as a local evaluation's."""
    fake, launcher, store = kube
    job = await create(store, {"name": "evalme"})
    doc = await launcher.evaluations.start(job, EvaluateRequest(base=True, groups=2, group_size=2))
    assert doc["state"] == "running" and doc["id"] == "eval-1"
    eval_job = f"{job.job_id}-ev1"
    await eventually(lambda: _roles(fake, job.job_id, ["eval-inference"]), "the engine first, alone")
    engine = fake.of(job.job_id)["eval-inference"]
    assert engine["metadata"]["name"] == f"{job.job_id}-ev1-inference" and engine["spec"]["replicas"] == 1
    assert engine["metadata"]["labels"][k8s_manifests.EVAL_LABEL] == "1"
    settings = launcher.settings
    model = tmp_path / "runs" / job.job_id / "evals" / "eval-1" / "model"
    assert (model / "config.json").is_file()  # the snapshot the pods read, on the shared volume
    assert containers([engine])["eval-inference"]["args"] == k8s_manifests.pod_args(
        "eval-inference", eval_engine_args(settings, job, model, 0, eval_job, 0), settings)
    await asyncio.sleep(0.3)
    assert sorted(fake.of(job.job_id)) == ["eval-inference"]  # not ready: no gateway yet
    # The job's own workloads are not the evaluation's: status and the reconcile loop leave them apart.
    assert await launcher.status(job.job_id) == []

    engine["status"] = {"readyReplicas": 1}
    await eventually(lambda: _roles(fake, job.job_id, ["eval-inference", "eval-rollout"]), "the gateway Job")
    gateway = fake.of(job.job_id)["eval-rollout"]
    assert gateway["kind"] == "Job" and gateway["metadata"]["name"] == f"{job.job_id}-ev1-rollout"
    assert containers([gateway])["eval-rollout"]["args"] == k8s_manifests.pod_args(
        "eval-rollout", eval_gateway_args(settings, job, model, eval_job, 2, 2), settings)
    for obj in (engine, gateway):
        for version in VERSIONS:
            kubernetes_validate.validate({k: v for k, v in obj.items() if k != "status"}, version, strict=True)

    # The FAKE runs no gateway: its groups go to the buffer as the gateway would have written them.
    def put() -> None:
        ch, stub = buffer_stub_for(buffer, SHARED)
        try:
            refs = put_blobs(stub, eval_job, ["a"])
            for _ in range(2):
                stub.PutGroup(buffer_pb2.PutGroupRequest(group=make_group(eval_job, refs)))
        finally:
            ch.close()

    await asyncio.to_thread(put)
    fake.finish(job.job_id, "eval-rollout", "Complete")

    async def finished():
        got = await launcher.evaluations.get(job.job_id, 1)
        return got if got["state"] != "running" else None

    done = await eventually(finished, "evaluation finished")
    assert done["state"] == "succeeded", done["reason"]
    assert done["result"]["groups"] == 2 and done["result"]["episodes"] == 4 and done["result"]["success"] == 0.5
    assert any((tmp_path / "runs" / job.job_id / "episodes" / "eval-1").rglob("*"))
    assert fake.of(job.job_id) == {}  # both deleted


async def test_an_evaluation_whose_engine_crash_loops_fails(kube):
    fake, launcher, store = kube
    job = await create(store, {"name": "evalbad"})
    await launcher.evaluations.start(job, EvaluateRequest(base=True, groups=1, group_size=1))
    await eventually(lambda: _roles(fake, job.job_id, ["eval-inference"]), "the engine")
    labels = fake.of(job.job_id)["eval-inference"]["spec"]["template"]["metadata"]["labels"]
    fake.pods.append({"metadata": {"name": f"{job.job_id}-ev1-inference-5c8-q", "labels": labels},
                      "status": {"containerStatuses": [{"restartCount": 4,
                                                        "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}})

    async def finished():
        got = await launcher.evaluations.get(job.job_id, 1)
        return got if got["state"] != "running" else None

    done = await eventually(finished, "evaluation failed")
    assert done["state"] == "failed"
    assert done["reason"] == (f"evaluate: eval-inference pod {job.job_id}-ev1-inference-5c8-q restarted 4 times "
                              "(CrashLoopBackOff)")
    assert fake.of(job.job_id) == {}


async def test_workloads_of_an_evaluation_no_longer_running_are_deleted(kube, tmp_path):
    """Left by an earlier api process (stopped mid-evaluation): the reconcile loop deletes them, and only them."""
    fake, launcher, store = kube
    job = await create(store, {"name": "stray"})
    launcher.start(job)
    await state_is(store, job.job_id, "running")
    model = resolve_model(job.spec, ())
    for obj in k8s_manifests.eval_manifests(job, launcher.settings, 7, f"{job.job_id}-ev7", 0, model, 1, 1):
        assert await launcher.kube.create(obj)
    await eventually(lambda: _roles(fake, job.job_id, ["inference", "rollout", "trainer"]), "strays deleted")
    assert (await store.get(job.job_id)).state == "running"
