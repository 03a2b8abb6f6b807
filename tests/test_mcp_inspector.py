"""`/mcp` driven by the official MCP Inspector's command-line mode (pinned in tests/peers/inspector) against a real
`emailmcp serve`: it lists the six tools, calls them, and is refused without a mail key. A client written by others,
from their own reading of the protocol, catches what a client we wrote alongside the server would share with it.
"""

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Server
from peers.npm import ensure_installed

PEER_DIR = Path(__file__).parent / "peers" / "inspector"
PACKAGE_DIR = PEER_DIR / "node_modules" / "@modelcontextprotocol" / "inspector"
TOOLS = {"send_email", "send_report", "get_analytics", "check_status", "list_messages", "get_message"}
READ_ONLY = {"get_analytics", "list_messages", "get_message", "check_status"}
# The Inspector CLI's exit codes (EXIT_CODES in its build): 3 for a 401/403, 5 for a result with isError true.
AUTH_REQUIRED, TOOL_ERROR = 3, 5


@dataclass
class Run:
    """One Inspector CLI run. With --format json it prints {"result": ...} on stdout, and on failure an
    {"error": {"code", "message"}} envelope on stderr (a tool's isError result goes to stdout as well)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"mcp-inspector {' '.join(self.args)}\nexited {self.returncode}\n"
            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )

    def _json(self, text: str, key: str) -> Any:
        try:
            return json.loads(text)[key]
        except (ValueError, KeyError, TypeError):
            raise AssertionError(f"no JSON {key!r} in the Inspector's output:\n{self}") from None

    @property
    def result(self) -> Any:
        """The result on stdout, of a run that must have succeeded."""
        assert self.returncode == 0, str(self)
        return self._json(self.stdout, "result")

    @property
    def error(self) -> dict[str, Any]:
        """The error envelope on stderr (its last line: anything before it is a status line)."""
        lines = self.stderr.strip().splitlines()
        return self._json(lines[-1] if lines else "", "error")


def _text(output: str | bytes | None) -> str:
    """What a timed-out subprocess printed (bytes even with text=True, or None)."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


class Inspector:
    """Runs the Inspector's CLI mode with node from node_modules, with a HOME of its own: it keeps a catalog, a
    client config and any OAuth state under ~/.mcp-inspector."""

    def __init__(self, node: str, script: Path, home: Path) -> None:
        self.node = node
        self.script = script
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(("MCP_", "INSPECTOR_"))}
        # It honours HTTP(S)_PROXY (undici's EnvHttpProxyAgent); the server under test is on loopback.
        self.env |= {"HOME": str(home), "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1", "NO_COLOR": "1"}

    def __call__(self, url: str, *args: str, key: str | None = None, timeout: float = 60) -> Run:
        # --stored-auth-only: a 401 fails at once instead of starting an interactive OAuth login.
        argv = [url, "--transport", "http", "--stored-auth-only", "--format", "json", *args]
        if key is not None:
            argv += ["--header", f"Authorization: Bearer {key}"]
        try:
            result = subprocess.run(
                [self.node, str(self.script), "--cli", *argv],
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            stdout, stderr = (_text(output) for output in (exc.stdout, exc.stderr))
            raise AssertionError(f"timed out after {timeout}s: {Run(argv, -1, stdout, stderr)}") from None
        return Run(argv, result.returncode, result.stdout, result.stderr)

    def call(self, url: str, tool: str, *args: str, key: str) -> Run:
        return self(url, "--method", "tools/call", "--tool-name", tool, *args, key=key)


@pytest.fixture(scope="module")
def inspector(tmp_path_factory) -> Inspector:
    # The package declares Node >=22.19 (npm ci warns EBADENGINE on 20), but its CLI mode works on Node 20.
    ensure_installed(PEER_DIR)
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: the MCP Inspector test peer needs Node.js 20+")
    package = json.loads((PACKAGE_DIR / "package.json").read_text())
    return Inspector(node, PACKAGE_DIR / package["bin"]["mcp-inspector"], tmp_path_factory.mktemp("inspector-home"))


@pytest.fixture(scope="module")
def mcp_server(start_module_server) -> Server:
    return start_module_server()


@pytest.fixture(scope="module")
def mcp_url(mcp_server) -> str:
    return f"{mcp_server.url}/mcp"


@pytest.fixture(scope="module")
def key(mcp_server) -> str:
    """A mail key of a tenant of this module's own."""
    return mcp_server.create_key(f"t-{uuid.uuid4().hex[:10]}", "mail")


def test_lists_the_six_tools_with_user_id_required_and_annotations(inspector, mcp_url, key):
    # --strict: the Inspector's tool-schema portability check, which exits 6 on an error-severity problem.
    run = inspector(mcp_url, "--method", "tools/list", "--strict", key=key)
    tools = run.result["tools"]
    assert sorted(tool["name"] for tool in tools) == sorted(TOOLS), run
    for tool in tools:
        name, schema, annotations = tool["name"], tool["inputSchema"], tool.get("annotations") or {}
        assert schema["type"] == "object", (name, schema)
        assert "user_id" in schema["required"], (name, schema)
        assert schema["properties"]["user_id"]["type"] == "string", (name, schema)
        assert annotations.get("readOnlyHint") is (name in READ_ONLY), (name, annotations)
        if name not in READ_ONLY:
            assert annotations.get("destructiveHint") is False, (name, annotations)
            assert annotations.get("openWorldHint") is True, (name, annotations)
    send_email = next(tool for tool in tools if tool["name"] == "send_email")
    assert {"to", "body"} <= set(send_email["inputSchema"]["required"]), send_email


def test_calls_check_status_for_a_user(inspector, mcp_url, key):
    run = inspector.call(mcp_url, "check_status", "--tool-arg", "user_id=alice", key=key)
    result = run.result
    assert result["isError"] is False, run
    status = result["structuredContent"]
    assert status["service"] == "ok" and status["database"] == "ok", run
    assert status["user_exists"] is False, run  # nobody has sent as alice in this tenant
    assert status["mailbox"]["status"] == "not_connected", run
    assert [block["type"] for block in result["content"]] == ["text"], run
    assert json.loads(result["content"][0]["text"]) == status, run


def test_sends_an_email_with_a_list_of_recipients_and_reads_it_back(inspector, mcp_url, key):
    arguments = {"user_id": "bob", "to": ["carol@example.com"], "subject": "Hi", "body": "Sent by the Inspector."}
    run = inspector.call(mcp_url, "send_email", "--tool-args-json", json.dumps(arguments), key=key)
    sent = run.result
    assert sent["isError"] is False, run
    message = sent["structuredContent"]
    assert message["to"] == ["carol@example.com"] and message["user_id"] == "bob", run
    assert message["entry_point"] == "mcp" and message["status"] in {"queued", "sending", "sent"}, run

    run = inspector.call(
        mcp_url, "get_message", "--tool-arg", "user_id=bob", "--tool-arg", f"message_id={message['id']}", key=key
    )
    assert run.result["structuredContent"]["id"] == message["id"], run

    run = inspector.call(mcp_url, "get_analytics", "--tool-arg", "user_id=bob", key=key)
    analytics = run.result["structuredContent"]
    assert analytics["user_id"] == "bob" and analytics["total_emails"] == 1, run


def test_a_refused_call_is_an_error_result(inspector, mcp_url, key):
    """The server answers a bad call with a result whose isError is true; the CLI prints it on stdout, exits 5 and
    puts a tool_is_error envelope on stderr."""
    run = inspector.call(mcp_url, "check_status", "--tool-arg", "mailbox=none", key=key)
    assert run.returncode == TOOL_ERROR, run
    result = json.loads(run.stdout)["result"]
    assert result["isError"] is True, run
    assert "user_id is required" in result["content"][0]["text"], run
    assert run.error["code"] == "tool_is_error", run


@pytest.mark.parametrize(
    ("credentials", "server_code"),
    [("no header", "unauthorized"), ("unknown key", "invalid_api_key"), ("llm key", "insufficient_scope")],
)
def test_refused_without_a_mail_key(inspector, mcp_server, mcp_url, credentials, server_code):
    key = None
    if credentials == "unknown key":
        key = "emk_" + "x" * 40
    elif credentials == "llm key":
        key = mcp_server.create_key(f"t-{uuid.uuid4().hex[:10]}", "llm")
    run = inspector(mcp_url, "--method", "tools/list", key=key)
    assert run.returncode == AUTH_REQUIRED, run
    assert run.stdout.strip() == "", run
    assert run.error["code"] == "auth_required", run
    assert server_code in run.error["message"], run  # the server's own answer, quoted
