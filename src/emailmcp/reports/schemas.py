from datetime import date, datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from emailmcp.mail.schemas import MessageStatus


class TimeRange(StrEnum):
    today = "today"
    last_7_days = "last_7_days"
    last_30_days = "last_30_days"
    last_90_days = "last_90_days"
    all_time = "all_time"


class DayCount(BaseModel):
    date: date
    total: int
    successful: int
    failed: int


class RecipientCount(BaseModel):
    email: str
    count: int


class RecentEmail(BaseModel):
    id: str
    to: list[str]
    subject: str
    status: MessageStatus
    transport: str
    created_at: datetime
    sent_at: datetime | None
    error: str | None


class SenderCount(BaseModel):
    user_id: str
    total: int
    failed: int


class Totals(BaseModel):
    time_range: TimeRange | None = Field(description="Null when the window was given as start_date/end_date.")
    start: datetime = Field(description="The window's first instant (inclusive).")
    end: datetime = Field(description="The window's end (exclusive).")
    tz: str
    total_emails: int
    successful: int = Field(description="Messages with status sent.")
    failed: int
    pending: int = Field(description="Messages scheduled, queued or being sent.")
    cancelled: int
    success_rate: float = Field(description="successful / (successful + failed); 0 when both are 0.")
    by_day: list[DayCount] = Field(description="Every local day of the window in `tz`, zero-filled.")


class UserReport(Totals):
    user_id: str
    top_recipients: list[RecipientCount] = Field(description="to, cc and bcc, lower-cased, the 10 most frequent.")
    by_transport: dict[str, int]
    recent_emails: list[RecentEmail] = Field(description="The window's newest messages, newest first.")


class TenantSummary(Totals):
    active_users: int = Field(description="Users with at least one message in the window.")
    total_users: int
    top_senders: list[SenderCount] = Field(description="The 10 users with the most messages in the window.")
