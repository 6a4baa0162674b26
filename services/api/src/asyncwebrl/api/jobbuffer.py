"""A job's settings in the buffer (``ConfigureJob``): batch size, staleness bound, whether zero-variance
groups are kept. The api is the one sender: ``configure_job``, called by both launchers and by evaluations
before any of the job's processes starts (the Kubernetes launcher sends it again at every launch of a
phase, an api restart included). What each phase asks for is decided here, from the job document."""

from __future__ import annotations

from typing import Literal

from asyncwebrl.api.jobargs import WARM_MAX_STALENESS, warm_job_id
from asyncwebrl.api.store import Job
from asyncwebrl.v1 import buffer_pb2, buffer_pb2_grpc


def job_settings(job: Job, phase: Literal["rl", "warm_start"] = "rl") -> buffer_pb2.ConfigureJobRequest:
    """The RL phase's settings (the trainer's --batch-groups and --max-staleness), or the warm-start's
    (its demonstrations are a buffer job of their own, ``warm_job_id``)."""
    a = job.spec.algorithm
    if phase == "warm_start":
        return buffer_pb2.ConfigureJobRequest(job_id=warm_job_id(job.job_id), batch_groups=a.warm_start_batch,
                                              max_staleness=WARM_MAX_STALENESS, keep_zero_variance=True)
    r = job.spec.rollout
    return buffer_pb2.ConfigureJobRequest(job_id=job.job_id, batch_groups=r.batch_groups,
                                          max_staleness=r.max_staleness, keep_zero_variance=a.keep_zero_variance)


def eval_settings(eval_job: str, groups: int) -> buffer_pb2.ConfigureJobRequest:
    """An evaluation: one version, every group kept (a group of all failures is a result too)."""
    return buffer_pb2.ConfigureJobRequest(job_id=eval_job, batch_groups=groups, max_staleness=0,
                                          keep_zero_variance=True)


async def configure_job(buffer: buffer_pb2_grpc.BufferServiceStub, settings: buffer_pb2.ConfigureJobRequest,
                        timeout: float) -> None:
    """Sends ``settings`` (idempotent: the buffer keeps the last ones). Raises grpc.aio.AioRpcError."""
    await buffer.ConfigureJob(settings, timeout=timeout)
