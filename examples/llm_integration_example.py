"""From a prompt to a sent email and its analytics, against a running EmailMCP server.

    EMAILMCP_URL=http://127.0.0.1:8080 EMAILMCP_LLM_KEY=emk_... EMAILMCP_MAIL_KEY=emk_... \\
        python examples/llm_integration_example.py "Send an email to dana@example.com saying the draft is ready"

1. POST /llm/inference turns the prompt into a proposed action (X-API-Key: a key with the llm scope).
2. POST /llm/execute-action runs it (plus X-MCP-API-Key: a key with the mail scope, of the same tenant).
3. The analytics action shows the user's figures, the new message included.

Standard library only, so it runs anywhere Python does. One key with both scopes works for both headers.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

URL = os.environ.get("EMAILMCP_URL", "http://127.0.0.1:8080").rstrip("/")
LLM_KEY = os.environ.get("EMAILMCP_LLM_KEY", "")
MAIL_KEY = os.environ.get("EMAILMCP_MAIL_KEY", LLM_KEY)
USER_ID = os.environ.get("EMAILMCP_USER_ID", "example-user")


def call(method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        URL + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "X-API-Key": LLM_KEY, "X-MCP-API-Key": MAIL_KEY},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        error = json.loads(exc.read()).get("error", {})
        sys.exit(f"{method} {path} -> {exc.code} {error.get('code')}: {error.get('message')}")


def show(title: str, value: object) -> None:
    print(f"\n== {title}\n{json.dumps(value, indent=2, default=str)}")


def execute(action: str, parameters: dict) -> dict:
    return call("POST", "/llm/execute-action", {"action_type": action, "user_id": USER_ID, "parameters": parameters})


def main() -> None:
    if not LLM_KEY:
        sys.exit("set EMAILMCP_LLM_KEY (and EMAILMCP_MAIL_KEY when it is another key)")
    prompt = " ".join(sys.argv[1:]) or "Send an email to dana@example.com saying the draft is ready for review"

    plan = call("POST", "/llm/inference", {"prompt": prompt, "user_id": USER_ID})
    show(f"1. inference: {prompt!r}", plan)
    if plan["action"] is None or plan["missing"]:
        print(f"\nNothing to run yet: {plan['response']}")
        return

    done = execute(plan["action"], plan["parameters"])
    show(f"2. execute-action: {plan['action']}", done)

    message_id = done["result"].get("id")
    for _ in range(50):  # delivery is asynchronous: wait for the outcome
        if message_id is None:
            break
        message = execute("get_message", {"message_id": message_id})["result"]
        if message["status"] in ("sent", "failed", "cancelled"):
            show("   the message now", {k: message[k] for k in ("id", "status", "error", "to", "subject")})
            break
        time.sleep(0.2)

    analytics = execute("get_analytics", {"time_range": "today"})["result"]
    show("3. analytics for today", {k: analytics[k] for k in ("total_emails", "successful", "failed", "success_rate")})


if __name__ == "__main__":
    main()
