"""Property-based fuzzing (valid and invalid requests) of every operation in /openapi.json against a real server process:
no 5xx, and every response (status code, content type, body) matches the schema it declares."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from schemathesis import GenerationMode
from hypothesis import HealthCheck, given, settings

from tests.processes import free_port, running

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 60
# What the contract promises: no 5xx, and status codes, content types, headers and bodies as the
# schema declares them. (positive_data_acceptance is left out: rules that JSON Schema cannot say -
# an encoder that exists, a version that is there - rightly turn schema-valid requests into 4xx.)
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.negative_data_rejection,
]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "sources").mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"EXEMPLAR_DATA_DIR": str(root / "data"), "EXEMPLAR_SOURCE_ROOTS": f'["{root / "sources"}"]',
           "EXEMPLAR_LOG_LEVEL": "warning"}
    with running(["-m", "exemplar", "serve", "--host", "127.0.0.1", "--port", str(port)], f"{base}/readyz",
                 root / "server.log", env=env):
        import httpx

        with httpx.Client(base_url=base, timeout=30) as client:  # something for the fuzzer to find
            assert client.post("/v1/pools", json={"name": "vec", "encoder": "precomputed:4"}).status_code == 201
            items = [{"id": f"v{i}", "label": "ab"[i % 2], "domain": "xy"[i % 3 % 2], "embedding": [1, i, 0, 1]}
                     for i in range(12)]
            assert client.post("/v1/pools/vec/items", json={"items": items}).status_code == 201
        yield base
        log = (root / "server.log").read_text()
        assert "Traceback" not in log, log[-4000:]


@pytest.fixture(scope="module")
def api_schema(fuzz_server: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")


def test_every_operation_holds_to_its_schema(api_schema: schemathesis.BaseSchema) -> None:
    # Driven through hypothesis directly: schemathesis's pytest fixture loader does not support
    # this pytest; the checks are the same (call_and_validate runs every default check).
    tried = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            nonlocal tried
            tried += 1
            case.call_and_validate(checks=CHECKS, timeout=60)

        check()
    operations = sum(1 for _ in api_schema.get_all_operations())
    print(f"fuzzed {operations} operations with {tried} requests")
    assert operations >= 20 and tried >= operations * 5


def test_fuzzing_reached_every_operation(api_schema: schemathesis.BaseSchema) -> None:
    paths = {op.path for op in (result.ok() for result in api_schema.get_all_operations())}
    assert {"/v1/pools", "/v1/pools/{pool}/select", "/v1/pools/{pool}/items", "/v1/pools/{pool}/infer"} <= paths

