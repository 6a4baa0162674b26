"""What the HTTP app asks of a launcher: the one interface of the local launcher (``launcher.LocalLauncher``,
a job's processes as children) and the Kubernetes launcher (``k8s.KubernetesLauncher``, as workloads).
``service`` knows only this protocol."""

from __future__ import annotations

from typing import Protocol

from asyncwebrl.api.evaluate import Evaluations
from asyncwebrl.api.store import Job


class Launcher(Protocol):
    evaluations: Evaluations
    """The job's evaluations (POST /v1/jobs/{id}/evaluate), their processes run by this launcher."""

    def start(self, job: Job) -> None:
        """Schedules the job's launch; its state becomes running once its processes are started, or failed."""

    async def resume(self) -> None:
        """At the api's start: the jobs the store says are pending or running are launched again."""

    async def cancel(self, job_id: str) -> None:
        """State cancelled, then the job's processes stop; its data stays."""

    async def status(self, job_id: str) -> list[dict]:
        """One view per process or workload of the job (GET /v1/jobs/{id} ``processes``)."""

    def phase(self, job_id: str) -> str | None:
        """pending, warm_start, rl, or the final state; None for a job this api has not launched."""

    async def close(self) -> None:
        """api shutdown: the launcher's own tasks stop; jobs stay as the store has them, for ``resume``."""
