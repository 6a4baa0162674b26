"""The api's contract: ``/openapi.json`` with every status each operation can answer.

Errors are ``application/problem+json`` (RFC 9457), one ``Problem`` schema. What an operation can answer is
derived here, in one place, from two sources:

* ``RAISED``: the statuses the operation's handler raises itself (400, 404, 409, 503), keyed by operation;
  every operation of the app must have an entry and every entry must name an operation (checked when the
  document is built, so a new route without one fails its first test);
* the operation itself: 401 when it takes the bearer token (its ``security``), 422 when one of its
  parameters or its body can fail validation (a plain unconstrained string path parameter cannot), 413 on
  every operation (the body bound applies to any request that carries a body, a GET's too), and 405 on
  every path (``Allow`` lists every method the path's operations accept).

FastAPI's default 422 (``HTTPValidationError``, ``application/json``) is replaced: the api never sends it.
"""

from __future__ import annotations

import copy
from http import HTTPStatus

PROBLEM = "application/problem+json"
REF = "#/components/schemas/Problem"

PROBLEM_SCHEMA = {
    "title": "Problem",
    "type": "object",
    "description": "An RFC 9457 problem: every error the api answers. ``detail`` starts with the field or "
                   "the part of the request at fault (``algorithm.k: ...``, ``job_id: ...``).",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "const": "about:blank",
                 "description": "Always about:blank: the status says what kind of problem it is."},
        "title": {"type": "string", "description": "The status' reason phrase (Not Found, Conflict, ...)."},
        "status": {"type": "integer", "minimum": 400, "maximum": 599,
                   "description": "The HTTP status, as in the response's status line."},
        "detail": {"type": "string", "description": "What is wrong, starting with the field at fault."},
        "errors": {
            "type": "array", "maxItems": 50,
            "description": "422 only: every field that failed validation (up to 50), the first one in detail.",
            "items": {"type": "object", "required": ["field", "message"], "additionalProperties": False,
                      "properties": {"field": {"type": "string", "description": "Dotted path of the field "
                                                                                 "(``rollout.group_size``, "
                                                                                 "``tasks.tasks[2]``)."},
                                     "message": {"type": "string", "maxLength": 300}}}},
        "still_running": {
            "type": "array", "items": {"type": "string"},
            "description": "409 of a purge only: the job's processes or workloads that could not be stopped."},
    },
    "additionalProperties": False,
}

REDIS = "Redis (the job store) cannot be reached; retry."

# The statuses each operation's handler raises itself, with what they mean there.
RAISED: dict[tuple[str, str], dict[int, str]] = {
    ("GET", "/v1/schema/job"): {},
    ("POST", "/v1/jobs"): {409: "The store holds --max-jobs jobs already.", 503: REDIS},
    ("GET", "/v1/jobs"): {400: "page_token: not a token this api issued.", 503: REDIS},
    ("GET", "/v1/jobs/{job_id}"): {404: "job_id: no such job.", 503: REDIS},
    ("DELETE", "/v1/jobs/{job_id}"): {
        404: "job_id: no such job.",
        409: "purge=true: the job's processes could not be stopped (``still_running`` names them), or this api "
             "runs no jobs and the job is not final; nothing was deleted.",
        503: "Redis, or (purge=true) the buffer, cannot be reached; the job is kept, retry."},
    ("GET", "/v1/jobs/{job_id}/metrics"): {404: "job_id: no such job.", 503: REDIS},
    ("GET", "/v1/jobs/{job_id}/logs/{role}"): {404: "job_id: no such job; or role: no such log.", 503: REDIS},
    ("POST", "/v1/jobs/{job_id}/evaluate"): {
        404: "job_id: no such job.",
        409: "The evaluation cannot run: this api runs no jobs, the version is not on disk, or the job keeps "
             "the most evaluations already.", 503: REDIS},
    ("GET", "/v1/jobs/{job_id}/evaluations"): {404: "job_id: no such job.",
                                                409: "This api runs no jobs, so no evaluations.", 503: REDIS},
    ("GET", "/v1/jobs/{job_id}/evaluations/{eval_id}"): {
        404: "job_id: no such job; or eval_id: no such evaluation.",
        409: "This api runs no jobs, so no evaluations.", 503: REDIS},
    ("GET", "/v1/jobs/{job_id}/episodes"): {
        400: "source: not train or eval-<n>; or page_token: not a token this api issued.",
        404: "job_id: no such job.", 503: REDIS},
    ("GET", "/v1/jobs/{job_id}/episodes/{source}/{episode_id}"): {
        400: "source or episode_id: not of its form.", 404: "job_id, or the episode: not found.", 503: REDIS},
    ("GET", "/v1/jobs/{job_id}/episodes/{source}/screenshots/{sha256}"): {
        400: "source or sha256: not of its form.", 404: "job_id, or the screenshot: not found.", 503: REDIS},
    ("GET", "/viewer/{job_id}"): {400: "job_id: not of a job id's form."},
    ("POST", "/v1/tasksets"): {
        404: "path: no such file under the task-set roots.",
        409: "name: a task set of that name exists (replace=true replaces it), or the store holds the most "
             "task sets or bytes already.",
        415: "content-type: not JSONL (application/x-ndjson, application/jsonl, text/plain, application/json).",
        422: "A bad line of the file (``errors`` names each as ``line[N].field``), more tasks than "
             "--max-taskset-tasks, or path: absolute, with '..', outside its root, or no --taskset-roots.",
        503: REDIS},
    ("GET", "/v1/tasksets"): {503: REDIS},
    ("GET", "/v1/tasksets/{name}"): {404: "name: no such task set.", 503: REDIS},
    ("DELETE", "/v1/tasksets/{name}"): {404: "name: no such task set.",
                                         409: "A job that is not finished names the task set.", 503: REDIS},
}

# Success bodies FastAPI cannot see (a handler returning a plain Response).
SUCCESS_CONTENT: dict[tuple[str, str], dict] = {
    ("GET", "/v1/jobs/{job_id}/episodes/{source}/screenshots/{sha256}"): {
        media: {"schema": {"type": "string", "contentMediaType": media}}
        for media in ("image/jpeg", "image/png", "application/octet-stream")},
}

DERIVED = {
    401: "No bearer token, or not the api's (``WWW-Authenticate`` says which scheme).",
    413: "The request carries a body larger than the api's --max-body-bytes (any method; POST /v1/tasksets: "
         "--max-taskset-bytes).",
    422: "A parameter or the body fails validation; ``errors`` names every field at fault.",
}

METHOD_NOT_ALLOWED = {
    "description": "The path exists but not with this method; ``Allow`` lists every method it accepts. "
                   "Applies to every path.",
    "headers": {"Allow": {"description": "The methods this path accepts, comma-separated.",
                          "schema": {"type": "string"}}},
    "content": {PROBLEM: {"schema": {"$ref": REF}}},
}

# The titles the api sends where they differ from Python's reason phrases (RFC 9110's names).
TITLES = {413: "Payload Too Large", 422: "Unprocessable Content"}


def status_title(status: int) -> str:
    """The ``title`` of a problem with this status."""
    try:
        return TITLES.get(status) or HTTPStatus(status).phrase
    except ValueError:
        return "Error"


_ANNOTATIONS = {"title", "description", "default", "examples", "deprecated"}


def _can_fail(param: dict) -> bool:
    """Whether a parameter's value can fail validation: a required query parameter (it can be missing), or
    any schema but an unconstrained string (a path segment always is one)."""
    if param.get("in") == "query" and param.get("required"):
        return True
    return {k: v for k, v in param.get("schema", {}).items() if k not in _ANNOTATIONS} != {"type": "string"}


def _problem(description: str, headers: dict | None = None) -> dict:
    out = {"description": description, "content": {PROBLEM: {"schema": {"$ref": REF}}}}
    if headers:
        out["headers"] = headers
    return out


def statuses(op: dict, raised: dict[int, str]) -> dict[int, str]:
    """Every error status of one operation (405 aside), with its description."""
    out = dict(raised)
    if op.get("security"):
        out[401] = DERIVED[401]
    out[413] = DERIVED[413]
    if "requestBody" in op or any(_can_fail(p) for p in op.get("parameters", [])):
        out[422] = DERIVED[422]
    return dict(sorted(out.items()))


def with_problems(schema: dict) -> dict:
    """FastAPI's document with every operation's error responses as problems (see the module's doc)."""
    schema = copy.deepcopy(schema)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["Problem"] = PROBLEM_SCHEMA
    components.setdefault("responses", {})["MethodNotAllowed"] = METHOD_NOT_ALLOWED
    ops = {(m.upper(), p): op for p, item in schema.get("paths", {}).items() for m, op in item.items()}
    missing, unknown = sorted(set(ops) - set(RAISED)), sorted(set(RAISED) - set(ops))
    if missing or unknown:
        raise RuntimeError(f"openapi.RAISED: no entry for {missing}; entries of no operation: {unknown}")
    for key, op in ops.items():
        responses = op.setdefault("responses", {})
        responses.pop("422", None)  # FastAPI's HTTPValidationError; ours is derived below where it can happen
        if key in SUCCESS_CONTENT:
            for code, resp in responses.items():
                if code.startswith("2"):
                    resp["content"] = copy.deepcopy(SUCCESS_CONTENT[key])
        for code, description in statuses(op, RAISED[key]).items():
            headers = None
            if code == 401:
                headers = {"WWW-Authenticate": {"description": "Bearer realm=\"asyncwebrl\"",
                                                "schema": {"type": "string"}}}
            responses[str(code)] = _problem(f"{status_title(code)}: {description}", headers)
        responses["405"] = {"$ref": "#/components/responses/MethodNotAllowed"}
        op["responses"] = dict(sorted(responses.items()))
    return schema
