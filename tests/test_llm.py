"""The agent endpoints over HTTP on a real `emailmcp serve`: /llm/capabilities, /llm/inference with the offline
planner and with OpenAI-compatible and Anthropic planners (their official SDKs against tests/peers/llm_vendors.py,
which speaks their wire formats), and /llm/execute-action with the same rules as the REST API."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import assert_error
from emailmcp.actions.registry import ACTIONS
from emailmcp.llm.planners import SYSTEM_PROMPT
from peers.llm_vendors import FakeVendor, anthropic_message, openai_completion, openai_error

ACTION_NAMES = ["send_email", "send_report", "get_analytics", "check_status", "list_messages", "get_message"]


@pytest.fixture
def keys(server, tenant_name) -> dict[str, str]:
    return {
        "llm": server.create_key(tenant_name, "llm"),
        "mail": server.create_key(tenant_name, "mail", "admin"),
        "tenant": tenant_name,
    }


@pytest.fixture
def llm(server, keys):
    with server.client(headers={"X-API-Key": keys["llm"], "X-MCP-API-Key": keys["mail"]}) as client:
        yield client


@pytest.fixture
def rest(server, keys):
    with server.client(keys["mail"]) as client:
        yield client


def user() -> str:
    return f"agent-{uuid.uuid4().hex[:8]}"


def infer(llm, prompt: str, user_id: str = "someone", **extra) -> dict:
    response = llm.post("/llm/inference", json={"prompt": prompt, "user_id": user_id, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def execute(llm, action: str, user_id: str, parameters: dict, **extra):
    return llm.post(
        "/llm/execute-action", json={"action_type": action, "user_id": user_id, "parameters": parameters, **extra}
    )


def wait_sent(rest, message_id: str) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        message = rest.get(f"/v1/messages/{message_id}").json()
        if message["status"] == "sent":
            return message
        time.sleep(0.05)
    raise AssertionError(f"{message_id} not sent: {message}")


def test_capabilities_come_from_the_registry(llm):
    body = llm.get("/llm/capabilities").json()
    assert body["capabilities"] == ACTION_NAMES
    assert body["provider"] == "rules"
    for info in body["actions"]:
        action = ACTIONS[info["name"]]
        assert info["parameters"] == action.parameters.model_json_schema()
        assert info["description"] == action.description and info["side_effects"] == action.side_effects
    assert {a["name"] for a in body["actions"] if not a["side_effects"]} == {
        "get_analytics",
        "check_status",
        "list_messages",
        "get_message",
    }


def test_the_seeds_example_shows_the_figures_first(llm, rest):
    new_user = user()
    answer = infer(llm, "Send email to user about monthly analytics", new_user)
    assert answer["action"] == "get_analytics"
    assert answer["parameters"] == {"time_range": "last_30_days", "start_date": None, "end_date": None}
    assert answer["missing"] == []
    assert [step["action"] for step in answer["plan"]] == ["get_analytics", "send_report"]
    assert answer["plan"][0] == {"action": "get_analytics", "parameters": answer["parameters"], "missing": []}
    assert "to" in answer["plan"][1]["missing"]
    assert answer["provider"] == "rules" and answer["response"] and answer["timestamp"]
    assert_error(rest.get(f"/v1/users/{new_user}/profile"), 404)  # planning creates nothing


def test_a_planned_send_runs_unchanged_and_records_the_llm_entry_point(llm, rest):
    sender = user()
    answer = infer(llm, "Send an email to Dana@Example.com saying the draft is ready for review", sender)
    assert answer["action"] == "send_email" and answer["missing"] == []
    assert answer["parameters"]["to"] == ["dana@example.com"] and answer["parameters"]["cc"] == []
    assert set(answer["parameters"]) == set(ACTIONS["send_email"].parameters.model_fields)

    response = execute(llm, answer["action"], sender, answer["parameters"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success" and body["action"] == "send_email" and body["dry_run"] is False
    message = wait_sent(rest, body["result"]["id"])
    assert message["entry_point"] == "llm" and message["to"] == ["dana@example.com"]
    raw = rest.get(f"/v1/messages/{message['id']}/raw").text
    assert "draft is ready for review" in raw


def test_missing_values_are_named_and_not_guessed(llm):
    answer = infer(llm, "Please email the client about the delay")
    assert answer["action"] == "send_email" and "to" in answer["missing"]
    assert answer["parameters"]["to"] == []
    assert infer(llm, "Email max@example.com")["missing"] == ["body"]
    nothing = infer(llm, "What's the weather like?")
    assert nothing["action"] is None and nothing["plan"] == [] and nothing["parameters"] == {}
    assert "send an email" in nothing["response"].lower()


def test_bad_requests_are_4xx_naming_the_field(llm, rest):
    sender = user()
    error = assert_error(execute(llm, "send_email", sender, {"to": ["not-an-address"], "body": "x"}), 422)
    assert error["details"][0]["field"] == "parameters.to.0"
    error = assert_error(execute(llm, "send_email", sender, {"to": ["a@example.com"]}), 422)
    assert [d["field"] for d in error["details"]] == ["parameters.body"]
    assert_error(execute(llm, "send_email", sender, {"to": ["a@example.com"], "body": "x", "from": "x"}), 422)
    assert_error(execute(llm, "delete_everything", sender, {}), 400, "unknown_action")
    assert_error(rest.get(f"/v1/users/{sender}/profile"), 404)  # nothing was written
    error = assert_error(llm.post("/llm/inference", json={"prompt": "x" * 4001, "user_id": "u"}), 422)
    assert error["details"][0]["field"] == "prompt"
    error = assert_error(llm.post("/llm/inference", json={"prompt": "hi", "user_id": "u", "provider": "openai"}), 422)
    assert error["details"][0]["field"] == "provider"


def test_a_dry_run_says_what_would_be_sent_and_sends_nothing(llm, rest):
    sender = user()
    parameters = {"to": ["ana@example.com"], "bcc": ["boss@example.com"], "subject": "Hello", "body": "Hi Ana"}
    response = execute(llm, "send_email", sender, parameters, dry_run=True)
    assert response.status_code == 200, response.text
    preview = response.json()["result"]
    assert preview["dry_run"] is True and preview["recipients"] == ["ana@example.com", "boss@example.com"]
    assert preview["headers"]["To"] == "ana@example.com" and preview["headers"]["Subject"] == "Hello"
    assert "Bcc" not in preview["headers"] and preview["size_bytes"] > 0
    assert_error(rest.get(f"/v1/users/{sender}/profile"), 404)


def test_actions_apply_the_tenants_policy_like_rest(server, keys, llm):
    server.cli("tenants", "set", keys["tenant"], "recipient_domain_denylist", "blocked.example")
    try:
        refused = execute(llm, "send_email", user(), {"to": ["x@blocked.example"], "body": "hi"})
        assert_error(refused, 422, "recipient_refused")
        dry = execute(llm, "send_email", user(), {"to": ["x@blocked.example"], "body": "hi"}, dry_run=True)
        assert_error(dry, 422, "recipient_refused")
    finally:
        server.cli("tenants", "unset", keys["tenant"], "recipient_domain_denylist")


def test_reading_actions_and_an_emailed_report(llm, rest):
    sender = user()
    sent = [execute(llm, "send_email", sender, {"to": [f"r{n}@example.com"], "body": f"n{n}"}).json() for n in range(3)]
    for item in sent:
        wait_sent(rest, item["result"]["id"])

    analytics = execute(llm, "get_analytics", sender, {"time_range": "today"}).json()["result"]
    assert analytics["total_emails"] == 3 and analytics["successful"] == 3
    listed = execute(llm, "list_messages", sender, {"status": "sent", "limit": 2}).json()["result"]["messages"]
    assert [m["id"] for m in listed] == [sent[2]["result"]["id"], sent[1]["result"]["id"]]
    one = execute(llm, "get_message", sender, {"message_id": sent[0]["result"]["id"]}).json()["result"]
    assert one["status"] == "sent" and one["attempt_history"][0]["outcome"] == "sent"
    assert_error(execute(llm, "get_message", user(), {"message_id": sent[0]["result"]["id"]}), 404)
    status = execute(llm, "check_status", sender, {}).json()["result"]
    assert status["service"] == "ok" and status["mailbox"]["status"] == "not_connected"

    report = execute(llm, "send_report", sender, {"to": ["Lead@Example.com"], "time_range": "today"})
    assert report.status_code == 200, report.text
    message = wait_sent(rest, report.json()["result"]["message"]["id"])
    assert message["to"] == ["Lead@example.com"] and message["subject"].startswith("Email report")
    raw = rest.get(f"/v1/messages/{message['id']}/raw").text
    assert "Success rate: 100.0%" in raw and "text/html" in raw


# -- LLM planners, through their official SDKs, against a local server speaking each vendor's wire format ---------


@pytest.fixture(scope="module")
def vendor():
    with FakeVendor() as fake:
        yield fake


@pytest.fixture(scope="module")
def openai_server(start_module_server, vendor):
    return start_module_server(
        EMAILMCP_LLM_PROVIDER="openai",
        EMAILMCP_LLM_BASE_URL=vendor.openai_base_url,
        EMAILMCP_LLM_MODEL="gpt-test",
        EMAILMCP_LLM_API_KEY="sk-test-never-shown-0123456789",
        EMAILMCP_LLM_TIMEOUT_SECONDS="1",
    )


@pytest.fixture
def openai_llm(openai_server, tenant_name):
    key = openai_server.create_key(tenant_name, "llm")
    with openai_server.client(headers={"X-API-Key": key}) as client:
        yield client


def test_openai_tool_calls_are_validated_like_any_plan(openai_llm, vendor):
    vendor.respond(
        openai_completion(tool_calls=[("send_email", {"to": "Ana@Example.com", "subject": "Hi", "body": "Hello"})])
    )
    answer = infer(openai_llm, "say hello to ana")
    assert answer["provider"] == "openai" and answer["model"] == "gpt-test"
    assert answer["action"] == "send_email" and answer["missing"] == []
    assert answer["parameters"]["to"] == ["ana@example.com"] and answer["parameters"]["body_type"] == "text"
    request = vendor.last.json
    assert request["model"] == "gpt-test" and request["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert request["messages"][1]["content"].startswith("say hello to ana")
    tools = {tool["function"]["name"]: tool["function"] for tool in request["tools"]}
    assert list(tools) == ACTION_NAMES
    assert tools["send_email"]["parameters"] == ACTIONS["send_email"].parameters.model_json_schema()

    vendor.respond(openai_completion(tool_calls=[("send_email", {"to": ["nobody"], "body": "x"})]))
    assert infer(openai_llm, "mail nobody")["missing"] == ["to"]
    vendor.respond(openai_completion(tool_calls=[("send_email", '{"to": ["a@example.com"], "body": ')]))
    assert set(infer(openai_llm, "broken")["missing"]) == {"to", "body"}
    vendor.respond(openai_completion(tool_calls=[("send_report", {"time_range": "last_7_days"})]))
    weekly = infer(openai_llm, "send my weekly report")
    assert [s["action"] for s in weekly["plan"]] == ["get_analytics", "send_report"]
    assert weekly["parameters"]["time_range"] == "last_7_days"
    vendor.respond(openai_completion(content="I can only help with email."))
    text = infer(openai_llm, "call my mom")
    assert text["action"] is None and text["response"] == "I can only help with email."


def test_openai_failures_are_502_or_504_without_the_key(openai_llm, vendor, openai_server):
    vendor.respond(openai_error("The server had an error"), status=500)
    error = assert_error(openai_llm.post("/llm/inference", json={"prompt": "hi", "user_id": "u"}), 502)
    assert "sk-test" not in error["message"]
    for _ in range(2):  # the first try and the SDK's one retry both run out of time
        vendor.respond(openai_completion(content="late"), delay=3)
    assert_error(openai_llm.post("/llm/inference", json={"prompt": "hi", "user_id": "u"}), 504, "planner_timeout")
    rules = infer(openai_llm, "How many emails failed today?", provider="rules")
    assert rules["provider"] == "rules" and rules["parameters"]["time_range"] == "today"
    assert "sk-test-never-shown" not in openai_server.log_text()


def test_a_failing_planner_falls_back_to_rules_when_configured(start_server, vendor, tenant_name):
    server = start_server(
        EMAILMCP_LLM_PROVIDER="anthropic",
        EMAILMCP_LLM_BASE_URL=vendor.anthropic_base_url,
        EMAILMCP_LLM_MODEL="claude-test",
        EMAILMCP_LLM_FALLBACK="rules",
    )
    with server.client(headers={"X-API-Key": server.create_key(tenant_name, "llm")}) as client:
        vendor.respond(anthropic_message(tool_uses=[("list_messages", {"status": "failed"})]))
        answer = infer(client, "which mails bounced?")
        assert answer["provider"] == "anthropic" and answer["parameters"] == {"status": "failed", "limit": 10}
        assert [tool["name"] for tool in vendor.last.json["tools"]] == ACTION_NAMES
        assert vendor.last.json["system"] == SYSTEM_PROMPT
        vendor.respond({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, status=529)
        fallback = infer(client, "Which emails could not be delivered?")
        assert fallback["provider"] == "rules" and fallback["parameters"]["status"] == "failed"


def test_the_integration_example_runs_against_a_real_server(server, keys):
    example = Path(__file__).resolve().parents[1] / "examples" / "llm_integration_example.py"
    env = {
        **os.environ,
        "EMAILMCP_URL": server.url,
        "EMAILMCP_LLM_KEY": keys["llm"],
        "EMAILMCP_MAIL_KEY": keys["mail"],
        "EMAILMCP_USER_ID": user(),
    }
    prompt = "Send an email to dana@example.com saying the draft is ready for review"
    result = subprocess.run([sys.executable, str(example), prompt], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "1. inference" in out and '"action": "send_email"' in out
    assert "2. execute-action: send_email" in out and '"status": "sent"' in out
    assert "3. analytics for today" in out and '"total_emails": 1' in out
