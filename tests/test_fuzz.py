"""Property-based fuzzing of the whole OpenAPI schema with Schemathesis.

The schema is the app's own (`create_app().openapi()`, checked to be exactly what the server
serves at /openapi.json), so endpoints added later are fuzzed without touching this file. Every
operation is called on one real `emailmcp serve` process on SQLite with the all-scope bootstrap
key, with valid (positive) and schema-violating (negative) inputs, and must answer without a 5xx
and exactly as the schema says: declared status code, declared content type, a body matching
the declared schema and declared response headers.

Bounded and reproducible: a fixed seed, derandomized Hypothesis, no example database and at
most MAX_EXAMPLES generated cases per operation in the fuzzing phase (plus Schemathesis'
deterministic schema examples and coverage cases). For a deeper local run, raise the bound with
EMAILMCP_FUZZ_EXAMPLES=500.

The schema is loaded at import time rather than from a fixture (`schemathesis.pytest.from_fixture`)
because the latter is broken with pytest 9.2 (it sets `Function._nodeid`, which pytest 9.2 no longer
has); loaded eagerly, every operation runs as its own test item, its failures headed e.g. `[POST /v1/users]`.
"""

import os
import tempfile
from pathlib import Path

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import OFFLINE_GOOGLE, Server
from emailmcp.app import create_app
from emailmcp.settings import Settings

MAX_EXAMPLES = int(os.environ.get("EMAILMCP_FUZZ_EXAMPLES", "25"))
SEED = 20240611
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Operations the schema must at least contain; a fuzz run over fewer would pass vacuously.
EXPECTED_OPERATIONS = {
    ("GET", "/"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
    ("POST", "/v1/users"),
    ("GET", "/v1/users"),
    ("GET", "/v1/users/{user_id}/profile"),
    ("DELETE", "/v1/users/{user_id}"),
    ("GET", "/v1/users/{user_id}/mailbox"),
    ("PUT", "/v1/users/{user_id}/mailbox"),
    ("DELETE", "/v1/users/{user_id}/mailbox"),
    ("GET", "/v1/reports/users/{user_id}"),
    ("GET", "/v1/reports/summary"),
    ("POST", "/v1/oauth/authorize"),
    ("GET", "/v1/oauth/callback"),
    ("POST", "/v1/oauth/callback"),
    ("DELETE", "/v1/users/{user_id}/gmail"),
    ("GET", "/llm/capabilities"),
    ("POST", "/llm/inference"),
    ("POST", "/llm/execute-action"),
}


def app_openapi() -> dict:
    """The OpenAPI document; building it needs no database (the lifespan never runs here)."""
    settings_ = Settings(_env_file=None, data_dir=Path(tempfile.gettempdir()) / "emailmcp-fuzz-unused")
    return create_app(settings_).openapi()


OPENAPI = app_openapi()
schema = schemathesis.openapi.from_dict(
    OPENAPI,
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
        }
    ),
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    server = Server(
        tmp_path_factory.mktemp("fuzz"),
        f"sqlite:///{tmp_path_factory.mktemp('fuzz-db') / 'emailmcp.db'}",
        EMAILMCP_RATE_LIMIT="0",
        EMAILMCP_SMTP_ALLOW_PRIVATE_HOSTS="true",
        **OFFLINE_GOOGLE,
    ).start()
    yield server
    server.stop()


def test_schema_declares_every_known_operation():
    results = list(schema.get_all_operations())
    errors = [result.err() for result in results if isinstance(result, Err)]
    assert not errors, f"operations Schemathesis cannot read: {errors}"
    found = {(result.ok().method.upper(), result.ok().path) for result in results}
    missing = EXPECTED_OPERATIONS - found
    assert not missing, f"missing from the schema: {sorted(missing)}"


def test_fuzzed_schema_is_the_served_one(fuzz_server):
    served = httpx2.get(f"{fuzz_server.url}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == OPENAPI


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case, fuzz_server):
    case.call_and_validate(
        base_url=fuzz_server.url,
        headers={
            "Authorization": f"Bearer {fuzz_server.bootstrap_key}",
            "X-API-Key": fuzz_server.bootstrap_key,
            "X-MCP-API-Key": fuzz_server.bootstrap_key,
        },
        checks=CHECKS,
        timeout=30,
    )
