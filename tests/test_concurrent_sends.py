"""Sends arriving together share a transaction; each must still get exactly its own answer.

Bursts of concurrent requests over real HTTP, against SQLite and PostgreSQL: nothing lost or doubled,
idempotency and the daily cap exact across the burst, one refusal never affecting its neighbours.
"""

import asyncio

import httpx2
import pytest

from conftest import BACKENDS, PostgresDatabase, backend_database_url, require_postgres

CAP = 5


@pytest.fixture(scope="module", params=BACKENDS)
def burst_server(request, start_module_server):
    database_url = backend_database_url(request)
    return start_module_server(database_url, args=("--no-worker",), EMAILMCP_DAILY_SEND_CAP=str(CAP))


@pytest.fixture
def key(burst_server, tenant_name):
    return burst_server.create_key(tenant_name, "mail", "admin")


def burst(server, key: str, requests: list[tuple[str, dict, dict]]) -> list[httpx2.Response]:
    """Sends every (path, body, headers) at once, each over a connection of its own."""

    async def run() -> list[httpx2.Response]:
        limits = httpx2.Limits(max_connections=len(requests))
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx2.AsyncClient(base_url=server.url, headers=headers, limits=limits, timeout=60) as client:
            return await asyncio.gather(
                *(client.post(path, json=body, headers=extra) for path, body, extra in requests)
            )

    return asyncio.run(run())


def stored(server, key: str, user_id: str) -> list[dict]:
    with server.client(key) as client:
        return client.get("/v1/messages", params={"user_id": user_id, "limit": 200}).json()["messages"]


def test_every_send_of_a_burst_is_stored_once(burst_server, key):
    users = [f"burst-{n}" for n in range(8)]
    requests = [
        (f"/v1/users/{user}/messages", {"to": ["a@example.com"], "subject": f"{user} #{i}"}, {})
        for user in users
        for i in range(CAP)
    ]
    responses = burst(burst_server, key, requests)
    assert [r.status_code for r in responses] == [202] * len(requests), responses[0].text
    accepted = {r.json()["id"]: r.json() for r in responses}
    assert len(accepted) == len(requests)
    for (path, body, _), response in zip(requests, responses, strict=True):
        assert response.json()["subject"] == body["subject"] and response.json()["user_id"] == path.split("/")[3]
    listed = {m["id"]: m for user in users for m in stored(burst_server, key, user)}
    assert listed.keys() == accepted.keys()
    assert all(listed[i]["subject"] == accepted[i]["subject"] for i in listed)


def test_one_idempotency_key_sent_at_once_stores_one_message(burst_server, key):
    body = {"to": ["a@example.com"], "subject": "once"}
    requests = [("/v1/users/idem/messages", body, {"Idempotency-Key": "burst-key"})] * 20
    responses = burst(burst_server, key, requests)
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1
    assert [r.headers.get("idempotent-replayed") for r in responses].count(None) == 1
    assert len(stored(burst_server, key, "idem")) == 1


def test_an_idempotency_key_reused_with_another_body_in_the_same_burst_is_409(burst_server, key):
    first, second = {"to": ["a@example.com"], "subject": "A"}, {"to": ["a@example.com"], "subject": "B"}
    requests = [("/v1/users/mixed/messages", body, {"Idempotency-Key": "mixed-key"}) for body in [first, second] * 6]
    responses = burst(burst_server, key, requests)
    messages = stored(burst_server, key, "mixed")
    assert len(messages) == 1
    winner = messages[0]["subject"]
    for (_, body, _), response in zip(requests, responses, strict=True):
        if body["subject"] == winner:
            assert response.status_code == 202 and response.json()["id"] == messages[0]["id"]
        else:
            assert response.status_code == 409 and response.json()["error"]["code"] == "idempotency_key_reused"


def test_the_daily_cap_is_exact_across_a_burst_and_refuses_only_the_excess(burst_server, key):
    requests = [("/v1/users/capped/messages", {"to": ["a@example.com"], "subject": str(i)}, {}) for i in range(20)]
    requests += [("/v1/users/neighbour/messages", {"to": ["a@example.com"]}, {}) for _ in range(CAP)]
    responses = burst(burst_server, key, requests)
    capped = [r.status_code for r in responses[:20]]
    assert capped.count(202) == CAP and capped.count(429) == 20 - CAP
    assert all(r.json()["error"]["code"] == "daily_send_cap" for r in responses[:20] if r.status_code == 429)
    assert [r.status_code for r in responses[20:]] == [202] * CAP
    assert len(stored(burst_server, key, "capped")) == CAP
    assert len(stored(burst_server, key, "neighbour")) == CAP


def test_one_idempotency_key_sent_to_two_servers_at_once_stores_one_message(start_server, tenant_name):
    """Two processes on one PostgreSQL race for the key; the loser's whole batch falls back and replays."""
    database = PostgresDatabase(require_postgres())
    try:
        first = start_server(database.url, args=("--no-worker",))
        second = start_server(database.url, args=("--no-worker",), EMAILMCP_SECRET_KEY=first.env["EMAILMCP_SECRET_KEY"])
        key = first.create_key(tenant_name, "mail")
        body = {"to": ["a@example.com"], "subject": "raced"}
        for attempt in range(5):
            idempotency = {"Idempotency-Key": f"race-{attempt}"}
            others = [("/v1/users/race/messages", {"to": ["b@example.com"], "subject": "other"}, {}) for n in range(4)]
            requests = [("/v1/users/race/messages", body, idempotency)] * 8 + others

            async def both(requests=requests):
                return await asyncio.gather(*(asyncio.to_thread(burst, s, key, requests) for s in (first, second)))

            responses = [r for batch in asyncio.run(both()) for r in batch]
            assert {r.status_code for r in responses} == {202}
            raced = [r.json()["id"] for r in responses if r.json()["subject"] == "raced"]
            assert len(set(raced)) == 1
        messages = stored(first, key, "race")
        assert sum(m["subject"] == "raced" for m in messages) == 5
        assert sum(m["subject"] == "other" for m in messages) == 5 * 4 * 2
    finally:
        first.stop()
        second.stop()
        database.drop()
