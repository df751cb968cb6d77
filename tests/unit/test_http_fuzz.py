"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis, issue #26).

What is fuzzed: every operation of ``/openapi.json`` as :func:`create_api` serves it (the request
bodies validated by hand are in it through ``install_openapi``), called in-process over ASGI on
the fake backend of ``test_http_api`` (no Ray, no model). Schemathesis sends schema-valid and
schema-violating requests: its coverage phase (boundary values, each field negated, wrong types,
other HTTP methods, requests without a JSON Content-Type) and its fuzzing phase (Hypothesis
examples), with the admin token on the ``/admin`` routes so they are exercised past the auth.

What is checked on every response: never a 5xx (``not_a_server_error``); the status code, the
Content-Type, the headers and the body are those the schema documents for the operation; a
request that violates the schema is refused with a 4xx (``negative_data_rejection``); a method
the path does not serve is a 405 whose ``Allow`` lists exactly the documented methods. One
check is left out on purpose: ``positive_data_acceptance`` (every schema-valid request gets a
2xx) cannot hold here, because the API refuses schema-valid requests on what the schema cannot
express: the served version's catalog and rating scale, the registry and
``serve.selectable_models``, the clock (timestamps in the future), ids repeated in a list, an
event without a label or a rating.

How it is bounded: at most ``MAX_EXAMPLES`` fuzzing examples per operation, plus the coverage
phase's deterministic cases; ``derandomize`` and no example database, so every run (and CI)
sends the same requests. About 20 s on two cores. What the fuzzer found is pinned at the end as
plain tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from recicl.serve.api.routes import create_api
from tests.unit.test_http_api import ADMIN_TOKEN, FakeBackend, _config

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MAX_EXAMPLES = 60
#: The no-model app answers little but 503s: fewer examples find all it has to show.
MAX_EXAMPLES_NO_MODEL = 30
#: Unknown item ids are scored (as a catalog that grows while serving allows), so that schema-
#: valid scoring requests reach the model and their 200 bodies are checked too, not only 422s.
#: The shipped body limit (1 MiB), not test_http_api's 64 KiB: the fuzzer's long strings must
#: reach validation, whose answers are checked, rather than stop at a 413 the schema leaves out.
BODY_LIMIT = {"max_body_bytes": 1_048_576}
SERVED = create_api(
    FakeBackend(), _config(allow_unknown_items=True, **BODY_LIMIT), admin_token=ADMIN_TOKEN
)
#: No version loaded yet: scoring answers the documented 503; events are stored all the same.
NO_MODEL = create_api(FakeBackend(loaded=False), _config(**BODY_LIMIT), admin_token=ADMIN_TOKEN)
served_schema = schemathesis.openapi.from_asgi("/openapi.json", SERVED)
no_model_schema = schemathesis.openapi.from_asgi("/openapi.json", NO_MODEL)

#: The checks not run, each for the reason in the module docstring.
EXCLUDED_CHECKS: list[schemathesis.CheckFunction] = [positive_data_acceptance]
FUZZ_SETTINGS = settings(
    derandomize=True,  # the same requests every run: a failure in CI reproduces locally
    database=None,
    deadline=None,  # a TestClient call's time varies with the machine's load, not the API
    # the fixture below is meant to be shared by one operation's examples (it tallies them)
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _headers(case: schemathesis.Case) -> dict[str, str] | None:
    return ADMIN if case.path.startswith("/admin") else None


@pytest.fixture()
def statuses(request: pytest.FixtureRequest) -> Iterator[list[int]]:
    """The status of every response to one operation; after its run, the fuzzer must have got
    past validation (a 2xx) and, on /admin routes, past the auth (no 401/403)."""
    failed_before = request.session.testsfailed
    seen: list[int] = []
    yield seen
    if request.session.testsfailed > failed_before:
        return  # the run failed (already reported): its statuses prove nothing more
    name = request.node.name
    assert any(200 <= s < 300 for s in seen), f"{name}: no 2xx in {len(seen)} responses"
    if "/admin/" in name:
        assert not {401, 403} & set(seen), f"{name}: the admin token was refused"


@served_schema.parametrize()
@settings(FUZZ_SETTINGS, max_examples=MAX_EXAMPLES)
def test_every_operation_answers_as_its_schema_says(
    case: schemathesis.Case, statuses: list[int]
) -> None:
    response = case.call_and_validate(headers=_headers(case), excluded_checks=EXCLUDED_CHECKS)
    statuses.append(response.status_code)


@no_model_schema.parametrize()
@settings(FUZZ_SETTINGS, max_examples=MAX_EXAMPLES_NO_MODEL)
def test_without_a_model_the_only_5xx_is_the_documented_503(case: schemathesis.Case) -> None:
    # not_a_server_error would flag the 503 this state is documented to answer: checked here
    response = case.call_and_validate(
        headers=_headers(case), excluded_checks=[*EXCLUDED_CHECKS, not_a_server_error]
    )
    if response.status_code >= 500:
        body = response.json()
        assert response.status_code == 503, body
        # /healthz says "unavailable", the scoring routes "model_unavailable"
        assert body["error"] in {"unavailable", "model_unavailable"}, body
        assert "no version" in body["detail"], body


# -- what the fuzzer found, pinned ------------------------------------------------------------


@pytest.fixture()
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture()
def http(backend: FakeBackend) -> Iterator[TestClient]:
    app = create_api(backend, _config(), admin_token=ADMIN_TOKEN)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"split": {"share": False}}, "split.share"),  # the fuzzer's: stored as share 0.0
        ({"split": {"share": "0.2"}}, "split.share"),
        ({"shadow": {"max_in_flight": "16"}}, "shadow.max_in_flight"),
    ],
)
def test_traffic_numbers_must_be_json_numbers(
    http: TestClient, backend: FakeBackend, body: dict[str, Any], field: str
) -> None:
    """PUT /admin/traffic validated TrafficConfig in pydantic's lax mode (for YAML configs), so
    a boolean or a string was taken for a number the schema documents: now a 422 naming it."""
    reply = http.put("/admin/traffic", json=body, headers=ADMIN)
    assert reply.status_code == 422, reply.text
    assert field in reply.json()["detail"]
    assert backend.traffic is None  # nothing was set


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"item_id": " ", "title": "0"}, "items[0].item_id"),  # the fuzzer's: a 500
        ({"item_id": "\u00a0", "title": "t"}, "items[0].item_id"),
        ({"item_id": "a", "title": "t", "attributes": {"k\x00": "v"}}, "items[0].attributes"),
        ({"item_id": "a", "title": "t", "attributes": {"k": "v\x00"}}, "items[0].attributes"),
    ],
)
def test_items_the_store_would_refuse_are_a_422_not_a_500(
    http: TestClient, backend: FakeBackend, item: dict[str, Any], field: str
) -> None:
    """A blank item id or a NUL in an attribute passed the request schema, then the store
    refused the batch (InvalidItemError) and the client got a 500."""
    reply = http.post("/admin/items", json={"items": [item]}, headers=ADMIN)
    assert reply.status_code == 422, reply.text
    assert field in reply.json()["detail"]
    assert backend.store.items_since(0)[1] == []  # nothing was stored


@pytest.mark.parametrize("method", ["GET", "POST", "OPTIONS"])
def test_a_405_allows_every_method_of_the_path(http: TestClient, method: str) -> None:
    """/admin/traffic is two routes (PUT, DELETE); Starlette's 405 named only the first."""
    reply = http.request(method, "/admin/traffic", headers=ADMIN)
    assert reply.status_code == 405, reply.text
    assert reply.headers["Allow"] == "DELETE, PUT"
    assert reply.json()["error"] == "method_not_allowed"
