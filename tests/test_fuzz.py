"""The API fuzzed from its own OpenAPI description (schemathesis, in-process over WSGI): whatever a
client sends, valid or not, the answer is never a 5xx.

Bounded: a few examples per operation and generation mode (schema-valid and schema-violating input),
each operation a test of its own. The app runs against a real Redis (its own key prefix) and the real
model server; no worker runs, so jobs only queue. Schemathesis' pytest plugin is not used (it
reaches into pytest internals that pytest 9 changed); its strategies drive Hypothesis directly.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from gateway import create_app
from gateway.openapi import SPEC
from tests.workers import drop_keys, isolated_settings

MAX_EXAMPLES = 10
OPERATIONS = [(f"{method.upper()} {path}", op) for path, ops in SPEC["paths"].items() for method, op in ops.items()]


def _violable(op: dict) -> bool:
    """Whether schema-violating input exists: a body, or a parameter with more than "any string"."""
    return "requestBody" in op or any(p["schema"] != {"type": "string"} for p in op.get("parameters", []))


CASES = [pytest.param(label, mode, id=f"{label} {mode.value}") for label, op in OPERATIONS
         for mode in GenerationMode if mode is GenerationMode.POSITIVE or _violable(op)]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, model_server):
    tmp = tmp_path_factory.mktemp("fuzz")
    s = isolated_settings(tmp, model_server, allow_private_urls=False, url_timeout_s=1, max_upload_mb=1)
    app = create_app({"SETTINGS": s, "TESTING": True})
    yield schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    drop_keys(s)


@pytest.mark.parametrize("label, mode", CASES)
def test_no_input_makes_a_5xx(api_schema, label, mode):
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} missing from the served description"
    seen = []

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case):
        response = case.call_and_validate(checks=[not_a_server_error])
        seen.append(response.status_code)
        assert response.status_code < 500

    fuzz()
    assert seen
