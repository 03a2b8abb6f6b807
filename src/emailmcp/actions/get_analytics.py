from pydantic import BaseModel, ConfigDict, Field

from emailmcp.actions.base import Action, ActionContext
from emailmcp.reports import service as reports
from emailmcp.reports.schemas import TimeRange
from emailmcp.tenancy.schemas import Scope


class AnalyticsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time_range: TimeRange = Field(default=TimeRange.last_30_days, description="A window ending now, in whole days.")
    start_date: str | None = Field(
        default=None, max_length=64, description="Instead of time_range: an ISO 8601 date or datetime to start at."
    )
    end_date: str | None = Field(default=None, max_length=64, description="With start_date: the last date (inclusive).")


def window(params: AnalyticsParams) -> tuple[TimeRange | None, str | None, str | None]:
    """The report window: explicit dates win over the range."""
    if params.start_date or params.end_date:
        return None, params.start_date, params.end_date
    return params.time_range, None, None


async def get_analytics(ctx: ActionContext, params: AnalyticsParams) -> dict:
    report = await reports.user_report(ctx.session, ctx.tenant, ctx.user_id, *window(params))
    return report.model_dump(mode="json")


ACTION = Action(
    name="get_analytics",
    description="The user's delivery analytics for a time window: total_emails, successful, failed, pending, "
    "success_rate, by_day, top_recipients and the most recent messages.",
    parameters=AnalyticsParams,
    scope=Scope.mail,
    side_effects=False,
    handler=get_analytics,
)
