"""What the HTTP app asks of a launcher: the one interface of the local launcher (``launcher.LocalLauncher``,
a job's processes as children) and the Kubernetes launcher (``k8s.KubernetesLauncher``, as workloads).
``service`` knows only this protocol."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from asyncwebrl.api.evaluate import Evaluations
from asyncwebrl.api.store import Job
from asyncwebrl.v1 import buffer_pb2_grpc


class Launcher(Protocol):
    evaluations: Evaluations
    buffer: buffer_pb2_grpc.BufferServiceStub
    """The buffer the job's processes write to (DELETE /v1/jobs/{id}?purge=true deletes the job's data there)."""
    """The job's evaluations (POST /v1/jobs/{id}/evaluate), their processes run by this launcher."""

    def start(self, job: Job) -> None:
        """Schedules the job's launch; its state becomes running once its processes are started, or failed."""

    async def resume(self) -> None:
        """At the api's start: the jobs the store says are pending or running are launched again."""

    async def cancel(self, job_id: str) -> None:
        """State cancelled, then the job's processes stop; its data stays."""

    async def stop(self, job_id: str, timeout_s: float) -> list[str]:
        """Before a purge: cancels the job if it still runs (as ``cancel``) and its evaluations, then waits up
        to ``timeout_s`` for every process or workload of the job to be gone. Returns what still runs (empty:
        nothing does), and forgets the job when nothing does."""

    async def status(self, job_id: str) -> list[dict]:
        """One view per process or workload of the job (GET /v1/jobs/{id} ``processes``)."""

    def phase(self, job_id: str) -> str | None:
        """pending, warm_start, rl, or the final state; None for a job this api has not launched."""

    async def close(self) -> None:
        """api shutdown: the launcher's own tasks stop; jobs stay as the store has them, for ``resume``."""


async def stop_evaluations(evaluations: Evaluations, job_id: str, timeout_s: float) -> list[str]:
    """Cancels the job's running evaluations (their processes stop as their tasks end); returns those still
    running after ``timeout_s``."""
    tasks = {n: t for (j, n), t in list(evaluations.tasks.items()) if j == job_id}
    for task in tasks.values():
        task.cancel()
    if tasks:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks.values(), return_exceptions=True), timeout_s)
    return [f"evaluation eval-{n}" for n, t in tasks.items() if not t.done()]
