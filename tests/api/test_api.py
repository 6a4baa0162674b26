"""The REST api as a real process (uvicorn on loopback) over a real redis-server:
the job lifecycle in the store, and every kind of bad input."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys

import pytest

from asyncwebrl.api.jobspec import JobSpec
from asyncwebrl.common.localstack import ServiceProcess, free_port, wait_for_port

TOKEN = "api-test-token-0123"
PREFIX = "api-test:"


@pytest.fixture(scope="module")
def api(redis_server, tmp_path_factory):
    port = free_port()
    proc = ServiceProcess("api", ["--redis-url", redis_server.url, "--key-prefix", PREFIX, "--log-format", "text",
                                  "--api-port", str(port), "--max-body-bytes", "4096"],
                          {"ASYNCWEBRL_API_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password},
                          tmp_path_factory.mktemp("api") / "api.log")
    proc.wait_ready()
    wait_for_port(port, 30, proc.proc)
    proc.api_port = port
    yield proc
    assert proc.stop() == 0, proc.logs()[-2000:]


def call(api, method: str, path: str, body=None, token: str | None = TOKEN, raw: bytes | None = None,
         headers: dict | None = None) -> tuple[int, dict, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", api.api_port, timeout=30)
    h = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers=h)
    resp = conn.getresponse()
    text = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), json.loads(text) if text else {}


def test_job_lifecycle_in_the_store(api, redis_server):
    status, _, job = call(api, "POST", "/v1/jobs", {"name": "lifecycle", "algorithm": {"step_norm": "trajectory"},
                                                     "rollout": {"group_size": 4}})
    assert status == 201, job
    assert job["id"].startswith("lifecycle-") and job["state"] == "pending"
    assert job["spec"]["algorithm"]["step_norm"] == "trajectory" and job["spec"]["algorithm"]["k"] == 10.0
    # The buffer's counters are the job's progress: write some as a trainer would.
    redis_server.client().hset(f"{PREFIX}job:{job['id']}:counters", mapping={"version": 3, "consumed": 12,
                                                                            "rejected:stale": 2})
    status, _, got = call(api, "GET", f"/v1/jobs/{job['id']}")
    assert status == 200
    assert got["progress"]["version"] == 3 and got["progress"]["groups_consumed"] == 12
    assert got["progress"]["rejected"] == {"stale": 2}

    status, _, cancelled = call(api, "DELETE", f"/v1/jobs/{job['id']}")
    assert status == 200 and cancelled["state"] == "cancelled"
    assert call(api, "GET", f"/v1/jobs/{job['id']}")[2]["state"] == "cancelled"
    # Cancelling keeps the job's data.
    assert redis_server.client().hget(f"{PREFIX}job:{job['id']}:counters", "version") == b"3"


def test_listing_pages_through_every_job_once(api):
    made = {call(api, "POST", "/v1/jobs", {"name": f"page-{i}"})[2]["id"] for i in range(5)}
    seen, token = [], ""
    for _ in range(20):
        status, _, page = call(api, "GET", f"/v1/jobs?page_size=2&page_token={token}")
        assert status == 200 and len(page["jobs"]) <= 2
        seen += [j["id"] for j in page["jobs"]]
        token = page["next_page_token"]
        if not token:
            break
    assert made <= set(seen) and len(seen) == len(set(seen))
    status, headers, body = call(api, "GET", "/v1/jobs?page_token=bm90LWEtdG9rZW4")
    assert status == 400 and body["detail"].startswith("page_token:")


def _leaves(schema: dict, defs: dict, prefix: str = ""):
    """(dotted field, its JSON Schema) for every scalar or list field of the job document."""
    for name, prop in schema.get("properties", {}).items():
        if "$ref" in prop:
            yield from _leaves(defs[prop["$ref"].split("/")[-1]], defs, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", prop


def _body(field: str, value) -> dict:
    body: dict = {"name": "bad-input"}
    node = body
    parts = field.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return body


def _bad_values(prop: dict) -> list:
    first = prop.get("anyOf", [{}])[0]
    kind = prop.get("type") or first.get("type") or ("object" if "$ref" in first else None)  # an optional section
    wrong_type = {"x": 1} if kind != "object" else 5
    out = [wrong_type]
    if "maximum" in prop:
        out.append(prop["maximum"] + 1)
    if "exclusiveMinimum" in prop:
        out.append(prop["exclusiveMinimum"])
    if "minimum" in prop:
        out.append(prop["minimum"] - 1)
    if "enum" in prop:
        out.append("not-" + str(prop["enum"][0]))
    if kind == "array":
        out.append(["?"])
    if "pattern" in prop:
        out.append("Not A Valid Value!")
    return out


SCHEMA = JobSpec.model_json_schema()
CASES = [(f, v) for f, prop in _leaves(SCHEMA, SCHEMA.get("$defs", {})) for v in _bad_values(prop)]


def test_every_field_is_covered():
    fields = {f for f, _ in CASES}
    assert {"name", "algorithm.k", "algorithm.step_norm", "rollout.group_size", "rollout.max_staleness",
            "rollout.mode", "resources.engines", "tasks.tasks", "model.path"} <= fields
    assert len(fields) >= 30


@pytest.mark.parametrize(("field", "value"), CASES, ids=[f"{f}={json.dumps(v)}" for f, v in CASES])
def test_bad_field_is_a_422_problem_naming_it(api, field, value):
    status, headers, body = call(api, "POST", "/v1/jobs", _body(field, value))
    assert status == 422, body
    assert headers["content-type"].startswith("application/problem+json")
    assert any(e["field"] == field or e["field"].startswith(field + "[") for e in body["errors"]), body
    assert body["status"] == 422 and body["title"]


def test_cross_field_rules_name_the_field(api):
    status, _, body = call(api, "POST", "/v1/jobs", {"name": "sync", "rollout": {"mode": "sync", "max_staleness": 2}})
    assert status == 422 and "max_staleness" in body["detail"]
    status, _, body = call(api, "POST", "/v1/jobs", {"name": "esc", "model": {"path": "../../etc"}})
    assert status == 422 and "path" in body["detail"]
    status, _, body = call(api, "POST", "/v1/jobs", {"name": "extra", "algoritm": {}})
    assert status == 422 and body["errors"][0]["field"] == "algoritm"


def test_auth_not_found_and_size_limits(api):
    for token in (None, "wrong-token"):
        status, headers, body = call(api, "GET", "/v1/jobs", token=token)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert headers["content-type"].startswith("application/problem+json")
    assert call(api, "POST", "/v1/jobs", {"name": "noauth"}, token=None)[0] == 401
    status, _, body = call(api, "GET", "/v1/jobs/no-such-job")
    assert status == 404 and "job_id" in body["detail"]
    assert call(api, "DELETE", "/v1/jobs/no-such-job")[0] == 404
    assert call(api, "GET", "/v1/jobs/" + "x" * 300)[0] == 404
    big = json.dumps({"name": "big", "tasks": {"tasks": ["miniwob/click-test"] * 400}}).encode()
    status, _, body = call(api, "POST", "/v1/jobs", raw=big)
    assert status == 413 and body["detail"].startswith("body:")
    # Chunked bodies are bounded too.
    conn = http.client.HTTPConnection("127.0.0.1", api.api_port, timeout=30)
    conn.request("POST", "/v1/jobs", body=iter([big[:3000], big[3000:]]), encode_chunked=True,
                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                          "Transfer-Encoding": "chunked"})
    assert conn.getresponse().status == 413
    conn.close()
    status, _, body = call(api, "POST", "/v1/jobs", raw=b"{not json")
    assert status == 422
    # Health, metrics and the schemas need no token.
    assert call(api, "GET", "/v1/schema/job", token=None)[0] == 200
    assert call(api, "GET", "/openapi.json", token=None)[0] == 200
    conn = http.client.HTTPConnection("127.0.0.1", api.http_port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    assert "asyncwebrl_api_requests_rejected_total" in text and 'reason="unauthorized"' in text


def test_help_and_refusing_to_start_without_a_token(redis_server):
    out = subprocess.run([sys.executable, "-m", "asyncwebrl.api", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--api-token" in out.stdout and "ASYNCWEBRL_API_TOKEN" in out.stdout
    out = subprocess.run([sys.executable, "-m", "asyncwebrl.api", "--redis-url", redis_server.url],
                         capture_output=True, text=True, env={"PATH": "/usr/bin"})
    assert out.returncode == 2 and "api_token" in out.stderr


def test_sigterm_stops_cleanly(redis_server, tmp_path):
    port = free_port()
    proc = ServiceProcess("api", ["--redis-url", redis_server.url, "--key-prefix", PREFIX, "--api-port", str(port)],
                          {"ASYNCWEBRL_API_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password},
                          tmp_path / "api.log")
    proc.wait_ready()
    wait_for_port(port, 30, proc.proc)
    assert proc.stop(signal.SIGTERM, timeout=20) == 0, proc.logs()[-2000:]


def test_sync_mode_alone_means_no_staleness(api):
    status, _, job = call(api, "POST", "/v1/jobs", {"name": "sync-alone", "rollout": {"mode": "sync"}})
    assert status == 201 and job["spec"]["rollout"]["max_staleness"] == 0


def test_task_names_may_carry_a_site():
    spec = JobSpec(name="x", tasks={"tasks": ["miniwob/click-test", "webgym-lite/mail/invoice-amount"]})
    assert spec.tasks.tasks[1] == "webgym-lite/mail/invoice-amount"
    for bad in ("click-test", "webgym-lite//mail", "webgym-lite/mail/", "a/b/c/d/e", "../etc/passwd"):
        with pytest.raises(ValueError, match="tasks"):
            JobSpec(name="x", tasks={"tasks": [bad]})


@pytest.fixture(scope="module")
def api_with_buffer(redis_server, tmp_path_factory):
    """An api (no launcher) and a real buffer over one redis-server, with one key prefix."""
    from tests.buffer.conftest import TOKEN as BUFFER_TOKEN
    from tests.buffer.conftest import start_buffer

    prefix = "api-purge:"
    d = tmp_path_factory.mktemp("api-purge")
    buffer = start_buffer(d, redis_server, "--key-prefix", prefix, "--blob-release-grace-s", "0")
    port = free_port()
    proc = ServiceProcess("api", ["--redis-url", redis_server.url, "--key-prefix", prefix, "--log-format", "text",
                                  "--api-port", str(port), "--buffer-target", buffer.target],
                          {"ASYNCWEBRL_API_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password,
                           "ASYNCWEBRL_AUTH_TOKEN": BUFFER_TOKEN}, d / "api.log")
    proc.wait_ready()
    wait_for_port(port, 30, proc.proc)
    proc.api_port, proc.prefix, proc.buffer = port, prefix, buffer
    yield proc
    assert proc.stop() == 0, proc.logs()[-2000:]
    assert buffer.stop() == 0, buffer.logs()[-2000:]


def test_purge_deletes_the_job_and_exactly_its_buffer_data(api_with_buffer, redis_server):
    from asyncwebrl.v1 import buffer_pb2
    from tests.buffer.conftest import get_batch, make_group, put_blobs, stub_for

    api, r, prefix = api_with_buffer, redis_server.client(), api_with_buffer.prefix
    status, _, job = call(api, "POST", "/v1/jobs", {"name": "purge"})
    assert status == 201, job
    jid = job["id"]
    # The job's RL data, its warm-start's and an evaluation's; and jobs whose ids share a prefix with it.
    mine = [jid, f"{jid}-warm", f"{jid}-ev1"]
    others = [jid[:-1], f"{jid}-x", f"{jid}-ev10"]
    r.hset(f"{prefix}api:evals:{jid}", "1", json.dumps({"n": 1, "job_id": jid, "state": "succeeded"}))
    ch, stub = stub_for(api.buffer)
    try:
        for bj in mine + others:
            refs = put_blobs(stub, bj, [f"{bj}-a", "shared"], size=500)
            put_blobs(stub, bj, [f"{bj}-loose"], size=100)
            for _ in range(2):
                stub.PutGroup(buffer_pb2.PutGroupRequest(group=make_group(bj, refs)))
            get_batch(stub, bj, groups=1)  # one pending
        job_bytes = sum(stub.Stats(buffer_pb2.BufferStatsRequest(job_id=bj)).blob_bytes for bj in mine)
    finally:
        ch.close()
    assert job_bytes == 3 * 1100

    def keys(bj):
        jp = f"{prefix}job:{bj}:"
        return {k: r.dump(k) for k in sorted(k.decode() for k in r.scan_iter(match=jp + "*")) if k.startswith(jp)}

    before = {bj: keys(bj) for bj in others}
    total = int(r.get(f"{prefix}blobs:bytes"))

    # This api runs no jobs: a pending job cannot be stopped from here, so nothing is deleted.
    status, _, refused = call(api, "DELETE", f"/v1/jobs/{jid}?purge=true")
    assert status == 409 and refused["detail"].startswith("job_id:"), refused
    assert all(keys(bj) for bj in mine) and int(r.get(f"{prefix}blobs:bytes")) == total

    assert call(api, "DELETE", f"/v1/jobs/{jid}")[2]["state"] == "cancelled"
    status, _, gone = call(api, "DELETE", f"/v1/jobs/{jid}?purge=true")
    assert status == 200, gone
    assert gone["state"] == "deleted" and gone["buffer_jobs"] == mine
    d = gone["deleted"]
    assert (d["groups"], d["pending"], d["blobs"], d["blob_bytes"]) == (6, 3, 9, job_bytes)
    assert d["blob_refs"] == 12  # two groups, two screenshots each, in each of three buffer jobs

    assert call(api, "GET", f"/v1/jobs/{jid}")[0] == 404, "a purged job is gone"
    assert jid not in [j["id"] for j in call(api, "GET", "/v1/jobs?page_size=200")[2]["jobs"]]
    assert not r.exists(f"{prefix}api:job:{jid}", f"{prefix}api:evals:{jid}")
    for bj in mine:
        assert keys(bj) == {}, f"{bj}: every key deleted, blobs and their references included"
        assert not r.sismember(f"{prefix}jobs", bj)
    assert int(r.get(f"{prefix}blobs:bytes")) == total - job_bytes
    for bj in others:
        assert keys(bj) == before[bj], f"{bj} shares a prefix with the purged job and keeps all it had"

    status, _, again = call(api, "DELETE", f"/v1/jobs/{jid}?purge=true")
    assert status == 404 and again["detail"].startswith("job_id:"), "a second purge finds nothing to delete"
    assert int(r.get(f"{prefix}blobs:bytes")) == total - job_bytes
    status, _, bad = call(api, "DELETE", "/v1/jobs/bad:id*?purge=true")
    assert status == 404 and bad["detail"].startswith("job_id:")
    status, _, bad = call(api, "DELETE", f"/v1/jobs/{jid}?purge=maybe")
    assert status == 422 and bad["errors"][0]["field"] == "purge"
