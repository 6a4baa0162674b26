"""Task sets (``/v1/tasksets`` and ``asyncwebrl tasksets``) against a real api process over a real redis-server:
register, list with paging, show, delete; every kind of bad file answered with the line and field at fault;
loading by path under a root and refusing anything outside it; jobs naming a set; the CLI round trip."""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import subprocess
import sys
import urllib.parse

import pytest

from asyncwebrl.common.localstack import ServiceProcess, free_port, wait_for_port
from asyncwebrl.common.tasksets import TaskSetStore

ROOT = pathlib.Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "tasksets" / "webgym-sample.jsonl"
TOKEN = "tasksets-test-token"
PREFIX = "api-tasksets:"
MAX_BYTES = 32 * 1024
MAX_TASKS = 20
SCRIPT = pathlib.Path(sys.executable).parent / "asyncwebrl"
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "asyncwebrl.api.cli"]


@pytest.fixture(scope="module")
def api(redis_server, tmp_path_factory):
    d = tmp_path_factory.mktemp("api-tasksets")
    root = d / "root"
    (root / "sets").mkdir(parents=True)
    (root / "sets" / "sample.jsonl").write_bytes(SAMPLE.read_bytes())
    (d / "outside.jsonl").write_bytes(SAMPLE.read_bytes())
    (root / "sets" / "escape.jsonl").symlink_to(d / "outside.jsonl")
    (root / "sets" / "inside-link.jsonl").symlink_to(root / "sets" / "sample.jsonl")
    port = free_port()
    proc = ServiceProcess("api", ["--redis-url", redis_server.url, "--key-prefix", PREFIX, "--log-format", "text",
                                  "--api-port", str(port), "--max-body-bytes", "4096",
                                  "--max-taskset-bytes", str(MAX_BYTES), "--max-taskset-tasks", str(MAX_TASKS),
                                  "--taskset-roots", str(root)],
                          {"ASYNCWEBRL_API_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password},
                          d / "api.log")
    proc.wait_ready()
    wait_for_port(port, 30, proc.proc)
    proc.api_port, proc.root = port, root
    yield proc
    assert proc.stop() == 0, proc.logs()[-2000:]


def call(api, method: str, path: str, raw: bytes | None = None, body=None,
         content_type: str = "application/x-ndjson", token: str | None = TOKEN) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", api.api_port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        raw, content_type = json.dumps(body).encode(), "application/json"
    if raw is not None:
        headers["Content-Type"] = content_type
    conn.request(method, path, body=raw, headers=headers)
    resp = conn.getresponse()
    text = resp.read()
    conn.close()
    if resp.status >= 400:
        assert resp.getheader("Content-Type", "").startswith("application/problem+json"), text[:300]
    return resp.status, json.loads(text) if text else {}


def task(i, **change) -> dict:
    out = {"task_id": f"t{i}", "task_name": f"Find fact {i}.", "website": "https://example.com/",
           "difficulty": 1 + i % 10, "evaluator_reference": ["The answer gives the fact."]}
    out.update(change)
    return out


def jsonl(*lines) -> bytes:
    return "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines).encode()


def test_register_show_and_delete_the_sample(api):
    status, meta = call(api, "POST", "/v1/tasksets?name=sample", SAMPLE.read_bytes())
    assert status == 201, meta
    assert meta["name"] == "sample" and meta["tasks"] == 6 and meta["source"] == "upload"
    assert meta["by_split"]["test_ood"] == 1 and sum(meta["by_split"].values()) == 6
    assert meta["by_level"]["8"] == 1 and sum(meta["by_level"].values()) == 6
    assert meta["by_difficulty"] == {"easy": 2, "medium": 3, "hard": 1}
    import hashlib
    assert meta["sha256"] == hashlib.sha256(SAMPLE.read_bytes()).hexdigest()
    # The same name again is refused unless replaced.
    status, problem = call(api, "POST", "/v1/tasksets?name=sample", SAMPLE.read_bytes())
    assert status == 409 and problem["detail"].startswith("name: a task set 'sample' exists")
    assert call(api, "POST", "/v1/tasksets?name=sample&replace=true", SAMPLE.read_bytes())[0] == 201

    status, page = call(api, "GET", "/v1/tasksets/sample?limit=4")
    assert status == 200 and page["taskset"]["tasks"] == 6 and page["next_cursor"] == 4
    assert [t["id"] for t in page["tasks"]] == ["sample-0001", "sample-0002", "sample-0003", "sample-0004"]
    assert page["tasks"][2]["allowed_origins"] == ["https://login.example.net"]
    status, rest = call(api, "GET", "/v1/tasksets/sample?limit=4&cursor=4")
    assert [t["id"] for t in rest["tasks"]] == ["sample-0005", "6"] and rest["next_cursor"] is None
    assert rest["tasks"][0]["split"] == "test_ood" and rest["tasks"][1]["instruction"].startswith("In the example")

    assert call(api, "DELETE", "/v1/tasksets/sample") == (200, {"name": "sample", "state": "deleted"})
    status, problem = call(api, "GET", "/v1/tasksets/sample")
    assert status == 404 and problem["detail"] == "name: no task set 'sample'"
    assert call(api, "DELETE", "/v1/tasksets/sample")[0] == 404
    assert call(api, "GET", "/v1/tasksets", token=None)[0] == 401


def test_listing_pages_in_name_order(api):
    names = [f"page-{c}" for c in "edcba"]
    for name in names:
        assert call(api, "POST", f"/v1/tasksets?name={name}", jsonl(task(1)))[0] == 201
    seen, cursor = [], ""
    for _ in range(20):
        status, page = call(api, "GET", f"/v1/tasksets?limit=2&cursor={cursor}")
        assert status == 200 and len(page["tasksets"]) <= 2
        seen += [m["name"] for m in page["tasksets"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    mine = [n for n in seen if n.startswith("page-")]
    assert mine == sorted(names) and seen == sorted(seen) and len(seen) == len(set(seen))
    assert call(api, "GET", "/v1/tasksets?cursor=Bad%20Cursor")[0] == 422
    for name in names:
        assert call(api, "DELETE", f"/v1/tasksets/{name}")[0] == 200


@pytest.mark.parametrize("lines, line, field, text", [
    ((task(1), "{not json"), 2, "json", "invalid JSON"),
    ((task(1), {k: v for k, v in task(2).items() if k != "website"}), 2, "website", "missing"),
    ((task(1), task(2), task(3, website="ftp://example.com/")), 3, "website", "must be an http(s) URL"),
    ((task(1, website="https://me:pw@example.com/"),), 1, "website", "must not contain credentials"),
    ((task(1, difficulty=11),), 1, "difficulty", "must be in 1-10, got 11"),
    ((task(1, split="dev"),), 1, "split", "must be one of train, test, test_ood"),
    ((task(1, allowed_origins=["https://a.example.com/x"]),), 1, "allowed_origins[0]", "must be an origin"),
    (tuple(task(i) for i in range(MAX_TASKS + 1)), MAX_TASKS + 1, "file", f"more than {MAX_TASKS} tasks"),
])
def test_a_bad_file_names_the_line_and_field(api, lines, line, field, text):
    status, problem = call(api, "POST", "/v1/tasksets?name=bad", jsonl(*lines))
    assert status == 422, problem
    assert problem["detail"].startswith(f"line {line}: {field}: {text}"), problem
    assert problem["errors"][0] == {"field": f"line[{line}].{field}", "message": problem["errors"][0]["message"]}
    assert problem["errors"][0]["message"].startswith(text)
    assert call(api, "GET", "/v1/tasksets/bad")[0] == 404


def test_every_bad_line_is_listed_and_bounds_hold(api):
    status, problem = call(api, "POST", "/v1/tasksets?name=bad", jsonl(task(1, difficulty=0), "[]", task(3)))
    assert status == 422 and [e["field"] for e in problem["errors"]] == ["line[1].difficulty", "line[2].json"]
    assert "(and 1 more)" in problem["detail"]
    assert call(api, "POST", "/v1/tasksets?name=bad", b"\n\n")[1]["detail"] == "file: holds no tasks"
    # Over --max-taskset-bytes: 413, with or without a length; while a job body keeps --max-body-bytes.
    big = jsonl(*[task(i, task_name="x" * 3000) for i in range(12)])
    assert len(big) > MAX_BYTES
    status, problem = call(api, "POST", "/v1/tasksets?name=big", big)
    assert status == 413 and problem["detail"] == f"body: larger than {MAX_BYTES} bytes"
    conn = http.client.HTTPConnection("127.0.0.1", api.api_port, timeout=30)
    conn.request("POST", "/v1/tasksets?name=big", body=iter([big[:20000], big[20000:]]),
                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"},
                 encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()
    fits = jsonl(*[task(i, task_name="x" * 3000) for i in range(8)])
    assert 4096 < len(fits) < MAX_BYTES
    assert call(api, "POST", "/v1/tasksets?name=fits", fits)[0] == 201
    assert call(api, "POST", "/v1/jobs", body={"name": "x", "pad": "y" * 5000})[0] == 413
    assert call(api, "POST", "/v1/tasksets?name=fits2", fits, content_type="image/png")[0] == 415
    assert call(api, "POST", "/v1/tasksets?name=Bad_Name", fits)[0] == 422
    assert call(api, "DELETE", "/v1/tasksets/fits")[0] == 200


def test_loading_by_path_under_a_root(api):
    status, meta = call(api, "POST", "/v1/tasksets?name=by-path&path=sets/sample.jsonl")
    assert status == 201 and meta["tasks"] == 6 and meta["source"] == "path:sets/sample.jsonl"
    assert call(api, "POST", "/v1/tasksets?name=by-link&path=sets/inside-link.jsonl")[0] == 201
    refused = {"/etc/passwd": 422, "../outside.jsonl": 422, "sets/../../outside.jsonl": 422,
               "sets/escape.jsonl": 422, "sets/missing.jsonl": 404}
    for rel, expected in refused.items():
        status, problem = call(api, "POST", f"/v1/tasksets?name=refused&path={urllib.parse.quote(rel)}")
        assert status == expected, (rel, problem)
        assert problem["detail"].startswith("path: "), problem
    status, problem = call(api, "POST", "/v1/tasksets?name=both&path=sets/sample.jsonl", jsonl(task(1)))
    assert status == 422 and "not both" in problem["detail"]
    for name in ("by-path", "by-link"):
        assert call(api, "DELETE", f"/v1/tasksets/{name}")[0] == 200


def test_a_job_names_an_existing_set_and_keeps_it(api):
    status, problem = call(api, "POST", "/v1/jobs", body={"name": "web", "tasks": {"taskset": "nosuch"}})
    assert status == 422 and problem["errors"][0]["field"] == "tasks.taskset", problem
    assert call(api, "POST", "/v1/tasksets?name=used", SAMPLE.read_bytes())[0] == 201
    status, job = call(api, "POST", "/v1/jobs", body={"name": "web", "tasks": {"taskset": "used",
                                                                              "taskset_difficulties": [1, 2, 8]}})
    assert status == 201 and job["spec"]["tasks"]["taskset"] == "used", job
    assert call(api, "POST", "/v1/jobs", body={"name": "web", "tasks": {"taskset_difficulties": [11]}})[0] == 422
    status, problem = call(api, "DELETE", "/v1/tasksets/used")
    assert status == 409 and job["id"] in problem["detail"]
    assert call(api, "DELETE", f"/v1/jobs/{job['id']}")[1]["state"] == "cancelled"
    assert call(api, "DELETE", "/v1/tasksets/used")[0] == 200


async def test_the_store_bounds_sets_and_bytes(redis_server):
    from asyncwebrl.common.redisclient import make_redis
    from asyncwebrl.common.tasksets import TaskSetExists, TaskSetsFull
    from asyncwebrl.common.webgym import load_webgym

    redis = make_redis(redis_server.url, redis_server.password)
    tasks = load_webgym(SAMPLE)
    store = TaskSetStore(redis, "store-bounds:", max_sets=2, max_total_bytes=10_000)
    meta = await store.put("a", tasks, "0" * 64)
    assert 0 < meta["bytes"] < 5000 and await store.exists("a")
    with pytest.raises(TaskSetExists):
        await store.put("a", tasks, "0" * 64)
    await store.put("b", tasks[:1], "0" * 64)
    with pytest.raises(TaskSetsFull):
        await store.put("c", tasks[:1], "0" * 64)  # a third set
    with pytest.raises(TaskSetsFull):
        await store.put("b", tasks * 20, "0" * 64, replace=True)  # too many bytes
    assert [t["id"] for t in await store.tasks("a")] == [t.id for t in tasks]
    assert sorted(k.decode() for k in await redis.keys("store-bounds:*")) == [
        "store-bounds:taskset:a:meta", "store-bounds:taskset:a:tasks", "store-bounds:taskset:b:meta",
        "store-bounds:taskset:b:tasks", "store-bounds:tasksets", "store-bounds:tasksets:bytes"]
    assert await store.delete("a") and not await store.delete("a")
    assert (await store.list())[0][0]["name"] == "b"
    await redis.aclose()


def cli(api, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCWEBRL_")}
    return subprocess.run([*CLI, *args, "--api", f"http://127.0.0.1:{api.api_port}", "--token", TOKEN],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env, input=stdin)


def test_cli_round_trip(api, tmp_path):
    top = subprocess.run([*CLI, "--help"], capture_output=True, text=True, timeout=60)
    assert "tasksets" in top.stdout
    out = cli(api, "tasksets", "add", str(SAMPLE))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("webgym-sample: 6 tasks")
    out = cli(api, "tasksets", "add", str(SAMPLE), "--name", "cli-copy")
    assert out.returncode == 0, out.stderr
    assert cli(api, "tasksets", "add", str(SAMPLE), "--name", "cli-copy").returncode == 1
    assert cli(api, "tasksets", "add", "sets/sample.jsonl", "--remote", "--name", "cli-remote").returncode == 0
    listed = cli(api, "tasksets", "list")
    assert listed.returncode == 0
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["webgym-sample"][1] == "6" and {"cli-copy", "cli-remote"} <= set(rows)
    shown = cli(api, "tasksets", "show", "cli-copy")
    assert shown.returncode == 0 and "sample-0004" in shown.stdout and "test_ood:1" in shown.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(task(1)) + "\n" + json.dumps(task(2, difficulty=11)) + "\n{oops\n")
    out = cli(api, "tasksets", "add", str(bad))
    assert out.returncode == 2, out
    assert "line 2: difficulty: must be in 1-10, got 11" in out.stderr and "line[3].json" in out.stderr
    for name in ("webgym-sample", "cli-copy", "cli-remote"):
        out = cli(api, "tasksets", "delete", name)
        assert out.returncode == 0 and out.stdout.strip() == f"{name} deleted", out
    out = cli(api, "tasksets", "show", "cli-copy")
    assert out.returncode == 1 and "no task set 'cli-copy'" in out.stderr
