"""Property-based fuzzing of every operation in /openapi.json against a real server process, with
every check schemathesis has: the whole run the CLI makes (`schemathesis run URL --checks all`:
examples, coverage, fuzzing and stateful phases), in this process and derandomized.

So: no 5xx; status codes, content types, headers and bodies as declared; schema-valid requests
accepted (or refused only for the server's state: 401/403/404/409/429) and schema-invalid ones
refused; a 405 that says what is allowed; a deleted resource gone and a created one there.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from schemathesis.checks import CHECKS
from schemathesis.engine import Status, events, from_schema

from tests.processes import free_port, running

pytestmark = pytest.mark.integration

# Per operation in the fuzzing phase (the coverage phase's boundary cases do not depend on it).
EXAMPLES_PER_OPERATION = 30
STATEFUL_STEPS = 20


@dataclasses.dataclass(frozen=True)
class Accepted:
    """Refusals a check reports that this test accepts, each for a stated reason: the response's
    status and error message must match, anything else still fails."""

    status: int
    message: str  # searched in the error envelope's message
    why: str


# What JSON Schema cannot state, so a schema-valid request the server rightly refuses (400):
INEXPRESSIBLE = (
    Accepted(400, r"not a decodable image|image is not valid base64|exceeds the pixel limit|image is empty",
             "an image is any base64 string to JSON Schema; whether its bytes decode is not a schema property"),
    Accepted(400, r"appears twice in one request", "JSON Schema has no 'unique by this field' for the items' ids"),
    Accepted(400, r"metadata is larger than", "a size in bytes of serialised JSON is not a schema property"),
    Accepted(400, r"embedding_b64 (contains NaN or infinite values|has zero length)",
             "whether base64 text decodes to finite float32 values that are not all zero is not a schema property"),
    Accepted(400, r"needs a user message|the query message has|the query's image is a URL|data URI is not valid base64",
             "chat: which message is the last user one, and whether it holds an image or text to select for, is not "
             "a schema property"),
)
# Refusals that depend on the pool's (or server's) state but are still answered as malformed
# requests (400, 503) by code outside the HTTP layer: each should raise exemplar.errors.Incompatible
# (409) or NotFound (404). Remove an entry when its refusal changes.
# /v1/pools/{pool}/items/delete is also /v1/pools/{pool}/items/{item_id} with the id 'delete', so
# the 405's Allow rightly names GET and DELETE there; the schema's path for it names POST only.
OVERLAPPING_PATHS = ("/v1/pools/{pool}/items/delete",)


def _accepted(failure: object, case: schemathesis.Case, response: schemathesis.Response) -> Accepted | None:
    if case.operation.path in OVERLAPPING_PATHS and type(failure).__name__ == "AllowHeaderMismatch":
        return Accepted(405, "", "overlapping paths")
    try:
        message = json.loads(response.content)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return None
    return next((a for a in INEXPRESSIBLE
                 if a.status == response.status_code and re.search(a.message, message)), None)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, fake_mllm: str) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "sources").mkdir()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"EXEMPLAR_DATA_DIR": str(root / "data"), "EXEMPLAR_SOURCE_ROOTS": json.dumps([str(root / "sources")]),
           "EXEMPLAR_LOG_LEVEL": "warning",
           # A model for the chat endpoint to reach, named as the fuzzer may guess it ("0": the first string).
           "EXEMPLAR_MLLM_ENDPOINTS": json.dumps({name: {"base_url": f"{fake_mllm}/v1", "model": "majority"}
                                                  for name in ("0", "fake")})}
    with running(["-m", "exemplar", "serve", "--host", "127.0.0.1", "--port", str(port)], f"{base}/readyz",
                 root / "server.log", env=env):
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
    config = schemathesis.Config.from_dict({
        "workers": 1,  # one request at a time, in a fixed order
        "generation": {"deterministic": True, "max-examples": EXAMPLES_PER_OPERATION},
        "phases": {"stateful": {"max-steps": STATEFUL_STEPS}},
        "checks": {"enabled": True},
    })
    return schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json", config=config)


def test_every_operation_holds_to_its_schema(api_schema: schemathesis.BaseSchema) -> None:
    accepted: dict[str, int] = {}

    @api_schema.hook
    def filter_failure(context: schemathesis.HookContext, failure: object, case: schemathesis.Case,
                       response: schemathesis.Response) -> bool:
        reason = _accepted(failure, case, response)
        if reason is not None:
            accepted[reason.why] = accepted.get(reason.why, 0) + 1
        return reason is None

    started = time.perf_counter()
    requests, failures, errors, ran = 0, [], [], set()
    for event in from_schema(api_schema).execute():
        if isinstance(event, (events.ScenarioFinished, events.FuzzScenarioFinished)):
            recorder = event.recorder
            requests += len(recorder.interactions)
            for nodes in recorder.checks.values():
                for node in nodes:
                    ran.add(node.name)
                    if node.status == Status.FAILURE and node.failure_info is not None:
                        failure = node.failure_info.failure
                        failures.append(f"{recorder.label} [{node.name}] {failure.title}: {failure.message}\n"
                                        f"    {node.failure_info.code_sample}")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            errors.append(f"{getattr(event, 'label', '')}: {event.info}")
    print(f"fuzzed with {requests} requests in {time.perf_counter() - started:.0f} s; accepted refusals: {accepted}")
    assert not errors, "\n".join(errors)
    assert not failures, "\n\n".join(sorted(set(failures)))
    # Every check schemathesis has took part (object_level_authorization needs two identities, and
    # ignored_auth declared security: both run and pass vacuously on this open server).
    assert set(CHECKS.get_all_names()) <= ran, set(CHECKS.get_all_names()) - ran
    assert requests >= 25 * EXAMPLES_PER_OPERATION


def test_fuzzing_reached_every_operation(api_schema: schemathesis.BaseSchema) -> None:
    paths = {op.path for op in (result.ok() for result in api_schema.get_all_operations())}
    assert {"/v1/pools", "/v1/pools/{pool}/select", "/v1/pools/{pool}/items", "/v1/pools/{pool}/infer"} <= paths
