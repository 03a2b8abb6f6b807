"""Delivery analytics: the window and its local days are computed here, the counting is done in SQL.

SQLite has no time-zone database, so SQL never converts time zones: each local day of the window becomes a
[start, end) pair of UTC instants (zoneinfo handles DST, so a day may last 23 or 25 hours), and the
database counts the messages created within each pair.

A message belongs to the window by its creation time; its status is the current one.
"""

import csv
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.ext.asyncio import AsyncSession

from emailmcp.db import utcnow
from emailmcp.errors import InvalidField
from emailmcp.reports import repository
from emailmcp.reports.schemas import (
    DayCount,
    RecentEmail,
    RecipientCount,
    SenderCount,
    TenantSummary,
    TimeRange,
    UserReport,
)
from emailmcp.tenancy.schemas import TenantContext
from emailmcp.users import service as users

MAX_RANGE = timedelta(days=366)
DEFAULT_RANGE = TimeRange.last_30_days
TOP = 10
MAX_RECENT = 100
_RANGE_DAYS = {TimeRange.today: 1, TimeRange.last_7_days: 7, TimeRange.last_30_days: 30, TimeRange.last_90_days: 90}
# Far enough from datetime's limits that a day or a time-zone offset can be added without overflowing.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Window:
    time_range: TimeRange | None
    tz: ZoneInfo
    start: datetime
    end: datetime

    def days(self) -> list[tuple[date, datetime, datetime]]:
        """Each local day touching the window, with its [start, end) in UTC clipped to the window."""
        first = self.start.astimezone(self.tz).date()
        last = (self.end - timedelta(microseconds=1)).astimezone(self.tz).date()
        return [
            (day, max(self.start, local_midnight(day, self.tz)), min(self.end, local_midnight(next_day, self.tz)))
            for day, next_day in (
                (first + timedelta(days=n), first + timedelta(days=n + 1)) for n in range((last - first).days + 1)
            )
        ]


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The UTC instant a local day begins. Where midnight falls in a DST gap, zoneinfo (fold=0) yields the
    instant the day actually starts."""
    return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)


def parse_tz(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidField("tz", f"unknown time zone {name!r}; use an IANA name such as Europe/Paris") from None


def _parse_instant(field: str, value: str, tz: ZoneInfo, inclusive_end: bool) -> datetime:
    """A date is that local day in `tz` (as an end, inclusive: up to the next midnight); a datetime is an
    instant (naive means UTC)."""
    try:
        day = date.fromisoformat(value)
    except ValueError:
        try:
            instant = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidField(field, "not an ISO 8601 date or datetime (2026-03-01, 2026-03-01T09:00Z)") from None
        if instant.tzinfo is None:
            instant = instant.replace(tzinfo=UTC)
    else:
        if not _EARLIEST.date() <= day < _LATEST.date():
            raise InvalidField(field, "out of range (1970 to 8999)")
        instant = local_midnight(day + timedelta(days=1) if inclusive_end else day, tz)
    if not _EARLIEST <= instant < _LATEST:
        raise InvalidField(field, "out of range (1970 to 8999)")
    return instant.astimezone(UTC)


def resolve_window(
    time_range: TimeRange | None,
    start_date: str | None,
    end_date: str | None,
    tz_name: str,
    now: datetime,
    first_created: datetime | None = None,
    last_created: datetime | None = None,
) -> Window:
    """The window a report covers. Relative ranges are whole local days up to now (last_7_days is today and
    the six days before); all_time runs from the local day of the first message to now (or past the last
    message, so it counts every message the profile counts)."""
    tz = parse_tz(tz_name)
    if start_date is None and end_date is None:
        time_range = time_range or DEFAULT_RANGE
        today = now.astimezone(tz).date()
        if time_range == TimeRange.all_time:
            first_day = first_created.astimezone(tz).date() if first_created else today
            end = max(now, last_created + timedelta(microseconds=1)) if last_created else now
            return Window(time_range, tz, local_midnight(first_day, tz), end)
        start = local_midnight(today - timedelta(days=_RANGE_DAYS[time_range] - 1), tz)
        return Window(time_range, tz, start, now)
    if time_range is not None:
        raise InvalidField("time_range", "give either time_range or start_date/end_date, not both")
    if start_date is None:
        raise InvalidField("start_date", "required with end_date")
    start = _parse_instant("start_date", start_date, tz, inclusive_end=False)
    end = _parse_instant("end_date", end_date, tz, inclusive_end=True) if end_date is not None else now
    if start >= end:
        raise InvalidField("start_date", f"must be before the end of the range ({end.isoformat()})")
    wall_clock = end.astimezone(tz).replace(tzinfo=None) - start.astimezone(tz).replace(tzinfo=None)
    if wall_clock > MAX_RANGE:
        raise InvalidField("end_date" if end_date else "start_date", "the range is longer than 366 days")
    return Window(None, tz, start, end)


async def _window(
    session: AsyncSession,
    ctx: TenantContext,
    user_pk: int | None,
    time_range: TimeRange | None,
    start_date: str | None,
    end_date: str | None,
    tz: str,
) -> Window:
    first = last = None
    if time_range == TimeRange.all_time and start_date is None and end_date is None:
        first, last = await repository.created_range(session, ctx, user_pk)
    return resolve_window(time_range, start_date, end_date, tz, utcnow(), first, last)


async def _totals(session: AsyncSession, ctx: TenantContext, user_pk: int | None, window: Window) -> dict:
    """The fields every report shares: counts by status and by local day."""
    days = window.days()
    counted = await repository.daily_counts(session, ctx, user_pk, [(lo, hi) for _, lo, hi in days])
    by_day, sums = [], dict.fromkeys(("total", "successful", "failed", "pending", "cancelled"), 0)
    for (day, _, _), row in zip(days, counted, strict=True):
        total = row.successful + row.failed + row.pending + row.cancelled
        sums["total"] += total
        for name in ("successful", "failed", "pending", "cancelled"):
            sums[name] += getattr(row, name)
        by_day.append(DayCount(date=day, total=total, successful=row.successful, failed=row.failed))
    decided = sums["successful"] + sums["failed"]
    return {
        "time_range": window.time_range,
        "start": window.start,
        "end": window.end,
        "tz": window.tz.key,
        "total_emails": sums["total"],
        "successful": sums["successful"],
        "failed": sums["failed"],
        "pending": sums["pending"],
        "cancelled": sums["cancelled"],
        "success_rate": sums["successful"] / decided if decided else 0.0,
        "by_day": by_day,
    }


async def user_report(
    session: AsyncSession,
    ctx: TenantContext,
    user_id: str,
    time_range: TimeRange | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
    tz: str = "UTC",
    limit: int = 10,
) -> UserReport:
    user = await users.get_user(session, ctx, user_id)
    window = await _window(session, ctx, user.id, time_range, start_date, end_date, tz)
    totals = await _totals(session, ctx, user.id, window)
    recipients = await repository.top_recipients(session, ctx, user.id, window.start, window.end, TOP)
    transports = await repository.transport_counts(session, ctx, user.id, window.start, window.end)
    recent = await repository.recent(session, ctx, user.id, window.start, window.end, limit)
    return UserReport(
        user_id=user.user_id,
        **totals,
        top_recipients=[RecipientCount(email=row.email, count=row.count) for row in recipients],
        by_transport=transports,
        recent_emails=[RecentEmail.model_validate(row, from_attributes=True) for row in recent],
    )


async def tenant_summary(
    session: AsyncSession,
    ctx: TenantContext,
    time_range: TimeRange | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
    tz: str = "UTC",
) -> TenantSummary:
    window = await _window(session, ctx, None, time_range, start_date, end_date, tz)
    totals = await _totals(session, ctx, None, window)
    senders, active = await repository.top_senders(session, ctx, window.start, window.end, TOP)
    return TenantSummary(
        **totals,
        active_users=active,
        total_users=await repository.count_users(session, ctx),
        top_senders=[SenderCount(user_id=row.user_id, total=row.total, failed=row.failed) for row in senders],
    )


def by_day_csv(days: list[DayCount]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("date", "total", "successful", "failed"))
    writer.writerows((day.date.isoformat(), day.total, day.successful, day.failed) for day in days)
    return out.getvalue()
