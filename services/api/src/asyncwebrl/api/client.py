"""The REST client of an asyncwebrl api, and the job document as the client loads it.

``Client`` talks to an api (the local stack's, or any other); ``metrics_since``
pages through a job's trainer metrics; ``load_job`` reads a YAML job document,
applies ``--set`` overrides and validates it against the job schema.

Only the standard library at import: PyYAML and the job schema (pydantic) are
imported by ``load_job`` alone, so the command-line client answers at once.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request

PROG = "asyncwebrl"
# A job in one of these states is over.
FINAL = ("succeeded", "failed", "cancelled")


class CliError(Exception):
    """Printed as ``error: <message>``; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class ApiError(CliError):
    def __init__(self, status: int, detail: str, body: dict | None = None) -> None:
        super().__init__(detail, 2 if status == 422 else 1)
        self.status = status
        self.detail = detail
        self.body = body or {}


def quote_part(part: str) -> str:
    """One path segment or query value of an api URL, quoted."""
    return urllib.parse.quote(str(part), safe="")


class Client:
    def __init__(self, base: str, token: str, timeout: float = 30.0) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body=None, accept_json: bool = True, raw: bytes | None = None,
                content_type: str = "application/json"):
        """``body`` is sent as JSON; ``raw`` as it is, with ``content_type``."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Accept": "application/json" if accept_json else "text/plain, */*"}
        if data is not None:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
                ctype = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            detail, body_json = f"HTTP {exc.code} {exc.reason}", None
            with contextlib.suppress(ValueError):
                body_json = json.loads(raw)
                if isinstance(body_json, dict):
                    detail = str(body_json.get("detail") or body_json.get("title") or detail)
            if exc.code in (404, 405) and detail in ("Not Found", "Method Not Allowed"):
                detail = f"{detail}: this api does not serve {method} {path.split('?')[0]}"
            raise ApiError(exc.code, detail, body_json if isinstance(body_json, dict) else None) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            why = "connection refused" if isinstance(reason, ConnectionRefusedError) else str(reason)
            raise CliError(f"the api at {self.base} is not reachable ({why}); start the local stack with "
                           f"`{PROG} up`, or pass --api URL") from None
        except (TimeoutError, socket.timeout):
            raise CliError(f"the api at {self.base} did not answer within {self.timeout:.0f}s") from None
        except (OSError, ValueError) as exc:
            raise CliError(f"the api at {self.base} is not reachable ({exc}); start the local stack with "
                           f"`{PROG} up`, or pass --api URL") from None
        if not accept_json or "json" not in ctype:
            return raw.decode(errors="replace") if not accept_json else (json.loads(raw) if raw else {})
        return json.loads(raw) if raw else {}

    def get(self, path: str):
        return self.request("GET", path)

    def delete_job(self, job_id: str, purge: bool = False) -> dict:
        """Cancel the job (its data stays), or with ``purge`` delete it and its data: then the answer is
        ``{"id", "state": "deleted", "deleted": {counts}}`` and the job is gone (a later GET is a 404)."""
        return self.request("DELETE", f"/v1/jobs/{quote_part(job_id)}" + ("?purge=true" if purge else ""))

    def list_jobs(self, limit: int = 50) -> list[dict]:
        jobs, token = [], ""
        while len(jobs) < limit:
            page = self.get(f"/v1/jobs?page_size={min(200, limit - len(jobs))}&page_token={quote_part(token)}")
            jobs += page.get("jobs", [])
            token = page.get("next_page_token") or ""
            if not token:
                break
        return jobs[:limit]

    # --- task sets ---

    def add_taskset(self, name: str, data: bytes | None = None, path: str | None = None,
                    replace: bool = False) -> dict:
        """Register a WebGym JSONL file as task set ``name``: its bytes, or ``path`` under the api's
        --taskset-roots. Returns the set's meta."""
        query = f"?name={quote_part(name)}" + (f"&path={quote_part(path)}" if path is not None else "")
        query += "&replace=true" if replace else ""
        return self.request("POST", "/v1/tasksets" + query, raw=data if data is not None else b"",
                            content_type="application/x-ndjson")

    def list_tasksets(self, limit: int = 1000) -> list[dict]:
        sets, cursor = [], ""
        while len(sets) < limit:
            page = self.get(f"/v1/tasksets?limit={min(200, limit - len(sets))}&cursor={quote_part(cursor)}")
            sets += page.get("tasksets", [])
            cursor = page.get("next_cursor") or ""
            if not cursor:
                break
        return sets[:limit]

    def get_taskset(self, name: str, limit: int = 100, cursor: int = 0) -> dict:
        return self.get(f"/v1/tasksets/{quote_part(name)}?limit={limit}&cursor={cursor}")

    def delete_taskset(self, name: str) -> dict:
        return self.request("DELETE", f"/v1/tasksets/{quote_part(name)}")



def metrics_since(client: Client, job_id: str, since: int, phase: str = "rl") -> tuple[list[dict], int] | None:
    """New trainer metric rows (``phase``: rl, or warm_start), or None where this api serves no metrics route."""
    rows: list[dict] = []
    for _ in range(100):
        try:
            page = client.get(f"/v1/jobs/{quote_part(job_id)}/metrics?phase={phase}&since_step={since}&limit=500")
        except ApiError as exc:
            if exc.status == 404 and "this api does not serve" in exc.detail:
                return None
            raise
        series = page.get("series") or []
        rows += series
        nxt = int(page.get("next_since_step", since))
        if not series or nxt <= since or len(series) < 500:
            return rows, max(nxt, since)
        since = nxt
    return rows, since


# --- the job document -------------------------------------------------------------


def _set(doc: dict, assignment: str) -> None:
    import yaml

    path, sep, raw = assignment.partition("=")
    if not sep or not path:
        raise CliError(f"--set: expected key.path=value, got {assignment!r}", 2)
    node = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise CliError(f"--set {path}: {part} is not a mapping", 2)
    node[parts[-1]] = yaml.safe_load(raw)


def _field(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "job"


def load_job(path: str, overrides: list[str]) -> dict:
    """The job document at ``path`` (``-``: stdin) with ``overrides`` (``key.path=value``) applied,
    validated against the job schema; a ``CliError`` (exit 2) naming each bad field otherwise."""
    import yaml

    try:
        text = sys.stdin.read() if path == "-" else pathlib.Path(path).read_text()
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}", 2) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CliError(f"{path}: not valid YAML: {exc}", 2) from None
    if not isinstance(doc, dict):
        raise CliError(f"{path}: a job document is a mapping (name, model, tasks, algorithm, rollout, resources)", 2)
    for assignment in overrides:
        _set(doc, assignment)
    from pydantic import ValidationError

    from asyncwebrl.api.jobspec import JobSpec

    try:
        JobSpec.model_validate(doc)
    except ValidationError as exc:
        for e in exc.errors():
            print(f"error: {_field(e.get('loc', ()))}: {e.get('msg')}", file=sys.stderr)
        raise CliError(f"{path}: {exc.error_count()} invalid field(s)", 2) from None
    return doc

