"""The offline "rules" planner, in process: the shared dev set, held-out prompts, and properties on any input.

The held-out prompts were written for this planner's tests, apart from the dev set, to cover each action in many
phrasings (verbs, word orders, punctuation, quoting, cc/bcc positions, time ranges, statuses, limits in digits
and words) and requests no action covers. Each gives the expected action and the parameters that must hold,
with the meanings of ../shared/eval/score.py.
"""

import importlib.util
import json
from pathlib import Path

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emailmcp.actions.registry import ACTIONS
from emailmcp.llm.rules import RulesPlan, plan_prompt

SCORE = Path(__file__).resolve().parents[2] / "shared" / "eval" / "score.py"
# The planner's steps carry exactly the parameters of the registry's actions.
PARAMETERS = {name: set(action.parameters.model_fields) for name, action in ACTIONS.items()}
REQUIRED = {"send_email": {"to", "body"}, "send_report": {"to"}, "get_message": {"message_id"}}
TIME_RANGES = {"today", "last_7_days", "last_30_days", "last_90_days", "all_time"}
STATUSES = {"scheduled", "queued", "sending", "sent", "failed", "cancelled", "pending", None}


def answer(plan: RulesPlan) -> dict:
    """The plan as POST /llm/inference returns it: the first step is the action."""
    steps = plan.steps
    return {
        "action": steps[0].action if steps else None,
        "parameters": steps[0].parameters if steps else {},
        "missing": steps[0].missing if steps else [],
        "plan": [{"action": s.action, "parameters": s.parameters, "missing": s.missing} for s in steps],
    }


def mismatch(got: dict, action: str | None, expect: dict) -> str | None:
    """Why an answer fails its expectation, with score.py's meanings; None when it holds."""
    if got["action"] != action:
        return f"action {got['action']!r} != {action!r}"
    params, missing = got["parameters"], set(got["missing"])
    named = {a.lower() for field in ("to", "cc", "bcc") for a in expect.get(field, [])}
    for param in ("subject", "body"):
        text = str(params.get(param) or "").lower()
        if any(word in text for word in named | {"subject:", "body:"}):
            return f"{param} {params.get(param)!r} holds an address or a field label"
    if "to" in expect:
        for field in ("to", "cc", "bcc"):
            if {a.lower() for a in params.get(field) or []} != {a.lower() for a in expect.get(field, [])}:
                return f"{field} {params.get(field)!r} != {expect.get(field, [])!r}"
    for field, param in (("subject_has", "subject"), ("body_has", "body")):
        if field in expect and expect[field].lower() not in str(params.get(param) or "").lower():
            return f"{param} {params.get(param)!r} lacks {expect[field]!r}"
    for field in ("time_range", "status", "limit"):
        if field in expect and params.get(field) != expect[field]:
            return f"{field} {params.get(field)!r} != {expect[field]!r}"
    if not set(expect.get("missing", [])) <= missing or ("missing" not in expect and missing):
        return f"missing {sorted(missing)} != {expect.get('missing', [])}"
    if "plan" in expect and [step["action"] for step in got["plan"]] != expect["plan"]:
        return f"plan {[step['action'] for step in got['plan']]} != {expect['plan']}"
    return None


@pytest.mark.skipif(not SCORE.exists(), reason="../shared/eval is not beside this clone")
def test_the_dev_set_passes_the_scorer():
    spec = importlib.util.spec_from_file_location("score", SCORE)
    score = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(score)
    lines = SCORE.with_name("prompts_dev.jsonl").read_text(encoding="utf-8").splitlines()
    cases = [json.loads(line) for line in lines if line.strip()]
    failures = [
        (case["prompt"], why) for case in cases if (why := score.check(case, answer(plan_prompt(case["prompt"]))))
    ]
    assert failures == []


HELD_OUT = [
    (
        "Could you please send an email to sam@example.com telling him the meeting is moved to 3pm?",
        "send_email",
        {"to": ["sam@example.com"], "body_has": "meeting is moved to 3pm"},
    ),
    (
        "Shoot a quick note over to Priya@Example.org that the invoice has been paid",
        "send_email",
        {"to": ["priya@example.org"], "body_has": "invoice has been paid"},
    ),
    (
        "email ops@example.com re: server maintenance tonight",
        "send_email",
        {"to": ["ops@example.com"], "subject_has": "server maintenance"},
    ),
    (
        "Tell kim@example.com and lee@example.com that lunch is on me today",
        "send_email",
        {"to": ["kim@example.com", "lee@example.com"], "body_has": "lunch is on me today"},
    ),
    (
        "Send a message to a@example.com, b@example.com, and c@example.com saying the build is green",
        "send_email",
        {"to": ["a@example.com", "b@example.com", "c@example.com"], "body_has": "build is green"},
    ),
    (
        'Draft an email to hr@example.com with the subject "Vacation request" '
        'and the body "I\'d like to take Friday off."',
        "send_email",
        {"to": ["hr@example.com"], "subject_has": "Vacation request", "body_has": "take Friday off"},
    ),
    (
        "Email bob@example.com subject: Lunch? body: Are you free at noon?",
        "send_email",
        {"to": ["bob@example.com"], "subject_has": "Lunch", "body_has": "free at noon"},
    ),
    (
        "Please write to support@example.net regarding my refund",
        "send_email",
        {"to": ["support@example.net"], "body_has": "refund"},
    ),
    (
        "Can you let mia@example.com know the report is ready?",
        "send_email",
        {"to": ["mia@example.com"], "body_has": "report is ready"},
    ),
    (
        "Notify team@example.com that the deploy finished successfully",
        "send_email",
        {"to": ["team@example.com"], "body_has": "deploy finished successfully"},
    ),
    (
        "Send an email to boss@example.com and cc assistant@example.com saying I'll be late tomorrow",
        "send_email",
        {"to": ["boss@example.com"], "cc": ["assistant@example.com"], "body_has": "late tomorrow"},
    ),
    (
        "email dev@example.com, bcc audit@example.com: the release is tagged",
        "send_email",
        {"to": ["dev@example.com"], "bcc": ["audit@example.com"], "body_has": "release is tagged"},
    ),
    (
        "Send ‘Happy birthday!’ to grandma@example.com",
        "send_email",
        {"to": ["grandma@example.com"], "body_has": "Happy birthday"},
    ),
    (
        "Send “The contract is signed” to legal@example.com and copy ceo@example.com",
        "send_email",
        {"to": ["legal@example.com"], "cc": ["ceo@example.com"], "body_has": "contract is signed"},
    ),
    (
        "I need to email jane.doe@example.co.uk about the quarterly budget review",
        "send_email",
        {"to": ["jane.doe@example.co.uk"], "body_has": "budget review"},
    ),
    (
        "Remind carl@example.com to submit his timesheet",
        "send_email",
        {"to": ["carl@example.com"], "body_has": "submit his timesheet"},
    ),
    (
        "Ask nina@example.com whether she can join the call on Thursday",
        "send_email",
        {"to": ["nina@example.com"], "body_has": "join the call on Thursday"},
    ),
    (
        "Send a note to pat@example.com: don't forget the keys",
        "send_email",
        {"to": ["pat@example.com"], "body_has": "forget the keys"},
    ),
    (
        "SEND AN EMAIL TO OPS@EXAMPLE.COM SAYING THE DISK IS FULL",
        "send_email",
        {"to": ["ops@example.com"], "body_has": "disk is full"},
    ),
    (
        "send email to   tom@example.com    saying   see you soon",
        "send_email",
        {"to": ["tom@example.com"], "body_has": "see you soon"},
    ),
    (
        "Email zoë@example.com? no wait, email zoe@example.com saying ça va bien",
        "send_email",
        {"to": ["zoe@example.com"], "body_has": "ça va bien"},
    ),
    ("Mail jürgen@example.de: Die Lieferung kommt morgen.", "send_email", {"missing": ["to"]}),
    (
        "Schreib an anna@example.de: Das Meeting fällt aus",
        "send_email",
        {"to": ["anna@example.de"], "body_has": "Meeting fällt aus"},
    ),
    ("Send an email to the marketing team about the new logo", "send_email", {"missing": ["to"]}),
    ("Email my landlord saying the heating is broken", "send_email", {"missing": ["to"]}),
    ("Send an email to john@localhost saying hi", "send_email", {"missing": ["to"]}),
    ("Write an email to user@@example.com saying test", "send_email", {"missing": ["to"]}),
    ("send an email to amy@example.com", "send_email", {"to": ["amy@example.com"], "missing": ["body"]}),
    ("Compose a new email for ray@example.com", "send_email", {"to": ["ray@example.com"], "missing": ["body"]}),
    ("Send an email", "send_email", {"missing": ["to", "body"]}),
    (
        "Reply to vendor@example.com saying we accept the quote",
        "send_email",
        {"to": ["vendor@example.com"], "body_has": "we accept the quote"},
    ),
    (
        "Forward this to anne@example.com: the wifi password changed",
        "send_email",
        {"to": ["anne@example.com"], "body_has": "wifi password changed"},
    ),
    (
        "email a@example.com and b@example.org with subject Offsite and body We meet at 9 in the lobby",
        "send_email",
        {"to": ["a@example.com", "b@example.org"], "subject_has": "Offsite", "body_has": "meet at 9 in the lobby"},
    ),
    (
        'Send an email titled "Q3 plan" to pm@example.com saying the draft is attached in the wiki',
        "send_email",
        {"to": ["pm@example.com"], "subject_has": "Q3 plan", "body_has": "draft is attached"},
    ),
    (
        "To: x@example.com\nSubject: Hello\nBody: Just checking in.",
        "send_email",
        {"to": ["x@example.com"], "subject_has": "Hello", "body_has": "checking in"},
    ),
    (
        "Email kate@example.com with cc: lou@example.com and bcc: max@example.com, subject Party, body Bring snacks!",
        "send_email",
        {
            "to": ["kate@example.com"],
            "cc": ["lou@example.com"],
            "bcc": ["max@example.com"],
            "subject_has": "Party",
            "body_has": "Bring snacks",
        },
    ),
    (
        "message fred@example.com that the car is ready for pickup",
        "send_email",
        {"to": ["fred@example.com"], "body_has": "car is ready for pickup"},
    ),
    (
        "drop an email to hello@example.io letting them know we received the parcel",
        "send_email",
        {"to": ["hello@example.io"], "body_has": "received the parcel"},
    ),
    (
        "Please send the following to dora@example.com: Thanks for the lovely dinner!",
        "send_email",
        {"to": ["dora@example.com"], "body_has": "lovely dinner"},
    ),
    (
        "Can you send sue@example.com a reminder about tomorrow's dentist appointment?",
        "send_email",
        {"to": ["sue@example.com"], "body_has": "dentist appointment"},
    ),
    (
        "Send a thank-you email to coach@example.com for the great season",
        "send_email",
        {"to": ["coach@example.com"], "body_has": "great season"},
    ),
    (
        "Tell dan@example.com: the server is back up.",
        "send_email",
        {"to": ["dan@example.com"], "body_has": "server is back up"},
    ),
    ("send a mail to li@example.cn saying 明天见", "send_email", {"to": ["li@example.cn"], "body_has": "明天见"}),
    (
        "Email carla@example.com the agenda for Monday is posted",
        "send_email",
        {"to": ["carla@example.com"], "body_has": "agenda for Monday is posted"},
    ),
    (
        "email eve@example.com — running 10 minutes late",
        "send_email",
        {"to": ["eve@example.com"], "body_has": "running 10 minutes late"},
    ),
    (
        "Send an email to ian@example.com, cc jo@example.com and kai@example.com, about the hiring plan",
        "send_email",
        {"to": ["ian@example.com"], "cc": ["jo@example.com", "kai@example.com"], "body_has": "hiring plan"},
    ),
    (
        "Please tell rita@example.com that 5 emails failed last night",
        "send_email",
        {"to": ["rita@example.com"], "body_has": "5 emails failed"},
    ),
    (
        "Email the stats summary link to nobody — actually, email ana@example.com that our stats look great",
        "send_email",
        {"to": ["ana@example.com"], "body_has": "stats look great"},
    ),
    (
        "Send my weekly report to boss@example.com",
        "send_report",
        {"to": ["boss@example.com"], "time_range": "last_7_days"},
    ),
    (
        "Email the monthly analytics to cfo@example.com and cc controller@example.com",
        "send_report",
        {"to": ["cfo@example.com"], "cc": ["controller@example.com"], "time_range": "last_30_days"},
    ),
    (
        "Share my email statistics for today with lead@example.com",
        "send_report",
        {"to": ["lead@example.com"], "time_range": "today"},
    ),
    (
        "Forward my lifetime sending stats to me@example.com",
        "send_report",
        {"to": ["me@example.com"], "time_range": "all_time"},
    ),
    (
        "send analytics for the past quarter to board@example.com",
        "send_report",
        {"to": ["board@example.com"], "time_range": "last_90_days"},
    ),
    (
        "Please email a report of this week's deliveries to ops@example.com",
        "send_report",
        {"to": ["ops@example.com"], "time_range": "last_7_days"},
    ),
    (
        "Email my stats to my manager",
        "get_analytics",
        {"time_range": "last_30_days", "plan": ["get_analytics", "send_report"]},
    ),
    (
        "Send me the weekly analytics",
        "get_analytics",
        {"time_range": "last_7_days", "plan": ["get_analytics", "send_report"]},
    ),
    (
        "Mail the quarterly email report to the board",
        "get_analytics",
        {"time_range": "last_90_days", "plan": ["get_analytics", "send_report"]},
    ),
    (
        "Send a summary of my emails from the last 7 days to my team",
        "get_analytics",
        {"time_range": "last_7_days", "plan": ["get_analytics", "send_report"]},
    ),
    ("How many emails have I sent this week?", "get_analytics", {"time_range": "last_7_days"}),
    ("what's my delivery rate for the past 30 days", "get_analytics", {"time_range": "last_30_days"}),
    ("How many messages bounced yesterday?", "get_analytics", {"time_range": "last_7_days"}),
    ("Give me my email stats for the last two weeks", "get_analytics", {"time_range": "last_30_days"}),
    ("Show analytics for all time", "get_analytics", {"time_range": "all_time"}),
    ("How many emails have I ever sent?", "get_analytics", {"time_range": "all_time"}),
    ("Monthly sending statistics please", "get_analytics", {"time_range": "last_30_days"}),
    ("What percentage of my emails failed in the last 90 days?", "get_analytics", {"time_range": "last_90_days"}),
    ("How did my emails perform today?", "get_analytics", {"time_range": "today"}),
    ("Count of sent messages over the last seven days", "get_analytics", {"time_range": "last_7_days"}),
    ("Quarterly deliverability overview", "get_analytics", {"time_range": "last_90_days"}),
    ("STATS FOR TODAY", "get_analytics", {"time_range": "today"}),
    ("email stats", "get_analytics", {"time_range": "last_30_days"}),
    ("How are my emails doing this month?", "get_analytics", {"time_range": "last_30_days"}),
    ("Total number of emails sent in the past 24 hours", "get_analytics", {"time_range": "today"}),
    ("Can you show me my sending report for the past 3 months?", "get_analytics", {"time_range": "last_90_days"}),
    ("Is my Gmail still linked?", "check_status", {}),
    ("Am I connected?", "check_status", {}),
    ("Check if the email service is up", "check_status", {}),
    ("Do I need to reconnect my Google account?", "check_status", {}),
    ("Is everything OK with my mailbox connection?", "check_status", {}),
    ("service status", "check_status", {}),
    ("Is the API healthy?", "check_status", {}),
    ("Has my Gmail authorization expired?", "check_status", {}),
    ("Why can't I send? Is my account disconnected?", "check_status", {}),
    ("Show me my emails", "list_messages", {}),
    ("What did I send recently?", "list_messages", {}),
    ("List the last five messages", "list_messages", {"limit": 5}),
    ("Show failed emails", "list_messages", {"status": "failed"}),
    ("Which messages bounced?", "list_messages", {"status": "failed"}),
    ("list my scheduled emails", "list_messages", {"status": "scheduled"}),
    ("Show cancelled messages", "list_messages", {"status": "cancelled"}),
    ("Which emails were canceled?", "list_messages", {"status": "cancelled"}),
    ("What's still pending?", "list_messages", {"status": "pending"}),
    ("Show me 20 sent emails", "list_messages", {"limit": 20, "status": "sent"}),
    ("Show the 3 most recent failed messages", "list_messages", {"limit": 3, "status": "failed"}),
    ("Which of my emails are waiting to go out?", "list_messages", {"status": "queued"}),
    ("Show emails that are currently being sent", "list_messages", {"status": "sending"}),
    ("list the last twenty-five emails", "list_messages", {"limit": 25}),
    ("Show my last 1000 emails", "list_messages", {"limit": 200}),
    ("What was the last email I sent?", "list_messages", {"limit": 1}),
    ("Any emails stuck in the queue?", "list_messages", {"status": "queued"}),
    ("Check my recent messages", "list_messages", {}),
    ("Show me the ten latest delivered emails", "list_messages", {"limit": 10, "status": "sent"}),
    ("my emails", "list_messages", {}),
    ("What happened to msg_019a7f3c2b1de4f5a6b7c8d9?", "get_message", {}),
    ("status of message msg_0123456789abcdef01234567", "get_message", {}),
    ("Was msg_aaaaaaaaaaaabbbbbbbbbbbb delivered?", "get_message", {}),
    ("msg_019a7f3c2b1de4f5a6b7c8d9", "get_message", {}),
    ("Look up MSG_019A7F3C2B1DE4F5A6B7C8D9 for me", "get_message", {}),
    ("Did message msg_00000000000000000000abcd go out?", "get_message", {}),
    ("Hello!", None, {}),
    ("Good morning", None, {}),
    ("thanks a lot", None, {}),
    ("What can you do?", None, {}),
    ("help", None, {}),
    ("What's the weather in Paris?", None, {}),
    ("Text my brother that I'm on my way", None, {}),
    ("Send an SMS to +1 555 0100 saying hi", None, {}),
    ("Delete all my sent emails", None, {}),
    ("Archive the failed messages", None, {}),
    ("Read my inbox", None, {}),
    ("Do I have any unread emails?", None, {}),
    ("Write a poem about the sea", None, {}),
    ("Who invented email?", None, {}),
    ("Cancel msg_019a7f3c2b1de4f5a6b7c8d9", None, {}),
    ("Book a table for two at 8", None, {}),
    ("", None, {}),
    ("   ", None, {}),
    ("Translate 'good night' into Spanish", None, {}),
    ("Mark all messages as read", None, {}),
    ("Please remove the newsletter emails from my mailbox", None, {}),
    ("Call 555-0100", None, {}),
    (
        "yo send bob@example.com an email saying the pizza's here",
        "send_email",
        {"to": ["bob@example.com"], "body_has": "pizza's here"},
    ),
    (
        "pls email marketing@example.com abt the launch date",
        "send_email",
        {"to": ["marketing@example.com"], "body_has": "launch date"},
    ),
    (
        "I want to send an email to Hannah@Example.COM that says welcome aboard",
        "send_email",
        {"to": ["hannah@example.com"], "body_has": "welcome aboard"},
    ),
    (
        "Could you write an email to accounts@example.com with the subject line Invoice 4471 overdue "
        "and tell them payment is 30 days late",
        "send_email",
        {"to": ["accounts@example.com"], "subject_has": "Invoice 4471 overdue", "body_has": "payment is 30 days late"},
    ),
    (
        "Send a quick email to x@example.com, y@example.com & z@example.com: standup is cancelled",
        "send_email",
        {"to": ["x@example.com", "y@example.com", "z@example.com"], "body_has": "standup is cancelled"},
    ),
    (
        "Email <alice@example.com> saying the doc is shared",
        "send_email",
        {"to": ["alice@example.com"], "body_has": "doc is shared"},
    ),
    (
        "Send an email to alice@example.com; cc: bob@example.com; subject: Sync; body: Moving our sync to 2pm.",
        "send_email",
        {
            "to": ["alice@example.com"],
            "cc": ["bob@example.com"],
            "subject_has": "Sync",
            "body_has": "Moving our sync to 2pm",
        },
    ),
    (
        "email joe@example.com telling him to bring the projector",
        "send_email",
        {"to": ["joe@example.com"], "body_has": "bring the projector"},
    ),
    (
        "Please send an email to the whole team at team@example.com announcing that Friday is a holiday",
        "send_email",
        {"to": ["team@example.com"], "body_has": "Friday is a holiday"},
    ),
    (
        "Send an email from me to clara@example.com saying I'll call tonight",
        "send_email",
        {"to": ["clara@example.com"], "body_has": "call tonight"},
    ),
    (
        "Send mail: to=ops@example.com subject=Disk body=Disk at 90%",
        "send_email",
        {"to": ["ops@example.com"], "subject_has": "Disk", "body_has": "Disk at 90%"},
    ),
    (
        "Email paul@example.com and copy in rachel@example.com about the offsite budget",
        "send_email",
        {"to": ["paul@example.com"], "cc": ["rachel@example.com"], "body_has": "offsite budget"},
    ),
    (
        "send an email to tim@example.com bcc'ing boss@example.com saying the quote is approved",
        "send_email",
        {"to": ["tim@example.com"], "bcc": ["boss@example.com"], "body_has": "quote is approved"},
    ),
    (
        "Send an email to ana@example.com with a blind copy to audit@example.com: expenses submitted",
        "send_email",
        {"to": ["ana@example.com"], "bcc": ["audit@example.com"], "body_has": "expenses submitted"},
    ),
    (
        "Please send an email to kim@example.com, copying lee@example.com and bcc'ing max@example.com, "
        "that the lease is signed",
        "send_email",
        {
            "to": ["kim@example.com"],
            "cc": ["lee@example.com"],
            "bcc": ["max@example.com"],
            "body_has": "lease is signed",
        },
    ),
    (
        "Let the client (client@example.com) know the shipment is delayed by two days",
        "send_email",
        {"to": ["client@example.com"], "body_has": "shipment is delayed by two days"},
    ),
    (
        "Send an email to mike@example.com. The message should say: the lab is closed tomorrow",
        "send_email",
        {"to": ["mike@example.com"], "body_has": "lab is closed tomorrow"},
    ),
    (
        "Email sara@example.com asking for the signed contract",
        "send_email",
        {"to": ["sara@example.com"], "body_has": "signed contract"},
    ),
    (
        "send sales@example.com a note regarding the Q2 pipeline",
        "send_email",
        {"to": ["sales@example.com"], "body_has": "Q2 pipeline"},
    ),
    (
        "Email info@example.com to request a product demo",
        "send_email",
        {"to": ["info@example.com"], "body_has": "request a product demo"},
    ),
    (
        "Invite guests@example.com to the launch party on Friday at 6",
        "send_email",
        {"to": ["guests@example.com"], "body_has": "launch party on Friday"},
    ),
    ("Thank mentor@example.com for the advice", "send_email", {"to": ["mentor@example.com"], "body_has": "advice"}),
    (
        "Write an email to recruiter@example.com: I accept the offer!",
        "send_email",
        {"to": ["recruiter@example.com"], "body_has": "accept the offer"},
    ),
    (
        'email to=dev@example.com "Build 1432 is broken"',
        "send_email",
        {"to": ["dev@example.com"], "body_has": "Build 1432 is broken"},
    ),
    (
        "Send the text 'Meeting at noon' to a@example.com",
        "send_email",
        {"to": ["a@example.com"], "body_has": "Meeting at noon"},
    ),
    (
        "Send a@example.com the following message: the gate code changed to 1234",
        "send_email",
        {"to": ["a@example.com"], "body_has": "gate code changed to 1234"},
    ),
    (
        "Email b@example.com about: parking permits",
        "send_email",
        {"to": ["b@example.com"], "body_has": "parking permits"},
    ),
    ("Email Bob about the party", "send_email", {"missing": ["to"]}),
    ("Tell my sister that I'll be home late", "send_email", {"missing": ["to"]}),
    ("Send an email to jane at example dot com saying hi", "send_email", {"missing": ["to"]}),
    ("Email support@ saying the app crashed", "send_email", {"missing": ["to"]}),
    ("Write to carl@example.com", "send_email", {"to": ["carl@example.com"], "missing": ["body"]}),
    (
        "Send an email to nora@example.com and lars@example.com",
        "send_email",
        {"to": ["nora@example.com", "lars@example.com"], "missing": ["body"]},
    ),
    ("email tina@example.com subject: Q4 goals", "send_email", {"to": ["tina@example.com"], "missing": ["body"]}),
    (
        'Send this to rob@example.com: "Can we push the call to Monday?" Subject: Call',
        "send_email",
        {"to": ["rob@example.com"], "subject_has": "Call", "body_has": "push the call to Monday"},
    ),
    (
        "Email ops@example.com that the weekly report job failed",
        "send_email",
        {"to": ["ops@example.com"], "body_has": "weekly report job failed"},
    ),
    (
        "Tell finance@example.com our email stats for March look great",
        "send_email",
        {"to": ["finance@example.com"], "body_has": "look great"},
    ),
    (
        "Send the monthly email report to ceo@example.com, cc cto@example.com",
        "send_report",
        {"to": ["ceo@example.com"], "cc": ["cto@example.com"], "time_range": "last_30_days"},
    ),
    (
        "Email my analytics to analyst@example.com",
        "send_report",
        {"to": ["analyst@example.com"], "time_range": "last_30_days"},
    ),
    ("Can you send today's stats to me@example.org?", "send_report", {"to": ["me@example.org"], "time_range": "today"}),
    (
        "send 90 day analytics to growth@example.com",
        "send_report",
        {"to": ["growth@example.com"], "time_range": "last_90_days"},
    ),
    (
        "Send an analytics report covering the past week to pm@example.com and qa@example.com",
        "send_report",
        {"to": ["pm@example.com", "qa@example.com"], "time_range": "last_7_days"},
    ),
    (
        "Mail the all-time stats to founder@example.com",
        "send_report",
        {"to": ["founder@example.com"], "time_range": "all_time"},
    ),
    (
        "Email the figures for this month to board@example.com",
        "send_report",
        {"to": ["board@example.com"], "time_range": "last_30_days"},
    ),
    (
        "Send my deliverability numbers to coach",
        "get_analytics",
        {"time_range": "last_30_days", "plan": ["get_analytics", "send_report"]},
    ),
    (
        "Email the team a report of this week's emails",
        "get_analytics",
        {"time_range": "last_7_days", "plan": ["get_analytics", "send_report"]},
    ),
    (
        "Send a stats report for today",
        "get_analytics",
        {"time_range": "today", "plan": ["get_analytics", "send_report"]},
    ),
    (
        "send my lifetime analytics by email",
        "get_analytics",
        {"time_range": "all_time", "plan": ["get_analytics", "send_report"]},
    ),
    ("how many mails went out this week", "get_analytics", {"time_range": "last_7_days"}),
    ("what's the bounce rate lately?", "get_analytics", {"time_range": "last_30_days"}),
    ("Number of failed sends in the past 3 days", "get_analytics", {"time_range": "last_7_days"}),
    ("give me numbers for the last quarter", "get_analytics", {"time_range": "last_90_days"}),
    ("Analytics, past 90 days", "get_analytics", {"time_range": "last_90_days"}),
    ("How many emails did we send in total?", "get_analytics", {"time_range": "all_time"}),
    ("Daily email stats", "get_analytics", {"time_range": "today"}),
    ("How is deliverability this week compared to normal?", "get_analytics", {"time_range": "last_7_days"}),
    ("What was my success rate over the last month?", "get_analytics", {"time_range": "last_30_days"}),
    ("Show me this quarter's email metrics", "get_analytics", {"time_range": "last_90_days"}),
    ("How many emails are scheduled right now?", "get_analytics", {}),
    ("What's my sending volume since the beginning?", "get_analytics", {"time_range": "all_time"}),
    (
        "Give me a breakdown of delivered vs failed emails for the last 30 days",
        "get_analytics",
        {"time_range": "last_30_days"},
    ),
    ("is gmail connected", "check_status", {}),
    ("Is my mailbox set up correctly?", "check_status", {}),
    ("Are you up?", "check_status", {}),
    ("Check connection", "check_status", {}),
    ("My Google login expired, do I need to sign in again?", "check_status", {}),
    ("Is the email server down?", "check_status", {}),
    ("Health check please", "check_status", {}),
    ("Can I still send email or do I have to re-authorize?", "check_status", {}),
    ("What's the status of the service?", "check_status", {}),
    ("show me the queue", "list_messages", {"status": "queued"}),
    ("Which messages are scheduled for later?", "list_messages", {"status": "scheduled"}),
    ("list 50 messages", "list_messages", {"limit": 50}),
    ("Show me the last three emails I sent", "list_messages", {"limit": 3}),
    ("Did any of my emails fail?", "list_messages", {"status": "failed"}),
    ("List undelivered messages", "list_messages", {"status": "failed"}),
    ("Recent emails please", "list_messages", {}),
    ("Show my 7 latest messages that bounced", "list_messages", {"limit": 7, "status": "failed"}),
    ("What emails went out today?", "list_messages", {"status": "sent"}),
    ("Show the pending ones", "list_messages", {"status": "pending"}),
    ("Which emails haven't been sent yet?", "list_messages", {"status": "pending"}),
    ("List my cancelled emails, max 5", "list_messages", {"limit": 5, "status": "cancelled"}),
    ("check my mail", "list_messages", {}),
    ("Show messages with status failed", "list_messages", {"status": "failed"}),
    ("Find emails that were successfully delivered", "list_messages", {"status": "sent"}),
    ("show a dozen recent messages", "list_messages", {"limit": 12}),
    ("Where is my message msg_019a7f3c2b1de4f5a6b7c8d9?", "get_message", {}),
    ("Check msg_0f0f0f0f0f0f0f0f0f0f0f0f", "get_message", {}),
    ("Did msg_019a7f3c2b1de4f5a6b7c8d9 fail?", "get_message", {}),
    ("Give me details on message id msg_123456789012345678901234", "get_message", {}),
    ("Hey", None, {}),
    ("Good night!", None, {}),
    ("Who are you?", None, {}),
    ("How do I send an email?", None, {}),
    ("What is SPF?", None, {}),
    ("Whatsapp my friend the address", None, {}),
    ("Send a text message to mom saying I landed", None, {}),
    ("Trash all the failed emails", None, {}),
    ("Unsubscribe me from newsletters", None, {}),
    ("Clear my outbox", None, {}),
    ("Show me my inbox", None, {}),
    ("Did anyone reply to my last email?", None, {}),
    ("Set an alarm for 7am", None, {}),
    ("lol", None, {}),
    ("🙂", None, {}),
    ("What's 2+2?", None, {}),
    ("Retry all failed emails", None, {}),
    ("Empty the trash", None, {}),
    (
        "Please send an email to the whole team at team@example.com announcing that Friday is a holiday",
        "send_email",
        {"to": ["team@example.com"], "body_has": "Friday is a holiday"},
    ),
    (
        "Let the client (client@example.com) know the shipment is delayed by two days",
        "send_email",
        {"to": ["client@example.com"], "body_has": "shipment is delayed"},
    ),
    (
        "Invite guests@example.com to the launch party on Friday at 6",
        "send_email",
        {"to": ["guests@example.com"], "body_has": "invited to the launch party"},
    ),
    (
        "Send mail: to=ops@example.com subject=Disk body=Disk at 90%",
        "send_email",
        {"to": ["ops@example.com"], "subject_has": "Disk", "body_has": "Disk at 90%"},
    ),
    ("Send the agenda to bob@example.com", "send_email", {"to": ["bob@example.com"], "missing": ["body"]}),
    (
        "Send email to the user about last week's analytics",
        "get_analytics",
        {"time_range": "last_7_days", "plan": ["get_analytics", "send_report"]},
    ),
    (
        "Mail my manager the stats",
        "get_analytics",
        {"time_range": "last_30_days", "plan": ["get_analytics", "send_report"]},
    ),
    (
        "email the report to jon@example.com please, and cc kay@example.com",
        "send_report",
        {"to": ["jon@example.com"], "cc": ["kay@example.com"]},
    ),
    (
        "What's the status of msg_019a7f3c2b1de4f5a6b7c8d9 and msg_0123456789abcdef01234567?",
        "get_message",
        {"plan": ["get_message", "get_message"]},
    ),
    ("status of msg_123", "get_message", {"missing": ["message_id"]}),
    (
        "Show my weekly stats then email them to boss@example.com",
        "get_analytics",
        {"time_range": "last_7_days", "plan": ["get_analytics", "send_report"]},
    ),
    (
        "I'd like my weekly stats sent to a@example.com",
        "send_report",
        {"to": ["a@example.com"], "time_range": "last_7_days"},
    ),
    ("How many emails were sent to a@example.com this week?", "get_analytics", {"time_range": "last_7_days"}),
    ("Send a test email to qa@example.com", "send_email", {"to": ["qa@example.com"], "subject_has": "test"}),
    ("Can you send emails?", None, {}),
    ("Email John", "send_email", {"missing": ["to", "body"]}),
    ("I'm running late. Let a@example.com know.", "send_email", {"to": ["a@example.com"], "body_has": "running late"}),
    (
        "a@example.com — tell her the package arrived",
        "send_email",
        {"to": ["a@example.com"], "body_has": "package arrived"},
    ),
    (
        "Email a@example.com, no wait, email b@example.com saying the demo is at 4",
        "send_email",
        {"to": ["b@example.com"], "body_has": "demo is at 4"},
    ),
    (
        "cc b@example.com on an email to a@example.com saying hi",
        "send_email",
        {"to": ["a@example.com"], "cc": ["b@example.com"], "body_has": "hi"},
    ),
    (
        "Email a@example.com (cc b@example.com) saying hi",
        "send_email",
        {"to": ["a@example.com"], "cc": ["b@example.com"], "body_has": "hi"},
    ),
    (
        "Send an email with body 'Hello' and subject 'Greeting' to a@example.com",
        "send_email",
        {"to": ["a@example.com"], "subject_has": "Greeting", "body_has": "Hello"},
    ),
    (
        "Compose email. To: a@example.com. Subject: Test. Message: Hello world",
        "send_email",
        {"to": ["a@example.com"], "subject_has": "Test", "body_has": "Hello world"},
    ),
    (
        "New email to a@example.com, subject 'Hi', saying hello",
        "send_email",
        {"to": ["a@example.com"], "subject_has": "Hi", "body_has": "hello"},
    ),
    (
        "The server is down, email ops@example.com",
        "send_email",
        {"to": ["ops@example.com"], "body_has": "server is down"},
    ),
    ("Send flowers to mom", None, {}),
    (
        "Hey, could you ping dave@example.com and say the deploy window moved to 11pm?",
        "send_email",
        {"to": ["dave@example.com"], "body_has": "deploy window moved to 11pm"},
    ),
    (
        "Send Laura (laura@example.com) a quick email: the keys are under the mat",
        "send_email",
        {"to": ["laura@example.com"], "body_has": "keys are under the mat"},
    ),
    (
        "Message for ops@example.com: rotate the API keys tonight",
        "send_email",
        {"to": ["ops@example.com"], "body_has": "rotate the API keys"},
    ),
    (
        "Please email chef@example.com to say dinner is for 12 people",
        "send_email",
        {"to": ["chef@example.com"], "body_has": "dinner is for 12 people"},
    ),
    (
        "Email both ann@example.com and ben@example.com letting them know the review is at 4",
        "send_email",
        {"to": ["ann@example.com", "ben@example.com"], "body_has": "review is at 4"},
    ),
    (
        'Write jim@example.com an email with subject "Offer" saying we can do $40k',
        "send_email",
        {"to": ["jim@example.com"], "subject_has": "Offer", "body_has": "we can do $40k"},
    ),
    (
        "email lucy@example.com, cc'ing hr@example.com, to confirm her start date is June 3",
        "send_email",
        {"to": ["lucy@example.com"], "cc": ["hr@example.com"], "body_has": "start date is June 3"},
    ),
    (
        "Send the following email to press@example.com — Subject: Launch; Body: We launch Tuesday.",
        "send_email",
        {"to": ["press@example.com"], "subject_has": "Launch", "body_has": "We launch Tuesday"},
    ),
    (
        "I need an email to go to vendor@example.com saying the PO is approved",
        "send_email",
        {"to": ["vendor@example.com"], "body_has": "PO is approved"},
    ),
    (
        "Notify admin@example.com and security@example.com that the certificate expires in 3 days",
        "send_email",
        {"to": ["admin@example.com", "security@example.com"], "body_has": "certificate expires in 3 days"},
    ),
    (
        "Could you drop nick@example.com a line to say congrats on the promotion",
        "send_email",
        {"to": ["nick@example.com"], "body_has": "congrats on the promotion"},
    ),
    (
        "send an e-mail to Ops <ops@example.com> about the disk alert, copy cto@example.com",
        "send_email",
        {"to": ["ops@example.com"], "cc": ["cto@example.com"], "body_has": "disk alert"},
    ),
    (
        "Email abc@example.com with the message: Your table is booked for 8pm.",
        "send_email",
        {"to": ["abc@example.com"], "body_has": "table is booked"},
    ),
    (
        "Let everyone at all@example.com know that the office closes early today",
        "send_email",
        {"to": ["all@example.com"], "body_has": "office closes early today"},
    ),
    ('Tell x@example.com "we\'re on our way"', "send_email", {"to": ["x@example.com"], "body_has": "on our way"}),
    (
        "Email y@example.com saying thanks, and bcc z@example.com",
        "send_email",
        {"to": ["y@example.com"], "bcc": ["z@example.com"], "body_has": "thanks"},
    ),
    ("Please email the landlord about the broken heater", "send_email", {"missing": ["to"]}),
    ("Write an email to my professor asking for an extension", "send_email", {"missing": ["to"]}),
    ("Send an email to sam@example", "send_email", {"missing": ["to"]}),
    ("email priya@example.com please", "send_email", {"to": ["priya@example.com"], "missing": ["body"]}),
    (
        "Email these stats to kai@example.com: today's numbers",
        "send_report",
        {"to": ["kai@example.com"], "time_range": "today"},
    ),
    (
        "Could you send the analytics report for the last 7 days to pm@example.com?",
        "send_report",
        {"to": ["pm@example.com"], "time_range": "last_7_days"},
    ),
    (
        "Forward our monthly deliverability stats to deliver@example.com",
        "send_report",
        {"to": ["deliver@example.com"], "time_range": "last_30_days"},
    ),
    (
        "email a 90-day report to exec@example.com",
        "send_report",
        {"to": ["exec@example.com"], "time_range": "last_90_days"},
    ),
    (
        "Send my email statistics to the finance team",
        "get_analytics",
        {"time_range": "last_30_days", "plan": ["get_analytics", "send_report"]},
    ),
    (
        "Please email this week's sending report",
        "get_analytics",
        {"time_range": "last_7_days", "plan": ["get_analytics", "send_report"]},
    ),
    (
        "Email someone the lifetime figures",
        "get_analytics",
        {"time_range": "all_time", "plan": ["get_analytics", "send_report"]},
    ),
    ("How many emails bounced this month?", "get_analytics", {"time_range": "last_30_days"}),
    ("What's our delivery success rate for today?", "get_analytics", {"time_range": "today"}),
    ("stats for the last 3 months please", "get_analytics", {"time_range": "last_90_days"}),
    ("Give me the weekly numbers", "get_analytics", {"time_range": "last_7_days"}),
    ("How many messages did we send yesterday?", "get_analytics", {"time_range": "last_7_days"}),
    ("All-time totals please", "get_analytics", {"time_range": "all_time"}),
    ("What's the failure rate over the past fortnight?", "get_analytics", {"time_range": "last_30_days"}),
    ("Report on my email activity for the past 90 days", "get_analytics", {"time_range": "last_90_days"}),
    ("how's my sending going this week", "get_analytics", {"time_range": "last_7_days"}),
    ("Am I still logged in to Gmail?", "check_status", {}),
    ("Is the email integration working?", "check_status", {}),
    ("Check whether my account is connected", "check_status", {}),
    ("Is the service up right now?", "check_status", {}),
    ("Do I need to reauthenticate?", "check_status", {}),
    ("system health", "check_status", {}),
    ("Show me what's in the queue", "list_messages", {"status": "queued"}),
    ("list the 10 most recent emails", "list_messages", {"limit": 10}),
    ("Which of my messages failed to send?", "list_messages", {"status": "failed"}),
    ("show eight recent messages", "list_messages", {"limit": 8}),
    ("What have I sent lately?", "list_messages", {}),
    ("Show me my latest email", "list_messages", {"limit": 1}),
    ("Emails that were cancelled", "list_messages", {"status": "cancelled"}),
    ("Pull up my scheduled messages", "list_messages", {"status": "scheduled"}),
    ("View sent messages", "list_messages", {"status": "sent"}),
    ("Anything still pending?", "list_messages", {"status": "pending"}),
    ("What's the status of msg_0a1b2c3d4e5f60718293a4b5?", "get_message", {}),
    ("Tell me about msg_0a1b2c3d4e5f60718293a4b5", "get_message", {}),
    ("Was my message msg_0a1b2c3d4e5f60718293a4b5 sent?", "get_message", {}),
    ("Good evening!", None, {}),
    ("What is this?", None, {}),
    ("Play some music", None, {}),
    ("Text 555-1234 'running late'", None, {}),
    ("Delete msg_0a1b2c3d4e5f60718293a4b5", None, {}),
    ("Move my emails to the archive folder", None, {}),
    ("Search my inbox for invoices", None, {}),
    ("How do I connect Outlook?", None, {}),
    ("Ok thanks, that's all", None, {}),
    (
        "Kindly shoot an e-mail over to billing@example.com regarding invoice #883",
        "send_email",
        {"to": ["billing@example.com"], "body_has": "invoice #883"},
    ),
    (
        "can u email mo@example.com n tell him im running late",
        "send_email",
        {"to": ["mo@example.com"], "body_has": "running late"},
    ),
    (
        "Send a reply to client@example.com: We've received your request and will respond within 24 hours.",
        "send_email",
        {"to": ["client@example.com"], "body_has": "received your request"},
    ),
    (
        "Email to: dev-team@example.com | subject: Freeze | body: Code freeze starts Friday",
        "send_email",
        {"to": ["dev-team@example.com"], "subject_has": "Freeze", "body_has": "Code freeze starts Friday"},
    ),
    (
        "Please send an email to jo.smith+news@example.co.uk saying welcome to the newsletter",
        "send_email",
        {"to": ["jo.smith+news@example.co.uk"], "body_has": "welcome to the newsletter"},
    ),
    (
        "send an email with the subject 'Hello from Paris' to mom@example.fr and dad@example.fr saying we miss you",
        "send_email",
        {"to": ["mom@example.fr", "dad@example.fr"], "subject_has": "Hello from Paris", "body_has": "we miss you"},
    ),
    (
        "Mail an update to stakeholders@example.com: migration completed with zero downtime",
        "send_email",
        {"to": ["stakeholders@example.com"], "body_has": "migration completed"},
    ),
    (
        "Email kim@example.com and tell her the contract is ready to sign; cc legal@example.com",
        "send_email",
        {"to": ["kim@example.com"], "cc": ["legal@example.com"], "body_has": "contract is ready to sign"},
    ),
    (
        "Ask support@example.com to reset my password",
        "send_email",
        {"to": ["support@example.com"], "body_has": "reset my password"},
    ),
    (
        "Please send a follow-up email to lead@example.com about our call yesterday",
        "send_email",
        {"to": ["lead@example.com"], "body_has": "our call yesterday"},
    ),
    (
        "Email jan@example.com. Tell him the car is fixed.",
        "send_email",
        {"to": ["jan@example.com"], "body_has": "car is fixed"},
    ),
    (
        "Write to HR@EXAMPLE.COM to ask about the parental leave policy",
        "send_email",
        {"to": ["hr@example.com"], "body_has": "parental leave policy"},
    ),
    (
        "email a@example.com b@example.com c@example.com saying lunch is ready",
        "send_email",
        {"to": ["a@example.com", "b@example.com", "c@example.com"], "body_has": "lunch is ready"},
    ),
    ("Send a message to the sales team", "send_email", {"missing": ["to", "body"]}),
    ("Email my accountant the tax docs are ready", "send_email", {"missing": ["to"]}),
    ("Send an email to ceo@example.com", "send_email", {"to": ["ceo@example.com"], "missing": ["body"]}),
    (
        "Share the weekly deliverability report with team@example.com",
        "send_report",
        {"to": ["team@example.com"], "time_range": "last_7_days"},
    ),
    ("Email boss@example.com my stats for today", "send_report", {"to": ["boss@example.com"], "time_range": "today"}),
    (
        "Send an email report of last quarter's analytics to investors@example.com",
        "send_report",
        {"to": ["investors@example.com"], "time_range": "last_90_days"},
    ),
    (
        "Send the analytics to my boss",
        "get_analytics",
        {"time_range": "last_30_days", "plan": ["get_analytics", "send_report"]},
    ),
    (
        "Email a monthly stats summary",
        "get_analytics",
        {"time_range": "last_30_days", "plan": ["get_analytics", "send_report"]},
    ),
    ("What's the total number of emails sent since forever?", "get_analytics", {}),
    ("Tell me how many emails failed this week", "get_analytics", {"time_range": "last_7_days"}),
    ("Email delivery stats, last 7 days", "get_analytics", {"time_range": "last_7_days"}),
    ("How many emails went out in the past six weeks?", "get_analytics", {"time_range": "last_90_days"}),
    ("Can you give me a summary of my email activity today?", "get_analytics", {"time_range": "today"}),
    ("percentage of bounced emails this quarter", "get_analytics", {"time_range": "last_90_days"}),
    ("Show monthly analytics", "get_analytics", {"time_range": "last_30_days"}),
    ("Is my Google account still authorized?", "check_status", {}),
    ("Is email sending working at the moment?", "check_status", {}),
    ("do i need to log back in", "check_status", {}),
    ("Check if Gmail is connected", "check_status", {}),
    ("Show me the emails that bounced", "list_messages", {"status": "failed"}),
    ("List my last 4 sent emails", "list_messages", {"limit": 4, "status": "sent"}),
    ("Which emails are queued right now?", "list_messages", {"status": "queued"}),
    ("What messages are scheduled?", "list_messages", {"status": "scheduled"}),
    ("show me the most recent 30 emails", "list_messages", {"limit": 30}),
    ("Were any emails cancelled?", "list_messages", {"status": "cancelled"}),
    ("Show my emails from today", "list_messages", {}),
    ("Which emails failed?", "list_messages", {"status": "failed"}),
    ("Info on msg_abcdefabcdefabcdefabcdef please", "get_message", {}),
    ("has msg_abcdefabcdefabcdefabcdef been delivered yet", "get_message", {}),
    ("Thanks!", None, {}),
    ("Can you order me a taxi?", None, {}),
    ("Forward msg_abcdefabcdefabcdefabcdef to bob@example.com", None, {}),
    ("Recall the email I just sent", None, {}),
    ("Block spam@example.com", None, {}),
    ("Send a Slack message to the team", None, {}),
    ("Read me my latest emails", None, {}),
    ("What time is it?", None, {}),
]


@pytest.mark.parametrize(("prompt", "action", "expect"), HELD_OUT, ids=[case[0][:60] for case in HELD_OUT])
def test_held_out_prompt(prompt, action, expect):
    got = answer(plan_prompt(prompt))
    assert mismatch(got, action, expect) is None, got


def test_the_held_out_set_covers_every_action_and_no_action():
    actions = {case[1] for case in HELD_OUT}
    assert actions == set(PARAMETERS) | {None}
    assert len(HELD_OUT) >= 80


def test_send_email_extracts_content_without_instructions():
    step = plan_prompt("Send an email to dana@example.com saying the draft is ready for review").steps[0]
    assert step.parameters["body"] == "The draft is ready for review."
    assert step.parameters["subject"] == "Draft is ready for review"
    step = plan_prompt("Remind carl@example.com to submit his timesheet").steps[0]
    assert step.parameters["body"] == "Just a reminder to submit his timesheet."
    step = plan_prompt("Email sue@example.com asking about the invoice").steps[0]
    assert (step.parameters["subject"], step.parameters["body"]) == ("Invoice", "I have a question about the invoice.")


def test_a_request_to_send_figures_without_an_address_shows_them_first():
    plan = plan_prompt("Send a report of today's emails")
    assert [(step.action, step.missing) for step in plan.steps] == [("get_analytics", []), ("send_report", ["to"])]
    assert plan.steps[0].parameters["time_range"] == plan.steps[1].parameters["time_range"] == "today"
    assert plan.steps[1].parameters["to"] == []


def test_explicit_dates_come_with_a_valid_rolling_range():
    parameters = plan_prompt("email stats from March 1 to March 15 2026").steps[0].parameters
    assert parameters == {"time_range": "last_30_days", "start_date": "2026-03-01", "end_date": "2026-03-15"}
    parameters = plan_prompt("How many emails did I send since 2026-01-10?").steps[0].parameters
    assert parameters == {"time_range": "last_30_days", "start_date": "2026-01-10", "end_date": None}


def test_the_response_asks_for_what_is_missing():
    assert "email address" in plan_prompt("Please email the client about the delay").response
    assert "say" in plan_prompt("Email max@example.com").response
    assert "give me an address" in plan_prompt("Send email to user about monthly analytics").response


# Properties, on any text and on text built from the planner's own vocabulary.

VOCABULARY = (
    ("send", "email", "e-mail", "mail", "tell", "let", "know", "remind", "ask", "to", "cc", "bcc", "cc:", "bcc:")
    + ("and", ",", ";", ":", "-", "saying", "that", "about", "re:", "subject", "subject:", "body", "body:", "with")
    + ("the", "a", "please", "stats", "analytics", "report", "weekly", "last", "7", "five", "days", "today", "show")
    + ("list", "failed", "queued", "recent", "messages", "emails", "is", "connected", "?", "!", '"', "'", "\u201c")
    + ("\u201d", "\n", "msg_019a7f3c2b1de4f5a6b7c8d9", "msg_", "Ünïcödé", "\u200b", "\x00", "bad-address", "x@y")
    + ("a@example.com", "B@Example.ORG", "user@localhost", "<c@example.net>")
)
ADDRESS = st.emails().map(str)
PHRASE = st.lists(st.one_of(st.sampled_from(VOCABULARY), ADDRESS, st.text(max_size=12)), max_size=60).map(" ".join)
ANY_TEXT = st.one_of(
    st.text(max_size=4000),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=3000, max_size=4000),
    PHRASE,
    st.builds(
        lambda verb, to, body: f"{verb} {to} saying {body}", st.sampled_from(["Email", "Send to"]), ADDRESS, st.text()
    ),
)
PROPERTIES = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def valid(address: str) -> bool:
    try:
        checked = validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return False
    return checked.ascii_email is not None


@PROPERTIES
@given(ANY_TEXT)
def test_parameters_are_complete_and_well_formed(prompt):
    plan = plan_prompt(prompt)
    assert isinstance(plan.response, str) and plan.response
    for step in plan.steps:
        parameters = step.parameters
        assert set(parameters) == PARAMETERS[step.action]
        assert set(step.missing) <= REQUIRED.get(step.action, set())
        if step.action in ("send_email", "send_report"):
            recipients = parameters["to"] + parameters["cc"] + parameters.get("bcc", [])
            for address in recipients + parameters.get("reply_to", []):
                assert address == address.lower() and valid(address), address
            assert len(recipients) == len(set(recipients))
            assert ("to" in step.missing) == (parameters["to"] == [])
        if step.action == "send_email":
            assert parameters["body_type"] == "text" and parameters["idempotency_key"] is None
            assert ("body" in step.missing) == (parameters["body"] == "")
            assert "\n" not in parameters["subject"] and "\r" not in parameters["subject"]
            assert len(parameters["subject"]) <= 998
            for text in (parameters["subject"].lower(), parameters["body"].lower()):
                assert "subject:" not in text and "body:" not in text
                assert not any(address in text for address in recipients)
        if "time_range" in parameters:
            assert parameters["time_range"] in TIME_RANGES
            assert parameters["end_date"] is None or parameters["start_date"] <= parameters["end_date"]
        if step.action == "list_messages":
            assert parameters["status"] in STATUSES and 1 <= parameters["limit"] <= 200
        if step.action == "get_message" and not step.missing:
            assert parameters["message_id"].startswith("msg_") and len(parameters["message_id"]) == 28


@PROPERTIES
@given(ANY_TEXT)
def test_the_plan_is_deterministic(prompt):
    assert plan_prompt(prompt) == plan_prompt(prompt)


@pytest.mark.parametrize("prompt", [case[0] for case in HELD_OUT if case[1] is None])
def test_no_action_leaves_the_plan_empty_and_says_what_can_be_done(prompt):
    plan = plan_prompt(prompt)
    assert plan.steps == [] and "I can" in plan.response
