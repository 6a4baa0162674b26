"""Kubernetes discovery of SGLang pods. There is no cluster here, so the API server is a fake: a
loopback HTTP server answering the one call weightsync makes (list pods by label selector) with a
PodList shaped like the real API's, and recording what it was asked."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from asyncwebrl.weightsync.config import WeightSyncConfig
from asyncwebrl.weightsync.discovery import kubernetes_endpoints
from tests.helpers import fake_http_server


def pod(name: str, job: str | None, phase: str = "Running", ip: str = "10.0.0.7", deleting: bool = False) -> dict:
    labels = {"app.kubernetes.io/component": "inference"} | ({"asyncwebrl.io/job": job} if job else {})
    meta = {"name": name, "namespace": "ml", "labels": labels, "uid": f"uid-{name}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-22T05:00:00Z"
    return {"metadata": meta, "status": {"phase": phase, "podIP": ip} if ip else {"phase": phase}}


PODS = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "123"}, "items": [
    pod("sglang-a-0", "job-a"),
    pod("sglang-a-1", "job-a", ip="fd00::5"),
    pod("sglang-b-0", "job-b", phase="Pending", ip=""),
    pod("sglang-b-1", "job-b", deleting=True),
    pod("sglang-x-0", None),
    pod("sglang-y-0", "bad job!"),
]}


async def test_pods_become_endpoints_of_their_job(tmp_path):
    seen = []

    async def list_pods(request: web.Request) -> web.Response:
        seen.append((request.path, dict(request.query), request.headers.get("Authorization")))
        return web.json_response(PODS)

    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "namespace").write_text("ml\n")
    async with fake_http_server([("GET", "/api/v1/namespaces/{ns}/pods", list_pods)]) as url:
        config = WeightSyncConfig(discovery="kubernetes", k8s_api=url, k8s_token_file=str(tmp_path / "token"),
                                  k8s_ca_file="", k8s_port=30001)
        async with aiohttp.ClientSession() as session:
            found = await kubernetes_endpoints(config, session)
    assert seen == [("/api/v1/namespaces/ml/pods",
                     {"labelSelector": "app.kubernetes.io/component=inference", "limit": "4096"}, "Bearer sa-token")]
    assert [(e.job_id, e.endpoint_id, e.url) for e in found] == [
        ("job-a", "sglang-a-0", "http://10.0.0.7:30001"), ("job-a", "sglang-a-1", "http://[fd00::5]:30001")]
