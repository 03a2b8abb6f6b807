from html import escape
from typing import Annotated

from pydantic import ConfigDict, Field

from emailmcp.actions.base import Action, ActionContext
from emailmcp.actions.get_analytics import AnalyticsParams, window
from emailmcp.mail.schemas import Address, MessageContent
from emailmcp.reports import service as reports
from emailmcp.reports.schemas import UserReport
from emailmcp.tenancy.schemas import Scope


class SendReportParams(AnalyticsParams):
    model_config = ConfigDict(extra="forbid")

    to: Annotated[list[Address], Field(min_length=1, description="Who receives the report.")]
    cc: list[Address] = []


def _period(report: UserReport) -> str:
    if report.time_range is not None:
        return report.time_range.value.replace("_", " ")
    return f"{report.start.date().isoformat()} to {report.end.date().isoformat()}"


def _figures(report: UserReport) -> list[tuple[str, str]]:
    return [
        ("Emails", str(report.total_emails)),
        ("Delivered", str(report.successful)),
        ("Failed", str(report.failed)),
        ("Pending", str(report.pending)),
        ("Cancelled", str(report.cancelled)),
        ("Success rate", f"{report.success_rate:.1%}"),
    ]


def report_email(report: UserReport) -> tuple[str, str, str]:
    """Subject, plain text and HTML of a readable summary of the report."""
    period = _period(report)
    subject = f"Email report for {report.user_id}: {period}"
    figures = _figures(report)
    recipients = report.top_recipients[:5]
    text = [f"Email report for {report.user_id}, {period} ({report.tz}).", ""]
    text += [f"{name}: {value}" for name, value in figures]
    if recipients:
        text += ["", "Top recipients:"] + [f"  {r.email}: {r.count}" for r in recipients]
    rows = "".join(f"<tr><th scope='row'>{escape(n)}</th><td>{escape(v)}</td></tr>" for n, v in figures)
    html = (
        f"<h1>Email report for {escape(report.user_id)}</h1><p>{escape(period)} ({escape(report.tz)})</p>"
        f"<table>{rows}</table>"
    )
    if recipients:
        items = "".join(f"<li>{escape(r.email)}: {r.count}</li>" for r in recipients)
        html += f"<h2>Top recipients</h2><ul>{items}</ul>"
    return subject, "\n".join(text) + "\n", html


async def send_report(ctx: ActionContext, params: SendReportParams) -> dict:
    report = await reports.user_report(ctx.session, ctx.tenant, ctx.user_id, *window(params))
    subject, text, html = report_email(report)
    content = MessageContent(to=params.to, cc=params.cc, subject=subject, body=html, body_type="html", text_body=text)
    outbox = ctx.runtime.outbox
    if ctx.dry_run:
        return {"dry_run": True, **(await outbox.preview(ctx.tenant, ctx.user_id, content)).model_dump()}
    accepted = await outbox.enqueue(ctx.tenant, ctx.user_id, content, ctx.entry_point)
    return {
        "report": report.model_dump(mode="json", exclude={"recent_emails", "by_day"}),
        "message": accepted.message.model_dump(mode="json"),
    }


ACTION = Action(
    name="send_report",
    description="Email a readable summary of the user's analytics for a time window (text and HTML) to the "
    "recipients, from the user's own mailbox.",
    parameters=SendReportParams,
    scope=Scope.mail,
    side_effects=True,
    handler=send_report,
)
