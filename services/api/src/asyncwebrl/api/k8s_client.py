"""The Kubernetes launcher's API calls, through the official asyncio client (``kubernetes_asyncio``): create,
get, delete and list of the namespaced objects the launcher manages, by kind.

The client builds the requests (paths, query, auth, TLS); answers are read here as plain JSON (the
manifests are plain dicts too), bounded in size, so that a Job's status reads as the API wrote it. Every
call has a timeout; 5xx, 429, timeouts and connection errors are retried ``retries`` times; what still
fails is a KubeError naming the call."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
from typing import Any

import aiohttp
from kubernetes_asyncio import client

from asyncwebrl.api.errors import KubeError
from asyncwebrl.common.cancel import cancelling

MAX_RESPONSE_BYTES = 8 * 1024 * 1024
DELETE_OPTIONS = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}


@dataclasses.dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str
    api: type  # the client's API class of the group
    method: str  # its methods' suffix: create_<method>, read_, delete_, list_

    def path(self, namespace: str, name: str = "") -> str:
        """The REST path, as the client requests it (for messages)."""
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        return f"{base}/namespaces/{namespace}/{self.plural}" + (f"/{name}" if name else "")


KINDS = {"Job": Kind("batch/v1", "Job", "jobs", client.BatchV1Api, "namespaced_job"),
         "Deployment": Kind("apps/v1", "Deployment", "deployments", client.AppsV1Api, "namespaced_deployment"),
         "HorizontalPodAutoscaler": Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers",
                                         client.AutoscalingV2Api, "namespaced_horizontal_pod_autoscaler"),
         "Pod": Kind("v1", "Pod", "pods", client.CoreV1Api, "namespaced_pod")}
WORKLOADS = ("Job", "Deployment", "HorizontalPodAutoscaler")  # what the launcher creates; pods are only read


def _message(answer: Any) -> str:
    """A Kubernetes Status's message, bounded."""
    if isinstance(answer, dict):
        return str(answer.get("message") or answer.get("reason") or "")[:300]
    return str(answer)[:300]


class KubeClient:
    """Namespaced objects with the pod's service account (``token_file``, read at every call: projected
    tokens rotate; empty: no token, e.g. kubectl proxy) and the cluster's CA (``ca_file``)."""

    def __init__(self, api: str, namespace: str, token_file: str = "", ca_file: str = "", timeout_s: float = 10.0,
                 retries: int = 2, backoff_s: float = 0.25) -> None:
        self.namespace = namespace
        self.token_file = token_file
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        conf = client.Configuration(host=api.rstrip("/"))
        if api.startswith("https://") and ca_file and pathlib.Path(ca_file).is_file():
            conf.ssl_ca_cert = ca_file
        self._conf = conf
        self._client: client.ApiClient | None = None
        self._apis: dict[type, Any] = {}

    def _auth(self) -> dict | None:
        """The bearer token of this call (the client's per-request auth), None for none."""
        path = pathlib.Path(self.token_file) if self.token_file else None
        if path is None or not path.is_file():
            return None
        return {"in": "header", "type": "api_key", "key": "authorization",
                "value": f"Bearer {path.read_text().strip()}"}

    def _api(self, kind: Kind) -> Any:
        if self._client is None:
            self._client = client.ApiClient(self._conf)
        if kind.api not in self._apis:
            self._apis[kind.api] = kind.api(self._client)
        return self._apis[kind.api]

    async def _once(self, verb: str, kind: Kind, *args, **kwargs) -> tuple[int, Any]:
        call = getattr(self._api(kind), f"{verb}_{kind.method}")
        resp: aiohttp.ClientResponse = await call(*args, **kwargs, _preload_content=False,
                                                  _request_timeout=self.timeout_s, _request_auth=self._auth())
        try:
            raw = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                raw += chunk
                if len(raw) > MAX_RESPONSE_BYTES:
                    raise KubeError(f"kubernetes {resp.method} {resp.url.path}: answer larger than "
                                    f"{MAX_RESPONSE_BYTES} bytes")
        finally:
            resp.release()
        try:
            return resp.status, json.loads(raw) if raw else {}
        except ValueError:
            return resp.status, {"message": raw[:300].decode(errors="replace")}

    async def _request(self, what: str, verb: str, kind: Kind, *args, **kwargs) -> tuple[int, Any]:
        """(status, body) of the last try; KubeError when every try failed or timed out. ``what``: the
        call, as messages name it (``POST /apis/...``)."""
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                status, answer = await self._once(verb, kind, *args, **kwargs)
            except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
                if cancelling():
                    raise asyncio.CancelledError from exc
                error = f"timed out after {self.timeout_s:g}s" if isinstance(exc, asyncio.TimeoutError) \
                    else f"{type(exc).__name__}: {exc}"[:300]
                continue
            if status < 500 and status != 429:
                return status, answer
            error = f"answered {status}: {_message(answer)}"
        raise KubeError(f"kubernetes {what} {error} ({self.retries + 1} tries)")

    async def create(self, obj: dict) -> bool:
        """True when created, False when it already existed (409)."""
        kind = KINDS[obj["kind"]]
        path = kind.path(self.namespace)
        status, answer = await self._request(f"POST {path}", "create", kind, self.namespace, obj)
        if status == 409:
            return False
        if status not in (200, 201, 202):
            raise KubeError(f"kubernetes POST {path} ({obj['metadata']['name']}) answered {status}: "
                            f"{_message(answer)}", status)
        return True

    async def get(self, kind: str, name: str) -> dict | None:
        k = KINDS[kind]
        path = k.path(self.namespace, name)
        status, answer = await self._request(f"GET {path}", "read", k, name, self.namespace)
        if status == 404:
            return None
        if status != 200:
            raise KubeError(f"kubernetes GET {path} answered {status}: {_message(answer)}", status)
        return answer

    async def delete(self, kind: str, name: str) -> bool:
        """Background propagation (the Job's pods, the Deployment's ReplicaSets go after it). False: not there."""
        k = KINDS[kind]
        path = k.path(self.namespace, name)
        status, answer = await self._request(f"DELETE {path}", "delete", k, name, self.namespace,
                                             body=dict(DELETE_OPTIONS))
        if status == 404:
            return False
        if status not in (200, 202):
            raise KubeError(f"kubernetes DELETE {path} answered {status}: {_message(answer)}", status)
        return True

    async def list(self, kind: str, selector: str, max_pages: int = 20) -> list[dict]:
        k = KINDS[kind]
        path = k.path(self.namespace)
        items: list[dict] = []
        token = ""
        for _ in range(max_pages):
            page = {"_continue": token} if token else {}
            status, answer = await self._request(f"GET {path}", "list", k, self.namespace, label_selector=selector,
                                                 limit=500, **page)
            if status != 200 or not isinstance(answer, dict):
                raise KubeError(f"kubernetes GET {path}?labelSelector={selector} answered {status}: "
                                f"{_message(answer)}", status)
            items += [i for i in answer.get("items") or [] if isinstance(i, dict)]
            token = (answer.get("metadata") or {}).get("continue")
            if not token:
                return items
        raise KubeError(f"kubernetes GET {path}: more than {max_pages} pages")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
