"""The MCP server through the official SDK's own client, over streamable HTTP (`/mcp` on a real `emailmcp serve`)
and over stdio (`emailmcp mcp` as a subprocess): tools derived from the action registry, sends that reach a real
SMTP server, idempotent retries, tenancy, keys, resources, DNS-rebinding protection and stateless replicas."""

import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx2
import pytest
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from conftest import EMAILMCP, PostgresDatabase, Server, assert_error, require_postgres, unique
from emailmcp.actions.registry import ACTIONS
from emailmcp.mcp_server.http import host_values
from peers.smtp import SmtpSink

READ_ONLY = {"get_analytics", "list_messages", "get_message", "check_status"}
SMTP_ENV = {"EMAILMCP_SMTP_ALLOW_PRIVATE_HOSTS": "true", "EMAILMCP_WORKER_POLL_SECONDS": "0.2"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}
JSON_RPC_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture(scope="module")
def server(start_module_server) -> Server:
    return start_module_server(**SMTP_ENV)


@pytest.fixture
def tenant(server) -> dict[str, str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    return {"name": name, "key": server.create_key(name, "mail", "admin")}


@asynccontextmanager
async def mcp_client(url: str, key: str | None, mode: str = "legacy", **http: object) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30, **http) as client,
        Client(streamable_http_client(f"{url}/mcp", http_client=client), mode=mode) as session,
    ):
        yield session


def connect_mailbox(server: Server, key: str, user_id: str, sink: SmtpSink) -> None:
    body = {"type": "smtp", "host": "127.0.0.1", "port": sink.port, "security": "none"}
    with server.client(key) as client:
        response = client.put(f"/v1/users/{user_id}/mailbox", json=body | {"from_address": f"{user_id}@example.com"})
    assert response.status_code == 200, response.text


def arrivals(sink: SmtpSink, subject: str, expected: int, settle: float = 1.5) -> int:
    """How many messages with this subject the sink holds once `expected` arrived and a while passed for extras."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sum(m.message["Subject"] == subject for m in sink.messages) < expected:
        time.sleep(0.1)
    time.sleep(settle)
    return sum(m.message["Subject"] == subject for m in sink.messages)


def result_of(call) -> dict:
    assert not call.is_error, call.content[0].text
    return call.structured_content


async def test_tools_are_the_registrys_actions_with_a_user_id(server, tenant):
    async with mcp_client(server.url, tenant["key"]) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert list(tools) == list(ACTIONS)
    for name, action in ACTIONS.items():
        schema, expected = tools[name].input_schema, action.parameters.model_json_schema()
        assert schema["required"] == ["user_id", *expected.get("required", [])]
        assert {k: v for k, v in schema["properties"].items() if k != "user_id"} == expected["properties"]
        assert schema["properties"]["user_id"]["type"] == "string"
        assert tools[name].description == action.description
        annotations = tools[name].annotations
        assert annotations.read_only_hint is (name in READ_ONLY)
        assert annotations.open_world_hint is (name not in READ_ONLY)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_status_and_analytics_in_both_protocol_eras(server, tenant, mode):
    """`legacy` is the initialize handshake (2025-11-25 and before); `auto` speaks 2026-07-28 without one."""
    user = unique("ana")
    with server.client(tenant["key"]) as rest:
        assert rest.post(f"/v1/users/{user}/messages", json={"to": ["x@example.com"], "body": "hi"}).status_code == 202
    async with mcp_client(server.url, tenant["key"], mode) as client:
        status = result_of(await client.call_tool("check_status", {"user_id": user}))
        analytics = result_of(await client.call_tool("get_analytics", {"user_id": user, "time_range": "today"}))
    assert status["service"] == "ok" and status["user_exists"] is True
    assert status["mailbox"]["status"] == "not_connected"
    assert analytics["user_id"] == user and analytics["total_emails"] == 1
    assert analytics["time_range"] == "today"


async def test_a_sent_email_reaches_the_smtp_server_and_records_the_mcp_entry_point(server, tenant, sink):
    user, subject = unique("ben"), unique("subject")
    connect_mailbox(server, tenant["key"], user, sink)
    arguments = {"user_id": user, "to": ["Carla@Example.com"], "subject": subject, "body": "Hello from an agent."}
    async with mcp_client(server.url, tenant["key"]) as client:
        queued = result_of(await client.call_tool("send_email", arguments))
        assert arrivals(sink, subject, 1, settle=0) == 1
        detail = result_of(await client.call_tool("get_message", {"user_id": user, "message_id": queued["id"]}))
    received = next(m for m in sink.messages if m.message["Subject"] == subject)
    assert received.message["From"] == f"{user}@example.com" and received.recipients == [
        "Carla@example.com"
    ]  # the domain normalised
    assert received.message.get_content().strip() == "Hello from an agent."
    assert detail["status"] in ("sending", "sent") and detail["entry_point"] == "mcp"


async def test_a_retried_send_with_the_same_idempotency_key_sends_once(server, tenant, sink):
    user, subject = unique("cai"), unique("once")
    connect_mailbox(server, tenant["key"], user, sink)
    arguments = {
        "user_id": user,
        "to": ["dee@example.com"],
        "subject": subject,
        "body": "x",
        "idempotency_key": subject,
    }
    async with mcp_client(server.url, tenant["key"]) as first:
        original = result_of(await first.call_tool("send_email", arguments))
    async with mcp_client(server.url, tenant["key"]) as retry:  # a new connection, as after a dropped one
        replay = result_of(await retry.call_tool("send_email", arguments))
        conflict = await retry.call_tool("send_email", arguments | {"body": "something else"})
    assert original["replayed"] is False and replay["replayed"] is True and replay["id"] == original["id"]
    assert conflict.is_error and "idempotency" in conflict.content[0].text.lower()
    assert arrivals(sink, subject, 1) == 1


async def test_refusals_are_tool_errors_naming_the_field_and_the_connection_goes_on(server, tenant):
    user = unique("dan")
    async with mcp_client(server.url, tenant["key"]) as client:
        bad_address = await client.call_tool("send_email", {"user_id": user, "to": ["not-an-address"], "body": "x"})
        no_user = await client.call_tool("check_status", {})
        extra = await client.call_tool("list_messages", {"user_id": user, "status": "bogus"})
        unknown = await client.call_tool("delete_everything", {"user_id": user})
        still_fine = result_of(await client.call_tool("check_status", {"user_id": user}))
    assert bad_address.is_error and "to.0" in bad_address.content[0].text
    assert no_user.is_error and "user_id" in no_user.content[0].text
    assert extra.is_error and "status" in extra.content[0].text
    assert unknown.is_error and "send_email" in unknown.content[0].text
    assert still_fine["service"] == "ok" and still_fine["user_exists"] is False  # the refused send wrote nothing


async def test_policy_applies_as_through_rest(server, tenant):
    server.cli("tenants", "set", tenant["name"], "recipient_domain_denylist", "blocked.example")
    async with mcp_client(server.url, tenant["key"]) as client:
        refused = await client.call_tool(
            "send_email", {"user_id": unique("eve"), "to": ["a@blocked.example"], "body": "x"}
        )
    assert refused.is_error and "blocked.example" in refused.content[0].text


async def test_another_tenants_user_and_messages_are_out_of_reach(server, tenant):
    user = unique("fay")
    with server.client(tenant["key"]) as rest:
        sent = rest.post(f"/v1/users/{user}/messages", json={"to": ["x@example.com"], "body": "private"}).json()
    other = server.create_key(f"t-{uuid.uuid4().hex[:10]}", "mail")
    async with mcp_client(server.url, other) as client:
        analytics = await client.call_tool("get_analytics", {"user_id": user})
        message = await client.call_tool("get_message", {"user_id": user, "message_id": sent["id"]})
        listed = await client.call_tool("list_messages", {"user_id": user})
        resources = (await client.list_resources()).resources
    assert analytics.is_error and "not found" in analytics.content[0].text.lower()
    assert message.is_error
    assert listed.is_error or result_of(listed)["messages"] == []
    assert not any(user in resource.uri for resource in resources)


def test_a_missing_wrong_or_unscoped_key_is_refused_before_mcp(server, tenant):
    llm_only = server.create_key(tenant["name"], "llm")
    with httpx2.Client(base_url=server.url, headers=JSON_RPC_HEADERS, timeout=10) as http:
        missing = http.post("/mcp", json=INITIALIZE)
        wrong = http.post("/mcp", json=INITIALIZE, headers={"Authorization": "Bearer emk_nothere_secret"})
        basic = http.post("/mcp", json=INITIALIZE, headers={"Authorization": f"Basic {tenant['key']}"})
        unscoped = http.post("/mcp", json=INITIALIZE, headers={"Authorization": f"Bearer {llm_only}"})
        good = http.post("/mcp", json=INITIALIZE, headers={"Authorization": f"Bearer {tenant['key']}"})
    assert_error(missing, 401, "unauthorized")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(wrong, 401, "invalid_api_key")
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    assert_error(basic, 401, "unauthorized")
    assert_error(unscoped, 403, "insufficient_scope")
    assert good.status_code == 200 and good.json()["result"]["serverInfo"]["name"] == "emailmcp"
    assert good.headers["RateLimit-Limit"]


async def test_the_sdk_client_reports_a_refused_key(server):
    listed = None
    with pytest.raises(Exception, match="TaskGroup"):  # noqa: PT011 (the SDK wraps the refusal in an ExceptionGroup)
        async with mcp_client(server.url, "emk_nothere_secret") as client:
            listed = await client.list_tools()
    assert listed is None


def test_mcp_is_served_at_exactly_its_path(server, tenant):
    headers = JSON_RPC_HEADERS | {"Authorization": f"Bearer {tenant['key']}"}
    with httpx2.Client(base_url=server.url, headers=headers, timeout=10, follow_redirects=False) as http:
        exact = http.post("/mcp", json=INITIALIZE)
        stream = http.get("/mcp", headers={"Accept": "text/event-stream"})
        end_session = http.delete("/mcp")
        slash = http.post("/mcp/", json=INITIALIZE)
    assert exact.status_code == 200, exact.text
    for refused in (stream, end_session):  # stateless: no stream to open, no session to end
        assert_error(refused, 405, "method_not_allowed")
        assert refused.headers["Allow"] == "POST"
    assert slash.status_code in (307, 404)  # never the other way round


def test_host_and_origin_are_checked_against_dns_rebinding(server, tenant, start_server):
    headers = JSON_RPC_HEADERS | {"Authorization": f"Bearer {tenant['key']}"}
    with httpx2.Client(base_url=server.url, headers=headers, timeout=10) as http:
        foreign_host = http.post("/mcp", json=INITIALIZE, headers={"Host": "attacker.example"})
        foreign_origin = http.post("/mcp", json=INITIALIZE, headers={"Origin": "http://attacker.example"})
        local_origin = http.post("/mcp", json=INITIALIZE, headers={"Origin": f"http://localhost:{server.port}"})
    assert foreign_host.status_code == 421
    assert foreign_origin.status_code == 403
    assert local_origin.status_code == 200

    public = start_server(
        EMAILMCP_MCP_ALLOWED_HOSTS="mail.example.com, 10.1.2.3:8443", EMAILMCP_CORS_ORIGINS="https://app.example.com"
    )
    key = public.create_key("public", "mail")
    with httpx2.Client(base_url=public.url, headers=JSON_RPC_HEADERS | {"Authorization": f"Bearer {key}"}) as http:
        named = http.post(
            "/mcp", json=INITIALIZE, headers={"Host": "mail.example.com", "Origin": "https://mail.example.com"}
        )
        ported = http.post("/mcp", json=INITIALIZE, headers={"Host": "10.1.2.3:8443"})
        other_port = http.post("/mcp", json=INITIALIZE, headers={"Host": "10.1.2.3:9000"})
        loopback = http.post("/mcp", json=INITIALIZE)
        app_origin = http.post(
            "/mcp", json=INITIALIZE, headers={"Host": "mail.example.com", "Origin": "https://app.example.com"}
        )
    assert named.status_code == 200 and ported.status_code == 200 and app_origin.status_code == 200
    assert other_port.status_code == 421 and loopback.status_code == 421


async def test_each_users_report_is_a_readable_resource(server, tenant):
    user = unique("gus")
    with server.client(tenant["key"]) as rest:
        for n in range(3):
            rest.post(f"/v1/users/{user}/messages", json={"to": [f"r{n}@example.com"], "body": "x"})
    async with mcp_client(server.url, tenant["key"]) as client:
        uris = [resource.uri for resource in (await client.list_resources()).resources]
        templates = (await client.list_resource_templates()).resource_templates
        report = await client.read_resource(f"emailmcp://users/{user}/report?time_range=last_7_days")
        with pytest.raises(Exception, match="not found|Not found|unknown"):  # noqa: PT011
            await client.read_resource("emailmcp://users/nobody-at-all/report")
        with pytest.raises(Exception, match="time_range"):  # noqa: PT011
            await client.read_resource(f"emailmcp://users/{user}/report?time_range=forever")
    assert f"emailmcp://users/{user}/report" in uris
    assert templates[0].uri_template == "emailmcp://users/{user_id}/report"
    text, figures = report.contents
    assert text.mime_type == "text/plain" and "Emails: 3" in text.text and "last 7 days" in text.text
    assert figures.mime_type == "application/json" and '"total_emails": 3' in figures.text


@pytest.mark.parametrize(
    ("entry", "values"),
    [
        ("mail.example.com", ["mail.example.com", "mail.example.com:*"]),
        ("Mail.Example.com", ["mail.example.com", "mail.example.com:*"]),
        ("10.1.2.3:8443", ["10.1.2.3:8443"]),
        ("2001:db8::1", ["[2001:db8::1]", "[2001:db8::1]:*"]),
        ("[::1]:8080", ["[::1]:8080"]),
        ("https://mail.example.com:443", ["mail.example.com", "mail.example.com:*"]),  # browsers omit default ports
        ("https://mail.example.com:8443/base", ["mail.example.com:8443"]),
    ],
)
def test_allowed_hosts_are_read_as_host_headers(entry, values):
    assert host_values(entry) == values


class RoundRobin(httpx2.AsyncBaseTransport):
    """Sends each request to the next replica in turn, as a load balancer without session affinity does."""

    def __init__(self, ports: list[int]) -> None:
        self.ports, self.turn, self.inner = ports, 0, httpx2.AsyncHTTPTransport()
        self.served: list[int] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = self.ports[self.turn % len(self.ports)]
        self.turn += 1
        self.served.append(port)
        request.url = request.url.copy_with(port=port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.postgres
async def test_replicas_behind_a_load_balancer_need_no_shared_session(start_server):
    database = PostgresDatabase(require_postgres())
    try:
        secret = {"EMAILMCP_SECRET_KEY": "a" * 64}
        first = start_server(database.url, **secret)
        second = start_server(database.url, **secret)
        key = first.create_key("replicated", "mail")
        balancer = RoundRobin([first.port, second.port])
        async with mcp_client(first.url, key, transport=balancer) as client:
            tools = (await client.list_tools()).tools
            user = unique("hal")
            queued = result_of(
                await client.call_tool("send_email", {"user_id": user, "to": ["i@example.com"], "body": "x"})
            )
            seen = result_of(await client.call_tool("get_message", {"user_id": user, "message_id": queued["id"]}))
        assert len(tools) == len(ACTIONS) and seen["id"] == queued["id"]
        assert set(balancer.served) == {first.port, second.port}
    finally:
        database.drop()


def stdio_server(server: Server, key: str, *args: str) -> StdioServerParameters:
    env = {k: v for k, v in server.env.items() if k != "EMAILMCP_LOG_FORMAT"} | {"EMAILMCP_API_KEY": key}
    return StdioServerParameters(command=EMAILMCP, args=["mcp", *args], env=env, cwd=str(server.workdir))


async def test_stdio_serves_the_same_tools_and_delivers(server, tenant, sink):
    user, subject = unique("ida"), unique("stdio")
    connect_mailbox(server, tenant["key"], user, sink)
    async with Client(stdio_server(server, tenant["key"])) as client:
        tools = [tool.name for tool in (await client.list_tools()).tools]
        queued = result_of(
            await client.call_tool(
                "send_email", {"user_id": user, "to": ["j@example.com"], "subject": subject, "body": "x"}
            )
        )
        refused = await client.call_tool("send_email", {"user_id": user, "to": [], "body": "x"})
        status = result_of(await client.call_tool("check_status", {"user_id": user}))
    assert tools == list(ACTIONS)
    assert queued["status"] == "queued" and queued["from_address"] == f"{user}@example.com"
    assert refused.is_error and "to" in refused.content[0].text
    assert status["mailbox"]["type"] == "smtp"
    assert arrivals(sink, subject, 1) == 1
    with server.client(tenant["key"]) as rest:
        assert rest.get(f"/v1/messages/{queued['id']}").json()["entry_point"] == "mcp"


async def test_stdio_keeps_idempotency_and_tenancy(server, tenant, sink):
    user, subject = unique("jo"), unique("stdio-once")
    connect_mailbox(server, tenant["key"], user, sink)
    with server.client(server.create_key(f"t-{uuid.uuid4().hex[:10]}", "mail")) as other_tenant:
        outsider = unique("out")
        assert other_tenant.post(
            f"/v1/users/{outsider}/messages", json={"to": ["z@example.com"], "body": "x"}
        ).is_success
    send = {"user_id": user, "to": ["k@example.com"], "subject": subject, "body": "x", "idempotency_key": subject}
    async with Client(stdio_server(server, tenant["key"])) as client:
        first = result_of(await client.call_tool("send_email", send))
        retried = result_of(await client.call_tool("send_email", send))
        figures = result_of(await client.call_tool("get_analytics", {"user_id": user, "time_range": "today"}))
        foreign = await client.call_tool("get_analytics", {"user_id": outsider})
    assert retried["replayed"] is True and retried["id"] == first["id"]
    assert figures["total_emails"] == 1
    assert foreign.is_error and "not found" in foreign.content[0].text
    assert arrivals(sink, subject, 1) == 1


async def test_stdio_checks_the_key_on_every_call(server, tenant):
    key = server.create_key(tenant["name"], "mail")
    key_id = key.split("_")[1]
    async with Client(stdio_server(server, key, "--no-worker")) as client:
        before = await client.call_tool("check_status", {"user_id": "kim"})
        server.cli("keys", "revoke", key_id)
        after = await client.call_tool("check_status", {"user_id": "kim"})
    assert not before.is_error
    assert after.is_error and "revoked" in after.content[0].text


def test_stdio_refuses_a_bad_key_on_stderr_and_keeps_stdout_clean(server, tenant):
    llm_only = server.create_key(tenant["name"], "llm")
    for key, message in (("emk_nothere_secret", "unknown or revoked"), (llm_only, "lacks the 'mail' scope")):
        params = stdio_server(server, key)
        result = subprocess.run(
            [EMAILMCP, *params.args],
            env=params.env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 2 and message in result.stderr
        assert result.stdout == ""
    missing = subprocess.run(
        [EMAILMCP, "mcp"],
        env={k: v for k, v in os.environ.items() if k != "EMAILMCP_API_KEY"},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert missing.returncode == 2 and "EMAILMCP_API_KEY" in missing.stderr


def test_stdio_stops_cleanly_on_sigterm(server, tenant):
    """Desktop clients end their servers with SIGTERM: the worker stops after recording what it was sending."""
    params = stdio_server(server, tenant["key"])
    process = subprocess.Popen(
        [EMAILMCP, *params.args],
        env=params.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(100):  # until the worker runs
            line = process.stderr.readline()
            if "worker_started" in line:
                break
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "stdio_stopped" in stderr and "worker_stopped" in stderr


async def test_a_failure_inside_the_server_is_a_tool_error_without_its_internals(server, tenant):
    """While another process holds SQLite's write lock past the busy timeout, a send fails: the agent is told the
    database is unavailable, never the SQL or the message's values that the driver's exception carries."""
    body = f"private words {uuid.uuid4().hex}"
    async with mcp_client(server.url, tenant["key"]) as client:
        await client.list_tools()  # connected before the lock is taken
        holder = sqlite3.connect(server.data_dir / "emailmcp.db", timeout=1, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            refused = await client.call_tool(
                "send_email", {"user_id": unique("lock"), "to": ["x@example.com"], "body": body}
            )
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        after = await client.call_tool("check_status", {"user_id": "anyone"})
    assert refused.is_error
    assert refused.content[0].text == "The database is unavailable; retry shortly."
    assert not after.is_error
