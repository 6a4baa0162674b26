"""A WebGym job end to end, offline: the "live web" is two small sites on loopback aiohttp servers named in the
task file as external hosts (shop.test, news.test), which envfleet reaches only through --resolve-host-map; a
third host (down.test) is mapped to a closed port. The task set is registered over REST, a job naming it and a
judge is submitted over REST, and the api's local launcher runs its engine (the tiny random model, on CPU),
gateway and trainer against real envfleet (Chromium), buffer, weightsync and Redis. The judge is a FAKE
(no judge model can run here): a scripted OpenAI-compatible server that passes an answer holding the rubric's
reference answer.

The random model never answers on its own: the job's warm-start learns the train tasks' reference answers (the
reference agent of a task set), so RL's episodes answer and are judged, and the verdicts reach the trainer and the
viewer's documents. The held-out tasks' answers are not in the train split: there the model answers wrongly or
runs to its step limit, which ends an episode without a call to the judge."""

from __future__ import annotations

import asyncio
import http.client
import json
import pathlib
import re
import subprocess
import sys
import threading
import urllib.request

import pytest

from asyncwebrl.common.localstack import ServiceProcess, free_port, wait_for_port
from tests.api.test_api import call
from tests.helpers import start_envfleet_and_buffer, wait_until

TOKEN = "webgym-job-api-token"
SHARED = "webgym-job-shared-token"
PREFIX = "webgym-job-test:"
SET = "e2e-web"


class Loopback:
    """The two sites and the FAKE judge, on one event loop in a thread of the test."""

    def __init__(self) -> None:
        self.judge_calls: list[dict] = []
        self.site_hits: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.ports: dict[str, int] = {}
        self._runners = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    def _page(self, site: str, title: str, body: str):
        from aiohttp import web

        async def handler(request):
            self.site_hits.append(f"{site}{request.path}")
            return web.Response(text=f"<html><head><title>{title}</title></head><body>{body}</body></html>",
                                content_type="text/html")
        return handler

    async def _judge(self, request):
        """OpenAI-compatible: PASS every fact when the agent's answer holds the reference answer, else FAIL."""
        from aiohttp import web

        doc = await request.json()
        content = doc["messages"][-1]["content"]
        text = content if isinstance(content, str) else "\n".join(p.get("text", "") for p in content)
        reference = re.search(r"^Reference answer: (.*)$", text, re.M)
        answer = re.search(r"^Agent's answer: (.*)$", text, re.M)
        facts = len(re.findall(r"^FACT \d+: PASS or FAIL$", text, re.M))
        ok = bool(reference and answer and reference.group(1).strip() in answer.group(1))
        self.judge_calls.append({"reference": reference and reference.group(1), "answer": answer and answer.group(1),
                                 "passed": ok})
        word = "PASS" if ok else "FAIL"
        reply = "".join(f"FACT {i}: {word}\n" for i in range(1, facts + 1)) + f"VERDICT: {word}"
        return web.json_response({"id": "fake", "object": "chat.completion", "model": doc.get("model", ""),
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": reply}}]})

    async def _serve(self, name: str, routes) -> None:
        from aiohttp import web

        app = web.Application()
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        self.ports[name] = site._server.sockets[0].getsockname()[1]

    async def _start(self) -> None:
        await self._serve("shop", [
            ("GET", "/", self._page("shop", "Example shop", '<h1>Shop</h1><a href="/mug">Blue mug</a>')),
            ("GET", "/mug", self._page("shop", "Blue mug", "<h1>Blue mug</h1><p>Price: $12.00</p>")),
        ])
        await self._serve("news", [
            ("GET", "/", self._page("news", "Example news", '<h1>News</h1><a href="/a1">Rain tomorrow</a>')),
            ("GET", "/a1", self._page("news", "Rain tomorrow", "<p>By Ada Lovelace</p>")),
        ])
        await self._serve("judge", [("POST", "/v1/chat/completions", self._judge)])

    def close(self) -> None:
        async def stop():
            for r in self._runners:
                await r.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def tasks(ports: dict[str, int], closed: int) -> list[dict]:
    def task(tid, site, split, level, reference, instruction):
        return {"task_id": tid, "task_name": instruction, "website": site, "difficulty": level, "split": split,
                "evaluator_reference": ["The answer gives the fact asked for."], "reference_answer": reference}

    shop, news = f"http://shop.test:{ports['shop']}/", f"http://news.test:{ports['news']}/"
    return [
        task("shop-mug", shop, "train", 2, "$12.00", "Find the price of the blue mug."),
        task("news-author", news, "train", 5, "Ada Lovelace", "Find who wrote the article about rain."),
        task("down-site", f"http://down.test:{closed}/", "train", 2, "x", "Open the site that is down."),
        task("shop-home", shop, "test", 1, "Shop", "Report the shop's heading."),
        task("news-ood", news, "test_ood", 8, "Rain tomorrow", "Report the top headline."),
    ]


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory, chromium_path):
    logs = tmp_path_factory.mktemp("webgym-job")
    web = Loopback()
    closed = free_port()  # nothing listens there: down.test's site is unreachable
    envfleet, buffer, env, common = start_envfleet_and_buffer(
        redis_server, PREFIX, SHARED, logs, chromium_path,
        envfleet_args=("--resolve-host-map", "shop.test=127.0.0.1,news.test=127.0.0.1,down.test=127.0.0.1"))
    weightsync = ServiceProcess("weightsync", [*common, "--discovery", "none"], env, logs / "weightsync.log")
    weightsync.wait_ready()
    port = free_port()
    api = ServiceProcess("api", [*common, "--api-port", str(port), "--launcher", "local", "--run-dir",
                                 str(logs / "runs"), "--envfleet-target", envfleet.target, "--buffer-target",
                                 buffer.target, "--weightsync-target", weightsync.target],
                         {**env, "ASYNCWEBRL_API_TOKEN": TOKEN}, logs / "api.log")
    api.wait_ready()
    wait_for_port(port, 30, api.proc)
    api.api_port = port
    api.envfleet, api.web, api.closed = envfleet, web, closed
    yield api
    try:
        assert api.stop(timeout=90) == 0, api.logs()[-3000:]
    finally:
        weightsync.stop()
        buffer.stop()
        envfleet.stop()
        web.close()


def metric(port: int, name: str, labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(f"{name}{{{labels}"))


def get(api, path: str):
    status, _, doc = call(api, "GET", path, token=TOKEN)
    assert status == 200, (path, doc)
    return doc


def raw_get(api, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", api.api_port, timeout=30)
    conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    text = resp.read().decode(errors="replace")
    conn.close()
    assert resp.status == 200, text[:300]
    return text


def register(api, records: list[dict]) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", api.api_port, timeout=30)
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    conn.request("POST", f"/v1/tasksets?name={SET}", body=body,
                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"})
    resp = conn.getresponse()
    doc = json.loads(resp.read())
    conn.close()
    assert resp.status == 201, doc
    return doc


def episodes(api, jid: str, source: str) -> list[dict]:
    """Every kept episode of a source, each with its full document (judge verdict and latency)."""
    page = get(api, f"/v1/jobs/{jid}/episodes?source={source}&page_size=200")
    return [get(api, f"/v1/jobs/{jid}/episodes/{source}/{e['id']}") for e in page["episodes"]]


def check_judging(docs: list[dict], web: Loopback) -> None:
    """An answered episode is judged (its verdict and latency kept); any other end fails without the judge."""
    for d in docs:
        if d["finish_reason"] == "answer":
            assert d["judged"] and d["judge_text"].strip().endswith(("VERDICT: PASS", "VERDICT: FAIL"))
            assert d["judge_latency_s"] >= 0 and d["success"] == d["judge_text"].strip().endswith("PASS")
        else:
            assert d["finish_reason"] == "step_limit", d["finish_reason"]
            assert not d["judged"] and not d["success"] and d["judge_text"] == "" and d["judge_latency_s"] == 0
    # Every verdict kept came from the fake judge (more calls than kept verdicts: not every group is kept).
    assert len(web.judge_calls) >= sum(d["judged"] for d in docs)


@pytest.mark.timeout(600)
def test_a_webgym_job_trains_on_its_task_set_judged_and_is_evaluated_by_split(stack, tmp_path):
    api, web = stack, stack.web
    records = tasks(web.ports, stack.closed)
    meta = register(api, records)
    assert meta["tasks"] == len(records), meta
    job = {
        "name": "webgym", "model": {"path": "tiny/qwen2_5_vl"},
        # train_seed 31: the gateway's first group is the third train task (down-site), its next ones the sites.
        "tasks": {"taskset": SET, "train_seed": 31},
        # The warm-start learns the train tasks' reference answers; RL's groups are kept even when every
        # episode of one fails or passes, so the job reaches its steps whatever the verdicts.
        "algorithm": {"lr": 1e-5, "keep_zero_variance": True, "max_steps": 2, "warm_start_steps": 4,
                      "warm_start_batch": 8},
        "rollout": {"group_size": 2, "batch_groups": 1, "max_staleness": 1, "concurrency": 4, "max_new_tokens": 48,
                    "steps_easy": 2, "steps_medium": 2, "steps_hard": 2},
        "resources": {"engines": 1, "device": "cpu"},
        "judge": {"url": f"http://127.0.0.1:{web.ports['judge']}", "kind": "openai", "model": "fake-judge",
                  "timeout_s": 10, "retries": 0},
    }
    status, _, created = call(api, "POST", "/v1/jobs", job, token=TOKEN)
    assert status == 201, created
    jid = created["id"]
    done = wait_until(lambda: (j := get(api, f"/v1/jobs/{jid}"))["state"] in ("succeeded", "failed") and j, 420,
                      "the job reaches max_steps")
    assert done["state"] == "succeeded", done

    # Groups reached the trainer: its metrics series has both steps.
    assert [r["step"] for r in get(api, f"/v1/jobs/{jid}/metrics")["series"]] == [1, 2]

    # The trainer's episodes ran on the set's train tasks, through the loopback sites.
    train = episodes(api, jid, "train")
    assert len(train) >= 4, len(train)
    reachable = {f"taskset/{SET}/train/shop-mug": "easy", f"taskset/{SET}/train/news-author": "medium"}
    assert {e["task"] for e in train} <= set(reachable), {e["task"] for e in train}
    assert all(reachable[e["task"]] == e["difficulty"] and 1 <= e["length"] <= 2 for e in train)
    assert any(h.startswith(("shop/", "news/")) for h in web.site_hits)
    check_judging(train, web)
    # The warm-start's demonstrations were the set's reference answers, judged like any answer (the judge
    # passing them checks the judge); RL's episodes then answered and were judged PASS, verdicts kept.
    warm = get(api, f"/v1/jobs/{jid}/metrics?phase=warm_start")["series"]
    assert [r["step"] for r in warm] == [1, 2, 3, 4], warm
    references = {"$12.00", "Ada Lovelace"}
    demonstrated = [c for c in web.judge_calls if c["reference"] in references and c["answer"] == c["reference"]]
    assert len(demonstrated) >= 32, f"4 steps x 8 demonstrations, each judged: {len(demonstrated)}"
    passed = [e for e in train if e["judged"] and e["success"]]
    assert passed and all(e["finish_reason"] == "answer" and "VERDICT: PASS" in e["judge_text"] for e in passed), \
        [(e["task"], e["finish_reason"], e["judge_text"][-20:]) for e in train]

    # The site that is down: its Allocate calls are environment faults (envfleet's site_unreachable counter),
    # never episodes; the gateway drops their groups as env_error at once instead of waiting for the site.
    port = stack.envfleet.http_port
    # Each of the group's 2 episodes, and once more for its --env-retries.
    assert metric(port, "asyncwebrl_envfleet_site_unreachable_total", 'kind="refused"') >= 4
    assert metric(port, "asyncwebrl_envfleet_allocations_total", 'result="unreachable"') >= 4
    log = raw_get(api, f"/v1/jobs/{jid}/logs/rollout?tail_bytes=1000000")
    assert "group dropped (env_error)" in log and "site unreachable: http://down.test:" in log
    assert not any("down-site" in e["task"] for e in train)

    # Evaluation on the test split: test and test_ood tasks, reported by difficulty and apart by split.
    status, _, ev = call(api, "POST", f"/v1/jobs/{jid}/evaluate", {"groups": 3, "group_size": 2}, token=TOKEN)
    assert status == 202, ev
    result = wait_until(lambda: (e := get(api, f"/v1/jobs/{jid}/evaluations/{ev['id']}"))["state"] != "running"
                        and e, 300, "evaluation finished")
    assert result["state"] == "succeeded", result
    summary = result["result"]
    assert summary["episodes"] == 6 and summary["groups"] == 3
    expected = {f"taskset/{SET}/test/shop-home": ("easy", "test"),
                f"taskset/{SET}/test_ood/news-ood": ("hard", "test_ood")}
    assert set(summary["by_task"]) <= set(expected), summary["by_task"]
    ran = [expected[t] for t in summary["by_task"]]
    assert set(summary["by_difficulty"]) == {d for d, _ in ran}
    assert set(summary["by_split"]) == {s for _, s in ran}
    assert sum(s["episodes"] for s in summary["by_split"].values()) == 6
    assert all(0.0 <= s["success"] <= 1.0 for s in summary["by_difficulty"].values())
    evaluated = episodes(api, jid, ev["id"])
    assert len(evaluated) == 6 and {e["task"] for e in evaluated} == set(summary["by_task"])
    check_judging(evaluated, web)

    # The report, as a user asks for it: the evaluation by difficulty and split, and the learning curve.
    out = pathlib.Path(tmp_path) / "report"
    done = subprocess.run([sys.executable, "-m", "asyncwebrl.api.cli", "--api", f"http://127.0.0.1:{api.api_port}",
                           "--token", TOKEN, "report", jid, "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["evaluations"]["final"]["id"] == ev["id"] and report["throughput"]["rl_steps"] == 2
    text = (out / "report.md").read_text()
    for split, d in summary["by_split"].items():
        assert f"| after RL | {result['version']} | split {split} | {d['episodes']} | {d['success']:.3f}" in text
    assert (out / "learning_curve.png").stat().st_size > 10_000 and done.stdout.startswith("# asyncwebrl report")
    print(f"judge calls {len(web.judge_calls)}; train episodes {len(train)}; finishes "
          f"{sorted({e['finish_reason'] for e in train + evaluated})}; by_split {summary['by_split']}")
