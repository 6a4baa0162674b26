"""The Helm chart in deploy/helm, rendered and linted offline with helm-python-sdk (the Helm v4 SDK).

- the default values and five combinations (external Redis, no monitoring, GPU SGLang, an existing
  Secret and claims, everything on) render, and every manifest validates against the Kubernetes 1.30
  and 1.33 schemas with kubernetes-validate --strict, except the Prometheus operator's CRDs
  (CRD_KINDS, whose shape is checked here instead); ``helm lint --strict`` is clean;
- values.schema.json rejects bad values, naming the field;
- the properties that matter: a default-deny NetworkPolicy and a policy of its own for every pod (the
  chart's and the launcher's job pods), whose evaluation over every pair of pods gives exactly the
  designed edges (EDGES); browsers' egress never reaches private ranges, 169.254.169.254 or Redis,
  Redis takes connections only from its clients, pods roll when the Secret changes, no secret is inline in a workload, Redis runs with
  AOF and noeviction, probes are on grpc.health.v1, the api's Role grants what asyncwebrl.api.k8s
  calls, dashboards and rules come from charts/, an external Redis replaces the StatefulSet (and the
  StatefulSet's Redis command runs on a real redis-server: password from the environment, AOF);
- every ASYNCWEBRL_* variable the chart sets is a flag of its service and parses, and the api's
  launcher settings it produces give valid GPU SGLang workloads (asyncwebrl.api.k8s_manifests.manifests).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
import json
import pathlib
import re
import shutil
import socket
import subprocess

import helm_python as helm
import kubernetes_validate
import pytest
import redis as redis_py
import yaml

from asyncwebrl.api import config as api_config
from asyncwebrl.api import k8s, k8s_client, k8s_manifests, k8s_settings
from asyncwebrl.api.config import ApiConfig
from asyncwebrl.api.jobspec import JobSpec
from asyncwebrl.api.store import Job
from asyncwebrl.buffer.config import BufferConfig
from asyncwebrl.common.config import env_name, parse_config
from asyncwebrl.common.localstack import free_port, wait_for_port
from asyncwebrl.envfleet.config import EnvfleetConfig
from asyncwebrl.weightsync.config import WeightSyncConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm"
DASHBOARDS = sorted((ROOT / "charts" / "dashboards").glob("*.json"))
RULES = sorted((ROOT / "charts" / "rules").glob("*.yaml"))
RELEASE, NAMESPACE = "rl", "asyncwebrl"
FULL = "rl-asyncwebrl"
VERSIONS = ("1.30", "1.33")
# kubernetes-validate has no schemas for CustomResourceDefinitions: these are checked by check_crd.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
CONFIGS = {"envfleet": EnvfleetConfig, "buffer": BufferConfig, "weightsync": WeightSyncConfig, "api": ApiConfig}
GRPC_PORTS = {"envfleet": 50061, "buffer": 50062, "weightsync": 50065, "api": 50070}
SECRET_ENV = {"ASYNCWEBRL_AUTH_TOKEN", "ASYNCWEBRL_REDIS_PASSWORD", "ASYNCWEBRL_API_TOKEN",
              "ASYNCWEBRL_ENGINE_API_KEY", "REDIS_PASSWORD", "REDISCLI_AUTH"}
EXTERNAL_URL = "rediss://redis.data.example.com:6380/2"
SECRETS = {"apiToken": "helm-api-token-Zq1", "authToken": "helm-grpc-token-Xw2",
           "redisPassword": "helm-redis-password-Vv3", "engineApiKey": "helm-engine-key-Uu4"}
GPU = {"nodeSelector": {"nvidia.com/gpu.present": "true"},
       "tolerations": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"},
                       {"key": "dedicated", "value": "rl-gpu", "effect": "NoExecute"}]}
COMBOS = {
    "default": {},
    "external-redis": {"redis": {"external": {"url": EXTERNAL_URL, "egressCIDRs": ["10.40.0.7/32"]}}},
    "no-monitoring": {"monitoring": {"enabled": False}},
    "gpu-sglang": {"jobs": {"images": {"sglang": "lmsysorg/sglang:v0.5.4"}, "gpu": GPU,
                            "inference": {"resources": {"cpu": "8", "memory": "64Gi"}, "shmSize": "32Gi"},
                            "trainer": {"resources": {"cpu": "16", "memory": "128Gi"}}},
                   "models": {"existingClaim": "hf-models"}},
    "existing": {"secrets": {"existingSecret": "rl-tokens"}, "checkpoints": {"existingClaim": "shared-ckpt"},
                 "jobs": {"serviceAccount": {"create": False, "name": "rl-runner"}},
                 "envfleet": {"autoscaling": {"enabled": False}, "replicas": 3}, "networkPolicy": {"enabled": False}},
    "everything": {
        "secrets": SECRETS,
        "images": {"registry": "ghcr.io/acme", "tag": "1.2.3", "pullSecrets": ["ghcr"]},
        "monitoring": {"prometheusOperator": True, "serviceMonitor": {"labels": {"release": "kube-prometheus-stack"}},
                       "dashboards": {"annotations": {"grafana_folder": "asyncwebrl"}}},
        "buffer": {"autoscaling": {"enabled": True}},
        "api": {"ingress": {"enabled": True, "className": "nginx", "host": "rl.example.com",
                            "tlsSecretName": "rl-tls"}},
        "models": {"existingClaim": "hf-models"},
        "jobs": {"images": {"sglang": "lmsysorg/sglang:v0.5.4"}, "gpu": GPU},
        "networkPolicy": {"dns": {"extraCIDRs": ["169.254.20.10/32"]},
                          "envfleet": {"allowIPv6": True, "extraBlockedCIDRs": ["203.0.113.0/24", "2001:db8:1::/48"]},
                          "redis": {"extraFrom": [{"namespaceSelector": {"matchLabels": {"name": "ops"}}}]},
                          "inference": {"scrapeFrom": [{"namespaceSelector": {"matchLabels": {"name": "obs"}},
                                                        "podSelector": {"matchLabels": {"app": "prometheus"}}},
                                                       {"ipBlock": {"cidr": "10.9.0.0/16"}}]}},
        "envfleet": {"nodeSelector": {"pool": "browsers"}, "tolerations": [{"key": "browsers", "operator": "Exists"}]},
    },
}
# Blocked for browsers whatever the values say; the first three are the ones that matter most.
FORBIDDEN = ["169.254.169.254", "10.0.0.1", "10.96.0.10", "172.16.0.1", "172.31.255.254", "192.168.1.1",
             "100.64.0.1", "127.0.0.1", "169.254.20.10", "0.0.0.1"]
PUBLIC = ["8.8.8.8", "1.1.1.1", "142.250.74.46", "93.184.215.14"]

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the dashboards make ~1 MB of YAML per render

helm.disable_logging()


@dataclasses.dataclass
class Rendered:
    files: dict[str, str]
    docs: list[dict]

    def kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        found = [d for d in self.kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind} {name}: {len(found)} found"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(d["metadata"]["name"] == name for d in self.kind(kind))

    def workloads(self) -> list[dict]:
        return [d for d in self.docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]

    @property
    def notes(self) -> str:
        return next(v for k, v in self.files.items() if k.endswith("NOTES.txt"))


def render(chart: helm.Chart, values: dict) -> Rendered:
    files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = [d for k, text in sorted(files.items()) if not k.endswith("NOTES.txt")
            for d in yaml.load_all(text, Loader=LOADER) if d]
    return Rendered(files, docs)


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as c:
        yield c


@pytest.fixture(scope="module")
def rendered(chart) -> dict[str, Rendered]:
    return {name: render(chart, values) for name, values in COMBOS.items()}


def container(workload: dict, name: str | None = None) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if name is None or c["name"] == name)


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def secret_values(r: Rendered) -> set[str]:
    out = set(SECRETS.values())
    for s in r.kind("Secret"):
        out |= {base64.b64decode(v).decode() for v in (s.get("data") or {}).values()}
    return {v for v in out if v}


# --- rendering and schema validation ------------------------------------------------------------

def check_crd(doc: dict) -> None:
    """Shape of the Prometheus operator's objects (kubernetes-validate has no CRD schemas)."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    spec = doc["spec"]
    if doc["kind"] == "ServiceMonitor":
        assert set(spec) == {"namespaceSelector", "selector", "endpoints"}
        assert all(set(e) <= {"port", "path", "interval", "scrapeTimeout", "relabelings", "metricRelabelings"}
                       for e in spec["endpoints"])
        # The buffer's and weightsync's per-job "job" label arrives as exported_job: renamed to job_id.
        assert all(any(r.get("sourceLabels") == ["exported_job"] and r.get("targetLabel") == "job_id"
                       for r in e.get("metricRelabelings", [])) for e in spec["endpoints"])
    elif doc["kind"] == "PodMonitor":
        assert set(spec) == {"namespaceSelector", "selector", "podMetricsEndpoints"}
        assert all(set(e) <= {"port", "path", "interval", "relabelings"} for e in spec["podMetricsEndpoints"])
    else:
        assert set(spec) == {"groups"} and spec["groups"]
        for group in spec["groups"]:
            assert set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"]
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule) and isinstance(rule["expr"], str)
                assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations", "keep_firing_for"}
    for endpoint in spec.get("endpoints", []) + spec.get("podMetricsEndpoints", []):
        for relabel in endpoint.get("relabelings", []):
            assert set(relabel) <= {"sourceLabels", "targetLabel", "regex", "replacement", "action"}


def test_every_manifest_validates(rendered):
    seen: set[str] = set()
    for combo, r in rendered.items():
        assert r.docs, combo
        names = set()
        for doc in r.docs:
            meta = doc["metadata"]
            key = (doc["kind"], meta["name"])
            assert key not in names, f"{combo}: {key} rendered twice"
            names.add(key)
            assert k8s_settings.DNS_SUBDOMAIN.match(meta["name"]) and len(meta["name"]) <= 63, (combo, key)
            assert meta["labels"]["app.kubernetes.io/part-of"] == "asyncwebrl", (combo, key)
            assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE, (combo, key)
            if doc["kind"] in CRD_KINDS:
                check_crd(doc)
                continue
            text = json.dumps(doc, sort_keys=True)
            if text in seen:  # the same object in another combination: validated already
                continue
            seen.add(text)
            for version in VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    path = ".".join(str(p) for p in exc.path)
                    pytest.fail(f"{combo}: {doc['kind']} {meta['name']} on {version}: {path}: {exc.message}")


def test_kinds_of_each_combination(rendered):
    kinds = {name: {d["kind"] for d in r.docs} for name, r in rendered.items()}
    base = {"Deployment", "Service", "StatefulSet", "Secret", "PersistentVolumeClaim", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "ConfigMap"}
    assert kinds["default"] == base  # no Prometheus operator offline: monitoring.prometheusOperator auto
    assert kinds["no-monitoring"] == base - {"ConfigMap"}
    assert "StatefulSet" not in kinds["external-redis"]
    assert kinds["existing"] == base - {"Secret", "PersistentVolumeClaim", "HorizontalPodAutoscaler", "NetworkPolicy"}
    assert kinds["everything"] == base | CRD_KINDS | {"Ingress"}
    deployments = {d["metadata"]["name"] for d in rendered["default"].kind("Deployment")}
    assert deployments == {f"{FULL}-{c}" for c in ("envfleet", "buffer", "weightsync", "api")}


@pytest.mark.parametrize("combo", sorted(COMBOS))
@pytest.mark.parametrize("kube_version", ["1.30.0", "1.33.0"])
def test_helm_lint_is_clean(combo, kube_version):
    report = helm.lint(CHART, COMBOS[combo], strict=True, namespace=NAMESPACE, kube_version=kube_version)
    assert report["errors"] == []
    # Info only (Chart.yaml: "icon is recommended"); no warning, no error.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


# --- values.schema.json -----------------------------------------------------------------------

BAD_VALUES = [
    ({"envfleet": {"replicas": -1}}, "/envfleet/replicas", "minimum: got -1, want 0"),
    ({"buffer": {"replicas": "two"}}, "/buffer/replicas", "got string, want integer"),
    ({"common": {"logLevel": "VERBOSE"}}, "/common/logLevel", "must be one of"),
    ({"images": {"pullPolicy": "Sometimes"}}, "/images/pullPolicy", "must be one of"),
    ({"envfleet": {"browser": 2}}, "/envfleet", "additional properties 'browser' not allowed"),
    ({"envfleet": {"taskSources": ["miniwob", "bing"]}}, "/envfleet/taskSources/1", "must be one of"),
    ({"envfleet": {"autoscaling": {"maxReplicas": 0}}}, "/envfleet/autoscaling/maxReplicas", "minimum"),
    ({"envfleet": {"contextsPerBrowser": 2.5}}, "/envfleet/contextsPerBrowser", "want integer"),
    ({"redis": {"external": {"url": "redis://:hunter2@redis:6379/0"}}}, "/redis/external/url", "does not match"),
    ({"networkPolicy": {"envfleet": {"extraBlockedCIDRs": ["10.0.0.1"]}}},
     "/networkPolicy/envfleet/extraBlockedCIDRs/0", "does not match"),
    ({"jobs": {"gpu": {"tolerations": [{"key": "nvidia.com/gpu", "effect": "NoRun"}]}}},
     "/jobs/gpu/tolerations/0/effect", "must be one of"),
    ({"jobs": {"gpu": {"tolerations": [{"effect": "NoSchedule"}]}}}, "/jobs/gpu/tolerations/0", "missing property 'key'"),
    ({"jobs": {"inference": {"resources": {"cpu": "4", "memory": "lots"}}}},
     "/jobs/inference/resources/memory", "does not match"),
    ({"monitoring": {"prometheusOperator": "maybe"}}, "/monitoring/prometheusOperator", "must be one of"),
    ({"monitoring": {"enabled": "yes"}}, "/monitoring/enabled", "want boolean"),
    ({"checkpoints": {"mountPath": "runs"}}, "/checkpoints/mountPath", "does not match"),
    ({"checkpoints": {"accessModes": ["ReadWriteSometimes"]}}, "/checkpoints/accessModes/0", "must be one of"),
    ({"secrets": {"redisPassword": 'has"quote'}}, "/secrets/redisPassword", "does not match"),
    ({"api": {"service": {"port": 70000}}}, "/api/service/port", "maximum"),
    ({"networkPolicy": {"inference": {"scrapeFrom": [{"namespace": "monitoring"}]}}},
     "/networkPolicy/inference/scrapeFrom/0", "additional properties 'namespace' not allowed"),
    ({"networkPolicy": {"inference": {"scrapeFrom": [{"ipBlock": {"cidr": "10.0.0.1"}}]}}},
     "/networkPolicy/inference/scrapeFrom/0/ipBlock/cidr", "does not match"),
    ({"surprise": True}, "''", "additional properties 'surprise' not allowed"),
    # NetworkPolicyPeer-shaped peers only.
    ({"networkPolicy": {"redis": {"extraFrom": [{"namespace": "ops"}]}}},
     "/networkPolicy/redis/extraFrom/0", "additional properties 'namespace' not allowed"),
    ({"networkPolicy": {"redis": {"extraFrom": ["10.0.0.0/8"]}}}, "/networkPolicy/redis/extraFrom/0", "want object"),
    ({"networkPolicy": {"redis": {"extraFrom": [{"podSelector": {"matchLabel": {"a": "b"}}}]}}},
     "/networkPolicy/redis/extraFrom/0/podSelector", "additional properties 'matchLabel' not allowed"),
    # Misspelt Kubernetes keys.
    ({"envfleet": {"tolerations": [{"key": "a", "efect": "NoSchedule"}]}},
     "/envfleet/tolerations/0", "additional properties 'efect' not allowed"),
    ({"redis": {"tolerations": [{"key": "a", "operator": "Exist"}]}}, "/redis/tolerations/0/operator", "must be one of"),
    ({"api": {"affinity": {"nodeAfinity": {}}}}, "/api/affinity", "additional properties 'nodeAfinity' not allowed"),
    ({"buffer": {"affinity": {"podAntiAffinity": {"requiredDuringScheduling": []}}}},
     "/buffer/affinity/podAntiAffinity", "additional properties 'requiredDuringScheduling' not allowed"),
    ({"buffer": {"resources": {"requests": {"memroy": "1Gi"}}}},
     "/buffer/resources/requests", "additional properties 'memroy' not allowed"),
    ({"weightsync": {"resources": {"limits": {"cpus": "1"}}}},
     "/weightsync/resources/limits", "additional properties 'cpus' not allowed"),
    ({"envfleet": {"resources": {"limit": {"memory": "1Gi"}}}},
     "/envfleet/resources", "additional properties 'limit' not allowed"),
    # Bounded: past it, rendering as an int64 would overflow (and past 2^53 a float loses digits).
    ({"buffer": {"blobBudgetBytes": 9223372036854775808}}, "/buffer/blobBudgetBytes", "maximum"),
    ({"buffer": {"blobBudgetBytes": 1099511627777}}, "/buffer/blobBudgetBytes", "maximum"),
    ({"images": {"registry": "https://ghcr.io/acme"}}, "/images/registry", "does not match"),
    ({"images": {"registry": "oci://ghcr.io"}}, "/images/registry", "does not match"),
    # The external Redis's CIDRs are opened to every Redis client: never everything or the metadata range.
    ({"redis": {"external": {"egressCIDRs": ["0.0.0.0/0"]}}}, "/redis/external/egressCIDRs/0", "does not match"),
    ({"redis": {"external": {"egressCIDRs": ["10.0.0.0/4"]}}}, "/redis/external/egressCIDRs/0", "does not match"),
    ({"redis": {"external": {"egressCIDRs": ["169.254.169.254/32"]}}}, "/redis/external/egressCIDRs/0", "'not' failed"),
    ({"redis": {"external": {"egressCIDRs": ["169.254.0.0/16"]}}}, "/redis/external/egressCIDRs/0", "'not' failed"),
    ({"redis": {"external": {"egressCIDRs": ["169.0.0.0/8"]}}}, "/redis/external/egressCIDRs/0", "'not' failed"),
    ({"redis": {"external": {"egressCIDRs": ["::/0"]}}}, "/redis/external/egressCIDRs/0", "does not match"),
    ({"checkpoints": {"accessModes": ["ReadWriteOnce"]}}, "/checkpoints/accessModes", "no items match contains"),
    ({"secrets": {"apiToken": "x"}}, "/secrets/apiToken", "minLength: got 1, want 16"),
    ({"secrets": {"authToken": "fifteen-chars-x"}}, "/secrets/authToken", "minLength: got 15, want 16"),
    ({"secrets": {"engineApiKey": "short"}}, "/secrets/engineApiKey", "minLength: got 5, want 16"),
    ({"redis": {"pdb": {"maxUnavailable": 2}}}, "/redis/pdb/maxUnavailable", "maximum"),
    ({"networkPolicy": {"defaultDeny": {"scope": "cluster"}}}, "/networkPolicy/defaultDeny/scope", "must be one of"),
    ({"networkPolicy": {"envfleet": {"siteCIDRs": ["8.8.8.8"]}}}, "/networkPolicy/envfleet/siteCIDRs/0",
     "does not match"),
    ({"networkPolicy": {"envfleet": {"sitePorts": []}}}, "/networkPolicy/envfleet/sitePorts", "minItems"),
    ({"networkPolicy": {"jobs": {"judgeTo": [{"cidr": "203.0.113.10/32"}]}}},
     "/networkPolicy/jobs/judgeTo/0", "additional properties 'cidr' not allowed"),
]


@pytest.mark.parametrize("values,field,message", BAD_VALUES, ids=[b[1] for b in BAD_VALUES])
def test_schema_rejects_bad_values(chart, values, field, message):
    with pytest.raises(helm.HelmValuesError) as exc:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    text = str(exc.value)
    assert f"at '{field.strip(chr(39))}'" in text and message in text, text


def test_lint_reports_bad_values_and_template_checks(chart):
    report = helm.lint(CHART, {"envfleet": {"replicas": -3}}, namespace=NAMESPACE)
    assert any("/envfleet/replicas" in e for e in report["errors"]), report
    # What a schema cannot compare, the templates refuse with a message naming the values.
    with pytest.raises(helm.HelmRenderError, match="envfleet.autoscaling: minReplicas must not exceed maxReplicas"):
        chart.render({"envfleet": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}, name=RELEASE)


def test_values_are_documented():
    """Every value of values.yaml has a comment above it, or above the object it is part of."""
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    previous = ""
    for n, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = re.match(r"^( *)([A-Za-z][\w./-]*):(.*)$", line)
        if m:
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            documented = previous.lstrip().startswith("#") or (bool(stack) and stack[-1][1])
            if m.group(3).strip():  # a value on the line (scalar, flow map or list): a leaf
                assert documented, f"values.yaml:{n}: {line.strip()!r} has no comment"
            stack.append((indent, documented))
        previous = line


# --- network policies -----------------------------------------------------------------------------

def egress_allows(policy: dict, ip: str, port: int) -> bool:
    """Whether one of the policy's ipBlock egress rules lets ``ip:port`` through."""
    addr = ipaddress.ip_address(ip)
    for rule in policy["spec"].get("egress", []):
        ports = [p["port"] for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if not block:
                continue
            net = ipaddress.ip_network(block["cidr"])
            if addr.version == net.version and addr in net and \
                    not any(addr in ipaddress.ip_network(e) for e in block.get("except", [])):
                return True
    return False


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels, matchExpressions In/NotIn/Exists/DoesNotExist) selects ``labels``."""
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        value, present = labels.get(e["key"]), e["key"] in labels
        ok = {"In": present and value in e.get("values", []), "NotIn": not present or value not in e.get("values", []),
              "Exists": present, "DoesNotExist": not present}[e["operator"]]
        if not ok:
            return False
    return True


def job_pods(settings: k8s_settings.K8sSettings) -> dict[str, dict]:
    """Pod templates of every workload the api's launcher creates (RL, warm-start and evaluation phases,
    SGLang and embedded engines), by "<role>" or "inference-<engine>", from asyncwebrl.api.k8s_manifests."""
    sglang = Job("sglang-0a1b2c", JobSpec.model_validate({
        "name": "sglang", "model": {"path": "qwen"}, "algorithm": {"warm_start_steps": 2},
        "resources": {"engine_kind": "sglang", "engine_gpus": 1, "trainer_gpus": 1, "max_gateways": 2}}),
        "pending", 0, 0)
    embedded = Job("cpu-0a1b2c", JobSpec.model_validate({"name": "cpu", "resources": {"device": "cpu"}}),
                   "pending", 0, 0)
    model = pathlib.Path("/models/qwen")
    out: dict[str, dict] = {}
    for obj in [*k8s_manifests.manifests(sglang, settings, model=model),
                *k8s_manifests.manifests(sglang, settings, phase="warm_start", model=model),
                *k8s_manifests.manifests(embedded, settings),
                *k8s_manifests.eval_manifests(embedded, settings, 1, "cpu-0a1b2c-ev1", 3, model, 2, 2)]:
        if "template" not in obj["spec"]:
            continue  # the gateway's HorizontalPodAutoscaler
        labels = obj["spec"]["template"]["metadata"]["labels"]
        role = labels[k8s_manifests.ROLE_LABEL]
        out[f"{role}-{labels[k8s_manifests.ENGINE_LABEL]}" if role == "inference" else role] = obj["spec"]["template"]
    assert set(out) == {"inference-sglang", "inference-embedded", "rollout", "trainer", "warm-rollout",
                        "warm-trainer", "eval-inference", "eval-rollout"}
    return out


def launcher_settings(r: Rendered) -> k8s_settings.K8sSettings:
    """The api launcher's settings, from the api Deployment's environment as the chart renders it."""
    environ = environ_of(container(r.get("Deployment", f"{FULL}-api")))
    settings = k8s_settings.settings_from_config(parse_config(ApiConfig, [], environ), NAMESPACE)
    # Without jobs.images.sglang the launcher refuses SGLang jobs; their pods' labels are what matters here.
    return settings if settings.image_sglang else dataclasses.replace(settings, image_sglang="lmsysorg/sglang:v0")


def all_pods(r: Rendered) -> dict[str, dict]:
    """Pod templates of the chart's workloads (by name) and of the launcher's job pods (by role)."""
    pods = {w["metadata"]["name"]: w["spec"]["template"] for w in r.workloads()}
    return {**pods, **job_pods(launcher_settings(r))}


def pod_ports(template: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}


def _peer_matches(peer: dict, labels: dict[str, str]) -> bool:
    """A peer matching a pod of this namespace: a podSelector alone (namespaceSelector peers name other
    namespaces in this chart; ipBlocks are cluster-external addresses)."""
    return set(peer) == {"podSelector"} and selects(peer["podSelector"], labels)


def _rules_allow(policies: list[dict], direction: str, labels: dict[str, str], peer: dict[str, str],
                 port: int) -> bool:
    """Whether the policies selecting ``labels`` with ``direction`` (Ingress/Egress) allow ``peer`` on
    ``port``; a pod no such policy selects is not isolated in that direction."""
    mine = [p["spec"] for p in policies if direction in p["spec"]["policyTypes"]
            and selects(p["spec"]["podSelector"], labels)]
    if not mine:
        return True
    key, side = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for spec in mine:
        for rule in spec.get(key, []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            if side not in rule or any(_peer_matches(p, peer) for p in rule[side]):
                return True
    return False


def connects(r: Rendered, src: str, dst: str, port: int | str) -> bool:
    """Whether the NetworkPolicies let pod ``src`` open a connection to pod ``dst`` on ``port`` (a number, or
    the name of one of dst's container ports); pods by all_pods name."""
    pods = all_pods(r)
    src_labels, dst_labels = pods[src]["metadata"]["labels"], pods[dst]["metadata"]["labels"]
    if isinstance(port, str):
        port = pod_ports(pods[dst])[port]
    policies = r.kind("NetworkPolicy")
    return (_rules_allow(policies, "Egress", src_labels, dst_labels, port)
            and _rules_allow(policies, "Ingress", dst_labels, src_labels, port))


NP_COMBOS = ("default", "external-redis", "no-monitoring", "gpu-sglang", "everything")


def test_default_deny_and_a_policy_for_every_pod(rendered):
    """A default deny (ingress and egress, no rule) selects every pod the chart and the api's launcher make,
    and each of those pods is selected by at least one other policy: its allowed edges."""
    for combo in NP_COMBOS:
        r = rendered[combo]
        deny = r.get("NetworkPolicy", f"{FULL}-default-deny")["spec"]
        assert set(deny["policyTypes"]) == {"Ingress", "Egress"}, combo
        assert "ingress" not in deny and "egress" not in deny, combo
        pods = all_pods(r)
        others = [p for p in r.kind("NetworkPolicy") if p["metadata"]["name"] != f"{FULL}-default-deny"]
        for name, template in pods.items():
            labels = template["metadata"]["labels"]
            assert selects(deny["podSelector"], labels), (combo, name)
            mine = [p["metadata"]["name"] for p in others if selects(p["spec"]["podSelector"], labels)]
            assert mine, f"{combo}: pod {name} has no NetworkPolicy besides the default deny"
        # Each component's policy selects its own pods and nothing else of ours.
        for policy in others:
            chosen = {n for n, t in pods.items() if selects(policy["spec"]["podSelector"], t["metadata"]["labels"])}
            assert chosen, (combo, policy["metadata"]["name"])
    # The namespace scope: every pod of the namespace.
    with helm.Chart.load(CHART) as chart:
        wide = render(chart, {"networkPolicy": {"defaultDeny": {"scope": "namespace"}}})
    assert wide.get("NetworkPolicy", f"{FULL}-default-deny")["spec"]["podSelector"] == {}
    assert not rendered["existing"].kind("NetworkPolicy")  # networkPolicy.enabled false


# Who may open a connection to whom (the pods' own ports by name); every other pair of pods is refused.
EDGES = {
    (f"{FULL}-api", f"{FULL}-redis", "redis"), (f"{FULL}-api", f"{FULL}-buffer", "grpc"),
    (f"{FULL}-api", f"{FULL}-envfleet", "grpc"), (f"{FULL}-api", f"{FULL}-weightsync", "grpc"),
    (f"{FULL}-buffer", f"{FULL}-redis", "redis"), (f"{FULL}-weightsync", f"{FULL}-redis", "redis"),
    (f"{FULL}-envfleet", f"{FULL}-buffer", "grpc"),
    (f"{FULL}-weightsync", "inference-sglang", "http"), (f"{FULL}-weightsync", "inference-embedded", "http"),
    (f"{FULL}-weightsync", "eval-inference", "http"),
    *{(g, t, p) for g in ("rollout", "warm-rollout", "eval-rollout")
      for t, p in ((f"{FULL}-envfleet", "grpc"), (f"{FULL}-buffer", "grpc"), (f"{FULL}-redis", "redis"))},
    *{(g, e, "http") for g in ("rollout", "eval-rollout")
      for e in ("inference-sglang", "inference-embedded", "eval-inference")},
    *{(t, d, p) for t in ("trainer", "warm-trainer")
      for d, p in ((f"{FULL}-buffer", "grpc"), (f"{FULL}-weightsync", "grpc"), (f"{FULL}-redis", "redis"))},
    *{(e, f"{FULL}-redis", "redis") for e in ("inference-sglang", "inference-embedded", "eval-inference")},
}


def test_pod_to_pod_edges_are_the_designed_ones(rendered):
    """Evaluating the policies (default deny plus each component's) over every pair of pods and every
    port the destination listens on gives exactly EDGES: no browser reaches Redis or the api, no trainer
    an engine, the warm-start gateway (no model) no engine, Redis nothing."""
    for combo in ("default", "gpu-sglang"):
        r = rendered[combo]
        pods = all_pods(r)
        found = {(s, d, name) for s in pods for d in pods if s != d for name in pod_ports(pods[d])
                 if connects(r, s, d, name) and name not in ("metrics",)}
        # gRPC ports of the api, trainers and gateways serve health only (to the kubelet): no pod reaches them.
        assert found == EDGES, (combo, sorted(found ^ EDGES))
    # An external Redis: no pod of ours for it; its clients reach it at redis.external.egressCIDRs only.
    r = rendered["external-redis"]
    for name in ("api", "buffer", "weightsync"):
        policy = r.get("NetworkPolicy", f"{FULL}-{name}")
        assert egress_allows(policy, "10.40.0.7", 6380) and not egress_allows(policy, "10.40.0.7", 6379), name
        assert not egress_allows(policy, "10.40.0.8", 6380), name
    assert not egress_allows(r.get("NetworkPolicy", f"{FULL}-envfleet"), "10.40.0.7", 6380)


def test_metrics_ports_take_the_configured_scrapers(rendered):
    """Metrics ports of the services, the Redis exporter and the jobs' trainers and gateways take
    networkPolicy.metrics.scrapeFrom (default: Prometheus in namespace monitoring) and no one else."""
    scrapers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    r = rendered["default"]
    expected = {"api": 9470, "buffer": 9462, "weightsync": 9465, "envfleet": 9461, "redis": 9121,
                "job-rollout": k8s_manifests.PORTS["rollout"][1], "job-trainer": k8s_manifests.PORTS["trainer"][1]}
    for name, port in expected.items():
        rules = [rule for rule in r.get("NetworkPolicy", f"{FULL}-{name}")["spec"]["ingress"]
                 if {p["port"] for p in rule["ports"]} == {port}]
        assert rules == [{"from": scrapers, "ports": [{"port": port, "protocol": "TCP"}]}], name
    # No scrapers: no metrics rule anywhere (the jobs' pods then take no ingress at all).
    with helm.Chart.load(CHART) as chart:
        bare = render(chart, {"networkPolicy": {"metrics": {"scrapeFrom": []}}})
    for name, port in expected.items():
        ingress = bare.get("NetworkPolicy", f"{FULL}-{name}")["spec"].get("ingress", [])
        assert all(port not in {p["port"] for p in rule["ports"]} for rule in ingress), name


def test_api_policy_rest_and_kube_api(rendered):
    """REST from anyone by default, from networkPolicy.api.restFrom when given; the API server at
    networkPolicy.kubeAPI (never 169.254.0.0/16), for the api and (SGLang discovery) weightsync only."""
    r = rendered["default"]
    api = r.get("NetworkPolicy", f"{FULL}-api")
    assert api["spec"]["ingress"][0] == {"ports": [{"port": 8080, "protocol": "TCP"}]}
    for name in ("api", "weightsync"):
        policy = r.get("NetworkPolicy", f"{FULL}-{name}")
        assert egress_allows(policy, "10.96.0.1", 443) and egress_allows(policy, "172.18.0.2", 6443), name
        assert not egress_allows(policy, "169.254.169.254", 443), name
        assert not egress_allows(policy, "10.96.0.1", 80), name
    for name in ("buffer", "envfleet", "inference", "job-rollout", "job-trainer", "redis"):
        assert not egress_allows(r.get("NetworkPolicy", f"{FULL}-{name}"), "10.96.0.1", 443), name
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    with helm.Chart.load(CHART) as chart:
        narrowed = render(chart, {"networkPolicy": {"api": {"restFrom": peers},
                                                    "kubeAPI": {"cidrs": ["172.18.0.2/32"], "ports": [6443]}},
                                  "weightsync": {"discoverSGLang": False}})
    api = narrowed.get("NetworkPolicy", f"{FULL}-api")
    assert api["spec"]["ingress"][0] == {"from": peers, "ports": [{"port": 8080, "protocol": "TCP"}]}
    assert egress_allows(api, "172.18.0.2", 6443) and not egress_allows(api, "10.96.0.1", 443)
    assert not egress_allows(narrowed.get("NetworkPolicy", f"{FULL}-weightsync"), "172.18.0.2", 6443)


def test_envfleet_egress_is_dns_buffer_and_task_sites(rendered):
    for combo in ("default", "external-redis", "gpu-sglang", "everything"):
        policy = rendered[combo].get("NetworkPolicy", f"{FULL}-envfleet")
        spec = policy["spec"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "envfleet"
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}  # default-deny beyond the rules
        for ip in FORBIDDEN:
            for port in (80, 443, 8080, 6379, 6380):
                assert not egress_allows(policy, ip, port), (combo, ip, port)
        for ip in PUBLIC:
            assert egress_allows(policy, ip, 443) and egress_allows(policy, ip, 80), (combo, ip)
            assert not egress_allows(policy, ip, 8080) and not egress_allows(policy, ip, 6379), (combo, ip)
        public = [p["ipBlock"] for r in spec["egress"] for p in r["to"]
                  if "ipBlock" in p and p["ipBlock"]["cidr"] == "0.0.0.0/0"]
        assert len(public) == 1
        assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10",
                "127.0.0.0/8"} <= set(public[0]["except"])
        # Every peer: the cluster DNS on 53, the buffer's gRPC, the task sites on 80 and 443. No Redis.
        for rule in spec["egress"]:
            ports = {p["port"] for p in rule.get("ports", [])}
            for peer in rule["to"]:
                if "ipBlock" in peer and peer["ipBlock"]["cidr"] in ("0.0.0.0/0", "::/0"):
                    assert ports == {80, 443}
                elif "namespaceSelector" in peer:
                    assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"} and ports == {53}
                elif "podSelector" in peer:
                    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "buffer"
                    assert ports == {50062}
                else:
                    assert ports == {53}, (combo, rule)  # networkPolicy.dns.extraCIDRs
    everything = rendered["everything"].get("NetworkPolicy", f"{FULL}-envfleet")
    assert egress_allows(everything, "169.254.20.10", 53)  # NodeLocal DNS, listed, on 53 only
    assert not egress_allows(everything, "203.0.113.9", 443)  # extraBlockedCIDRs
    for ip in ("fd00::1", "fe80::1", "::1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2001:db8:1::5"):
        assert not egress_allows(everything, ip, 443), ip
    assert egress_allows(everything, "2606:4700:4700::1111", 443)
    assert not egress_allows(rendered["default"].get("NetworkPolicy", f"{FULL}-envfleet"), "2606:4700:4700::1111", 443)
    # An external Redis on a private address: not for the browsers.
    assert not egress_allows(rendered["external-redis"].get("NetworkPolicy", f"{FULL}-envfleet"), "10.40.0.7", 6380)
    # Narrower task sites: each gets the blocked ranges inside it excepted; one inside a blocked range is refused.
    with helm.Chart.load(CHART) as chart:
        sites = render(chart, {"networkPolicy": {"envfleet": {"siteCIDRs": ["8.0.0.0/5", "93.184.0.0/16"],
                                                              "sitePorts": [443]}}})
        with pytest.raises(helm.HelmRenderError, match="networkPolicy.envfleet.siteCIDRs: 10.1.0.0/16 is inside "
                                                       "the blocked range 10.0.0.0/8"):
            chart.render({"networkPolicy": {"envfleet": {"siteCIDRs": ["10.1.0.0/16"]}}}, name=RELEASE)
    policy = sites.get("NetworkPolicy", f"{FULL}-envfleet")
    blocks = [p["ipBlock"] for r in policy["spec"]["egress"] for p in r["to"] if "ipBlock" in p]
    assert blocks == [{"cidr": "8.0.0.0/5", "except": ["10.0.0.0/8"]}, {"cidr": "93.184.0.0/16"}]
    assert egress_allows(policy, "8.8.8.8", 443) and egress_allows(policy, "93.184.215.14", 443)
    assert not egress_allows(policy, "10.0.0.1", 443) and not egress_allows(policy, "1.1.1.1", 443)
    assert not egress_allows(policy, "8.8.8.8", 80)
    # Ingress: EnvService from the api and the jobs' gateways only; metrics from the scrapers.
    ingress = rendered["default"].get("NetworkPolicy", f"{FULL}-envfleet")["spec"]["ingress"]
    assert ingress[0]["ports"] == [{"port": 50061, "protocol": "TCP"}]
    assert all(set(p) == {"podSelector"} for p in ingress[0]["from"])


def test_redis_reachable_only_from_its_clients(rendered):
    r = rendered["default"]
    policy = r.get("NetworkPolicy", f"{FULL}-redis")["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    assert policy["policyTypes"] == ["Ingress"]  # its egress: the default deny's, none
    redis_rule, metrics_rule = policy["ingress"]
    assert redis_rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    assert metrics_rule["ports"] == [{"port": 9121, "protocol": "TCP"}]  # the exporter, not Redis
    assert all(set(p) == {"podSelector"} for p in redis_rule["from"])  # this namespace's pods, no ipBlock
    # The peers select the api, buffer, weightsync and every job pod, never envfleet.
    pods = all_pods(r)
    peers = {n for n, t in pods.items() for p in redis_rule["from"] if selects(p["podSelector"], t["metadata"]["labels"])}
    assert peers == {f"{FULL}-api", f"{FULL}-buffer", f"{FULL}-weightsync", *job_pods(launcher_settings(r))}
    # Peers from the values are added to those; an external Redis gets no policy of ours.
    extra = rendered["everything"].get("NetworkPolicy", f"{FULL}-redis")["spec"]["ingress"][0]["from"]
    assert extra[2:] == COMBOS["everything"]["networkPolicy"]["redis"]["extraFrom"]
    assert not rendered["external-redis"].has("NetworkPolicy", f"{FULL}-redis")


def test_inference_reachable_only_from_gateways_and_weightsync(rendered):
    """The jobs' inference pods (SGLang or embedded engine, RL or evaluation) take connections on their HTTP
    port from the jobs' generating gateways, weightsync (the one publisher: not the trainers), and the
    Prometheus of networkPolicy.inference.scrapeFrom."""
    for combo in ("default", "external-redis", "gpu-sglang", "everything"):
        r = rendered[combo]
        pods = {n: t["metadata"]["labels"] for n, t in all_pods(r).items()}
        # Both kinds are of component inference, as weightsync's selector and the PodMonitor's relabelling expect.
        for name in ("inference-sglang", "inference-embedded", "eval-inference"):
            assert pods[name][k8s_manifests.COMPONENT] == "inference"
        spec = r.get("NetworkPolicy", f"{FULL}-inference")["spec"]
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
        # It selects the launcher's inference pods, all kinds, and no other pod (job or chart).
        selected = {n for n, labels in pods.items() if selects(spec["podSelector"], labels)}
        assert selected == {"inference-sglang", "inference-embedded", "eval-inference"}, combo
        (rule,) = spec["ingress"]
        assert rule["ports"] == [{"port": k8s_manifests.ENGINE_PORT, "protocol": "TCP"}]
        # The peers: pod selectors of this namespace, which match exactly the generating gateways and
        # weightsync; then the scrapers of the values.
        own = [p for p in rule["from"] if set(p) == {"podSelector"}]
        rest = [p for p in rule["from"] if set(p) != {"podSelector"}]
        assert rule["from"] == own + rest and len(own) == 2, combo
        peers = {n for p in own for n, labels in pods.items() if selects(p["podSelector"], labels)}
        assert peers == {"rollout", "eval-rollout", f"{FULL}-weightsync"}, combo
        scrapers = (COMBOS[combo].get("networkPolicy", {}).get("inference", {}).get("scrapeFrom")
                    or [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}])
        assert rest == scrapers, combo
    # The launcher's inference containers (valid manifests) listen on that port, named http, which the
    # PodMonitor scrapes for /metrics.
    settings = launcher_settings(rendered["gpu-sglang"])
    job = Job("sglang-0a1b2c", JobSpec.model_validate(
        {"name": "sglang", "model": {"path": "qwen"}, "resources": {"engine_kind": "sglang", "engine_gpus": 1}}),
        "pending", 0, 0)
    inference = k8s_manifests.manifests(job, settings, model=pathlib.Path("/models/qwen"))[0]
    for version in VERSIONS:
        kubernetes_validate.validate(inference, version, strict=True)
    ports = inference["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert ports == [{"name": "http", "containerPort": k8s_manifests.ENGINE_PORT}]
    (pm,) = rendered["everything"].kind("PodMonitor")
    assert "http" in {e["port"] for e in pm["spec"]["podMetricsEndpoints"]}
    # No scrapers: only the two peers. networkPolicy.enabled false: no policy.
    with helm.Chart.load(CHART) as chart:
        bare = render(chart, {"networkPolicy": {"inference": {"scrapeFrom": []}}})
    (rule,) = bare.get("NetworkPolicy", f"{FULL}-inference")["spec"]["ingress"]
    assert len(rule["from"]) == 2 and all(set(p) == {"podSelector"} for p in rule["from"])
    assert not rendered["existing"].has("NetworkPolicy", f"{FULL}-inference")


def test_gateways_reach_a_judge_only_where_configured(rendered):
    policy = rendered["default"].get("NetworkPolicy", f"{FULL}-job-rollout")
    assert not egress_allows(policy, "203.0.113.10", 443)
    with helm.Chart.load(CHART) as chart:
        judged = render(chart, {"networkPolicy": {"jobs": {"judgeTo": [{"ipBlock": {"cidr": "203.0.113.10/32"}}],
                                                           "judgePorts": [8443]}}})
    policy = judged.get("NetworkPolicy", f"{FULL}-job-rollout")
    assert egress_allows(policy, "203.0.113.10", 8443) and not egress_allows(policy, "203.0.113.10", 443)
    assert not egress_allows(judged.get("NetworkPolicy", f"{FULL}-job-trainer"), "203.0.113.10", 8443)


# --- secrets -------------------------------------------------------------------------------------

def test_no_secret_value_inline(rendered):
    for combo, r in rendered.items():
        secrets = secret_values(r)
        assert combo == "existing" or len(secrets) >= 3, combo
        for doc in r.docs:
            if doc["kind"] == "Secret":
                continue
            text = json.dumps(doc)
            for value in secrets:
                assert value not in text and base64.b64encode(value.encode()).decode() not in text, \
                    f"{combo}: a secret value is inline in {doc['kind']} {doc['metadata']['name']}"
        for w in r.workloads():
            for c in w["spec"]["template"]["spec"]["containers"]:
                for e in c.get("env", []):
                    if e["name"] in SECRET_ENV:
                        ref = e["valueFrom"]["secretKeyRef"]
                        assert "value" not in e and ref["name"] == (
                            "rl-tokens" if combo == "existing" else FULL), (combo, e)
                        assert ref["key"] in ("api-token", "auth-token", "redis-password", "engine-api-key")
    # The Secret holds what the values gave; what they did not give is generated.
    secret = rendered["everything"].get("Secret", FULL)["data"]
    assert {k: base64.b64decode(v).decode() for k, v in secret.items()} == {
        "api-token": SECRETS["apiToken"], "auth-token": SECRETS["authToken"],
        "redis-password": SECRETS["redisPassword"], "engine-api-key": SECRETS["engineApiKey"]}
    generated = {k: base64.b64decode(v).decode() for k, v in rendered["default"].get("Secret", FULL)["data"].items()}
    assert all(len(v) == 40 and v.isalnum() for v in generated.values()), generated
    assert base64.b64decode(rendered["external-redis"].get("Secret", FULL)["data"]["redis-password"]) == b""
    assert not rendered["existing"].kind("Secret")
    env = env_of(container(rendered["existing"].get("Deployment", f"{FULL}-api")))
    assert env["ASYNCWEBRL_K8S_SECRET"]["value"] == "rl-tokens"


# --- Redis --------------------------------------------------------------------------------------

def test_redis_statefulset_runs_aof_noeviction(rendered):
    sts = rendered["default"].get("StatefulSet", f"{FULL}-redis")
    redis = container(sts, "redis")
    script = " ".join(redis["command"] + redis["args"])
    for flag in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction", "--maxmemory 4gb",
                 "--dir /data"):
        assert flag in script, flag
    # The password reaches redis-server on stdin from the Secret, never on a command line.
    assert 'requirepass "$REDIS_PASSWORD"' in script and "--requirepass" not in script
    assert env_of(redis)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "redis-password"
    assert "redis-cli" in " ".join(redis["readinessProbe"]["exec"]["command"])
    assert env_of(redis)["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"]["key"] == "redis-password"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert {"name": "data", "mountPath": "/data"} in redis["volumeMounts"]
    assert sts["spec"]["serviceName"] == f"{FULL}-redis-headless"
    assert rendered["default"].get("Service", f"{FULL}-redis-headless")["spec"]["clusterIP"] == "None"
    exporter = container(sts, "metrics")
    assert env_of(exporter)["REDIS_ADDR"]["value"] == "redis://127.0.0.1:6379"


def test_redis_command_runs_as_rendered(rendered, tmp_path):
    """The StatefulSet's script, run by a real redis-server (port and data directory moved here)."""
    redis = container(rendered["default"].get("StatefulSet", f"{FULL}-redis"), "redis")
    port = free_port()
    script = redis["args"][0].replace("--port 6379", f"--port {port} --bind 127.0.0.1") \
        .replace("--dir /data", f"--dir {tmp_path}")
    password = "pw-with:colon$and#hash"
    proc = subprocess.Popen([*redis["command"], script], env={"PATH": "/usr/bin:/bin", "REDIS_PASSWORD": password},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=10, proc=proc)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(100).startswith(b"-NOAUTH")  # no password, no service
        client = redis_py.Redis(port=port, password=password, decode_responses=True)
        for key, value in (("appendonly", "yes"), ("appendfsync", "everysec"),
                           ("maxmemory-policy", "noeviction"), ("maxmemory", str(4 * 1024**3))):
            assert client.config_get(key) == {key: value}
        client.set("k", "v")
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0  # SIGTERM: a clean shutdown (final fsync), as in the pod
    assert (tmp_path / "appendonlydir").is_dir() or list(tmp_path.glob("appendonly*"))


def test_external_redis_replaces_the_statefulset(rendered):
    r = rendered["external-redis"]
    assert not r.kind("StatefulSet") and not r.has("Service", f"{FULL}-redis")
    for name in ("buffer", "weightsync", "api"):
        env = env_of(container(r.get("Deployment", f"{FULL}-{name}")))
        assert env["ASYNCWEBRL_REDIS_URL"]["value"] == EXTERNAL_URL, name
        assert "secretKeyRef" in env["ASYNCWEBRL_REDIS_PASSWORD"]["valueFrom"]
    # envfleet has no Redis: its screenshots go to the buffer.
    for combo, rr in rendered.items():
        env = env_of(container(rr.get("Deployment", f"{FULL}-envfleet")))
        assert not {"ASYNCWEBRL_REDIS_URL", "ASYNCWEBRL_REDIS_PASSWORD", "ASYNCWEBRL_KEY_PREFIX"} & set(env), combo
        assert env["ASYNCWEBRL_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth-token", combo
    default_url = env_of(container(rendered["default"].get("Deployment", f"{FULL}-buffer")))["ASYNCWEBRL_REDIS_URL"]
    assert default_url["value"] == f"redis://{FULL}-redis.{NAMESPACE}.svc:6379/0"
    assert "egressCIDRs" not in r.notes and "redis.external.egressCIDRs" not in r.notes  # CIDRs were given


# --- probes, security, placement -------------------------------------------------------------------

def test_probes_are_grpc_health(rendered):
    for combo, r in rendered.items():
        for name, port in GRPC_PORTS.items():
            c = container(r.get("Deployment", f"{FULL}-{name}"))
            assert {p["name"]: p["containerPort"] for p in c["ports"]}["grpc"] == port
            for probe in ("startupProbe", "livenessProbe"):
                assert c[probe]["grpc"] == {"port": port}, (combo, name, probe)
            # Readiness is "can take work" (browsers up, Redis reachable), which /readyz answers;
            # grpc.health.v1 only turns NOT_SERVING at shutdown.
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
            assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 60


def test_pods_run_non_root_read_only(rendered):
    for combo, r in rendered.items():
        for w in r.workloads():
            pod = w["spec"]["template"]["spec"]
            name = w["metadata"]["name"]
            assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            # Service links would set ASYNCWEBRL_API_PORT=tcp://... from a Service named <release>-api.
            assert pod["enableServiceLinks"] is False, name
            assert pod["automountServiceAccountToken"] is (name in (f"{FULL}-api", f"{FULL}-weightsync")), name
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
                assert sc["capabilities"] == {"drop": ["ALL"]}
                assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], (name, c["name"])
                assert c["resources"]["limits"]["memory"], (name, c["name"])
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                assert "/tmp" in mounts or c["name"] == "metrics", (name, c["name"])
    envfleet = rendered["default"].get("Deployment", f"{FULL}-envfleet")["spec"]["template"]["spec"]
    shm = next(v for v in envfleet["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    placed = rendered["everything"].get("Deployment", f"{FULL}-envfleet")["spec"]["template"]["spec"]
    assert placed["nodeSelector"] == {"pool": "browsers"} and placed["tolerations"][0]["key"] == "browsers"
    # Pull secrets ride on the service accounts, the jobs' one included (the launcher sets no pod field).
    for sa in rendered["everything"].kind("ServiceAccount"):
        assert sa["imagePullSecrets"] == [{"name": "ghcr"}], sa["metadata"]["name"]
    assert container(rendered["everything"].get("Deployment", f"{FULL}-envfleet"))["image"] == \
        "ghcr.io/acme/asyncwebrl/envfleet:1.2.3"


def test_selectors_hpa_pdb_and_services_match(rendered):
    for combo, r in rendered.items():
        pods = {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"] for w in r.workloads()}
        for w in r.workloads():
            sel = w["spec"]["selector"]["matchLabels"]
            assert sel.items() <= pods[w["metadata"]["name"]].items()
        for kind in ("Service", "PodDisruptionBudget"):
            for obj in r.kind(kind):
                sel = obj["spec"]["selector"].get("matchLabels", obj["spec"]["selector"])
                matched = [n for n, labels in pods.items() if sel.items() <= labels.items()]
                assert len(matched) == 1, (combo, kind, obj["metadata"]["name"], matched)
                if kind == "Service":
                    targets = {p["name"] for c in next(w for w in r.workloads() if w["metadata"]["name"] == matched[0])[
                        "spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
                    assert {p["targetPort"] for p in obj["spec"]["ports"]} <= targets
        for hpa in r.kind("HorizontalPodAutoscaler"):
            target = r.get("Deployment", hpa["spec"]["scaleTargetRef"]["name"])
            assert "replicas" not in target["spec"]  # the HPA owns it
            assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        for pdb in r.kind("PodDisruptionBudget"):
            assert pdb["spec"]["maxUnavailable"] >= 1  # a drain can always move a single replica
    assert rendered["default"].has("HorizontalPodAutoscaler", f"{FULL}-envfleet")
    assert not rendered["existing"].kind("HorizontalPodAutoscaler")
    assert rendered["existing"].get("Deployment", f"{FULL}-envfleet")["spec"]["replicas"] == 3
    assert rendered["default"].get("Deployment", f"{FULL}-api")["spec"]["strategy"] == {"type": "Recreate"}


# --- RBAC -------------------------------------------------------------------------------------------

def role_rules(role: dict) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_rbac_is_what_the_launcher_and_discovery_call(rendered):
    source = pathlib.Path(k8s.__file__).read_text()
    # Every Kubernetes call of the launcher goes through KubeClient: self.kube.<verb>(...).
    calls = set(re.findall(r"self\.kube\.(create|get|list|delete|patch|update|watch)\(", source))
    pod_calls = set(re.findall(r'self\.kube\.(\w+)\("Pod"', source))
    assert calls and pod_calls == {"list"}
    expected: dict[tuple[str, str], set[str]] = {}
    for kind in k8s_client.WORKLOADS:
        api = k8s_client.KINDS[kind]
        # create/list/delete are called; get is KubeClient's read of one object, which k8s.py's docstring
        # names ("create, get, list and delete") and list grants in substance anyway.
        expected[(api.api_version.rpartition("/")[0], api.plural)] = calls | {"get"}
    expected[("", "pods")] = pod_calls
    r = rendered["default"]
    assert role_rules(r.get("Role", f"{FULL}-api")) == expected
    binding = r.get("RoleBinding", f"{FULL}-api")
    assert binding["roleRef"]["name"] == f"{FULL}-api"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{FULL}-api", "namespace": NAMESPACE}]
    assert r.get("Deployment", f"{FULL}-api")["spec"]["template"]["spec"]["serviceAccountName"] == f"{FULL}-api"
    # weightsync lists the inference pods (GET /api/v1/namespaces/<ns>/pods); nothing else.
    discovery = (ROOT / "services/weightsync/src/asyncwebrl/weightsync/discovery.py").read_text()
    assert "/api/v1/namespaces/{namespace}/pods?" in discovery
    assert role_rules(r.get("Role", f"{FULL}-weightsync")) == {("", "pods"): {"get", "list"}}
    ws = r.get("Deployment", f"{FULL}-weightsync")
    assert ws["spec"]["template"]["spec"]["serviceAccountName"] == f"{FULL}-weightsync"
    env = env_of(container(ws))
    assert env["ASYNCWEBRL_DISCOVERY"]["value"] == "kubernetes"
    # The selector weightsync uses is the one k8s.py asks for: SGLang pods only.
    assert env["ASYNCWEBRL_K8S_SELECTOR"]["value"] == \
        f"{k8s_manifests.COMPONENT}=inference,{k8s_manifests.ENGINE_LABEL}=sglang"
    for sa in r.kind("ServiceAccount"):
        assert sa["automountServiceAccountToken"] is (sa["metadata"]["name"] in (f"{FULL}-api", f"{FULL}-weightsync"))
    assert not r.kind("ClusterRole") and not r.kind("ClusterRoleBinding")


# --- checkpoints and the api's launcher ----------------------------------------------------------

def test_checkpoints_claim_is_shared(rendered):
    r = rendered["default"]
    pvc = r.get("PersistentVolumeClaim", f"{FULL}-checkpoints")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for name, read_only in (("api", False), ("weightsync", True)):
        pod = r.get("Deployment", f"{FULL}-{name}")["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "checkpoints")
        assert volume["persistentVolumeClaim"]["claimName"] == f"{FULL}-checkpoints"
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "checkpoints")
        assert mount["mountPath"] == "/runs" and mount.get("readOnly", False) is read_only
    api = env_of(container(r.get("Deployment", f"{FULL}-api")))
    assert api["ASYNCWEBRL_RUN_DIR"]["value"] == "/runs"
    assert api["ASYNCWEBRL_K8S_CHECKPOINTS_CLAIM"]["value"] == f"{FULL}-checkpoints"
    assert env_of(container(r.get("Deployment", f"{FULL}-weightsync")))["ASYNCWEBRL_CHECKPOINT_ROOTS"]["value"] == "/runs"
    existing = rendered["existing"]
    assert env_of(container(existing.get("Deployment", f"{FULL}-api")))["ASYNCWEBRL_K8S_CHECKPOINTS_CLAIM"][
        "value"] == "shared-ckpt"
    assert env_of(container(existing.get("Deployment", f"{FULL}-api")))["ASYNCWEBRL_K8S_SERVICE_ACCOUNT"][
        "value"] == "rl-runner"


def environ_of(c: dict) -> dict[str, str]:
    """The container's environment, secrets replaced by stand-ins."""
    return {e["name"]: e.get("value", f"stand-in-{e['name'].lower()}") for e in c["env"]}


def test_service_environment_parses(rendered):
    for combo, r in rendered.items():
        for name, cls in CONFIGS.items():
            c = container(r.get("Deployment", f"{FULL}-{name}"))
            assert c["command"] == ["python", "-m", f"asyncwebrl.{name}"]
            environ = environ_of(c)
            fields = {env_name(f.name) for f in dataclasses.fields(cls)}
            unknown = {k for k in environ if k.startswith("ASYNCWEBRL_")} - fields
            assert not unknown, f"{combo}: {name} has no flag for {sorted(unknown)}"
            config = parse_config(cls, c.get("args", []), environ)
            assert config.host == "0.0.0.0" and config.grpc_port == GRPC_PORTS[name]
            assert config.log_format == "json"
    api = parse_config(ApiConfig, [], environ_of(container(rendered["default"].get("Deployment", f"{FULL}-api"))))
    assert api.launcher == "kubernetes"
    assert api.envfleet_target == f"{FULL}-envfleet.{NAMESPACE}.svc:50061"
    assert api.buffer_target == f"{FULL}-buffer.{NAMESPACE}.svc:50062"
    assert api.weightsync_target == f"{FULL}-weightsync.{NAMESPACE}.svc:50065"
    # Those targets are the Services' ports.
    for name, port in (("envfleet", 50061), ("buffer", 50062), ("weightsync", 50065)):
        svc = rendered["default"].get("Service", f"{FULL}-{name}")
        assert {p["name"]: p["port"] for p in svc["spec"]["ports"]}["grpc"] == port
    envfleet = parse_config(EnvfleetConfig, [], environ_of(container(
        rendered["default"].get("Deployment", f"{FULL}-envfleet"))))
    assert (envfleet.browsers, envfleet.contexts_per_browser, envfleet.task_sources) == (1, 4, ("miniwob", "webgym-lite"))
    assert envfleet.buffer_target == f"{FULL}-buffer.{NAMESPACE}.svc:50062"  # the buffer Service's gRPC port
    buffer = parse_config(BufferConfig, [], environ_of(container(rendered["default"].get("Deployment", f"{FULL}-buffer"))))
    assert buffer.blob_budget_bytes == 2147483648  # a large integer value renders as digits, not 2.147e+09


def test_gpu_sglang_values_give_valid_gpu_workloads(rendered):
    """The api's launcher, configured from the chart's environment, builds a job's GPU workloads."""
    environ = environ_of(container(rendered["gpu-sglang"].get("Deployment", f"{FULL}-api")))
    config = parse_config(ApiConfig, [], environ)
    settings = k8s_settings.settings_from_config(config, NAMESPACE)
    spec = JobSpec.model_validate({"name": "sglang", "model": {"path": "qwen"},
                                   "resources": {"engines": 2, "engine_kind": "sglang", "engine_gpus": 2,
                                                 "trainer_gpus": 1}})
    objects = k8s_manifests.manifests(Job("sglang-0a1b2c", spec, "pending", 0, 0), settings,
                            model=pathlib.Path("/models/qwen"))
    for obj in objects:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    by_role = {o["metadata"]["labels"][k8s_manifests.ROLE_LABEL]: o for o in objects}
    pod = by_role["inference"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "lmsysorg/sglang:v0.5.4"
    assert c["resources"]["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": 2}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                  {"key": "dedicated", "operator": "Equal", "value": "rl-gpu", "effect": "NoExecute"}]
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}} in pod["volumes"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"checkpoints": f"{FULL}-checkpoints", "models": "hf-models"}
    assert pod["serviceAccountName"] == f"{FULL}-job"
    assert rendered["gpu-sglang"].get("ServiceAccount", f"{FULL}-job")["automountServiceAccountToken"] is False
    trainer = by_role["trainer"]["spec"]["template"]["spec"]["containers"][0]
    assert trainer["resources"]["limits"] == {"cpu": "16", "memory": "128Gi", "nvidia.com/gpu": 1}
    # SGLang's --api-key and --admin-api-key: the chart Secret's engine-api-key, by reference, the key the
    # gateway and weightsync send (the trainer never calls an engine and does not get it).
    key = c["args"][c["args"].index("--api-key") + 1]
    assert key == c["args"][c["args"].index("--admin-api-key") + 1] == f"$({k8s_manifests.SGLANG_KEY_ENV})"
    assert env_of(c)[k8s_manifests.SGLANG_KEY_ENV]["valueFrom"]["secretKeyRef"] == {
        "name": FULL, "key": "engine-api-key", "optional": False}
    assert "engine-api-key" in rendered["gpu-sglang"].get("Secret", FULL)["data"]
    for sender in (env_of(by_role["rollout"]["spec"]["template"]["spec"]["containers"][0]),
                   env_of(container(rendered["gpu-sglang"].get("Deployment", f"{FULL}-weightsync")))):
        assert sender["ASYNCWEBRL_ENGINE_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "engine-api-key"
    assert "ASYNCWEBRL_ENGINE_API_KEY" not in env_of(trainer)
    for obj in objects:
        for e in obj["spec"]["template"]["spec"]["containers"][0].get("env", []):
            if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]:
                assert e["valueFrom"]["secretKeyRef"]["name"] == FULL
    # The models claim is mounted in the api too: it resolves model.path before launching.
    api_pod = rendered["gpu-sglang"].get("Deployment", f"{FULL}-api")["spec"]["template"]["spec"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in api_pod["containers"][0]["volumeMounts"]
    # The default values: the embedded engine's CPU job validates too, and the launcher's defaults hold.
    config = parse_config(ApiConfig, [], environ_of(container(rendered["default"].get("Deployment", f"{FULL}-api"))))
    settings = k8s_settings.settings_from_config(config, NAMESPACE)
    assert settings.gpu_tolerations == (k8s_settings.Toleration("nvidia.com/gpu", "", "NoSchedule"),)
    cpu_job = Job("cpu-0a1b2c", JobSpec.model_validate({"name": "cpu", "resources": {"device": "cpu"}}),
                  "pending", 0, 0)
    for obj in k8s_manifests.manifests(cpu_job, settings):
        kubernetes_validate.validate(obj, VERSIONS[-1], strict=True)


# --- monitoring -----------------------------------------------------------------------------------

def test_dashboards_and_rules_come_from_charts(rendered):
    assert DASHBOARDS and RULES, "charts/dashboards/*.json and charts/rules/*.yaml are the chart's sources"
    for combo in ("default", "everything"):
        maps = {c["metadata"]["name"]: c for c in rendered[combo].kind("ConfigMap")}
        assert set(maps) == {f"{FULL}-dashboard-{p.stem}" for p in DASHBOARDS}
        for path in DASHBOARDS:
            cm = maps[f"{FULL}-dashboard-{path.stem}"]
            assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
            assert json.loads(cm["data"][path.name]) == json.loads(path.read_text())
    assert rendered["everything"].kind("ConfigMap")[0]["metadata"]["annotations"] == {"grafana_folder": "asyncwebrl"}
    assert not rendered["no-monitoring"].kind("ConfigMap")
    rules = {p["metadata"]["name"]: p for p in rendered["everything"].kind("PrometheusRule")}
    assert set(rules) == {f"{FULL}-rules-{p.stem}" for p in RULES}
    for path in RULES:
        assert rules[f"{FULL}-rules-{path.stem}"]["spec"]["groups"] == yaml.safe_load(path.read_text())["groups"]
    # The scrape contract the dashboards and rules are written against: job="asyncwebrl-<service>",
    # job_id on every per-job series.
    (sm,) = rendered["everything"].kind("ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (relabel,) = sm["spec"]["endpoints"][0]["relabelings"]
    assert relabel == {"sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_component"],
                       "targetLabel": "job", "replacement": "asyncwebrl-$1"}
    scraped = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in rendered["everything"].kind("Service")
               if all(s["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())}
    assert scraped == {"envfleet", "buffer", "weightsync", "api", "redis"}
    (pm,) = rendered["everything"].kind("PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/part-of": "asyncwebrl",
                                                     "app.kubernetes.io/managed-by": k8s_manifests.MANAGER}
    ports = {e["port"] for e in pm["spec"]["podMetricsEndpoints"]}
    assert ports == {"metrics", "http"}  # trainer/gateway container ports, and the inference port
    targets = {r["targetLabel"] for e in pm["spec"]["podMetricsEndpoints"] for r in e["relabelings"]}
    assert targets == {"job", "job_id", "role"}
    # The launcher's pods, through those relabelings, get the job names deploy/compose/prometheus.yml uses.
    settings = k8s_settings.K8sSettings(namespace=NAMESPACE, run_dir="/runs", redis_url="redis://r:6379/0",
                               key_prefix="asyncwebrl:", envfleet_target="e:1", buffer_target="b:1",
                               weightsync_target="w:1")
    cases = [("trainer", {}, "asyncwebrl-trainer"), ("rollout", {}, "asyncwebrl-rollout"),
             ("warm-trainer", {}, "asyncwebrl-trainer"), ("warm-rollout", {}, "asyncwebrl-rollout"),
             ("inference", {k8s_manifests.ENGINE_LABEL: "embedded"}, "asyncwebrl-engine"),
             ("inference", {k8s_manifests.ENGINE_LABEL: "sglang"}, "asyncwebrl-sglang")]
    for role, extra, job in cases:
        pod_labels = {**k8s_manifests.labels(settings, "demo-1a2b3c", role), **extra}
        for endpoint in pm["spec"]["podMetricsEndpoints"]:
            target = apply_relabelings(pod_labels, endpoint["relabelings"], {"job": f"{NAMESPACE}/{FULL}-jobs"})
            assert (target["job"], target["job_id"], target["role"]) == (job, "demo-1a2b3c", role), (role, extra)
    for combo in ("default", "no-monitoring", "gpu-sglang"):
        assert not {d["kind"] for d in rendered[combo].docs} & CRD_KINDS, combo


def apply_relabelings(pod_labels: dict[str, str], rules: list[dict], target: dict[str, str]) -> dict[str, str]:
    """Prometheus' "replace" relabelling of a pod's __meta labels (anchored regex, $1 references)."""
    meta = {"__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in pod_labels.items()}
    out = dict(target)
    for rule in rules:
        assert rule.get("action", "replace") == "replace"
        value = ";".join(meta.get(s, out.get(s, "")) for s in rule["sourceLabels"])
        m = re.fullmatch(rule.get("regex", "(.*)"), value)
        if m:
            out[rule["targetLabel"]] = re.sub(r"\$(\d+)", lambda g: m.group(int(g.group(1))) or "",
                                              rule.get("replacement", "$1"))
    return out


def test_chart_sources_through_its_shared_link(tmp_path):
    """shared/ is a link to the repository's charts/ (Helm's loader follows it); a copy of the chart with
    its own shared/ folder takes its dashboards and rules from there, and refuses a bad rule file."""
    assert (CHART / "shared").is_symlink() and (CHART / "shared").resolve() == ROOT / "charts"
    copy = tmp_path / "asyncwebrl"
    shutil.copytree(CHART, copy, symlinks=True)
    (copy / "shared").unlink()
    (copy / "shared" / "dashboards").mkdir(parents=True)
    (copy / "shared" / "rules").mkdir()
    (copy / "shared" / "dashboards" / "My_Board.json").write_text('{"title": "test board", "panels": []}\n')
    (copy / "shared" / "rules" / "extra.yaml").write_text(
        "groups:\n  - name: t\n    rules:\n      - alert: T\n        expr: up == 0\n"
        "        annotations: {summary: '{{ $labels.job }} down'}\n")
    values = {"monitoring": {"prometheusOperator": True}}
    with helm.Chart.load(copy) as chart:
        r = render(chart, values)
    (cm,) = r.kind("ConfigMap")
    assert cm["metadata"]["name"] == f"{FULL}-dashboard-my-board"
    assert json.loads(cm["data"]["My_Board.json"]) == {"title": "test board", "panels": []}
    (rule,) = r.kind("PrometheusRule")
    assert rule["spec"]["groups"][0]["rules"][0]["annotations"]["summary"] == "{{ $labels.job }} down"
    (copy / "shared" / "rules" / "broken.yaml").write_text("alerts: []\n")
    with helm.Chart.load(copy) as chart, pytest.raises(helm.HelmRenderError, match="broken.yaml: a Prometheus rule"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_notes_tell_how_to_reach_the_api_and_submit(rendered):
    notes = rendered["default"].notes
    assert f"kubectl -n {NAMESPACE} port-forward service/{FULL}-api 8080:8080" in notes
    assert f"get secret {FULL} -o jsonpath='{{.data.api-token}}'" in notes
    assert "asyncwebrl submit examples/jobs/demo.yaml" in notes and "/v1/jobs" in notes
    assert "jobs.images.sglang is empty" in notes
    assert "https://rl.example.com" in rendered["everything"].notes
    assert "get secret rl-tokens" in rendered["existing"].notes
    assert "redis.external.egressCIDRs" in render_notes({"redis": {"external": {"url": EXTERNAL_URL}}})


def render_notes(values: dict) -> str:
    with helm.Chart.load(CHART) as chart:
        return render(chart, values).notes


# --- rollouts on Secret changes, tokens, Services, disruption budgets ---------------------------

def checksums(r: Rendered) -> dict[str, str]:
    return {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
            for w in r.workloads()}


def test_pods_roll_when_the_secret_changes(chart, rendered):
    """Every pod template that reads the Secret carries a hash of it: another token rolls the pods, the same
    values render the same hash; with an existing Secret the hash is of its name (the chart cannot see it)."""
    values = {"secrets": SECRETS}
    first, again = render(chart, values), render(chart, values)
    changed = render(chart, {"secrets": {**SECRETS, "authToken": "another-grpc-token-Yy9"}})
    names = {f"{FULL}-{c}" for c in ("api", "buffer", "envfleet", "weightsync", "redis")}
    assert set(checksums(first)) == names
    assert checksums(first) == checksums(again)
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in checksums(first).values())
    assert all(checksums(changed)[n] != checksums(first)[n] for n in names)
    # Pod annotations from the values sit beside it.
    annotated = render(chart, {"secrets": SECRETS, "envfleet": {"podAnnotations": {"team": "rl"}}})
    meta = annotated.get("Deployment", f"{FULL}-envfleet")["spec"]["template"]["metadata"]["annotations"]
    assert meta == {"checksum/secret": checksums(first)[f"{FULL}-envfleet"], "team": "rl"}
    existing = checksums(rendered["existing"])
    assert set(existing.values()) == {hashlib.sha256(b"rl-tokens").hexdigest()}


def test_token_minimum_is_one_fact():
    """The tokens' minimum length lives in values.schema.json (definitions.token); the tokens the chart
    generates meet it, and the api accepts a token of exactly that length."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    token = schema["definitions"]["token"]
    minimum = next(b["minLength"] for b in token["anyOf"] if "minLength" in b)
    assert minimum == api_config.MIN_TOKEN_CHARS, "one fact: the api's minimum"
    for key in ("apiToken", "authToken", "engineApiKey"):
        assert schema["properties"]["secrets"]["properties"][key]["allOf"] == [{"$ref": "#/definitions/token"}]
    config = parse_config(ApiConfig, [], {"ASYNCWEBRL_API_TOKEN": "t" * minimum})
    assert len(config.api_token) == minimum
    with pytest.raises(SystemExit):
        parse_config(ApiConfig, [], {"ASYNCWEBRL_API_TOKEN": "t" * (minimum - 1)})
    with helm.Chart.load(CHART) as chart:
        r = render(chart, {"secrets": {"apiToken": "t" * minimum}})
    assert base64.b64decode(r.get("Secret", FULL)["data"]["api-token"]).decode() == "t" * minimum


def test_rest_service_apart_from_internal_ports(rendered):
    """The REST Service (the Ingress's backend, api.service.type) has the REST port only; gRPC health and
    /metrics are on a ClusterIP Service of their own, the one the ServiceMonitor selects."""
    for combo, r in rendered.items():
        rest = r.get("Service", f"{FULL}-api")
        internal = r.get("Service", f"{FULL}-api-internal")
        assert [(p["name"], p["port"]) for p in rest["spec"]["ports"]] == [("http", 8080)], combo
        assert {p["name"]: p["port"] for p in internal["spec"]["ports"]} == {"grpc": 50070, "metrics": 9470}
        assert internal["spec"]["type"] == "ClusterIP"
        assert "asyncwebrl.io/metrics" not in rest["metadata"]["labels"]
        assert internal["metadata"]["labels"]["asyncwebrl.io/metrics"] == "true"
    (ingress,) = rendered["everything"].kind("Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{FULL}-api", "port": {"name": "http"}}
    with helm.Chart.load(CHART) as chart:
        lb = render(chart, {"api": {"service": {"type": "LoadBalancer", "port": 443}}})
    assert lb.get("Service", f"{FULL}-api")["spec"]["type"] == "LoadBalancer"
    assert lb.get("Service", f"{FULL}-api-internal")["spec"]["type"] == "ClusterIP"
    assert f"service/{FULL}-api-internal" in rendered["default"].notes


def test_redis_has_a_disruption_budget(rendered):
    pdb = rendered["default"].get("PodDisruptionBudget", f"{FULL}-redis")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    assert not rendered["external-redis"].has("PodDisruptionBudget", f"{FULL}-redis")
    with helm.Chart.load(CHART) as chart:
        held = render(chart, {"redis": {"pdb": {"maxUnavailable": 0}}})
        off = render(chart, {"redis": {"pdb": {"enabled": False}}})
    assert held.get("PodDisruptionBudget", f"{FULL}-redis")["spec"]["maxUnavailable"] == 0
    assert not off.has("PodDisruptionBudget", f"{FULL}-redis")


def test_schema_takes_the_kubernetes_shapes(chart):
    """What the stricter schema still accepts: full tolerations and affinity, extended resources, a
    registry with a port and a path, a private external Redis."""
    values = {
        "envfleet": {"tolerations": [{"key": "a", "operator": "Equal", "value": "b", "effect": "NoExecute",
                                      "tolerationSeconds": 30}, {"operator": "Exists"}],
                     "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                         {"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]},
                         "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                             {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["b"]}]}]}}},
                     "resources": {"requests": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "1Gi"},
                                   "limits": {"memory": "2Gi", "hugepages-2Mi": "64Mi"}}},
        "buffer": {"blobBudgetBytes": 1099511627776, "resources": {"limits": {"memory": "1Gi", "example.com/foo": 1}}},
        "images": {"registry": "registry.local:5000/team/rl"},
        "redis": {"external": {"url": EXTERNAL_URL, "egressCIDRs": ["10.40.0.7/32", "fd00:10::/64"]}},
        "secrets": {"apiToken": "a" * 16},
    }
    r = render(chart, values)
    assert container(r.get("Deployment", f"{FULL}-envfleet"))["image"].startswith("registry.local:5000/team/rl/")
    for doc in r.docs:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)
