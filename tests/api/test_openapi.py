"""The api's contract, checked against the api itself: ``/openapi.json`` documents every status each
operation answers, every error is an ``application/problem+json`` ``Problem``, a 405 names every method of
its path, and the job schema states the rules between fields that JSON Schema can state. The fuzz test is
generated from the api's own OpenAPI document (hypothesis, and ``from_schema`` below for the JSON Schema the
document uses: hypothesis-jsonschema 0.23 no longer runs on the hypothesis this repository installs) and run
against the real api process (no launcher: no job is ever started) over a real redis-server."""

from __future__ import annotations

import http.client
import json
import pathlib
import urllib.parse

import jsonschema
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from asyncwebrl.common.localstack import ServiceProcess, free_port, wait_for_port

TOKEN = "contract-test-token"
PREFIX = "api-contract:"
MAX_BODY = 4096
MAX_JOBS = 6  # the fuzz fills the store, so a full store's 409 is exercised too
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
EXAMPLES = 40  # per operation: 14 operations, well under a minute on two busy cores


@pytest.fixture(scope="module")
def api(redis_server, tmp_path_factory):
    d = tmp_path_factory.mktemp("api-contract")
    port = free_port()
    # The buffer target is a port nobody listens on: a purge's buffer call fails (a documented 503).
    proc = ServiceProcess("api", ["--redis-url", redis_server.url, "--key-prefix", PREFIX, "--log-format", "text",
                                  "--api-port", str(port), "--max-body-bytes", str(MAX_BODY),
                                  "--max-jobs", str(MAX_JOBS), "--run-dir", str(d / "runs"),
                                  "--buffer-target", f"127.0.0.1:{free_port()}"],
                          {"ASYNCWEBRL_API_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis_server.password},
                          d / "api.log")
    proc.wait_ready()
    wait_for_port(port, 30, proc.proc)
    proc.api_port, proc.run_dir = port, d / "runs"
    yield proc
    assert proc.stop() == 0, proc.logs()[-2000:]


def send(api, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN,
         headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", api.api_port, timeout=30)
    h = {**({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=h)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


@pytest.fixture(scope="module")
def doc(api) -> dict:
    status, headers, body = send(api, "GET", "/openapi.json", token=None)
    assert status == 200 and headers["content-type"].startswith("application/json")
    return json.loads(body)


def deref(node, doc: dict):
    """``node`` with every local ``$ref`` replaced by what it names (the api's schemas have no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return deref({**target, **{k: v for k, v in node.items() if k != "$ref"}}, doc)
        return {k: deref(v, doc) for k, v in node.items()}
    if isinstance(node, list):
        return [deref(v, doc) for v in node]
    return node


SCHEMA_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
                   "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum",
                   "exclusiveMaximum", "enum", "const", "anyOf", "allOf", "if", "then", "not",
                   "title", "description", "default", "examples", "format", "contentMediaType"}


def from_schema(schema: dict) -> st.SearchStrategy:
    """Values valid for ``schema`` (dereferenced), for the keywords the api's document uses; an unknown
    keyword is an error, so a schema the generator would only half follow fails here, not silently."""
    unknown = set(schema) - SCHEMA_KEYWORDS
    assert not unknown, f"from_schema: no support for {unknown} in {schema}"
    if {"allOf", "if", "not"} & set(schema):
        # Rules between fields: generate from the rest, keep what the whole schema accepts.
        validator = jsonschema.Draft202012Validator(schema)
        rest = {k: v for k, v in schema.items() if k not in ("allOf", "if", "then", "not")}
        return from_schema(rest).filter(validator.is_valid)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "string":
        lo, hi = schema.get("minLength", 0), schema.get("maxLength", 60)
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda v: lo <= len(v) <= hi)
        return st.text(min_size=lo, max_size=min(hi, lo + 60))
    if kind == "integer":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -(2**40) - 1) + 1)
        hi = schema.get("maximum", schema.get("exclusiveMaximum", 2**40 + 1) - 1)
        return st.integers(lo, hi)
    if kind == "number":
        return st.floats(schema.get("minimum", schema.get("exclusiveMinimum")),
                         schema.get("maximum", schema.get("exclusiveMaximum")),
                         exclude_min="exclusiveMinimum" in schema, exclude_max="exclusiveMaximum" in schema,
                         allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {"type": "integer"})),
                        min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 8), 8))
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        fixed = st.fixed_dictionaries({k: from_schema(v) for k, v in props.items() if k in required},
                                      optional={k: from_schema(v) for k, v in props.items() if k not in required})
        if schema.get("additionalProperties", True) is False or props:
            return fixed
        return st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=10), max_size=4)
    raise AssertionError(f"from_schema: no type in {schema}")


def operations(doc: dict) -> list[tuple[str, str, dict]]:
    return [(m.upper(), p, op) for p, item in doc["paths"].items() for m, op in item.items()]


def media(headers: dict) -> str:
    return headers.get("content-type", "").split(";")[0].strip()


def check_answer(doc: dict, method: str, path: str, op: dict, status: int, headers: dict, body: bytes) -> None:
    """The answer is one the operation documents, in its documented content type and schema."""
    # No 5xx, but for the one dependency this api is given unreachable on purpose: a purge's buffer (a
    # documented 503, the job kept).
    assert status < 500 or (status == 503 and json.loads(body)["detail"].startswith("buffer:")), (status, body[:500])
    documented = deref(op["responses"], doc)
    assert str(status) in documented, f"{method} {path}: {status} is not documented ({sorted(documented)}): " \
                                      f"{body[:300]!r}"
    content = documented[str(status)].get("content", {})
    if status >= 400:
        assert media(headers) == "application/problem+json", headers
        for name in documented[str(status)].get("headers", {}):
            assert name.lower() in headers, f"{status} without its {name} header"
        if method == "HEAD":
            return
        problem = json.loads(body)
        jsonschema.validate(problem, deref(doc["components"]["schemas"]["Problem"], doc))
        assert problem["status"] == status
        return
    if method == "HEAD":
        return
    assert media(headers) in content, f"{method} {path}: {media(headers)} is not among {sorted(content)}"
    schema = content[media(headers)].get("schema", {})
    if media(headers) == "application/json":
        jsonschema.validate(json.loads(body), schema, cls=jsonschema.Draft202012Validator)
    elif schema.get("type") == "string" and media(headers).startswith("text/"):
        body.decode()


def test_every_error_is_a_documented_problem(doc):
    text = json.dumps(doc)
    assert "HTTPValidationError" not in text and "ValidationError" not in doc["components"]["schemas"]
    problem = doc["components"]["schemas"]["Problem"]
    assert problem["required"] == ["type", "title", "status", "detail"]
    assert {"errors", "still_running"} <= set(problem["properties"])
    bearer = doc["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    for method, path, op in operations(doc):
        responses = deref(op["responses"], doc)
        codes = {int(c) for c in responses}
        for code, resp in responses.items():
            if int(code) >= 400:
                assert list(resp["content"]) == ["application/problem+json"], (method, path, code)
                assert resp["content"]["application/problem+json"]["schema"]["title"] == "Problem"
        assert {405, 413} <= codes, (method, path)
        assert (401 in codes) == bool(op.get("security")), (method, path)
        if "requestBody" in op:
            assert 422 in codes, (method, path)
        assert responses["405"]["headers"]["Allow"]
    by_op = {(m, p): {int(c) for c in op["responses"]} for m, p, op in operations(doc)}
    assert by_op[("GET", "/v1/schema/job")] == {200, 405, 413}
    assert by_op[("POST", "/v1/jobs")] == {201, 401, 405, 409, 413, 422, 503}
    assert by_op[("GET", "/v1/jobs/{job_id}")] == {200, 401, 404, 405, 413, 503}, "a bare path string cannot fail"
    assert by_op[("DELETE", "/v1/jobs/{job_id}")] == {200, 401, 404, 405, 409, 413, 422, 503}
    assert by_op[("GET", "/viewer/{job_id}")] == {200, 400, 405, 413}
    shot = doc["paths"]["/v1/jobs/{job_id}/episodes/{source}/screenshots/{sha256}"]["get"]["responses"]["200"]
    assert set(shot["content"]) == {"image/jpeg", "image/png", "application/octet-stream"}


def test_405_allows_every_method_of_the_path(api, doc):
    for path, item in doc["paths"].items():
        concrete = path.replace("{eval_id}", "eval-1").replace("{", "").replace("}", "")
        allowed = [m for m in METHODS if m.lower() in item]
        for method in METHODS:
            if method in allowed:
                continue
            status, headers, body = send(api, method, concrete, body=b"{}" if method in ("POST", "PUT") else None)
            assert status == 405, (method, concrete, status)
            assert headers["allow"] == ", ".join(allowed), (method, concrete)
            check_answer(doc, method, path, {"responses": {"405": item[allowed[0].lower()]["responses"]["405"]}},
                         status, headers, body)
    # The one case of the issue: PUT on a job answered Allow: GET though DELETE is allowed there too.
    status, headers, _ = send(api, "PUT", "/v1/jobs/some-job", body=b"{}")
    assert status == 405 and headers["allow"] == "GET, DELETE"
    status, headers, _ = send(api, "POST", "/openapi.json", body=b"{}", token=None)
    assert status == 405 and headers["allow"] == "GET, HEAD", "FastAPI serves HEAD with the schema's GET"


def test_job_schema_states_the_rules_between_fields(api, doc):
    status, _, body = send(api, "GET", "/v1/schema/job", token=None)
    assert status == 200
    served = json.loads(body)
    validator = jsonschema.Draft202012Validator(served)
    assert deref(doc["components"]["schemas"]["TaskSpec"], doc) == served["$defs"]["TaskSpec"]
    cases = [  # (document, whether JSON Schema can refuse it)
        ({"rollout": {"mode": "sync", "max_staleness": 1}}, True),
        ({"tasks": {"train_seed": 4242}}, True),  # eval_seed's default is 4242
        ({"tasks": {"eval_seed": 0}}, True),  # train_seed's default is 0
        ({"model": {"path": "/etc"}}, True),
        ({"model": {"path": "models/../../etc"}}, True),
        ({"tasks": {"train_seed": 7, "eval_seed": 7}}, False),  # two values compared: not expressible
    ]
    for i, (section, expressible) in enumerate(cases):
        job = {"name": f"rule-{i}", **section}
        assert validator.is_valid(job) is not expressible, job
        status, headers, body = send(api, "POST", "/v1/jobs", json.dumps(job).encode())
        assert status == 422 and media(headers) == "application/problem+json", (job, body)
        assert json.loads(body)["errors"][0]["field"].split(".")[0] in section
    for ok in ({"rollout": {"mode": "sync"}}, {"tasks": {"train_seed": 1, "eval_seed": 0}},
               {"model": {"path": "models/a..b"}}):
        assert validator.is_valid({"name": "fine", **ok}), ok


def _segment(schema: dict) -> st.SearchStrategy[str]:
    """A path segment: valid for the schema, or anything that stays one segment."""
    valid = from_schema(schema).map(str)
    anything = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=60)
    return (valid | anything).filter(lambda s: s not in ("", ".", "..") and "/" not in s)


def _query_value(schema: dict) -> st.SearchStrategy[str]:
    valid = from_schema(schema).map(lambda v: json.dumps(v) if isinstance(v, bool) else str(v))
    invalid = st.text(max_size=30) | st.integers(-10**12, 10**12).map(str)
    return valid | invalid


def _requests(doc: dict, op: dict, known: list[str]) -> st.SearchStrategy[tuple[str, bytes | None, str | None]]:
    """(path and query, body, token) for one operation: valid and invalid parts mixed."""
    params = deref(op.get("parameters", []), doc)
    hints = {"job_id": known, "role": ["trainer"], "source": ["train"]}  # values that lead past a 404
    path_parts = {p["name"]: (st.sampled_from(hints[p["name"]]) | _segment(p["schema"])) if p["name"] in hints
                  else _segment(p["schema"]) for p in params if p["in"] == "path"}
    query_parts = {p["name"]: st.none() | _query_value(p["schema"]) for p in params if p["in"] == "query"}
    body = st.none()
    if "requestBody" in op:
        schema = deref(op["requestBody"]["content"]["application/json"]["schema"], doc)
        json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                                   | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                                   | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
        body = st.one_of(
            from_schema(schema).map(lambda v: json.dumps(v).encode()),
            json_values.map(lambda v: json.dumps(v).encode()),
            st.just(b"{not json"),
            st.just(json.dumps({"name": "big", "pad": "x" * MAX_BODY}).encode()),  # 413
        )
        if not op["requestBody"].get("required"):
            body = st.none() | body
    token = st.sampled_from([TOKEN, TOKEN, TOKEN, None, "wrong-token"])
    return st.tuples(st.fixed_dictionaries(path_parts), st.fixed_dictionaries(query_parts), body, token)


def _url(template: str, path_values: dict, query_values: dict) -> str:
    url = template
    for name, value in path_values.items():
        url = url.replace("{" + name + "}", urllib.parse.quote(value, safe=""))
    query = urllib.parse.urlencode({k: v for k, v in query_values.items() if v is not None})
    return url + (f"?{query}" if query else "")


def _seed(api) -> list[str]:
    """Jobs the fuzz reaches with valid ids: one pending, one cancelled; with metrics and a log on disk."""
    ids = []
    for name in ("fuzz-pending", "fuzz-cancelled"):
        status, _, body = send(api, "POST", "/v1/jobs", json.dumps({"name": name}).encode())
        assert status == 201, body
        ids.append(json.loads(body)["id"])
    assert send(api, "DELETE", f"/v1/jobs/{ids[1]}")[0] == 200
    job_dir = pathlib.Path(api.run_dir) / ids[0]
    (job_dir / "checkpoints").mkdir(parents=True)
    (job_dir / "checkpoints" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 0.5, "staleness": {"0": 3, "1": 1}}) + "\n" for s in range(1, 4)))
    (job_dir / "logs").mkdir()
    (job_dir / "logs" / "trainer.log").write_text("step 1\nstep 2\n")
    return ids


@pytest.fixture(scope="module")
def known(api) -> list[str]:
    return _seed(api)


def _operation_ids():
    # Collected before the api runs: the operations are the app's own, built in process.
    from asyncwebrl.api.config import ApiConfig
    from asyncwebrl.api.service import create_app

    schema = create_app(ApiConfig(api_token="x" * 16), None).openapi()
    return [f"{m.upper()} {p}" for p, item in schema["paths"].items() for m in item]


@pytest.mark.parametrize("operation", _operation_ids())
def test_fuzz_every_operation_from_the_openapi_document(api, doc, known, operation):
    """Valid and invalid path parameters, queries, bodies and tokens, generated from the served document:
    no 5xx, every status documented for the operation, every error a Problem, every success its schema.
    Deterministic (derandomized, no example database): a failure prints its request and reproduces."""
    method, path = operation.split(" ", 1)
    op = doc["paths"][path][method.lower()]
    seen: set[int] = set()

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(request=_requests(doc, op, known))
    def check(request):
        path_values, query_values, body, token = request
        url = _url(path, path_values, query_values)
        note(f"{method} {url} token={token!r} body={body[:300] if body else body!r}")
        status, headers, answer = send(api, method, url, body=body, token=token)
        seen.add(status)
        check_answer(doc, method, path, op, status, headers, answer)

    check()
    # The inputs reach past the token check: some answers are not 401s.
    assert seen - {401}, seen
