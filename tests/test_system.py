"""Service info, liveness, readiness and metrics over real HTTP: no API key needed."""

import re
import secrets
import sqlite3
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest

import emailmcp


def test_service_info_needs_no_key(server):
    with server.client() as client:
        response = client.get("/")
        assert response.status_code == 200
        info = response.json()
        assert info == {
            "service": "emailmcp",
            "version": emailmcp.__version__,
            "docs": "/docs",
            "health": "/health",
            "mcp": "/mcp",
        }
        assert client.get(info["docs"]).status_code == 200
        assert client.get(info["health"]).status_code == 200


def test_health_has_the_seed_shape(server):
    with server.client() as client:
        response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "service", "timestamp"}
    assert body["status"] == "healthy"
    assert body["service"] == "emailmcp"
    stamp = datetime.fromisoformat(body["timestamp"])
    assert stamp.tzinfo is not None, "timestamp has no UTC offset"
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=5)


def test_health_ignores_a_bad_key(server):
    with server.client("emk_aaaaaaaaaaaa_" + "a" * 43) as client:
        for path in ("/", "/health", "/ready", "/metrics"):
            assert client.get(path).status_code == 200, path


def test_ready_when_the_schema_is_current(server):
    with server.client() as client:
        response = client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "ok", "migrations": "current"}


@contextmanager
def _database(server):
    """A DB-API connection to the server's own database (SQLite file or PostgreSQL)."""
    url = server.env.get("EMAILMCP_DATABASE_URL")
    if url and url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
            yield conn
        return
    conn = sqlite3.connect(server.data_dir / "emailmcp.db", timeout=10, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def test_ready_reports_pending_migrations(server):
    with _database(server) as conn:
        placeholder = "?" if isinstance(conn, sqlite3.Connection) else "%s"
        head = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        conn.execute("UPDATE alembic_version SET version_num = '0000'")
        try:
            with server.client() as client:
                response = client.get("/ready")
                assert response.status_code == 503, response.text
                assert response.json() == {"status": "not_ready", "database": "ok", "migrations": "pending"}
                assert client.get("/health").status_code == 200, "liveness must not depend on the schema"
        finally:
            conn.execute(f"UPDATE alembic_version SET version_num = {placeholder}", (head,))
    with server.client() as client:
        response = client.get("/ready")
    assert response.status_code == 200
    assert response.json()["migrations"] == "current"


def test_metrics_are_prometheus_text(server):
    with server.client() as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE emailmcp_http_requests_total counter" in response.text
    assert "# TYPE emailmcp_http_request_duration_seconds histogram" in response.text


def _counter(text: str, **labels: str) -> float:
    """The value of emailmcp_http_requests_total with exactly these labels, 0 when absent."""
    for line in text.splitlines():
        match = re.match(r"^emailmcp_http_requests_total\{(.*)\} (\S+)$", line)
        if match and dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1))) == labels:
            return float(match.group(2))
    return 0.0


def _wait_for_counter(client, expected: float, **labels: str) -> float:
    deadline = time.monotonic() + 5
    while True:
        value = _counter(client.get("/metrics").text, **labels)
        if value >= expected or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_metrics_count_requests_by_route_template(server, tenant_name):
    key = server.create_key(tenant_name, "mail")
    user_id = f"metrics-{secrets.token_hex(6)}"
    profile = {"method": "GET", "route": "/v1/users/{user_id}/profile"}
    with server.client() as anonymous, server.client(key) as client:
        before_200 = _counter(anonymous.get("/metrics").text, **profile, status="200")
        before_404 = _counter(anonymous.get("/metrics").text, **profile, status="404")
        assert client.post("/v1/users", json={"user_id": user_id}).status_code == 201
        assert client.get(f"/v1/users/{user_id}/profile").status_code == 200
        assert client.get(f"/v1/users/{user_id}-missing/profile").status_code == 404
        assert _wait_for_counter(anonymous, before_200 + 1, **profile, status="200") == before_200 + 1
        assert _wait_for_counter(anonymous, before_404 + 1, **profile, status="404") == before_404 + 1
        text = anonymous.get("/metrics").text
        assert user_id not in text, "metrics are labelled with raw paths (unbounded cardinality)"
        assert 'emailmcp_http_request_duration_seconds_count{method="GET",route="/v1/users/{user_id}/profile"}' in text


def test_metrics_do_not_label_unknown_paths(server):
    junk = f"/nope-{secrets.token_hex(6)}"
    with server.client() as client:
        assert client.get(junk).status_code == 404
        text = client.get("/metrics").text
    assert junk not in text


@pytest.mark.parametrize("path", ["/", "/health", "/ready", "/metrics"])
def test_public_routes_carry_a_request_id(server, path):
    with server.client() as client:
        response = client.get(path)
    assert re.match(r"^[A-Za-z0-9._:-]{1,128}$", response.headers.get("x-request-id", ""))


def test_ready_is_503_when_the_database_is_gone(start_server, make_database):
    """A readiness probe must say 'unreachable' (not crash) when PostgreSQL goes away; API calls fail cleanly."""
    import psycopg

    from conftest import PG_URL

    database_url = make_database("postgresql")
    server = start_server(database_url)
    with server.client(server.bootstrap_key) as client:
        assert client.get("/ready").status_code == 200
        with psycopg.connect(PG_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{database_url.rsplit("/", 1)[1]}" WITH (FORCE)')
        response = client.get("/ready")
        assert response.status_code == 503, response.text
        assert response.json() == {"status": "not_ready", "database": "unreachable", "migrations": "unknown"}
        assert client.get("/health").status_code == 200
        failed = client.get("/v1/users")
        assert failed.status_code == 503
        assert failed.json()["error"]["code"] == "database_unavailable"
        assert failed.headers.get("retry-after")
        assert failed.headers.get("x-request-id")
        assert "Traceback" not in failed.text and "psycopg" not in failed.text
