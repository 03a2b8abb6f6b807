"""The error shape, body limits, request ids, rate limits and CORS, over real HTTP."""

import json
import re
import secrets
import time

import pytest

from conftest import REDIS_URL, Server, assert_error, unavailable

SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@pytest.fixture(scope="module")
def errors_tenant(server) -> str:
    return f"err-{secrets.token_hex(5)}"


@pytest.fixture(scope="module")
def mail_key(server, errors_tenant) -> str:
    return server.create_key(errors_tenant, "mail")


@pytest.fixture
def client(server, mail_key):
    with server.client(mail_key) as client:
        yield client


# --- the error shape ---------------------------------------------------------------------------------------------


def test_401_has_the_error_shape(server):
    with server.client() as anonymous:
        assert_error(anonymous.get("/v1/users"), 401, "unauthorized")
    with server.client("emk_aaaaaaaaaaaa_" + "a" * 43) as unknown:
        assert_error(unknown.get("/v1/users"), 401, "invalid_api_key")


def test_403_has_the_error_shape(client):
    assert_error(client.delete("/v1/users/nobody"), 403, "insufficient_scope")


def test_404_has_the_error_shape(client):
    assert_error(client.get("/v1/users/nobody/profile"), 404, "user_not_found")
    assert_error(client.get("/v1/no-such-route"), 404)


def test_405_has_the_error_shape(client):
    assert_error(client.patch("/v1/users"), 405)


@pytest.mark.parametrize(
    ("request_args", "field"),
    [
        ({"method": "POST", "url": "/v1/users", "json": {"user_id": "has space"}}, "body.user_id"),
        ({"method": "POST", "url": "/v1/users", "json": {}}, "body.user_id"),
        ({"method": "POST", "url": "/v1/users", "json": {"user_id": "u1", "email": "not-an-email"}}, "body.email"),
        ({"method": "POST", "url": "/v1/users", "json": {"user_id": "u1", "colour": "red"}}, "body.colour"),
        ({"method": "GET", "url": "/v1/users", "params": {"limit": 0}}, "query.limit"),
        ({"method": "GET", "url": "/v1/users", "params": {"limit": "many"}}, "query.limit"),
        ({"method": "GET", "url": "/v1/users/has%20space/profile"}, "path.user_id"),
    ],
    ids=["pattern", "missing", "email", "extra", "limit-range", "limit-type", "path"],
)
def test_422_names_the_field(client, request_args, field):
    error = assert_error(client.request(**request_args), 422, "validation_error")
    assert error["details"], error
    assert error["details"][0]["field"] == field, error
    assert field in error["message"]


def test_422_does_not_echo_input_values(client):
    secret = "s3cr3t-" + secrets.token_hex(8)
    response = client.post("/v1/users", json={"user_id": secret + " x"})
    assert_error(response, 422)
    assert secret not in response.text


def test_malformed_json_is_400_invalid_json(client):
    response = client.post("/v1/users", content=b'{"user_id": "u1",', headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_json")
    assert client.get("/v1/users/u1/profile").status_code == 404


@pytest.mark.parametrize(
    "body",
    [b'{"user_id": "\xff\xfe"}', b"\xff\xfe\x00{", b'{"user_id": "ok", "display_name": "\xc3\x28"}'],
    ids=["in-string", "garbage", "bad-continuation"],
)
def test_invalid_utf8_is_a_client_error(client, body):
    response = client.post("/v1/users", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), f"{response.status_code}: {response.text}"
    assert_error(response, response.status_code)


@pytest.mark.parametrize("body", [[{"user_id": "u1"}], "u1", 42, None], ids=["array", "string", "number", "null"])
def test_json_that_is_not_an_object_is_422(client, body):
    response = client.post("/v1/users", content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    assert_error(response, 422, "validation_error")


def test_wrong_content_type_is_a_client_error(client):
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    response = client.post("/v1/users", content=b"user_id=u1", headers=form)
    assert 400 <= response.status_code < 500, response.text
    assert_error(response, response.status_code)


# --- body size ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_body_server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("small-body"), None, EMAILMCP_MAX_BODY_BYTES="2048").start()
    yield server
    server.stop()


def _oversized_user(user_id: str) -> bytes:
    """A valid create-user body made big with JSON whitespace: without the limit it would create the user."""
    body = b'{"user_id": "' + user_id.encode() + b'",' + b" " * 4000 + b'"display_name": "Big"}'
    assert len(body) > 2048 and json.loads(body)["user_id"] == user_id
    return body


def test_body_under_the_limit_is_accepted(small_body_server):
    with small_body_server.client(small_body_server.bootstrap_key) as client:
        body = json.dumps({"user_id": "small", "display_name": "x" * 150}).encode()
        response = client.post("/v1/users", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 201, response.text


def assert_clean_413(server, response, request_id: str) -> None:
    """The refusal has the error shape and the request id, and is not logged as a server error."""
    assert_error(response, 413, "payload_too_large")
    assert response.headers.get("x-request-id") == request_id
    records = _log_lines_with(server, request_id)
    assert [r["status"] for r in records if r.get("event") == "request"] == [413]
    assert not [r for r in records if r.get("level") == "error"], f"a 413 is logged as an error: {records}"


def test_body_over_the_limit_is_413_with_content_length(small_body_server):
    request_id = f"big1-{secrets.token_hex(4)}"
    with small_body_server.client(small_body_server.bootstrap_key) as client:
        body = _oversized_user("big1")
        headers = {"Content-Type": "application/json", "X-Request-ID": request_id}
        response = client.post("/v1/users", content=body, headers=headers)
        assert response.request.headers["content-length"] == str(len(body))
        assert_clean_413(small_body_server, response, request_id)
        anonymous_id = client.post("/v1/users", content=body, headers={"Content-Type": "application/json"})
        assert SANE_REQUEST_ID.match(anonymous_id.headers.get("x-request-id", "")), "413 without a request id"
        assert client.get("/v1/users/big1/profile").status_code == 404


def test_body_over_the_limit_is_413_when_chunked(small_body_server):
    request_id = f"big2-{secrets.token_hex(4)}"
    body = _oversized_user("big2")

    def chunks():
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    with small_body_server.client(small_body_server.bootstrap_key) as client:
        headers = {"Content-Type": "application/json", "X-Request-ID": request_id}
        response = client.post("/v1/users", content=chunks(), headers=headers)
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert_clean_413(small_body_server, response, request_id)
        anonymous_id = client.post("/v1/users", content=chunks(), headers={"Content-Type": "application/json"})
        assert anonymous_id.status_code == 413
        assert SANE_REQUEST_ID.match(anonymous_id.headers.get("x-request-id", "")), "413 without a request id"
    with small_body_server.client(small_body_server.bootstrap_key) as client:
        assert client.get("/v1/users/big2/profile").status_code == 404


# --- request ids -------------------------------------------------------------------------------------------------


def test_request_id_is_generated_on_every_kind_of_answer(server, client):
    ids = []
    with server.client() as anonymous:
        responses = {
            200: client.get("/v1/users"),
            401: anonymous.get("/v1/users"),
            404: client.get("/v1/users/nobody/profile"),
            422: client.post("/v1/users", json={"user_id": ""}),
            400: client.post("/v1/users", content=b"{", headers={"Content-Type": "application/json"}),
            "health": anonymous.get("/health"),
        }
    for status, response in responses.items():
        if isinstance(status, int):
            assert response.status_code == status, response.text
        request_id = response.headers.get("x-request-id")
        assert request_id and SANE_REQUEST_ID.match(request_id), f"{status}: {request_id!r}"
        ids.append(request_id)
    assert len(set(ids)) == len(ids), "request ids repeat"


def test_a_sane_request_id_is_echoed(client):
    sent = f"client-{secrets.token_hex(6)}.retry:1_a"
    response = client.get("/v1/users", headers={"X-Request-ID": sent})
    assert response.headers["x-request-id"] == sent
    error = client.get("/v1/users/nobody/profile", headers={"X-Request-ID": sent + "-404"})
    assert error.headers["x-request-id"] == sent + "-404"


@pytest.mark.parametrize(
    "sent",
    ["x" * 129, "<script>alert(1)</script>", "has space", 'quote"d', "semi;colon", "ünïcode"],
    ids=["too-long", "script", "space", "quote", "semicolon", "non-ascii"],
)
def test_an_insane_request_id_is_replaced(client, sent):
    response = client.get("/v1/users", headers={"X-Request-ID": sent.encode()})
    request_id = response.headers.get("x-request-id")
    assert request_id and request_id != sent
    assert SANE_REQUEST_ID.match(request_id)


def _log_lines_with(server, request_id: str, timeout: float = 5) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for line in server.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("request_id") == request_id:
                found.append(record)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_request_id_is_in_the_log_lines(server, client):
    sent = f"trace-{secrets.token_hex(8)}"
    client.get("/v1/users/nobody/profile", headers={"X-Request-ID": sent})
    records = _log_lines_with(server, sent)
    assert records, "no log line carries the request id"
    request = [r for r in records if r.get("event") == "request"]
    assert request and request[0]["status"] == 404 and request[0]["path"] == "/v1/users/nobody/profile"

    generated = client.get("/v1/users").headers["x-request-id"]
    assert _log_lines_with(server, generated), "a generated request id is not logged"


def test_logs_never_carry_the_api_key(server, client, mail_key):
    client.get("/v1/users", headers={"X-Request-ID": "keycheck-1"})
    assert _log_lines_with(server, "keycheck-1")
    assert mail_key not in server.log_text()
    secret = mail_key.split("_", 2)[2]  # emk_<id>_<secret>; the secret itself may contain "_"
    assert secret not in server.log_text()


# --- rate limits -------------------------------------------------------------------------------------------------


def assert_rate_headers(response, limit: int) -> tuple[int, int]:
    headers = response.headers
    for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"):
        assert name in headers, f"{name} missing on {response.status_code}: {dict(headers)}"
    assert int(headers["RateLimit-Limit"]) == limit
    remaining, reset = int(headers["RateLimit-Remaining"]), int(headers["RateLimit-Reset"])
    assert 0 <= remaining <= limit
    assert 0 < reset <= 60
    return remaining, reset


def clear_of_the_window_edge(margin: float = 3) -> None:
    """Per-minute windows roll over on the minute; start a counting sequence well inside one so counts are exact."""
    into_minute = time.time() % 60
    if into_minute > 60 - margin:
        time.sleep(60 - into_minute + 0.05)


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("limited"), None, EMAILMCP_RATE_LIMIT="5/minute").start()
    yield server
    server.stop()


def test_rate_limit_answers_429_with_headers(limited_server, tenant_name):
    key = limited_server.create_key(tenant_name, "mail")
    other = limited_server.create_key(tenant_name, "mail")
    clear_of_the_window_edge()
    with limited_server.client(key) as client:
        remaining = []
        for _ in range(5):
            response = client.get("/v1/users")
            assert response.status_code == 200, response.text
            remaining.append(assert_rate_headers(response, 5)[0])
        assert remaining == [4, 3, 2, 1, 0]
        refused = client.get("/v1/users")
        assert_error(refused, 429, "rate_limited")
        assert_rate_headers(refused, 5)
        assert refused.headers["RateLimit-Remaining"] == "0"
        assert 0 < int(refused.headers["Retry-After"]) <= 60
        assert refused.headers.get("x-request-id")
        # Still refused, and a refused request does not do the work.
        assert client.post("/v1/users", json={"user_id": "over"}).status_code == 429
    with limited_server.client(other) as client:
        response = client.get("/v1/users")
        assert response.status_code == 200, "a second key of the same tenant shares the first key's limit"
        assert assert_rate_headers(response, 5)[0] == 4
        assert client.get("/v1/users/over/profile").status_code == 404


def test_public_routes_are_not_rate_limited(limited_server):
    with limited_server.client() as client:
        for _ in range(8):
            assert client.get("/health").status_code == 200


def test_tenant_setting_lowers_the_rate_limit(limited_server, tenant_name):
    key = limited_server.create_key(tenant_name, "mail")
    limited_server.cli("tenants", "set", tenant_name, "rate_limit", "2/minute")
    neighbour = limited_server.create_key(f"{tenant_name}-n", "mail")
    clear_of_the_window_edge()
    with limited_server.client(key) as client:
        for expected in (1, 0):
            response = client.get("/v1/users")
            assert response.status_code == 200
            assert assert_rate_headers(response, 2)[0] == expected
        assert_error(client.get("/v1/users"), 429, "rate_limited")
    with limited_server.client(neighbour) as client:
        response = client.get("/v1/users")
        assert response.status_code == 200
        assert_rate_headers(response, 5)


def test_rate_limit_zero_disables_limiting(start_server):
    server = start_server(EMAILMCP_RATE_LIMIT="0")
    with server.client(server.bootstrap_key) as client:
        for _ in range(30):
            response = client.get("/v1/users")
            assert response.status_code == 200
            limit_headers = {"ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "retry-after"}
            assert not limit_headers & set(response.headers), response.headers


def test_replicas_share_one_limit_through_redis(start_server, make_database):
    if not REDIS_URL:
        unavailable("Redis", "set EMAILMCP_TEST_REDIS_URL=redis://127.0.0.1:6379/0 to run")
    database_url = make_database("postgresql")
    shared = {
        "EMAILMCP_SECRET_KEY": secrets.token_hex(32),  # both replicas must share it to accept the same keys
        "EMAILMCP_REDIS_URL": REDIS_URL,
        "EMAILMCP_RATE_LIMIT": "5/minute",
    }
    first = start_server(database_url, **shared)
    second = start_server(database_url, **shared)
    key = first.create_key(f"replicas-{secrets.token_hex(4)}", "mail")
    clear_of_the_window_edge()
    with first.client(key) as a, second.client(key) as b:
        statuses = [a.get("/v1/users").status_code for _ in range(3)]
        statuses += [b.get("/v1/users").status_code for _ in range(2)]
        assert statuses == [200] * 5
        refused = b.get("/v1/users")
        assert_error(refused, 429, "rate_limited")
        assert "Retry-After" in refused.headers
        assert a.get("/v1/users").status_code == 429


# --- CORS --------------------------------------------------------------------------------------------------------

PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}


def test_cors_is_off_by_default(server):
    with server.client() as client:
        preflight = client.options("/v1/users", headers={"Origin": "https://app.example.com", **PREFLIGHT})
        assert "access-control-allow-origin" not in preflight.headers
        simple = client.get("/health", headers={"Origin": "https://app.example.com"})
        assert "access-control-allow-origin" not in simple.headers


def test_cors_allows_only_the_configured_origins(start_server):
    server = start_server(EMAILMCP_CORS_ORIGINS="https://app.example.com")
    with server.client() as client:
        allowed = client.options("/v1/users", headers={"Origin": "https://app.example.com", **PREFLIGHT})
        assert allowed.status_code in (200, 204), allowed.text
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()

        refused = client.options("/v1/users", headers={"Origin": "https://evil.example.com", **PREFLIGHT})
        assert refused.headers.get("access-control-allow-origin") not in ("https://evil.example.com", "*")

        auth = {"Authorization": f"Bearer {server.bootstrap_key}"}
        response = client.get("/v1/users", headers={"Origin": "https://app.example.com", **auth})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"
        exposed = response.headers["access-control-expose-headers"].lower()
        assert "x-request-id" in exposed and "retry-after" in exposed
        other = client.get("/v1/users", headers={"Origin": "https://evil.example.com", **auth})
        assert "access-control-allow-origin" not in other.headers
