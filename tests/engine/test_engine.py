"""The embedded engine through its HTTP API: logprobs against the trainer's function,
determinism, batching, weight updates, pause/abort/continue, bad requests."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest
import torch

from asyncwebrl.common.agent.prompt import collapse_image_tokens, prompt_ids
from asyncwebrl.common.agent.vision import decode_image, process_images
from asyncwebrl.common.models.loading import load_policy
from asyncwebrl.common.models.logprobs import Sample, output_logprobs
from asyncwebrl.engine.service import EXPANDED_RUN_STATUS, version_spans
from tests.engine.conftest import API_KEY, call, data_uri, png, prompt, start_engine, wait_running

REQUESTS = [  # (prompt text, image seeds, temperature)
    ("Click the submit button", [1], 0.0),
    ("Type your name", [2, 3], 0.7),
    ("Scroll down to the total", [4], 1.3),
    ("Go back", [], 1.0),
    ("Find the order number in the mail", [5], 0.0),
]


def _generate_all(url: str, max_new_tokens: int = 12) -> list[dict]:
    def one(i: int) -> dict:
        text, seeds, temperature = REQUESTS[i]
        body = {
            "text": prompt(text, len(seeds)),
            "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": temperature, "ignore_eos": True,
                                "sampling_seed": 100 + i},
            "return_logprob": True,
        }
        if seeds:
            body["image_data"] = [data_uri(png(s)) for s in seeds]
        status, out = call(url, "/generate", body)
        assert status == 200, out
        return out

    # All at once: they are prefilled and decoded together, with padding between them.
    with concurrent.futures.ThreadPoolExecutor(len(REQUESTS)) as pool:
        return list(pool.map(one, range(len(REQUESTS))))


@pytest.fixture(scope="module")
def engine3(models_root, tmp_path_factory):
    e = start_engine(models_root, "qwen3_vl", tmp_path_factory.mktemp("logs3"))
    yield e
    assert e.stop() == 0


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_engine_logprobs_equal_the_trainers(family, engine, engine3, models_root):
    url = (engine if family == "qwen2_5_vl" else engine3).url
    results = _generate_all(url)
    policy = load_policy(models_root / family, device="cpu", dtype="float32")
    for (text, seeds, temperature), out in zip(REQUESTS, results):
        batch = process_images(policy.image_processor, [decode_image(png(s)) for s in seeds])
        ids = prompt_ids(policy.tokenizer, prompt(text, len(seeds)), policy.image_token_id, batch.token_counts)
        meta = out["meta_info"]
        assert meta["prompt_tokens"] == len(ids), "the engine and the agent format expand images alike"
        assert [t for _, t, _ in meta["output_token_logprobs"]] == out["output_ids"]
        engine_lp = torch.tensor([lp for lp, _, _ in meta["output_token_logprobs"]])
        sample = Sample(ids, out["output_ids"], batch.pixel_values if seeds else None,
                        batch.grid_thw if seeds else None)
        with torch.no_grad():
            (trainer_lp,) = output_logprobs(policy.model, [sample], temperature=temperature or 1.0)
        assert torch.allclose(engine_lp, trainer_lp, atol=1e-4), (text, (engine_lp - trainer_lp).abs().max())
        assert meta["finish_reason"] == {"type": "length", "length": 12}


def test_greedy_is_deterministic_alone_and_in_a_batch(engine):
    body = {"text": prompt("Click the submit button"), "image_data": data_uri(png(1)),
            "sampling_params": {"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}}
    alone = [call(engine.url, "/generate", body)[1]["output_ids"] for _ in range(2)]
    batched = _generate_all(engine.url, max_new_tokens=10)[0]["output_ids"]
    assert alone[0] == alone[1] == batched


def test_concurrent_requests_are_batched(engine):
    before = _histogram_count(engine.url)
    results = _generate_all(engine.url, max_new_tokens=8)
    assert all(len(r["output_ids"]) == 8 for r in results)
    text = call(engine.url, "/metrics")[1]["text"]
    # Some decode steps ran with more than one request in the batch.
    assert _bucket(text, "1.0") < _histogram_total(text) and _histogram_total(text) > before


def _histogram_count(url: str) -> float:
    return _histogram_total(call(url, "/metrics")[1]["text"])


def _histogram_total(text: str) -> float:
    return float(next(l for l in text.splitlines() if l.startswith("asyncwebrl_engine_decode_batch_size_count")).split()[-1])


def _bucket(text: str, le: str) -> float:
    line = next(l for l in text.splitlines() if l.startswith(f'asyncwebrl_engine_decode_batch_size_bucket{{le="{le}"}}'))
    return float(line.split()[-1])


def _perturbed_checkpoint(models_root, name: str, scale: float):
    policy = load_policy(models_root / "qwen2_5_vl", device="cpu", dtype="float32")
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(torch.randn_like(p) * scale)
    out = models_root / name
    policy.model.save_pretrained(out)
    return out


def test_weight_update_changes_outputs_and_version(engine, models_root):
    body = {"text": prompt("Click", 0), "sampling_params": {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True},
            "return_logprob": True}
    status, before = call(engine.url, "/generate", body)
    assert status == 200, before
    v1 = _perturbed_checkpoint(models_root, "v1", 0.5)
    status, out = call(engine.url, "/update_weights_from_disk", {"model_path": str(v1), "weight_version": "1"})
    assert status == 200 and out["success"], out
    assert call(engine.url, "/model_info")[1]["weight_version"] == "1"
    status, after = call(engine.url, "/generate", body)
    assert status == 200, after
    assert after["meta_info"]["weight_version"] == "1"
    assert after["output_ids"] != before["output_ids"] or after["meta_info"]["output_token_logprobs"] != \
        before["meta_info"]["output_token_logprobs"]
    # Refused: outside the model roots, a directory with no weights, weights of another shape.
    for path, word in (("/etc", "must be under"), (str(models_root), "no .safetensors"),
                       (str(models_root / "qwen3_vl"), "cannot replace")):
        status, out = call(engine.url, "/update_weights_from_disk", {"model_path": path, "weight_version": "x"})
        assert status == 400 and word in (out.get("message") or ""), out
    assert call(engine.url, "/model_info")[1]["weight_version"] == "1", "a refused update changes nothing"
    # Back to the original weights for the other tests.
    status, _ = call(engine.url, "/update_weights_from_disk",
                     {"model_path": str(models_root / "qwen2_5_vl"), "weight_version": "0"})
    assert status == 200
    assert call(engine.url, "/generate", body)[1]["output_ids"] == before["output_ids"]


def _long_request(url: str, results: list, rid: str, tokens: int = 400) -> threading.Thread:
    body = {"text": prompt("Long", 0), "rid": rid, "return_logprob": True,
            "sampling_params": {"max_new_tokens": tokens, "temperature": 0, "ignore_eos": True}}
    thread = threading.Thread(target=lambda: results.append(call(url, "/generate", body)))
    thread.start()
    return thread


def _get_status(url: str, path: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url + path, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_pause_in_place_update_continue_resumes_with_new_versions(engine, models_root):
    v2 = _perturbed_checkpoint(models_root, "v2", 0.3)
    results: list = []
    thread = _long_request(engine.url, results, "long-1")
    wait_running(engine.url)
    assert _get_status(engine.url, "/ready") == 200
    assert call(engine.url, "/pause_generation", {"mode": "in_place"})[0] == 200
    # During the weight update the engine is alive but not ready (a Kubernetes readiness probe).
    assert _get_status(engine.url, "/ready") == 503 and _get_status(engine.url, "/health") == 200
    # While paused, a new request waits.
    waiting: list = []
    short = threading.Thread(target=lambda: waiting.append(call(engine.url, "/generate", {
        "text": prompt("Short", 0), "sampling_params": {"max_new_tokens": 2, "temperature": 0}})))
    short.start()
    time.sleep(0.5)
    assert not waiting and not results
    assert call(engine.url, "/update_weights_from_disk", {"model_path": str(v2), "weight_version": "2"})[0] == 200
    assert call(engine.url, "/continue_generation", {})[0] == 200
    assert _get_status(engine.url, "/ready") == 200
    thread.join(60)
    short.join(60)
    status, out = results[0]
    assert status == 200 and out["meta_info"]["finish_reason"]["type"] == "length"
    spans = out["meta_info"]["weight_versions"]
    assert [s["version"] for s in spans] == ["0", "2"], "SGLang's spans: one per version the request saw"
    assert spans[0]["start"] == 0 and spans[0]["end"] == spans[1]["start"] > 0
    assert spans[1]["end"] == len(out["output_ids"]) and out["meta_info"]["weight_version"] == "2"
    assert waiting[0][0] == 200 and waiting[0][1]["meta_info"]["weight_version"] == "2"
    call(engine.url, "/update_weights_from_disk", {"model_path": str(models_root / "qwen2_5_vl"), "weight_version": "0"})


def test_pause_abort_and_abort_request_return_partial_outputs(engine):
    for how in ("pause", "abort_request"):
        results: list = []
        thread = _long_request(engine.url, results, f"victim-{how}", tokens=4000)
        wait_running(engine.url)
        time.sleep(0.2)
        if how == "pause":
            assert call(engine.url, "/pause_generation", {"mode": "abort"})[1]["aborted"] == 1
        else:
            assert call(engine.url, "/abort_request", {"rid": f"victim-{how}"})[1]["aborted"] == 1
        thread.join(30)
        status, out = results[0]
        meta = out["meta_info"]
        assert status == 200 and meta["finish_reason"]["type"] == "abort"
        assert 0 < len(out["output_ids"]) < 4000 and len(meta["output_token_logprobs"]) == len(out["output_ids"])
        if how == "pause":
            assert call(engine.url, "/model_info")[1]["paused"] is True
            assert call(engine.url, "/continue_generation", {})[0] == 200
    ok = call(engine.url, "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 1}})
    assert ok[0] == 200


def test_pause_ends_queued_requests_too_and_holds_new_ones_out_of_reach_of_aborts(models_root, tmp_path):
    """As SGLang 0.5.23: pause in abort mode ends every request, a running one with what it generated
    ("Aborted", FINISH_ABORT's keys) and a queued one with nothing ("Abort in waiting queue"); a
    /generate that arrives while paused waits before the engine's queue, so a weight update's
    abort_all_requests does not reach it, and runs after continue on the new weights."""
    engine = start_engine(models_root, "qwen2_5_vl", tmp_path, "--max-batch-size", "1")
    try:
        results: list = []
        running = _long_request(engine.url, results, "running", tokens=4000)
        wait_running(engine.url)
        queued: list = []
        waiter = _long_request(engine.url, queued, "queued", tokens=8)
        deadline = time.monotonic() + 30
        while call(engine.url, "/model_info")[1]["queued"] == 0:
            assert time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.02)
        assert call(engine.url, "/pause_generation", {"mode": "abort"})[1]["aborted"] == 2
        running.join(30)
        waiter.join(30)
        status, out = results[0]
        assert status == 200 and out["meta_info"]["finish_reason"] == {
            "type": "abort", "message": "Aborted", "status_code": None, "err_type": None}
        assert 0 < len(out["output_ids"]) < 4000
        status, out = queued[0]
        meta = out["meta_info"]
        assert status == 200 and meta["finish_reason"] == {"type": "abort", "message": "Abort in waiting queue"}
        assert out["output_ids"] == [] and meta["output_token_logprobs"] == []
        assert meta["weight_versions"] == [{"version": "0", "start": 0, "end": 0}]

        late: list = []
        arriving = _long_request(engine.url, late, "late", tokens=3)
        time.sleep(0.5)
        assert not late and call(engine.url, "/model_info")[1]["queued"] == 0, "held before the queue"
        assert call(engine.url, "/update_weights_from_disk", {
            "model_path": str(models_root / "qwen2_5_vl"), "weight_version": "1", "abort_all_requests": True})[0] == 200
        time.sleep(0.3)
        assert not late, "abort_all_requests reaches only what is in the engine"
        assert call(engine.url, "/continue_generation", {})[0] == 200
        arriving.join(60)
        status, out = late[0]
        assert status == 200 and out["meta_info"]["finish_reason"]["type"] == "length"
        assert out["meta_info"]["weight_version"] == "1" and len(out["output_ids"]) == 3
    finally:
        assert engine.stop() == 0, engine.logs()[-3000:]


def test_a_weight_update_while_not_paused_waits_for_the_requests_in_flight(engine, models_root):
    """SGLang's model_update_lock: unpaused, /update_weights_from_disk waits until every /generate in
    flight has ended (on the old weights, one version), and one that arrives meanwhile waits for it."""
    results: list = []
    running = _long_request(engine.url, results, "in-flight", tokens=300)
    wait_running(engine.url)
    update: list = []
    updater = threading.Thread(target=lambda: update.append(call(engine.url, "/update_weights_from_disk", {
        "model_path": str(models_root / "qwen2_5_vl"), "weight_version": "u1"})))
    updater.start()
    time.sleep(0.3)
    late: list = []
    arriving = _long_request(engine.url, late, "after-update", tokens=3)
    running.join(60)
    updater.join(60)
    arriving.join(60)
    status, out = results[0]
    assert status == 200 and out["meta_info"]["finish_reason"]["type"] == "length" and len(out["output_ids"]) == 300
    assert [s["version"] for s in out["meta_info"]["weight_versions"]] == ["0"], "ended before the update"
    assert update[0][0] == 200 and late[0][0] == 200 and late[0][1]["meta_info"]["weight_version"] == "u1"
    call(engine.url, "/update_weights_from_disk", {"model_path": str(models_root / "qwen2_5_vl"), "weight_version": "0"})


BAD = [
    ({}, "text"),
    ({"text": "a", "input_ids": [1]}, "text"),
    ({"text": ["a", "b"]}, "text"),
    ({"input_ids": [[1, 2]]}, "input_ids"),
    ({"input_ids": [1, -2]}, "input_ids"),
    ({"input_ids": [1, 10**9]}, "input_ids"),
    ({"input_ids": []}, "input_ids"),
    ({"text": "a", "sampling_params": {"max_new_tokens": 10**7}}, "max_new_tokens"),
    ({"text": "a", "sampling_params": {"max_new_tokens": "12"}}, "max_new_tokens"),
    ({"text": "a", "sampling_params": {"temperature": -1}}, "temperature"),
    ({"text": "a", "sampling_params": {"top_p": 0}}, "top_p"),
    ({"text": "a", "sampling_params": {"n": 4}}, "sampling_params.n"),
    ({"text": "a", "sampling_params": {"regex": "a+"}}, "sampling_params.regex"),
    ({"text": "a", "sampling_params": [{}]}, "sampling_params"),
    ({"text": "a", "return_logprob": "yes"}, "return_logprob"),
    ({"text": "a", "stream": True}, "stream"),
    ({"text": "a", "lora_path": "x"}, "lora_path"),
    ({"text": prompt("a"), "image_data": "data:image/png;base64,AAAA"}, "image_data[0]"),
    ({"text": prompt("a"), "image_data": "not base64 at all!"}, "image_data[0]"),
    ({"text": prompt("a"), "image_data": "/etc/passwd"}, "image_data[0]"),
    ({"text": prompt("a"), "image_data": "http://169.254.169.254/latest"}, "image_data[0]"),
    ({"text": prompt("a", 2), "image_data": "IMAGE"}, "image_data"),
    ({"text": "no image tokens", "image_data": "IMAGE"}, "image_data"),
    ({"text": "a", "rid": 7}, "rid"),
]


@pytest.mark.parametrize(("body", "field"), BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_400_naming_the_field(engine, body, field):
    body = {k: (data_uri(png(9)) if v == "IMAGE" else v) for k, v in body.items()}
    status, out = call(engine.url, "/generate", body)
    assert status == 400 and field in out["message"].split(": ")[0], out


def test_bad_bodies_and_auth(engine):
    assert call(engine.url, "/generate", raw=b"{not json")[0] == 400
    assert call(engine.url, "/generate", raw=b"[1, 2]")[0] == 400
    assert call(engine.url, "/pause_generation", {"mode": "retract-all"})[0] == 400
    assert call(engine.url, "/abort_request", {})[0] == 400
    assert call(engine.url, "/generate", {"text": "a"}, key=None)[0] == 401
    assert call(engine.url, "/generate", {"text": "a"}, key="wrong")[0] == 401
    assert call(engine.url, "/update_weights_from_disk", {"model_path": "/x"}, key=None)[0] == 401
    # Open: health and metrics.
    assert call(engine.url, "/health", key=None)[0] == 200
    assert call(engine.url, "/metrics", key=None)[0] == 200
    assert call(engine.url, "/health_generate")[0] == 200
    # Alive after every refusal above.
    status, out = call(engine.url, "/generate", {"input_ids": [11, 12], "sampling_params": {"max_new_tokens": 3}})
    assert status == 200 and len(out["output_ids"]) <= 3


def test_stop_strings_and_stop_tokens(engine):
    free = call(engine.url, "/generate", {"text": "Click", "sampling_params": {
        "max_new_tokens": 12, "temperature": 0, "ignore_eos": True}})[1]
    stop_token = free["output_ids"][3]
    out = call(engine.url, "/generate", {"text": "Click", "sampling_params": {
        "max_new_tokens": 12, "temperature": 0, "ignore_eos": True, "stop_token_ids": [stop_token]}})[1]
    assert out["output_ids"] == free["output_ids"][: free["output_ids"].index(stop_token) + 1]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop_token}
    fragment = free["text"][4:7]
    if fragment.strip():
        out = call(engine.url, "/generate", {"text": "Click", "sampling_params": {
            "max_new_tokens": 12, "temperature": 0, "ignore_eos": True, "stop": [fragment]}})[1]
        assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": fragment}
        assert fragment not in out["text"] and free["text"].startswith(out["text"])


def test_api_key_is_required_even_for_model_info(engine):
    assert call(engine.url, "/model_info", key=None)[0] == 401
    status, info = call(engine.url, "/model_info", key=API_KEY)
    assert status == 200 and info["is_generation"] and info["model_type"] == "qwen2_5_vl"


def test_repeated_screenshots_are_processed_once(engine):
    def hits() -> float:
        text = call(engine.url, "/metrics")[1]["text"]
        line = next((l for l in text.splitlines() if l.startswith('asyncwebrl_engine_image_cache_total{result="hit"}')),
                    "x 0")
        return float(line.split()[-1])

    shot = data_uri(png(77))
    body = {"text": prompt("Step", 2), "image_data": [data_uri(png(76)), shot],
            "sampling_params": {"max_new_tokens": 4, "temperature": 0}, "return_logprob": True}
    before = hits()
    first = call(engine.url, "/generate", body)[1]
    # The next step shows the same screenshot again as its history image.
    again = call(engine.url, "/generate", {**body, "image_data": [shot, data_uri(png(78))]})[1]
    repeat = call(engine.url, "/generate", body)[1]
    assert hits() - before == 3
    assert repeat["output_ids"] == first["output_ids"] and again["meta_info"]["prompt_tokens"] > 0
    assert repeat["meta_info"]["output_token_logprobs"] == first["meta_info"]["output_token_logprobs"]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_one_pad_per_image_is_expanded_and_a_pre_expanded_run_refused_as_sglang_does(family, engine, engine3,
                                                                                    models_root):
    url = (engine if family == "qwen2_5_vl" else engine3).url
    policy = load_policy(models_root / family, device="cpu", dtype="float32")
    pad = policy.image_token_id
    batch = process_images(policy.image_processor, [decode_image(png(s)) for s in (1, 2)])
    expanded = prompt_ids(policy.tokenizer, prompt("Two shots", 2), pad, batch.token_counts)
    lone = collapse_image_tokens(expanded, pad)
    assert lone.count(pad) == 2 and len(expanded) - len(lone) == sum(batch.token_counts) - 2
    images = [data_uri(png(s)) for s in (1, 2)]
    body = {"input_ids": lone, "image_data": images, "return_prompt_token_ids": True,
            "sampling_params": {"max_new_tokens": 3, "temperature": 0}}
    status, out = call(url, "/generate", body)
    assert status == 200 and out["prompt_token_ids"] == expanded, "the engine expands as the agent format does"
    # A resume: the lone-pad prompt plus a partial output comes back as the expanded prompt plus that output.
    status, again = call(url, "/generate", {**body, "input_ids": lone + out["output_ids"]})
    assert status == 200 and again["prompt_token_ids"] == expanded + out["output_ids"]
    assert "prompt_token_ids" not in call(url, "/generate", {**body, "return_prompt_token_ids": False})[1]
    # SGLang refuses the caller's own expansion: 400 for Qwen2.5-VL's processor, 500 for Qwen3-VL's.
    status, refused = call(url, "/generate", {**body, "input_ids": expanded})
    assert status == EXPANDED_RUN_STATUS[family] and "input_ids" in refused["message"], refused
    text = prompt("Two shots", 0) + "<|vision_start|>" + "<|image_pad|>" * 3 + "<|vision_end|>"
    assert call(url, "/generate", {"text": text, "image_data": images[:1]})[0] == EXPANDED_RUN_STATUS[family]


def test_weight_version_spans_follow_sglang():
    assert version_spans([], "7") == [{"version": "7", "start": 0, "end": 0}]
    assert version_spans(["1", "1", "2", "2", "2", "1"], "3") == [
        {"version": "1", "start": 0, "end": 2}, {"version": "2", "start": 2, "end": 5},
        {"version": "1", "start": 5, "end": 6}]
