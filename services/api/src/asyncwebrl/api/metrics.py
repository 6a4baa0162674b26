"""The api's Prometheus metrics."""

from prometheus_client import Counter

JOBS_CREATED = Counter("asyncwebrl_api_jobs_created_total", "Jobs accepted by POST /v1/jobs.")
JOBS_CANCELLED = Counter("asyncwebrl_api_jobs_cancelled_total", "Jobs cancelled by DELETE /v1/jobs/{id}.")
REJECTED = Counter("asyncwebrl_api_requests_rejected_total", "Requests refused, by reason.", ["reason"])
JOBS_FINISHED = Counter("asyncwebrl_api_jobs_finished_total", "Jobs that ended, by final state.", ["state"])
RESTARTS = Counter("asyncwebrl_api_child_restarts_total", "Crashed job processes started again, by role.", ["role"])
