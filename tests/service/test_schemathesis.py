"""The OpenAPI document against the live server: schemathesis fuzzes every operation of a real uvicorn (real
Redis, ONNX, FAISS) from /openapi.json, a bounded number of examples each, and every answer must be documented
(status, content type, body schema) and none may be a server error (issue 15 item 9)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from tests.service.conftest import RedisServer, auth, free_port, make_settings

MAX_EXAMPLES = 25  # per operation and phase: about 30 s for the whole document on 2 busy cores
# Every check but positive_data_acceptance ("a schema-valid request gets a 2xx"): whether a domain or an item id
# exists is the catalogue's business, not the schema's, so a well-formed request for an unknown one is a 422
# (documented) by design.


@pytest.fixture(scope="module")
def live_url(service_artifacts: Path, redis_server: RedisServer) -> Iterator[str]:
    import uvicorn

    from service.app import create_app

    port = free_port()
    app = create_app(make_settings(service_artifacts, redis_server.url))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_every_answer_is_documented_and_none_is_a_server_error(live_url: str) -> None:
    api = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    failures: list[str] = []
    n_operations = 0
    for result in api.get_all_operations():
        operation = result.ok()
        n_operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def fuzz(case: Any) -> None:
            case.call_and_validate(headers=auth(), excluded_checks=[checks.positive_data_acceptance])

        try:
            fuzz()
        except (Exception, BaseExceptionGroup) as exc:  # every operation is fuzzed; the failures are reported together
            failures.append(f"{operation.label}: {exc}")
    assert n_operations >= 9
    assert not failures, "\n\n".join(failures)
