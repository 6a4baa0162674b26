"""Endpoints that do not register themselves (SGLang servers): weightsync
probes them and keeps their registry records fresh on their behalf.

``static``: a fixed list from configuration. ``kubernetes``: the pods matching a
label selector, read from the Kubernetes API with the pod's service account;
the job is a pod label. A server that does not answer ``/health`` gets no
heartbeat, so its record goes stale and the gateway stops using it.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import ssl
import urllib.parse

import aiohttp

from asyncwebrl.common.fanout import admin_headers, served_version
from asyncwebrl.common.keys import is_job_id
from asyncwebrl.common.registry import ENDPOINT_ID
from asyncwebrl.weightsync.config import StaticEndpoint, WeightSyncConfig

log = logging.getLogger("asyncwebrl.weightsync")
MAX_PODS = 4096


async def kubernetes_endpoints(config: WeightSyncConfig, session: aiohttp.ClientSession) -> list[StaticEndpoint]:
    """Running, non-terminating pods of the selector that carry the job label and an IP."""
    namespace = config.k8s_namespace
    if not namespace:
        ns_file = pathlib.Path(config.k8s_token_file).with_name("namespace")
        namespace = ns_file.read_text().strip() if ns_file.exists() else "default"
    token = pathlib.Path(config.k8s_token_file).read_text().strip()
    ssl_ctx: ssl.SSLContext | bool = True
    if config.k8s_api.startswith("https://") and config.k8s_ca_file and pathlib.Path(config.k8s_ca_file).exists():
        ssl_ctx = ssl.create_default_context(cafile=config.k8s_ca_file)
    query = urllib.parse.urlencode({"labelSelector": config.k8s_selector, "limit": MAX_PODS})
    url = f"{config.k8s_api.rstrip('/')}/api/v1/namespaces/{namespace}/pods?{query}"
    async with session.get(url, headers={"Authorization": f"Bearer {token}"}, ssl=ssl_ctx,
                           timeout=aiohttp.ClientTimeout(total=10)) as resp:
        if resp.status != 200:
            raise RuntimeError(f"listing pods answered {resp.status}: {(await resp.text())[:300]}")
        body = await resp.json()
    out = []
    for pod in (body.get("items") or [])[:MAX_PODS] if isinstance(body, dict) else []:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        job, name, ip = (meta.get("labels") or {}).get(config.k8s_job_label, ""), meta.get("name", ""), \
            status.get("podIP", "")
        if status.get("phase") != "Running" or meta.get("deletionTimestamp") or not ip:
            continue
        if not is_job_id(job) or not ENDPOINT_ID.match(name or ""):
            log.warning("pod skipped: bad job label or name", extra={"pod": str(name)[:80]})
            continue
        host = f"[{ip}]" if ":" in ip else ip
        out.append(StaticEndpoint(job, name, f"http://{host}:{config.k8s_port}"))
    return out


async def probe(session: aiohttp.ClientSession, url: str, api_key: str) -> str | None:
    """The served weight_version, or None when the server is not healthy."""
    try:
        async with session.get(url + "/health", headers=admin_headers(api_key),
                               timeout=aiohttp.ClientTimeout(total=5)) as resp:
            if resp.status != 200:
                return None
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None
    return await served_version(session, url, api_key)
