"""Weights by broadcast into a real engine process, as SGLang's distributed update takes them.

The test is rank 0: it joins the group with ``asyncwebrl.common.models.broadcast`` (gloo, loopback)
while the engine joins through ``POST /init_weights_update_group``, then broadcasts while the engine
serves ``POST /update_weights_from_distributed``. A sender that dies midway, or tensors that do not
fit the model, leave the engine on its previous weights and version, still serving.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from asyncwebrl.common.models import broadcast
from asyncwebrl.common.models.loading import load_policy
from asyncwebrl.common.models.logprobs import Sample, output_logprobs
from asyncwebrl.common.weights import write_version_from
from tests.engine.conftest import call, prompt

BODY = {"text": prompt("Click the button", 0), "return_logprob": True,
        "sampling_params": {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}}


def _generate(url: str) -> tuple[list[int], list[float], str]:
    status, out = call(url, "/generate", BODY)
    assert status == 200, out
    meta = out["meta_info"]
    return out["output_ids"], [lp for lp, _, _ in meta["output_token_logprobs"]], meta["weight_version"]


def _version(url: str) -> str:
    return call(url, "/model_info")[1]["weight_version"]


def _sender_weights(models_root: pathlib.Path, version: int) -> tuple[pathlib.Path, list[tuple[str, torch.Tensor]]]:
    """A distinct policy written as a checkpoint (the reference), and its tensors under their checkpoint
    names (what a trainer broadcasts, in the file's order)."""
    gen = torch.Generator().manual_seed(version)
    _, path = write_version_from(models_root / "qwen2_5_vl", models_root / "sent", version,
                                 lambda n, t: t + 0.3 * torch.randn(t.shape, generator=gen))
    return path, sorted(load_file(path / "model.safetensors").items())


def _join(url: str, group: str, world: int = 2) -> tuple[concurrent.futures.Future, int]:
    """The engine's join, in a thread (it returns when every rank has joined), and the master port."""
    port = broadcast.free_port()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(call, url, "/init_weights_update_group", {
        "master_address": "127.0.0.1", "master_port": port, "rank_offset": 1, "world_size": world,
        "group_name": group, "backend": "gloo"})
    pool.shutdown(wait=False)
    return future, port


def _group(url: str, group: str):
    future, port = _join(url, group)
    pg = broadcast.init_group("127.0.0.1", port, 0, 2, group, "gloo", timeout_s=120)
    status, out = future.result(120)
    assert status == 200 and out == {"success": True, "message": "Succeeded to initialize custom process group."}
    return pg


def _update(url: str, pg, tensors, group: str, load_format=None, **extra) -> tuple[int, dict]:
    """POST the update and broadcast at once, as a trainer does."""
    body = {**broadcast.specs(tensors), "group_name": group, **extra}
    if load_format:
        body["load_format"] = load_format
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reply = pool.submit(call, url, "/update_weights_from_distributed", body)
        broadcast.send(pg, tensors, load_format)
        return reply.result(120)


def test_a_broadcast_replaces_the_weights_and_version(engine, models_root):
    ids0, lps0, _ = _generate(engine.url)
    path, tensors = _sender_weights(models_root, 1)
    pg = _group(engine.url, "g-main")
    try:
        status, out = _update(engine.url, pg, tensors, "g-main", weight_version="1")
        assert status == 200, out
        assert out == {"success": True, "message": "Succeeded to update parameter online. "
                                                   "Weight version updated to 1."}
        ids1, lps1, version = _generate(engine.url)
        assert version == "1" and _version(engine.url) == "1"
        # The reference: the sender's weights loaded by transformers from the checkpoint they came from.
        policy = load_policy(path, device="cpu", dtype="float32")
        ids = policy.tokenizer(BODY["text"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            (reference,) = output_logprobs(policy.model, [Sample(ids, ids1, None, None)], temperature=1.0)
        assert torch.allclose(torch.tensor(lps1), reference, atol=1e-4), (torch.tensor(lps1) - reference).abs().max()
        assert (ids1, lps1) != (ids0, lps0)

        # One flat bucket (SGLang's load_format "flattened_bucket"), the base weights back, version 2.
        base = sorted(load_file(models_root / "qwen2_5_vl" / "model.safetensors").items())
        status, out = _update(engine.url, pg, base, "g-main", load_format="flattened_bucket", weight_version="2")
        assert status == 200 and out["success"], out
        ids2, lps2, version = _generate(engine.url)
        assert version == "2" and ids2 == ids0 and torch.allclose(torch.tensor(lps2), torch.tensor(lps0), atol=1e-5)

        # Tensors that do not fit the model: all received, none applied; the group still works.
        wrong = [(n, torch.zeros(t.shape[0] + 1, *t.shape[1:]) if i == len(tensors) // 2 else t)
                 for i, (n, t) in enumerate(tensors)]
        status, out = _update(engine.url, pg, wrong, "g-main", weight_version="3")
        assert status == 400 and out["success"] is False and "has shape" in out["message"], out
        unknown = [("model.no_such.weight", torch.zeros(2))]
        status, out = _update(engine.url, pg, unknown, "g-main", weight_version="3")
        assert status == 400 and out["success"] is False and "model.no_such.weight" in out["message"], out
        assert _generate(engine.url) == (ids2, lps2, "2"), "a refused update changes nothing"
        # Without weight_version the version stays (SGLang: only a given weight_version is recorded).
        status, out = _update(engine.url, pg, tensors[:3], "g-main")
        assert status == 200 and out["message"] == "Succeeded to update parameter online.", out
        assert _version(engine.url) == "2"
    finally:
        broadcast.destroy_group(pg)
    status, out = call(engine.url, "/destroy_weights_update_group", {"group_name": "g-main"})
    assert status == 200 and out == {"success": True, "message": "Succeeded to destroy custom process group."}
    status, out = call(engine.url, "/destroy_weights_update_group", {"group_name": "g-main"})
    assert status == 400 and out == {"success": False, "message": "The group to be destroyed does not exist."}
    # Back to the base weights for the other tests.
    assert call(engine.url, "/update_weights_from_disk", {"model_path": str(models_root / "qwen2_5_vl"),
                                                          "weight_version": "0"})[0] == 200


DYING_SENDER = textwrap.dedent("""
    import os, sys, torch
    from safetensors.torch import load_file
    from asyncwebrl.common.models import broadcast
    port, path, keep = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    tensors = sorted(load_file(path).items())
    pg = broadcast.init_group("127.0.0.1", port, 0, 2, "g-dies", "gloo", timeout_s=120)
    broadcast.send(pg, tensors[:keep])
    os._exit(3)  # dies with the rest of the broadcast unsent
""")


def test_a_sender_dying_midway_leaves_the_previous_weights_serving(engine, models_root):
    before = _generate(engine.url)
    path, tensors = _sender_weights(models_root, 4)
    future, port = _join(engine.url, "g-dies")
    sender = subprocess.Popen([sys.executable, "-c", DYING_SENDER, str(port), str(path / "model.safetensors"),
                               str(len(tensors) // 2)])
    status, out = future.result(120)
    assert status == 200 and out["success"], out
    status, out = call(engine.url, "/update_weights_from_distributed",
                       {**broadcast.specs(tensors), "group_name": "g-dies", "weight_version": "4"})
    assert sender.wait(60) == 3
    assert status == 400 and out["success"] is False and out["message"].startswith("Failed to receive weights"), out
    assert _generate(engine.url) == before, "the previous weights and version, still serving"
    assert call(engine.url, "/ready")[0] == 200
    assert call(engine.url, "/destroy_weights_update_group", {"group_name": "g-dies"})[0] == 200


INIT = {"master_address": "127.0.0.1", "master_port": 29500, "rank_offset": 1, "world_size": 2}
UPDATE = {"names": ["lm_head.weight"], "dtypes": ["float32"], "shapes": [[4, 4]]}
BAD = [
    ("/init_weights_update_group", {k: v for k, v in INIT.items() if k != "master_port"}, "master_port"),
    ("/init_weights_update_group", {**INIT, "master_port": "29500"}, "master_port"),
    ("/init_weights_update_group", {**INIT, "master_address": 7}, "master_address"),
    ("/init_weights_update_group", {**INIT, "rank_offset": 0}, "rank_offset"),
    ("/init_weights_update_group", {**INIT, "world_size": 1}, "world_size"),
    ("/init_weights_update_group", {**INIT, "group_name": ""}, "group_name"),
    ("/init_weights_update_group", {**INIT, "timeout": 5}, "timeout"),
    ("/update_weights_from_distributed", {**UPDATE, "names": "lm_head.weight"}, "names"),
    ("/update_weights_from_distributed", {k: v for k, v in UPDATE.items() if k != "shapes"}, "shapes"),
    ("/update_weights_from_distributed", {**UPDATE, "dtypes": ["float33"]}, "dtypes[0]"),
    ("/update_weights_from_distributed", {**UPDATE, "shapes": [[-1, 4]]}, "shapes[0]"),
    ("/update_weights_from_distributed", {**UPDATE, "dtypes": ["float32", "float32"]}, "dtypes"),
    ("/update_weights_from_distributed", {**UPDATE, "weight_version": 5}, "weight_version"),
    ("/update_weights_from_distributed", {**UPDATE, "flush_cache": "yes"}, "flush_cache"),
    ("/update_weights_from_distributed", {**UPDATE, "selector": "both"}, "selector"),
    ("/destroy_weights_update_group", {"group_name": 3}, "group_name"),
]


@pytest.mark.parametrize(("path", "body", "field"), BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_requests_are_refused_naming_the_field(engine, path, body, field):
    status, out = call(engine.url, path, body)
    assert status == 400 and out["message"].split(": ")[0] == field, out


def test_refusals_without_a_group_and_without_the_key(engine):
    status, out = call(engine.url, "/update_weights_from_distributed", {**UPDATE, "group_name": "nobody"})
    assert status == 400 and out["success"] is False and "init_weights_update_group" in out["message"], out
    for path in ("/init_weights_update_group", "/update_weights_from_distributed", "/destroy_weights_update_group"):
        assert call(engine.url, path, {}, key=None)[0] == 401
    # A backend torch does not have: the join fails in SGLang's words and the engine goes on serving.
    status, out = call(engine.url, "/init_weights_update_group", {**INIT, "backend": "no-such-backend"})
    assert status == 400 and out["success"] is False, out
    assert out["message"].startswith("Failed to initialize custom process group"), out
    assert call(engine.url, "/health_generate")[0] == 200
