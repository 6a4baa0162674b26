"""A job the schema accepts starts: every setting at either end of its schema range turns into
command lines that each target service's own config class accepts, for the local and the
Kubernetes launcher alike. A bound that drifts between the job schema and a service fails here."""

from __future__ import annotations

import pathlib

import pytest

from asyncwebrl.api import k8s_manifests, k8s_settings
from asyncwebrl.api.config import ApiConfig
from asyncwebrl.api.jobspec import EvaluateRequest, JobSpec
from asyncwebrl.api.jobargs import (engine_args, eval_engine_args, eval_gateway_args, rollout_args, trainer_args,
                                    warm_rollout_args, warm_trainer_args)
from asyncwebrl.api.store import Job
from asyncwebrl.common.config import parse_config
from asyncwebrl.engine.config import EngineConfig
from asyncwebrl.rollout.config import RolloutConfig
from asyncwebrl.trainer.config import TrainerConfig

SECTIONS = ("algorithm", "rollout", "tasks", "judge")  # judge: optional (anyOf with null)


def _extremes() -> list[tuple[str, str, object]]:
    """(section, field, value) at each end of every numeric field's schema range."""
    schema = JobSpec.model_json_schema()
    defs = schema["$defs"]
    out = []
    for section in SECTIONS:
        prop = schema["properties"][section]
        ref = next(o["$ref"] for o in prop.get("anyOf", [prop]) if "$ref" in o).rsplit("/", 1)[1]
        for name, prop in defs[ref]["properties"].items():
            if prop.get("type") not in ("integer", "number"):
                continue
            step = 1 if prop["type"] == "integer" else 1e-6
            ends = []
            if "minimum" in prop:
                ends.append(prop["minimum"])
            if "exclusiveMinimum" in prop:
                ends.append(prop["exclusiveMinimum"] + step)
            if "maximum" in prop:
                ends.append(prop["maximum"])
            if "exclusiveMaximum" in prop:
                ends.append(prop["exclusiveMaximum"] - step)
            out += [(section, name, v) for v in ends]
    return out


def _job(section: str, field: str, value) -> Job:
    doc = {"name": "b", section: {field: value}}
    if (section, field) == ("rollout", "max_staleness"):
        doc["rollout"]["mode"] = "async"
    if (section, field) != ("algorithm", "warm_start_steps"):
        doc.setdefault("algorithm", {})["warm_start_steps"] = 1  # so the warm-start's processes are checked too
    if section == "judge":
        doc["judge"].update(url="https://judge.example:8443/v1", model="judge-vl", api_key_secret="judge-api-key")
    if (section, field) == ("tasks", "eval_seed"):
        doc["tasks"]["train_seed"] = 1 if value == 0 else 0
    return Job("b-0a1b2c", JobSpec.model_validate(doc), "pending", 0, 0)


@pytest.mark.parametrize(("section", "field", "value"), _extremes())
def test_every_accepted_setting_starts_its_processes(section, field, value, tmp_path: pathlib.Path):
    job = _job(section, field, value)
    config = ApiConfig(run_dir=str(tmp_path), allow_no_token=True, weightsync_target="127.0.0.1:50065")
    model, ckpt = tmp_path / "model", tmp_path / "ckpt"
    commands = [
        (TrainerConfig, trainer_args(config, job, model, ckpt), "trainer"),
        (RolloutConfig, rollout_args(config, job, model), "rollout"),
        (EngineConfig, engine_args(config, job, model, ckpt, 0, "engine-0"), "inference"),
    ]
    # An evaluation's gateway at the largest groups POST /v1/jobs/{id}/evaluate accepts.
    ev = EvaluateRequest.model_json_schema()["properties"]
    biggest = [max(o.get("maximum", 0) for o in ev[f]["anyOf"]) for f in ("group_size", "groups")]
    commands += [(RolloutConfig, eval_gateway_args(config, job, model, "b-0a1b2c-ev1", *biggest), "eval-rollout"),
                 (EngineConfig, eval_engine_args(config, job, model, 0, "b-0a1b2c-ev1", 3), "eval-inference")]
    if job.spec.algorithm.warm_start_steps:
        commands += [(TrainerConfig, warm_trainer_args(config, job, model, ckpt), "warm-trainer"),
                     (RolloutConfig, warm_rollout_args(config, job, model), "warm-rollout")]
    settings = k8s_settings.settings_from_config(
        ApiConfig(launcher="kubernetes", run_dir="/runs", allow_no_token=True, weightsync_target="ws:50065",
                  k8s_namespace="rl"), "rl")
    for cls, args, role in commands:
        for argv in (args, k8s_manifests.pod_args(role, args, settings)):
            try:
                parse_config(cls, argv, environ={})
            except SystemExit:
                pytest.fail(f"{section}.{field} = {value}: the {role}'s {cls.__name__} refuses {argv}")
