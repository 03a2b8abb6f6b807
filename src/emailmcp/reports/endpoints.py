from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from emailmcp.openapi import ERROR_RESPONSES
from emailmcp.reports import service
from emailmcp.reports.schemas import TenantSummary, TimeRange, UserReport
from emailmcp.tenancy.dependencies import MailContext, Session
from emailmcp.users.endpoints import UserIdPath

router = APIRouter(prefix="/v1/reports", tags=["reports"], responses=ERROR_RESPONSES)

RangeQuery = Annotated[
    TimeRange | None,
    Query(description="A window ending now, in whole local days of `tz`. Default last_30_days."),
]
StartQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        description="Instead of time_range: an ISO 8601 date (that day in `tz`) or datetime (naive means UTC).",
    ),
]
EndQuery = Annotated[
    str | None,
    Query(max_length=64, description="A date (inclusive) or datetime (exclusive); default now. At most 366 days."),
]
TzQuery = Annotated[str, Query(max_length=64, description="IANA time zone for the days and for `today`.")]
FormatQuery = Annotated[Literal["json", "csv"], Query(description="csv: the by_day rows, with a header line.")]
CSV_RESPONSE = {200: {"content": {"text/csv": {}}, "description": "The report; with format=csv, its by_day rows"}}


def _csv(days) -> Response:
    return Response(service.by_day_csv(days), media_type="text/csv; charset=utf-8")


@router.get("/users/{user_id}", response_model=UserReport, responses=CSV_RESPONSE)
async def user_report(
    user_id: UserIdPath,
    ctx: MailContext,
    session: Session,
    time_range: RangeQuery = None,
    start_date: StartQuery = None,
    end_date: EndQuery = None,
    tz: TzQuery = "UTC",
    limit: Annotated[int, Query(ge=1, le=service.MAX_RECENT, description="How many recent_emails.")] = 10,
    format: FormatQuery = "json",
) -> UserReport | Response:
    """A user's messages in a window: counts by status, by local day and by transport, top recipients, the newest."""
    report = await service.user_report(session, ctx, user_id, time_range, start_date, end_date, tz, limit)
    return _csv(report.by_day) if format == "csv" else report


@router.get("/summary", response_model=TenantSummary, responses=CSV_RESPONSE)
async def summary(
    ctx: MailContext,
    session: Session,
    time_range: RangeQuery = None,
    start_date: StartQuery = None,
    end_date: EndQuery = None,
    tz: TzQuery = "UTC",
    format: FormatQuery = "json",
) -> TenantSummary | Response:
    """The tenant's messages in a window: counts by status and by local day, active users, top senders."""
    report = await service.tenant_summary(session, ctx, time_range, start_date, end_date, tz)
    return _csv(report.by_day) if format == "csv" else report
