"""Reports over real HTTP, on SQLite and PostgreSQL, from messages written straight into the server's database
with known creation times and statuses: local days in non-UTC zones, both DST changes of 2026 in New York,
a +05:30 offset, relative ranges, CSV, validation, and tenant isolation. Every figure is asserted exactly."""

import csv
import io
import os
import uuid
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, insert, select

from conftest import BACKENDS, assert_error, backend_database_url
from emailmcp.mail.models import Message
from emailmcp.tenancy.models import Tenant
from emailmcp.users.models import EndUser


@pytest.fixture(scope="module", params=BACKENDS)
def report_server(request, start_module_server):
    """A server without a worker, so the statuses written here stay as they are."""
    database_url = backend_database_url(request)
    return start_module_server(database_url, args=("--no-worker",), EMAILMCP_RATE_LIMIT="0")


@pytest.fixture(scope="module")
def database(report_server):
    """A synchronous engine on the server's own database."""
    url = report_server.env.get("EMAILMCP_DATABASE_URL")
    if url:
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    else:
        url = f"sqlite:///{report_server.data_dir / 'emailmcp.db'}"
    engine = create_engine(url)
    yield engine
    engine.dispose()


class Tenant_:
    """A tenant of the test server: an HTTP client with a mail key, and a way to plant messages."""

    def __init__(self, server, engine, name: str) -> None:
        self.name = name
        self.engine = engine
        self.client = server.client(server.create_key(name, "mail"))
        self.count = 0

    def user(self, user_id: str) -> str:
        assert self.client.post("/v1/users", json={"user_id": user_id}).status_code in (200, 201)
        return user_id

    def plant(self, user_id: str, created_at: datetime, status: str = "sent", **fields) -> str:
        """Inserts one message created at `created_at` for the user, as the outbox would have stored it."""
        with self.engine.begin() as conn:
            tenant_id, user_pk = conn.execute(
                select(Tenant.id, EndUser.id)
                .join(EndUser, EndUser.tenant_id == Tenant.id)
                .where(Tenant.name == self.name, EndUser.user_id == user_id)
            ).one()
            self.count += 1
            message_id = f"msg_{os.urandom(8).hex()}{self.count:012d}"
            conn.execute(
                insert(Message),
                {
                    "id": message_id,
                    "tenant_id": tenant_id,
                    "user_pk": user_pk,
                    "status": status,
                    "transport": "capture",
                    "via_mailbox": False,
                    "message_id": f"<{message_id}@test>",
                    "from_address": "sender@example.com",
                    "to": ["someone@example.com"],
                    "cc": [],
                    "bcc": [],
                    "reply_to": [],
                    "subject": "",
                    "body_type": "text",
                    "body": "",
                    "references": [],
                    "size_bytes": 0,
                    "next_attempt_at": created_at,
                    "attempts": 0,
                    "entry_point": "rest",
                    "created_at": created_at,
                    "updated_at": created_at,
                    "sent_at": created_at + timedelta(seconds=1) if status == "sent" else None,
                    **fields,
                },
            )
        return message_id

    def report(self, user_id: str, **params) -> dict:
        response = self.client.get(f"/v1/reports/users/{user_id}", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def summary(self, **params) -> dict:
        response = self.client.get("/v1/reports/summary", params=params)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def tenant(report_server, database, tenant_name):
    made = Tenant_(report_server, database, tenant_name)
    with made.client:
        yield made


@pytest.fixture(scope="module")
def checked(report_server, database):
    """A tenant with one user, shared by the validation tests (which write nothing)."""
    made = Tenant_(report_server, database, f"checked-{uuid.uuid4().hex[:8]}")
    with made.client:
        made.user("checked")
        yield made


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def days(report: dict) -> dict[str, tuple[int, int, int]]:
    return {day["date"]: (day["total"], day["successful"], day["failed"]) for day in report["by_day"]}


def test_every_figure_of_a_user_report(tenant):
    user = tenant.user("ada")
    at = utc(2026, 5, 10, 12)
    planted = {}
    for n, status in enumerate(["sent"] * 5 + ["failed"] * 2 + ["queued", "scheduled", "sending", "cancelled"]):
        planted[status, n] = tenant.plant(user, at + timedelta(minutes=n), status)
    tenant.plant(
        user,
        utc(2026, 5, 11, 8),
        "failed",
        transport="smtp",
        to=["Bob@Example.com", "carol@example.com"],
        cc=["BOB@example.COM"],
        bcc=["dave@example.com", "carol@example.com"],
        subject="Hello",
        error="550 mailbox unavailable",
    )
    tenant.plant(user, utc(2026, 5, 9, 23, 59, 59, 999999))  # just before the window
    tenant.plant(user, utc(2026, 5, 12))  # the window's end is exclusive
    first = tenant.plant(user, utc(2026, 5, 10), "sent", cc=["bob@example.com"])  # its start is inclusive

    report = tenant.report(user, start_date="2026-05-10T00:00:00Z", end_date="2026-05-12T00:00:00Z", limit=3)

    assert report["user_id"] == "ada"
    assert report["time_range"] is None
    assert report["tz"] == "UTC"
    assert parse(report["start"]) == utc(2026, 5, 10) and parse(report["end"]) == utc(2026, 5, 12)
    assert (report["total_emails"], report["successful"], report["failed"]) == (13, 6, 3)
    assert (report["pending"], report["cancelled"]) == (3, 1)
    assert report["success_rate"] == 6 / 9
    assert report["by_day"] == [
        {"date": "2026-05-10", "total": 12, "successful": 6, "failed": 2},
        {"date": "2026-05-11", "total": 1, "successful": 0, "failed": 1},
    ]
    assert report["by_transport"] == {"capture": 12, "smtp": 1}
    assert report["top_recipients"] == [
        {"email": "someone@example.com", "count": 12},
        {"email": "bob@example.com", "count": 3},
        {"email": "carol@example.com", "count": 2},
        {"email": "dave@example.com", "count": 1},
    ]
    recent = report["recent_emails"]
    assert [message["status"] for message in recent] == ["failed", "cancelled", "sending"]
    assert recent[0]["to"] == ["Bob@Example.com", "carol@example.com"]
    assert recent[0]["subject"] == "Hello" and recent[0]["transport"] == "smtp"
    assert recent[0]["error"] == "550 mailbox unavailable" and recent[0]["sent_at"] is None
    assert parse(recent[0]["created_at"]) == utc(2026, 5, 11, 8)
    assert recent[1]["id"] == planted["cancelled", 10]

    oldest = tenant.report(user, start_date="2026-05-10T00:00:00Z", end_date="2026-05-12T00:00:00Z", limit=100)
    assert len(oldest["recent_emails"]) == 13 and oldest["recent_emails"][-1]["id"] == first
    sent = oldest["recent_emails"][-1]
    assert parse(sent["sent_at"]) == utc(2026, 5, 10, 0, 0, 1)


def test_an_empty_window_is_all_zeros(tenant):
    user = tenant.user("idle")
    report = tenant.report(user, start_date="2026-02-27", end_date="2026-03-01")
    assert (report["total_emails"], report["successful"], report["failed"], report["pending"]) == (0, 0, 0, 0)
    assert report["success_rate"] == 0
    assert days(report) == {"2026-02-27": (0, 0, 0), "2026-02-28": (0, 0, 0), "2026-03-01": (0, 0, 0)}
    assert report["top_recipients"] == [] and report["recent_emails"] == [] and report["by_transport"] == {}


def test_new_york_days_across_the_spring_dst_change(tenant):
    """2026-03-08 is 23 hours long in New York: EST (UTC-5) until 07:00Z, EDT (UTC-4) after."""
    user = tenant.user("spring")
    for instant, status in [
        (utc(2026, 3, 7, 4, 59, 59), "sent"),  # 03-06 23:59:59 EST: before the window
        (utc(2026, 3, 7, 5), "sent"),  # 03-07 00:00 EST
        (utc(2026, 3, 8, 4, 59, 59), "failed"),  # 03-07 23:59:59 EST
        (utc(2026, 3, 8, 5), "sent"),  # 03-08 00:00 EST
        (utc(2026, 3, 8, 6, 59, 59), "sent"),  # 03-08 01:59:59 EST, just before the change
        (utc(2026, 3, 8, 7), "failed"),  # 03-08 03:00 EDT, just after
        (utc(2026, 3, 9, 3, 59, 59), "queued"),  # 03-08 23:59:59 EDT
        (utc(2026, 3, 9, 4), "sent"),  # 03-09 00:00 EDT
        (utc(2026, 3, 10, 3, 59, 59), "failed"),  # 03-09 23:59:59 EDT
        (utc(2026, 3, 10, 4), "sent"),  # 03-10 00:00 EDT: after the window
    ]:
        tenant.plant(user, instant, status)

    report = tenant.report(user, start_date="2026-03-07", end_date="2026-03-09", tz="America/New_York")
    assert report["tz"] == "America/New_York"
    assert parse(report["start"]) == utc(2026, 3, 7, 5) and parse(report["end"]) == utc(2026, 3, 10, 4)
    assert days(report) == {"2026-03-07": (2, 1, 1), "2026-03-08": (4, 2, 1), "2026-03-09": (2, 1, 1)}
    assert (report["total_emails"], report["successful"], report["failed"], report["pending"]) == (8, 4, 3, 1)

    # The same messages in UTC days: the window is now [03-07 00:00Z, 03-10 00:00Z).
    utc_report = tenant.report(user, start_date="2026-03-07", end_date="2026-03-09")
    assert days(utc_report) == {"2026-03-07": (2, 2, 0), "2026-03-08": (4, 2, 2), "2026-03-09": (2, 1, 0)}
    assert utc_report["total_emails"] == 8


def test_new_york_days_across_the_autumn_dst_change(tenant):
    """2026-11-01 is 25 hours long in New York: 01:00 to 02:00 happens twice (EDT, then EST from 06:00Z)."""
    user = tenant.user("autumn")
    for instant in [
        utc(2026, 11, 1, 3, 59, 59),  # 10-31 23:59:59 EDT
        utc(2026, 11, 1, 4),  # 11-01 00:00 EDT
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT
        utc(2026, 11, 1, 6, 30),  # 01:30 EST, the second time
        utc(2026, 11, 2, 4, 59, 59),  # 11-01 23:59:59 EST, 25 hours after midnight
        utc(2026, 11, 2, 5),  # 11-02 00:00 EST
    ]:
        tenant.plant(user, instant)
    report = tenant.report(user, start_date="2026-10-31", end_date="2026-11-02", tz="America/New_York")
    assert days(report) == {"2026-10-31": (1, 1, 0), "2026-11-01": (4, 4, 0), "2026-11-02": (1, 1, 0)}
    assert parse(report["start"]) == utc(2026, 10, 31, 4) and parse(report["end"]) == utc(2026, 11, 3, 5)


def test_kolkata_days_at_plus_five_thirty(tenant):
    user = tenant.user("kolkata")
    for instant in [
        utc(2026, 1, 9, 18, 29, 59, 999999),  # 01-09 23:59:59.999999 IST: before the window
        utc(2026, 1, 9, 18, 30),  # 01-10 00:00 IST
        utc(2026, 1, 10, 18, 29, 59, 999999),  # 01-10, its last microsecond
        utc(2026, 1, 10, 18, 30),  # 01-11 00:00 IST
        utc(2026, 1, 11, 18, 29),  # 01-11 23:59 IST
        utc(2026, 1, 11, 18, 30),  # 01-12: after the window
    ]:
        tenant.plant(user, instant)
    report = tenant.report(user, start_date="2026-01-10", end_date="2026-01-11", tz="Asia/Kolkata")
    assert parse(report["start"]) == utc(2026, 1, 9, 18, 30) and parse(report["end"]) == utc(2026, 1, 11, 18, 30)
    assert days(report) == {"2026-01-10": (2, 2, 0), "2026-01-11": (2, 2, 0)}

    # Datetimes are instants (a naive one is UTC) and the partial first and last days are clipped to them.
    partial = tenant.report(
        user, start_date="2026-01-10T18:30:00", end_date="2026-01-11T18:30:00+05:30", tz="Asia/Kolkata"
    )
    assert days(partial) == {"2026-01-11": (1, 1, 0)}
    assert parse(partial["end"]) == utc(2026, 1, 11, 13)


def test_relative_ranges_are_whole_local_days_up_to_now(tenant):
    user = tenant.user("relative")
    tz = ZoneInfo("Asia/Kolkata")
    today = datetime.now(tz).date()

    def midnight(days_ago: int) -> datetime:
        return datetime.combine(today - timedelta(days=days_ago), time(), tzinfo=tz).astimezone(UTC)

    tiny = timedelta(microseconds=1)
    tenant.plant(user, midnight(0))  # today
    tenant.plant(user, midnight(0) - tiny, "failed")  # yesterday's last instant
    tenant.plant(user, midnight(6))  # the first day of last_7_days
    tenant.plant(user, midnight(6) - tiny)
    tenant.plant(user, midnight(29), "failed")  # the first day of last_30_days
    tenant.plant(user, midnight(29) - tiny)
    tenant.plant(user, midnight(89))  # the first day of last_90_days
    tenant.plant(user, midnight(89) - tiny)
    tenant.plant(user, midnight(800), "failed")  # long ago: all_time only
    tenant.plant(user, datetime.now(UTC) + timedelta(hours=2), "scheduled")  # created "in the future"

    expected = {"today": (1, 1), "last_7_days": (3, 7), "last_30_days": (5, 30), "last_90_days": (7, 90)}
    for time_range, (total, length) in expected.items():
        report = tenant.report(user, time_range=time_range, tz="Asia/Kolkata")
        assert report["time_range"] == time_range
        assert report["total_emails"] == total, time_range
        assert len(report["by_day"]) == length and report["by_day"][-1]["date"] == today.isoformat()
        assert parse(report["start"]) == midnight(length - 1)
        assert abs(parse(report["end"]) - datetime.now(UTC)) < timedelta(seconds=30)
        assert sum(day["total"] for day in report["by_day"]) == total

    default = tenant.report(user, tz="Asia/Kolkata")
    assert default["time_range"] == "last_30_days" and default["total_emails"] == 5

    everything = tenant.report(user, time_range="all_time", tz="Asia/Kolkata")
    assert (everything["total_emails"], everything["successful"], everything["failed"]) == (10, 6, 3)
    assert everything["pending"] == 1
    assert everything["by_day"][0]["date"] == (today - timedelta(days=800)).isoformat()
    assert everything["by_day"][0]["failed"] == 1
    assert parse(everything["start"]) == midnight(800)

    profile = tenant.client.get(f"/v1/users/{user}/profile").json()
    assert profile["total_emails_sent"] == everything["successful"] == 6


def test_summary_over_the_tenant(tenant):
    ada, bob, cyd = tenant.user("ada"), tenant.user("bob"), tenant.user("cyd")
    tenant.user("idle")
    day = utc(2026, 4, 1, 10)
    for status in ["sent", "sent", "failed", "queued"]:
        tenant.plant(ada, day, status)
    for status in ["sent", "failed", "failed", "cancelled"]:
        tenant.plant(bob, day + timedelta(days=1), status)
    tenant.plant(cyd, day + timedelta(days=1), "sent")
    tenant.plant(cyd, day - timedelta(days=1), "sent")  # before the window: cyd is active, idle is not

    summary = tenant.summary(start_date="2026-04-01", end_date="2026-04-03")
    assert (summary["total_emails"], summary["successful"], summary["failed"]) == (9, 4, 3)
    assert (summary["pending"], summary["cancelled"]) == (1, 1)
    assert summary["success_rate"] == 4 / 7
    assert (summary["active_users"], summary["total_users"]) == (3, 4)
    assert summary["top_senders"] == [
        {"user_id": "ada", "total": 4, "failed": 1},
        {"user_id": "bob", "total": 4, "failed": 2},
        {"user_id": "cyd", "total": 1, "failed": 0},
    ]
    assert days(summary) == {"2026-04-01": (4, 2, 1), "2026-04-02": (5, 2, 2), "2026-04-03": (0, 0, 0)}

    empty = tenant.summary(start_date="2026-06-01", end_date="2026-06-01")
    assert (empty["total_emails"], empty["active_users"], empty["total_users"]) == (0, 0, 4)
    assert empty["top_senders"] == []


def test_top_lists_keep_ten(tenant):
    user = tenant.user("many")
    at = utc(2026, 7, 1, 12)
    for n in range(12):
        tenant.user(f"sender-{n:02d}")
        for _ in range(n + 1):
            tenant.plant(f"sender-{n:02d}", at)
        tenant.plant(user, at, to=[f"r{n:02d}@example.com"] * (n + 1))
    report = tenant.report(user, start_date="2026-07-01", end_date="2026-07-01")
    assert [item["email"] for item in report["top_recipients"]] == [f"r{n:02d}@example.com" for n in range(11, 1, -1)]
    assert report["top_recipients"][0]["count"] == 12
    summary = tenant.summary(start_date="2026-07-01", end_date="2026-07-01")
    # "many" ties with sender-11 at 12 messages: ties go by user_id.
    assert [s["user_id"] for s in summary["top_senders"]] == ["many"] + [f"sender-{n:02d}" for n in range(11, 2, -1)]
    assert summary["active_users"] == 13


def test_csv_is_the_by_day_rows(tenant):
    user = tenant.user("csv")
    tenant.plant(user, utc(2026, 8, 2, 3), "failed")
    tenant.plant(user, utc(2026, 8, 2, 4))
    params = {"start_date": "2026-08-01", "end_date": "2026-08-02", "tz": "Europe/Paris", "format": "csv"}
    for path in (f"/v1/reports/users/{user}", "/v1/reports/summary"):
        response = tenant.client.get(path, params=params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert response.text == "date,total,successful,failed\n2026-08-01,0,0,0\n2026-08-02,2,1,1\n"
        assert list(csv.DictReader(io.StringIO(response.text)))[1] == {
            "date": "2026-08-02",
            "total": "2",
            "successful": "1",
            "failed": "1",
        }


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"time_range": "yesterday"}, "time_range"),
        ({"time_range": "last_7_days", "start_date": "2026-01-01"}, "time_range"),
        ({"tz": "Mars/Olympus_Mons"}, "tz"),
        ({"tz": "../../../etc/passwd"}, "tz"),
        ({"tz": ""}, "tz"),
        ({"tz": "x" * 65}, "tz"),
        ({"start_date": "yesterday"}, "start_date"),
        ({"start_date": "2026-02-30"}, "start_date"),
        ({"start_date": "2026-01-01", "end_date": "2026-13-01"}, "end_date"),
        ({"start_date": "2026-03-02", "end_date": "2026-03-01"}, "start_date"),
        ({"start_date": "2026-03-01T10:00:00Z", "end_date": "2026-03-01T10:00:00Z"}, "start_date"),
        ({"end_date": "2026-03-01"}, "start_date"),
        ({"start_date": "2099-01-01"}, "start_date"),  # after now, the default end
        ({"start_date": "2025-01-01", "end_date": "2026-01-02"}, "end_date"),  # 367 days
        ({"start_date": "0001-01-01", "end_date": "0001-01-02"}, "start_date"),
        ({"start_date": "9999-12-30", "end_date": "9999-12-31"}, "start_date"),
        ({"start_date": "2026-01-01", "end_date": "9999-12-31T23:59:59+00:00"}, "end_date"),
        ({"start_date": "2026-01-01", "format": "xml"}, "format"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/reports/users/{user}", "/v1/reports/summary"])
def test_bad_input_is_422_naming_the_field(checked, params, field, path):
    error = assert_error(checked.client.get(path.format(user="checked"), params=params), 422)
    assert [detail["field"].removeprefix("query.") for detail in error["details"]] == [field], error


@pytest.mark.parametrize("limit", ["0", "101", "ten"])
def test_bad_limit_is_422(checked, limit):
    error = assert_error(checked.client.get("/v1/reports/users/checked", params={"limit": limit}), 422)
    assert [detail["field"] for detail in error["details"]] == ["query.limit"]


def test_the_longest_ranges_are_accepted(tenant):
    user = tenant.user("leap")
    tenant.plant(user, utc(2024, 12, 31, 23, 59))
    report = tenant.report(user, start_date="2024-01-01", end_date="2024-12-31")  # 366 days of a leap year
    assert len(report["by_day"]) == 366 and report["by_day"][-1] == {
        "date": "2024-12-31",
        "total": 1,
        "successful": 1,
        "failed": 0,
    }
    # 366 days of wall-clock time, so 367 partial local days.
    partial = tenant.report(user, start_date="2024-01-01T12:00:00Z", end_date="2025-01-01T12:00:00Z")
    assert len(partial["by_day"]) == 367 and partial["total_emails"] == 1


def test_unknown_user_is_404(checked):
    assert_error(checked.client.get("/v1/reports/users/nobody"), 404, "user_not_found")


def test_tenants_see_only_their_own_messages(report_server, database, tenant, tenant_name):
    other = Tenant_(report_server, database, tenant_name + "-b")
    with other.client:
        tenant.user("shared-id")
        other.user("shared-id")
        other.user("only-b")
        tenant.plant("shared-id", utc(2026, 9, 1, 12))
        for status in ["sent", "failed", "failed"]:
            other.plant("shared-id", utc(2026, 9, 1, 13), status, to=["secret@b.example"])
        other.plant("only-b", utc(2026, 9, 1, 13))

        params = {"start_date": "2026-09-01", "end_date": "2026-09-01"}
        mine = tenant.report("shared-id", **params)
        assert (mine["total_emails"], mine["failed"]) == (1, 0)
        assert mine["top_recipients"] == [{"email": "someone@example.com", "count": 1}]
        summary = tenant.summary(**params)
        assert (summary["total_emails"], summary["active_users"], summary["total_users"]) == (1, 1, 1)
        assert summary["top_senders"] == [{"user_id": "shared-id", "total": 1, "failed": 0}]
        assert other.summary(**params)["total_emails"] == 4
        assert_error(tenant.client.get("/v1/reports/users/only-b"), 404, "user_not_found")
