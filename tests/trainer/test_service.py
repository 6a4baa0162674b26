"""The trainer as a process against a real buffer (Redis), weightsync and a real engine: batches in,
versions out, engines updated (through weightsync), batches acked; killed and restarted, it resumes."""

from __future__ import annotations

import json
import math
import signal
import time

import numpy as np
import torch

from asyncwebrl.common import weights
from asyncwebrl.common.agent.prompt import collapse_image_tokens
from asyncwebrl.common.agent.vision import decode_image, process_images
from asyncwebrl.common.archive import EpisodeArchive
from asyncwebrl.common.models.loading import load_policy
from asyncwebrl.common.models.logprobs import Sample, output_logprobs
from asyncwebrl.common.grpcclient import channel
from asyncwebrl.v1 import buffer_pb2, weightsync_pb2, weightsync_pb2_grpc
from tests.engine.conftest import data_uri
from tests.helpers import wait_until
from tests.trainer.conftest import (PREFIX, TOKEN, GroupMaker, engine_for, png, post, publishing, stats,
                                    trainer_for)


def journal(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_engine_logprobs_match_the_trainers(stack):
    """The engine's behaviour logprobs and the trainer's recomputation are one function
    on the same weights: equal to float tolerance on a real sampled step."""
    job = "lp"
    engine = engine_for(stack, job)
    try:
        maker = GroupMaker(stack, engine, job)
        step = maker.step(3)
        policy = load_policy(stack["models"] / "base", device="cpu")
        batch = process_images(policy.image_processor, [decode_image(png(3))])
        with torch.no_grad():
            (lp,) = output_logprobs(policy.model, [Sample(list(step.prompt_ids), list(step.output_ids),
                                                          batch.pixel_values, batch.grid_thw)])
        assert len(step.output_ids) > 0
        np.testing.assert_allclose(lp.numpy(), np.array(step.logprobs), atol=2e-4)
    finally:
        engine.stop()


def test_trains_publishes_acks_and_logs(stack):
    job = "train"
    tmp_path = stack["models"] / job  # where the engine may load from (--model-roots)
    engine = engine_for(stack, job)
    try:
        maker = GroupMaker(stack, engine, job)
        probe = maker.step(99)
        maker.put(4)
        trainer = trainer_for(stack, job, tmp_path, "--max-steps", "2", "--full-every", "1", "--keep-versions", "2",
                              *publishing(stack))
        assert trainer.proc.wait(timeout=240) == 0, trainer.logs()[-3000:]
        s = stats(stack, job)
        assert s.trainer_version == 2 and s.groups_consumed == 4 and s.stream_length == 0
        versions = weights.list_versions(tmp_path)
        assert [v for v, _ in versions] == [1, 2]
        manifest = weights.read_manifest(versions[-1][1])
        assert manifest.version == 2 and manifest.step == 2 and "lm_head.weight" in " ".join(manifest.tensors)
        assert (versions[-1][1] / "tokenizer.json").is_file(), "a version is a complete checkpoint"
        info = post(engine.url, "/model_info")
        assert info["weight_version"] == "2", "the engine serves the new version"
        # The engine's policy moved: the same sampled step has other logprobs now.
        again = post(engine.url, "/generate", {
            "input_ids": collapse_image_tokens(list(probe.prompt_ids), maker.image_token), "image_data": [data_uri(png(990))],
            "sampling_params": {"max_new_tokens": 1, "temperature": 0.0}, "return_logprob": True})
        assert again["meta_info"]["weight_version"] == "2"
        entries = journal(tmp_path / "metrics.jsonl")
        assert [e["version"] for e in entries] == [1, 2]
        first = entries[0]
        assert first["groups"] == 2 and first["episodes"] == 4 and first["success"] == 0.5
        assert first["length_success"] == 1 and first["length_failure"] == 2
        assert math.isfinite(first["loss"]) and first["grad_norm"] > 0 and first["micro_batches"] >= 1
        assert first["staleness"] == {"0": 2} and first["cap_fraction"] == 0.0
        assert set(first["seconds"]) == {"wait", "proximal", "forward_backward", "optimizer", "checkpoint", "publish"}
        assert first["seconds"]["publish"] > 0 and first["train_tokens_per_s"] > 0
        assert len(list((tmp_path / "full").iterdir())) == 2
        # The viewer's archive: a success and a failure of each batch, with the screenshots they show.
        archive = EpisodeArchive(tmp_path / "episodes")
        kept, total = archive.list()
        assert total == 4 and sorted(e.success for e in kept) == [False, False, True, True]
        episode = archive.get(kept[0].id)
        shot = episode["steps"][0]["screenshot"]
        assert decode_image(archive.blob(shot["sha256"])).size == (shot["width"], shot["height"])
        assert episode["steps"][-1]["reward"] == episode["reward"]
    finally:
        engine.stop()


def test_publishes_through_weightsync(stack):
    job = "wsync"
    checkpoints = stack["models"] / job
    engine = engine_for(stack, job)
    try:
        GroupMaker(stack, engine, job).put(4)
        trainer = trainer_for(stack, job, checkpoints, "--max-steps", "2", *publishing(stack))
        assert trainer.proc.wait(timeout=240) == 0, trainer.logs()[-3000:]
        assert post(engine.url, "/model_info")["weight_version"] == "2"
        ch = channel(stack["weightsync"].target, TOKEN)
        status = weightsync_pb2_grpc.WeightSyncServiceStub(ch).Status(weightsync_pb2.StatusRequest(job_id=job))
        ch.close()
        assert status.published_version == 2
        assert status.published_path == str(weights.version_dir(checkpoints, 2).resolve())
        assert [e.endpoint_id for e in status.endpoints] == [f"engine-{job}"]
        assert journal(checkpoints / "metrics.jsonl")[-1]["seconds"]["publish"] > 0
    finally:
        engine.stop()


def test_killed_and_restarted_it_resumes_without_training_a_batch_twice(stack):
    job = "resume"
    tmp_path = stack["models"] / job
    engine = engine_for(stack, job)
    log = tmp_path / "metrics.jsonl"
    try:
        maker = GroupMaker(stack, engine, job)
        args = ("--full-every", "2", "--consumer", "t0", *publishing(stack))
        trainer = trainer_for(stack, job, tmp_path, *args)
        trainer.wait_ready(120)
        for version in (1, 2, 3):
            maker.put(2, seed=10 * version)
            wait_until(lambda: stats(stack, job).trainer_version == version, what=f"version {version}")
        # A batch is in the trainer's hands when it dies.
        maker.put(2, seed=40)
        wait_until(lambda: stats(stack, job).stream_pending > 0 or stats(stack, job).trainer_version == 4,
                   what="batch taken")
        trainer.proc.send_signal(signal.SIGKILL)
        trainer.proc.wait(timeout=30)
        assert [v for v, _ in weights.list_versions(tmp_path)][-1] >= 3
        assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["s00000002"]
        interrupted = stats(stack, job).trainer_version == 3
        # Newer groups arrive while it is down; the interrupted batch still goes first.
        maker.put(2, seed=45)
        redis = stack["redis"].client()
        stream = f"{PREFIX}job:{job}:groups"
        entries = [_id.decode() for _id, _ in redis.xrange(stream)]

        restarted = trainer_for(stack, job, tmp_path, *args)
        restarted.wait_ready(120)
        # With the buffer's default --claim-idle-s of 600 s, at once rather than ten minutes later.
        wait_until(lambda: stats(stack, job).trainer_version >= 5, timeout=120, what="both batches trained")
        if interrupted:
            manifest = weights.read_manifest(weights.version_dir(tmp_path, 4))
            first = {i for b in manifest.batch_id.split(",")
                     for i in redis.hget(f"{PREFIX}job:{job}:batch:{b}", "ids").decode().split()}
            assert first == set(entries[:2]), "the restarted trainer trained the interrupted batch first"
        maker.put(2, seed=50)
        wait_until(lambda: stats(stack, job).trainer_version == 6, what="version 6")
        assert restarted.stop() == 0, "SIGTERM: a clean exit"
        s = stats(stack, job)
        assert s.groups_consumed == 12 and s.stream_length == 0 and s.groups_accepted == 12
        assert sum(r.groups for r in s.rejected) == 0, "nothing rejected for the restart"
        trained = [e["version"] for e in journal(log)]
        assert len(trained) == len(set(trained)), f"a version trained twice: {trained}"
        assert set(trained) >= {1, 2, 3, 5, 6} and max(trained) == 6
        assert weights.read_manifest(weights.version_dir(tmp_path, 6)).step == 6
        assert "resum" in restarted.logs() and "s00000002" in restarted.logs()
        assert post(engine.url, "/model_info")["weight_version"] == "6"
    finally:
        engine.stop()


def test_a_version_written_but_not_acked_is_acked_on_restart(stack, tmp_path):
    """The crash window between writing v+1 and acking its batch: on restart the
    manifest's batch is acked, not trained again."""
    job = "window"
    engine = engine_for(stack, job)
    try:
        maker = GroupMaker(stack, engine, job)
        maker.put(2)
        items = list(stack["stub"].GetBatch(buffer_pb2.GetBatchRequest(
            job_id=job, consumer="t1", groups=2, current_version=0, max_staleness=-1, wait_ms=1000)))
        batch_id = items[0].header.batch_id
        assert items[0].header.groups == 2
        # What the trainer had written before it died: version 1 naming that batch.
        from asyncwebrl.trainer.config import TrainerConfig
        from asyncwebrl.trainer.dist import Dist
        from asyncwebrl.trainer.learner import Learner

        learner = Learner(TrainerConfig(model_path=str(stack["models"] / "base"), checkpoint_dir=str(tmp_path),
                                        device="cpu"), Dist())
        learner.step = 1
        learner.write_version(1, batch_id)
        trainer = trainer_for(stack, job, tmp_path, "--consumer", "t1", "--publish", "none")
        trainer.wait_ready(120)
        wait_until(lambda: stats(stack, job).groups_consumed == 2, what="acked at start")
        s = stats(stack, job)
        assert s.trainer_version == 1 and s.stream_length == 0
        time.sleep(1.0)
        assert trainer.stop() == 0
        assert not journal(tmp_path / "metrics.jsonl"), "nothing trained twice"
    finally:
        engine.stop()


def test_bad_flags_name_the_field(stack, tmp_path):
    bad = trainer_for(stack, "bad", tmp_path, "--step-norm", "sideways")
    assert bad.proc.wait(timeout=60) != 0
    assert "step_norm" in bad.logs()


def test_publish_endpoints_was_removed_and_none_is_the_default(capsys):
    """weightsync is the one publisher: the trainer's own loading of engines is refused, by name."""
    import pytest

    from asyncwebrl.common.config import parse_config
    from asyncwebrl.trainer.config import TrainerConfig

    assert TrainerConfig().publish == "none"
    with pytest.raises(SystemExit) as exc:
        parse_config(TrainerConfig, ["--publish", "endpoints"], environ={})
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "publish: endpoints was removed" in err and "--publish weightsync" in err


def test_help_prints_every_field():
    import dataclasses
    import subprocess
    import sys

    from asyncwebrl.trainer.config import TrainerConfig

    out = subprocess.run([sys.executable, "-m", "asyncwebrl.trainer", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for f in dataclasses.fields(TrainerConfig):
        assert "--" + f.name.replace("_", "-") in out and "ASYNCWEBRL_" + f.name.upper() in out


def test_a_group_whose_output_holds_vision_tokens_is_dropped_not_crashed_on():
    """A sampled image placeholder in the output would be taken for an image's place by the
    forward pass (the trainer crashed on one in get_rope_index): the group is dropped, counted."""
    from asyncwebrl.trainer.batching import Images, Row, usable_rows

    def row(group: str, output: list[int]) -> Row:
        return Row([1, 2, 3], output, [0.0] * len(output), [0] * len(output), 0.5, [], group, f"{group}-e0", False)

    rows = [row("clean", [5, 6]), row("vision", [5, 151655, 6]), row("vision", [7])]
    kept, dropped = usable_rows(rows, Images(None, {}), 151655, frozenset({151652, 151653, 151655}))
    assert [r.group_id for r in kept] == ["clean"] and dropped == {"vision_token_output": 1}
