"""The offline planner: a deterministic grammar that turns a user's prompt into the service's actions.

It reads one normalised copy of the prompt in three passes:

1. Text that must come through untouched, quoted passages and email addresses, is swapped for placeholders
   ("Send Q0 to A0"), so the later patterns see the short command around them and never match words inside
   them.
2. Once politeness is stripped ("hi", "please", "can you", "I'd like to"), the word that leads the command
   classifies it: a sending verb, a request for information (a question, "show", "list", "check"), an
   operation the service does not offer (delete, archive, cancel) or another channel (call, text).
3. A sending command is cut into segments at cue phrases: the head (verb and recipients), the subject, the
   body ("saying ...", "that ...", a colon, a quotation, "body: ..."), the topic ("about ..."). Recipients
   take their role (to, cc, bcc) from the nearest marker before them, and the content is assembled from the
   other segments, phrased for the verb that introduced it ("remind ... to" gives "Just a reminder to ...").
   An information request is routed by families of keywords (counts and rates, connection and health, lists
   of messages, message ids), and its modifiers are read on their own: time range, status, limit.
"""

import re
import unicodedata
from dataclasses import dataclass
from datetime import date, timedelta


@dataclass(frozen=True)
class Step:
    action: str
    parameters: dict
    missing: list[str]


@dataclass(frozen=True)
class RulesPlan:
    response: str
    steps: list[Step]


DEFAULT_RANGE = "last_30_days"
DEFAULT_LIMIT = 10
MAX_LIMIT = 200
SUBJECT_MAX = 60  # for subjects derived from the content
_HEADER_MAX = 998  # the longest subject the service accepts
CAPABILITIES = (
    "I can send an email, email your analytics report, show your email analytics, check the service status "
    "and your mailbox connection, list your recent messages, or look up one message by its id."
)
_MAX_RANGE_DAYS = 366  # the reports service refuses longer windows
_RANGE_WORDS = {
    "today": "today",
    "last_7_days": "the last 7 days",
    "last_30_days": "the last 30 days",
    "last_90_days": "the last 90 days",
    "all_time": "all time",
}

# ---------------------------------------------------------------------------------------------------------
# Normalisation and placeholders

# Controls become spaces; the private-use area is kept free for the placeholders.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ue000-\uf8ff]")
_INVISIBLE = re.compile(r"[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACES = re.compile(r"[ \t]+")
_WHITESPACE = re.compile(r"\s+")
_LINE_BREAKS = re.compile(r" ?\n[ \n]*")
_WORD = re.compile(r"\w")
# The matching copy of the text: the same length, apostrophes and dashes in one form each.
_KEY_TABLE = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2013": "-", "\u2014": "-", "\u2010": "-"})
_QUOTED = re.compile(
    r'"\s*(?P<d>[^"]+?)\s*"'
    r"|\u201c\s*(?P<c>[^\u201d]+?)\s*\u201d"
    r"|\u201e\s*(?P<l>[^\u201c\u201d]+?)\s*[\u201c\u201d]"
    r"|\u00ab\s*(?P<g>[^\u00bb]+?)\s*\u00bb"
    # Single quotes double as apostrophes: a quotation by them is short, on one line, and an apostrophe inside
    # it sits between letters (so "'a 'b 'c" does not make every mark search the rest of the prompt).
    r"|(?<![\w'\u2019])'(?P<s>\S(?:[^'\n]|(?<=\w)'(?=\w)){0,300}?)(?<=\S)'(?!\w)"
    r"|(?<![\w'\u2019])\u2018(?P<cs>\S(?:[^\u2019\n]|(?<=\w)\u2019(?=\w)){0,300}?)(?<=\S)\u2019(?!\w)"
    r"|`(?P<b>[^`]+)`"
)
# Practical address syntax: an ASCII local part (the service refuses others), a domain with at least one dot
# and an alphabetic top-level label.
_ADDRESS_CORE = (
    r"[A-Za-z0-9_%+\-]+(?:\.[A-Za-z0-9_%+\-]+)*@"
    r"(?:[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?\.)+(?:[^\W\d_]{2,63}|[Xx][Nn]--[A-Za-z0-9\-]{1,59})"
)
_ADDRESS = re.compile(
    rf"(?P<open>[<(\[]\s*)?(?<![\w.%+\-@])(?P<addr>{_ADDRESS_CORE})(?![\w\-@]|\.[^\W_])(?(open)\s*[>)\]])"
)
_MENTIONED_ADDRESS = re.compile(rf"(?:\b(?:to|cc|bcc)\s*[:=]?\s*)?(?<![\w.%+\-@])(?P<addr>{_ADDRESS_CORE})", re.I)
_FULL_ADDRESS = re.compile(rf"\s*{_ADDRESS_CORE}\s*")
_AT_TOKEN = re.compile(r"(?<![^\s,;:<>()\[\]\"'])[^\s,;:<>()\[\]\"']*@[^\s,;:<>()\[\]\"']*")
_MESSAGE_ID = re.compile(r"\bmsg_[0-9a-f]{24}\b", re.I)
_MESSAGE_ID_LIKE = re.compile(r"\bmsg_\w+", re.I)
_QUOTE_MARK, _ADDRESS_MARK = "\ue000", "\ue001"
_PLACEHOLDER = re.compile(r"([\ue000\ue001])(\d+)[\ue000\ue001]")
_ADDRESS_INDEX = re.compile(r"\ue001(\d+)\ue001")
_LONE_QUOTE = re.compile(r"\s*\ue000(\d+)\ue000\s*[.!?,;]?\s*")
_ADDR = r"\ue001\d+\ue001"
_ADDR_LIST = rf"{_ADDR}(?:\s*(?:,|;|&|/|\band\b|\bor\b|\bplus\b)\s*{_ADDR})*"


@dataclass(frozen=True)
class _Workspace:
    text: str  # the prompt with placeholders
    key: str  # the same in matching form, index for index
    addresses: tuple[str, ...]  # as written
    quotes: tuple[tuple[str, str], ...]  # (as written with its marks, the text inside)
    message_ids: tuple[str, ...]

    def restore(self, start: int, end: int) -> str:
        """The original text of a span; a span that is one quotation alone gives the text inside it."""
        segment = self.text[start:end]
        lone = _LONE_QUOTE.fullmatch(segment)
        if lone:
            return self.quotes[int(lone.group(1))][1]

        def original(match: re.Match) -> str:
            index = int(match.group(2))
            return self.addresses[index] if match.group(1) == _ADDRESS_MARK else self.quotes[index][0]

        return _PLACEHOLDER.sub(original, segment)


def _normalise(prompt: str) -> str:
    text = unicodedata.normalize("NFKC", prompt.replace("\r\n", "\n").replace("\r", "\n"))
    text = _INVISIBLE.sub("", _CONTROL.sub(" ", text))
    return _LINE_BREAKS.sub("\n", _SPACES.sub(" ", text)).strip()


def _workspace(text: str) -> _Workspace:
    addresses: list[str] = []
    quotes: list[tuple[str, str]] = []

    def address(value: str) -> str:
        addresses.append(value)
        return f"{_ADDRESS_MARK}{len(addresses) - 1}{_ADDRESS_MARK}"

    def quote(match: re.Match) -> str:
        inner = next(group for group in match.groups() if group is not None)
        if _FULL_ADDRESS.fullmatch(inner):
            return address(inner.strip())
        quotes.append((match.group(0), inner))
        return f"{_QUOTE_MARK}{len(quotes) - 1}{_QUOTE_MARK}"

    text = _QUOTED.sub(quote, text)
    text = _ADDRESS.sub(lambda match: address(match.group("addr")), text)
    ids = tuple(dict.fromkeys(found.lower() for found in _MESSAGE_ID.findall(text)))
    return _Workspace(text, text.translate(_KEY_TABLE), tuple(addresses), tuple(quotes), ids)


def _join(items: list[str] | tuple[str, ...]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------------------------------------------------
# Numbers, time ranges and dates

_SMALL_NUMBER_WORDS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_SMALL_NUMBERS = {word: value for value, word in enumerate(_SMALL_NUMBER_WORDS)}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_VAGUE_NUMBERS = {"couple": 2, "few": 3, "several": 5, "dozen": 12}
_NUM = (
    r"(?:\d{1,7}|(?:a|one|two)\s+hundred|hundred|(?:half\s+)?a\s+dozen|dozen|"
    r"(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)(?:[\s-](?:one|two|three|four|five|six|seven|eight|nine))?|"
    r"zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|"
    r"seventeen|eighteen|nineteen|a\s+couple(?:\s+of)?|couple|a\s+few|few|several)(?!\w)"
)
_NUMBER_FILLER = re.compile(r"\b(?:a|of)\b")


def _number(text: str) -> int:
    """The value of a number matched by _NUM ("15", "twenty-five", "a dozen", "a couple of")."""
    words = _NUMBER_FILLER.sub(" ", text.lower()).replace("-", " ").split()
    first = words[0]
    if first.isdigit():
        return int(first)
    if "hundred" in words:
        return 200 if first == "two" else 100
    if words == ["half", "dozen"]:
        return 6
    if first in _VAGUE_NUMBERS:
        return _VAGUE_NUMBERS[first]
    if first in _TENS:
        return _TENS[first] + (_SMALL_NUMBERS.get(words[-1], 0) if len(words) > 1 else 0)
    return _SMALL_NUMBERS[first]


_RANGE = re.compile(
    rf"""(?P<today>\b(?:today'?s?|tonight|this\s+(?:morning|afternoon|evening)|since\s+midnight|
        (?:the\s+)?(?:last|past|previous)\s+day)(?!\w))
    |(?P<yesterday>\byesterday(?!\w))
    |(?P<count>\b(?P<n>{_NUM})[\s-]+(?P<unit>hours?|hrs?|days?|weeks?|wks?|months?|mos|quarters?|years?|yrs?)\b)
    |(?P<bare>\b(?P<noun>week|fortnight|month|quarter|year|days|weeks|months|quarters|years)\b)
    |(?P<adjective>\b(?P<adj>daily|weekly|bi-?weekly|fortnightly|monthly|quarterly|yearly|annual(?:ly)?|ytd|mtd|wtd)\b)
    |(?P<ever>\b(?:life-?time|all[\s-]+time|ever|of\s+all\s+time|since\s+(?:the\s+)?(?:beginning|start)|
        from\s+the\s+(?:beginning|start)|since\s+(?:i|we)\s+(?:started|joined|signed\s+up|began)|entire\s+history)\b)
    """,
    re.I | re.X,
)
_RANGE_OVERALL = re.compile(
    r"\b(?:overall|in\s+total|altogether|so\s+far|to\s+date|till\s+now|until\s+now|all\s+(?:of\s+)?(?:my|our)\s+"
    r"(?:e-?mails|messages))\b",
    re.I,
)
_UNIT_DAYS = {"h": 1 / 24, "d": 1, "w": 7, "f": 14, "m": 30, "q": 90, "y": 365}
_ADJECTIVE_RANGES = {
    "daily": "today",
    "weekly": "last_7_days",
    "wtd": "last_7_days",
    "monthly": "last_30_days",
    "mtd": "last_30_days",
    "fortnightly": "last_30_days",
    "biweekly": "last_30_days",
    "bi-weekly": "last_30_days",
    "quarterly": "last_90_days",
}
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|"
    r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DATE = re.compile(
    rf"""\b(?P<iy>\d{{4}})-(?P<im>\d{{1,2}})-(?P<id>\d{{1,2}})\b
    |\b(?P<am>{_MONTH})\.?\s+(?P<ad>\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(?P<ay>\d{{4}})\b)?
    |\b(?P<bd>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<bm>{_MONTH})\b\.?(?:,?\s+(?P<by>\d{{4}})\b)?
    |\b(?:in|during|for|of|throughout)\s+(?P<wm>{_MONTH})\.?,?\s+(?P<wy>\d{{4}})\b
    """,
    re.I | re.X,
)
_DATE_START_CUE = re.compile(r"\b(?:since|from|after|starting(?:\s+(?:on|from))?|beginning|as\s+of)\s*$", re.I)
_DATE_END_CUE = re.compile(r"\b(?:until|till|til|before|by|up\s+to)\s*$", re.I)


def _covering_range(days: float) -> str:
    """The shortest rolling range that covers this many days."""
    for limit, name in ((1, "today"), (7, "last_7_days"), (30, "last_30_days"), (90, "last_90_days")):
        if days <= limit:
            return name
    return "all_time"


def _rolling_range(key: str) -> str:
    match = _RANGE.search(key)
    if match is None:
        return "all_time" if _RANGE_OVERALL.search(key) else DEFAULT_RANGE
    kind = match.lastgroup
    if kind == "today":
        return "today"
    if kind == "yesterday":
        return "last_7_days"
    if kind == "count":
        return _covering_range(_number(match.group("n")) * _UNIT_DAYS[match.group("unit")[0].lower()])
    if kind == "bare":
        noun = match.group("noun").lower()
        # A plural without a number ("in recent weeks") means a few of them.
        return _covering_range(_UNIT_DAYS[noun[0]] * (3 if noun.endswith("s") else 1))
    if kind == "adjective":
        return _ADJECTIVE_RANGES.get(match.group("adj").lower(), "all_time")
    return "all_time"


def _month_number(name: str) -> int:
    return _MONTHS.index(name[:3].lower()) + 1


def _date_span(match: re.Match, today: date) -> tuple[date, date, bool] | None:
    """The first and last day a date mention covers, and whether its year was written; None if no such day."""
    groups = match.groupdict()
    try:
        if groups["iy"]:
            day = date(int(groups["iy"]), int(groups["im"]), int(groups["id"]))
            return day, day, True
        if groups["wm"]:
            first = date(int(groups["wy"]), _month_number(groups["wm"]), 1)
            following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
            return first, following - timedelta(days=1), True
        month, day_text, year = (
            (groups["am"], groups["ad"], groups["ay"]) if groups["am"] else (groups["bm"], groups["bd"], groups["by"])
        )
        day = date(int(year) if year else today.year, _month_number(month), int(day_text))
        if not year and day > today:
            day = day.replace(year=day.year - 1)  # "since March 1" means the last one
    except ValueError:
        return None
    return day, day, bool(year)


def _explicit_dates(key: str) -> tuple[str, str | None] | None:
    """ISO start and end dates when the prompt names calendar days and they make a usable window."""
    today = date.today()
    mentions = [(match, span) for match in _DATE.finditer(key) if (span := _date_span(match, today))]
    if not mentions:
        return None
    first, (start, last, _) = mentions[0]
    end: date | None
    if len(mentions) > 1:
        _, (_, end, year_written) = mentions[1]
        if end < start and not year_written and not (end.month == 2 and end.day == 29):
            end = end.replace(year=end.year + 1)  # "from Dec 20 to Jan 5"
    elif _DATE_START_CUE.search(key, 0, first.start()):
        end = None
    elif _DATE_END_CUE.search(key, 0, first.start()):
        return None  # an end alone is no window
    else:
        end = last
    if start.year < 1970 or (end is not None and not 0 <= (end - start).days < _MAX_RANGE_DAYS):
        return None
    return start.isoformat(), end.isoformat() if end else None


def _time_parameters(key: str) -> dict:
    """The window: always a rolling range (the actions require one), and calendar dates when named, which the
    actions use instead of the range."""
    start_date, end_date = _explicit_dates(key) or (None, None)
    return {"time_range": _rolling_range(key), "start_date": start_date, "end_date": end_date}


def _period(time: dict) -> str:
    if time["start_date"] is None:
        return _RANGE_WORDS[time["time_range"]]
    if time["end_date"] is None:
        return f"the days since {time['start_date']}"
    if time["end_date"] == time["start_date"]:
        return time["start_date"]
    return f"{time['start_date']} to {time['end_date']}"


# ---------------------------------------------------------------------------------------------------------
# The leading words: politeness, corrections, then the word that says what kind of command this is

_PREFIX = re.compile(
    r"""(?:[\s,.!;:\-]+
    |(?:hi|hello|hey|heya|hiya|yo|howdy|greetings|good\s+(?:morning|afternoon|evening|day|night)|bye|goodbye)
        (?:\s+(?:there|assistant|bot|team|again))?\b
    |(?:ok(?:ay)?|alright|all\s+right|so|now|and|also|then|next|right|sure|great|cool|well|um+|uh+|hmm+|oh|ah|yes|yeah)\b
    |(?:thanks|thank\s+you|thx|ty|cheers)(?:\s+(?:so\s+much|a\s+lot))?\b
    |(?:please|pls|plz|kindly|quickly|just)\b
    |(?:can|could|would|will|won't|wouldn't|pretty\s+please)\s+(?:you|u|ya)\b(?:\s+(?:please|pls|kindly|just|quickly|possibly))*
        (?:\s+(?:be\s+able\s+to|mind|help\s+me))?
    |(?:are\s+you\s+able\s+to|is\s+it\s+possible\s+(?:for\s+you\s+)?to|do\s+me\s+a\s+favou?r\s+and|go\s+ahead\s+and)\b
    |(?:i|we)(?:'d|\s+would|\s+really|\s+just|\s+also)*\s+(?:like|love|want|need|wanna|have|must|gotta|got)
        (?:\s+(?:you|u)(?=\s+to\b))?(?:\s+to)?\b
    |(?:i|we)\s+(?:should|must|need\s+to)\b
    |help\s+me(?:\s+to)?\b|let'?s\b|let\s+us\b(?!\s+know)
    |(?:remember|don't\s+forget|dont\s+forget|make\s+sure|be\s+sure|try)\s+to\b
    )""",
    re.I | re.X,
)
_CORRECTION = re.compile(
    r"\b(?:no\s+wait|wait\s*,?\s+no|scratch\s+that|i\s+mean|correction|make\s+that|on\s+second\s+thought|actually)\b"
    r"[\s,:;.!-]*",
    re.I,
)
_POLITE_QUESTION = re.compile(
    r"\b(?:can|could|would|will|won't)\s+(?:you|u|ya)\b|\b(?:are\s+you\s+able|is\s+it\s+possible)\b", re.I
)
_OTHER_SEND_VERB = (
    r"send|e-?mail|mail|write|message|msg|drop|shoot|ping|notify|inform|contact|reach|compose|draft|forward|fwd|"
    r"reply|respond|answer|remind|ask|invite|thank|alert|warn|update|share|deliver|pass|fire|cc|bcc|schedule|"
    r"get\s+in\s+touch|follow\s+up"
)
_SEND_VERB = rf"tell|let|{_OTHER_SEND_VERB}"
_LEAD = re.compile(
    rf"""(?P<email_noun>(?:e-?mail|mail)\s+(?=(?:stats|statistics|analytics|reports?|metrics|history|status|activity|
        logs?|deliverability|delivery|figures|numbers|summary|overview|health|service|account|connection|queue|volume|
        count)\b))
    |(?P<send>(?:(?:tell|let)(?!\s+(?:me|us)\b)|{_OTHER_SEND_VERB})\b
        |(?:an?\s+)?(?:(?:new|quick|short|brief)\s+)?(?:note|memo|message|line)\s+(?=to\b|for\b|\ue001)
        |(?:an?\s+)?(?:new|quick|short|brief)\s+(?:e-?mail|mail)\b
        |an?\s+(?:e-?mail|mail)\s+(?=to\b|for\b|\ue001))
    |(?P<info>(?:tell|let|show|give)\s+(?:me|us)\b
        |(?:show|list|display|view|see|get|fetch|pull|give|find|check|look|what|what's|whats|which|how|when|where|why|
          who|whose|is|are|was|were|am|did|do|does|has|have|had|can\s+i|could\s+i|should\s+i|may\s+i|will|any|count|
          summari[sz]e|report|open|bring|print|retrieve|verify|test|confirm|track|trace|monitor|lookup|export|calculate|
          compare|filter)\b)
    |(?P<channel>(?:call|phone|ring|text|sms|txt|whatsapp|dm|tweet|post|slack|fax|facetime|skype|telegram)\b)
    |(?P<unsupported>(?:delete|remove|erase|trash|bin|archive|purge|clear|empty|wipe|mark|unsubscribe|block|unblock|
        move|label|star|flag|snooze|mute|cancel|unsend|recall|undo|retract|retry|resend|re-send|edit|modify|change|
        reschedule|read|search|organi[sz]e|download|backup|restore|import|sync)\b)
    """,
    re.I | re.X,
)
# A command after a statement: "I'm running late, tell a@x.com", "a@x.com - let her know ...".
_LATER_SEND = re.compile(
    rf"(?:[.!?;,:]\s*|\s-{{1,2}}\s*|\b(?:and|then|so|please|pls)\s+)(?P<verb>(?:tell|let)(?!\s+(?:me|us)\b)|"
    rf"{_OTHER_SEND_VERB})\b",
    re.I,
)
_VERB_AT_START = re.compile(rf"(?:{_SEND_VERB})\b", re.I)
_UNSUPPORTED = tuple(
    (re.compile(pattern), what)
    for pattern, what in (
        (r"delete|remove|erase|trash|bin|purge|clear|empty|wipe", "delete mail"),
        (r"archive|move|label|star|flag|snooze|mute|mark|organi|block|unblock|unsubscribe", "organise your mailbox"),
        (r"read|search|sync|download|backup|restore|import", "read or search your mailbox"),
        (r"cancel|unsend|recall|undo|retract", "cancel or recall a message"),
        (r"retry|resend|re-send", "resend a message"),
        (r"edit|modify|change|reschedule", "change a message once it is queued"),
    )
)
_EMAIL_NOUN = re.compile(
    r"\b(?:e-?mails?|mails?|messages?|msgs?|notes?|memos?|newsletters?|line|reply|invitations?)\b", re.I
)
# Verbs that name the act of communicating: they mean sending without an "email" noun or an address.
_IMPLICIT_SEND = {"email", "e-mail", "mail", "tell", "notify", "inform", "message", "msg", "cc", "bcc", "reply"}
_KNOW = re.compile(r"\bknow\b", re.I)
_WRITE_TO = re.compile(r"\s*write\s+(?:back\s+)?(?:to\b|\ue001)", re.I)
_VERB_FLAVOURS = {
    "tell": "tell",
    "let": "tell",
    "inform": "tell",
    "notify": "tell",
    "warn": "tell",
    "alert": "tell",
    "update": "tell",
    "ask": "ask",
    "remind": "remind",
    "invite": "invite",
    "thank": "thank",
}


@dataclass(frozen=True)
class _Lead:
    kind: str  # email_noun | send | info | channel | unsupported | other
    verb: str
    start: int


def _skip_prefix(key: str, start: int = 0) -> int:
    while (match := _PREFIX.match(key, start)) and match.end() > start:
        start = match.end()
    return start


def _lead(key: str, start: int) -> _Lead:
    match = _LEAD.match(key, start)
    if not match:
        return _Lead("other", "", start)
    verb = _WHITESPACE.sub(" ", match.group(0).lower()).strip()
    if match.lastgroup == "send" and not _VERB_AT_START.match(verb):
        verb = "send"  # "a quick note to a@x.com: ...", "an email to a@x.com saying ..."
    return _Lead(match.lastgroup, verb, start)


def _command_start(ws: _Workspace) -> int:
    """Where the command begins: after politeness, and after the last self-correction ("no wait, ...")."""
    start = _skip_prefix(ws.key)
    for correction in _CORRECTION.finditer(ws.key, start):
        restart = _skip_prefix(ws.key, correction.end())
        if _lead(ws.key, restart).kind in ("send", "info"):
            start = restart
    return start


def _flavour(verb: str) -> str:
    """How a verb colours dictated content: tell, ask, remind, invite, thank, or plain send."""
    word = verb.split()[0].lower() if verb.strip() else ""
    return next((flavour for stem, flavour in _VERB_FLAVOURS.items() if word.startswith(stem)), "send")


def _qualifies_as_send(ws: _Workspace, lead: _Lead) -> bool:
    """A sending verb means sending when it names communication or has something to send to someone."""
    verb = lead.verb.split()[0]
    rest = ws.key[lead.start :]
    if verb == "let" and not _KNOW.search(rest):
        return False
    if verb == "write" and not _WRITE_TO.match(rest):
        return bool(ws.addresses or _EMAIL_NOUN.search(rest))
    return bool(verb in _IMPLICIT_SEND or ws.addresses or _EMAIL_NOUN.search(rest) or _REPORT_WORDS.search(rest))


# ---------------------------------------------------------------------------------------------------------
# Sending, 1: segments

_CUTS = re.compile(
    rf"""(?P<subject>(?:\b(?:with|and|plus|using|having)\s+|,\s*)(?:(?:a|an|the)\s+)?(?:subject|title)(?:[ -]?line)?\b
            (?:\s*(?:[:=]|-(?=\s)|\bof\b|\bas\b|\bis\b|\bbeing\b|\breading\b|\bsaying\b))?\s*
        |\bsubject(?:[ -]?line)?\s*[:=]\s*|\bsubj\s*[:.]\s*)
    |(?P<body>(?:\b(?:with|and|plus|using|having)\s+|,\s*)(?:(?:a|an|the)\s+)?(?:body|message|text|content|contents)
            (?:\s+text)?\b(?:\s*(?:[:=]|-(?=\s)|\bof\b|\bas\b|\bis\b|\bbeing\b|\breading\b|\bsaying\b|
            \bthat\s+(?:says|reads)\b|\bshould\s+(?:say|read|be)\b))?\s*
        |\b(?:body|message|msg|text|content|contents)(?:\s+text)?\s*[:=]\s*)
    |(?P<subject_weak>\b(?:subject(?:[ -]?line)?|titled|entitled|headlined)\b(?:\s+(?:of|as|is|being)\b)?\s*)
    |(?P<body_weak>\bbody(?:\s+text)?\b(?:\s+(?:of|as|is|being|saying)\b)?\s*)
    |(?P<say>\b(?:(?:that|which|it)\s+(?:says|reads|states|should\s+(?:say|read))
        |(?:the\s+)?(?:body|message|e-?mail|note|text)\s+(?:should\s+(?:say|read)|says|reads|will\s+say)
        |saying|stating|to\s+say|and\s+say|say(?=\s*:)|with\s+(?:the\s+)?(?:words?|line)
        |(?:announcing|explaining|confirming|mentioning|noting|advising|reporting)(?=\s+that\b)
        |(?:(?:and|to)\s+)?(?P<say_verb>tell|telling|ask|asking|remind|reminding|inform|informing|notify|notifying|
            warn|warning|let|letting)\s+(?:(?:them|him|her|everyone|everybody|all|the\s+team)
            (?:\s+(?:at|on|in)\s+{_ADDR_LIST}|\s*\(\s*{_ADDR_LIST}\s*\))?|{_ADDR_LIST})(?:\s+know)?
            (?:\s+(?:by|via|over|through|in|with)\s+(?:an?\s+)?(?:e-?mail|mail|message|note))?
        |(?:and\s+)?(?P<say_verb_alone>telling|asking|reminding|informing|warning)
        )(?!\w)\s*:?\s*(?:that\b\s*)?)
    |(?P<that>\bthat\b\s*)
    |(?P<topic>(?:\b(?:about|abt|regarding|concerning|re(?=\s*:)|on\s+the\s+(?:subject|topic|matter|issue)\s+of|
        in\s+regards?\s+to|with\s+regards?\s+to|as\s+regards|in\s+relation\s+to|relating\s+to|related\s+to|
        in\s+reference\s+to|with\s+respect\s+to|wrt)\b|(?<![\w'])re\b(?=\s))\s*:?\s*)
    |(?P<purpose>\bto\s+(?=[^\W\d_]))
    |(?P<colon>:(?!\d|//)\s*|\s-{{1,2}}\s)
    |(?P<newline>\s*\n\s*)
    |(?P<quote>\ue000\d+\ue000)
    """,
    re.I | re.X,
)
# The cues that end a segment of each kind; "that", "purpose" and "colon" have further conditions.
_ALLOWED_CUTS = {
    "head": set(_CUTS.groupindex) - {"say_verb", "say_verb_alone"},
    "subject": {"body", "body_weak", "say", "newline"},
    "topic": {"subject", "body", "say", "colon", "newline"},
    "body": {"subject", "body"},
}
_NEXT_KIND = {
    "subject": "subject",
    "subject_weak": "subject",
    "body": "body",
    "body_weak": "body",
    "say": "body",
    "that": "body",
    "purpose": "body",
    "colon": "body",
    "newline": "body",
    "topic": "topic",
}
_FIELD_LABEL = re.compile(r"(?:to|cc|bcc|subject|body|message)\s*[:=]", re.I)
_LABEL_BEFORE_COLON = re.compile(r"\b(?:to|cc|bcc|recipients?|from|reply[-_]?to)\s*$", re.I)
_THAT_AFTER = re.compile(
    rf"(?:{_ADDR}|\b(?:know|them|him|her|everyone|everybody|all|team|e-?mail|mail|message|note|line|memo))\W*$", re.I
)
_ENDS_WITH_ADDRESS = re.compile(rf"{_ADDR}\W*$")
_TO_SOMEONE = re.compile(r"\bto\s+\S")
# After "to", words that start a recipient ("to the team") rather than a purpose ("to confirm").
_NOT_PURPOSE = re.compile(
    r"(?:the|a|an|my|our|your|his|her|their|its|this|that|these|those|all|everyone|everybody|him|them|me|us|you|"
    r"both|each|every|some|any|team|whole|mom|mum|dad|boss|manager|client|customer|colleague|friend|support|sales)\b",
    re.I,
)
_RECIPIENT_FIRST_VERBS = ("send", "write", "forward", "share", "drop", "shoot", "pass", "deliver")


@dataclass(frozen=True)
class _Segment:
    kind: str  # head | subject | body | topic | quote
    start: int
    end: int
    flavour: str = ""  # how dictated content is phrased: "" as written, else a verb flavour
    verbatim: bool = False  # labelled ("body: ...") or quoted content, sent as written


def _cut_allowed(mode: str, cut: re.Match, key: str, head_start: int, verb: str) -> bool:
    kind = cut.lastgroup
    if kind not in _ALLOWED_CUTS[mode]:
        return False
    before = key[head_start : cut.start()]
    if kind == "that":
        # "Tell the team that ...", "Email a@x.com that ...", but not "the file that I mentioned".
        return _VERB_FLAVOURS.get(verb) == "tell" or bool(_THAT_AFTER.search(before))
    if kind == "purpose":
        if _NOT_PURPOSE.match(key, cut.end()):
            return False
        if verb in _RECIPIENT_FIRST_VERBS:  # "send ... to" names a recipient until one is named
            return bool(_ENDS_WITH_ADDRESS.search(before) or _TO_SOMEONE.search(before))
        return True
    if kind == "colon" and mode == "head":
        labelled = _LABEL_BEFORE_COLON.search(before) or _FIELD_LABEL.match(key, cut.end())
        return not labelled and bool(_WORD.search(before))
    return True


def _segments(ws: _Workspace, start: int, verb: str) -> tuple[list[_Segment], list[tuple[int, int]]]:
    """The command from `start` cut into segments, and the spans of the cues (a cue may name recipients)."""
    segments: list[_Segment] = []
    cues: list[tuple[int, int]] = []
    current = _Segment("head", start, start)
    for cut in _CUTS.finditer(ws.key, start):
        if cut.start() < current.start or not _cut_allowed(current.kind, cut, ws.key, start, verb):
            continue
        segments.append(_Segment(current.kind, current.start, cut.start(), current.flavour, current.verbatim))
        cues.append(cut.span())
        kind = cut.lastgroup
        if kind == "quote":
            segments.append(_Segment("quote", cut.start(), cut.end(), verbatim=True))
            current = _Segment("head", cut.end(), cut.end())
        elif kind == "purpose":
            current = _Segment("body", cut.start(), cut.start(), _flavour(verb))
        else:
            said_with = cut.group("say_verb") or cut.group("say_verb_alone")
            flavour = _flavour(said_with) if said_with else ""
            current = _Segment(_NEXT_KIND[kind], cut.end(), cut.end(), flavour, kind in ("body", "body_weak"))
    segments.append(_Segment(current.kind, current.start, len(ws.key), current.flavour, current.verbatim))
    return [segment for segment in segments if segment.end > segment.start], cues


# ---------------------------------------------------------------------------------------------------------
# Sending, 2: recipients

_ROLE_TOKEN = re.compile(
    r"""(?P<bcc>\bb\.?c\.?c(?:'?(?:d|ed|ing))?\b(?:\s*:)?(?:\s+(?:to|in)\b)?
        |\bblind(?:\s+carbon)?\s+(?:copy|copies|cc)(?:\s+to\b)?|\b(?:secretly|silently|quietly)\s+(?:copy|cc)(?:ing)?\b)
    |(?P<cc>\bc\.?c(?:'?(?:d|ed|ing))?\b(?:\s*:)?(?:\s+(?:to|in)\b)?
        |\b(?:with\s+)?(?:a\s+)?(?:carbon\s+)?cop(?:y|ies|ying|ied)\b(?:\s+(?:to|in)\b)?
        |\bloop(?:ing)?\s+in\b|\binclud(?:e|ing)\b|\bkeep(?:ing)?\b)
    |(?P<reply_to>\breply[-_]to\b|\b(?:set|with)\s+(?:the\s+|a\s+)?reply\s+to\b|\brepl(?:y|ies)\s+(?:should\s+)?go(?:ing)?\s+to\b
        |\breplies\s+to\b|\breply\s+address\b)
    |(?P<sender>\bfrom\b|\bsender\b)
    |(?P<to>\bto\b|\bfor\b|\bwith\b|\brecipients?\b)
    |(?P<addr>\ue001\d+\ue001)
    |(?P<sep>[,;&/+()<>=:]|\band\b|\bor\b|\bplus\b|\balso\b|\bas\s+well\s+as\b)
    |(?P<word>[^\s,;&/+()<>=:\ue001]+)
    """,
    re.I | re.X,
)
# "a@x.com in cc", "a@x.com (bcc)": a role written after the addresses it applies to.
_ROLE_AFTER = re.compile(r"\(\s*(?P<paren>b?cc)\s*\)|(?:in|on|as)\s+(?:the\s+)?(?P<word>b?cc)\b", re.I)
# Words that end a cc/bcc marker's reach: a later address without a marker is a main recipient again.
_ROLE_RESET = re.compile(
    rf"(?:{_SEND_VERB}|sending|about|regarding|saying|says|that|on|subject|body|please|re|concerning|telling|asking)$",
    re.I,
)
_BCC_MARKER = re.compile(r"b\.?c|blind|secretly|silently|quietly", re.I)
_CONTENT_RECIPIENTS = re.compile(
    rf"""[\s,;]*(?:\b(?:and|also|plus)\s+|&\s*)?(?:please\s+)?(?:(?:send|forward)\s+(?:it|this)\s+)?
        (?P<marker>b?cc(?:'?ing)?|blind\s+copy|(?:with\s+)?(?:a\s+)?(?:carbon\s+)?copy(?:ing)?(?:\s+to)?|to)\s*[:=]?\s*
        (?P<list>{_ADDR_LIST})(?:\s+(?:too|as\s+well|also))?""",
    re.I | re.X,
)
_TRAILING_FILLER = re.compile(r"(?:[\s,;.!]|\b(?:please|pls|thanks|thank\s+you|for\s+me|asap|right\s+away)\b)*$", re.I)


@dataclass
class _Recipients:
    to: list[str]
    cc: list[str]
    bcc: list[str]
    reply_to: list[str]

    def add(self, role: str, address: str) -> None:
        if role in ("to", "cc", "bcc", "reply_to"):
            getattr(self, role).append(address.lower())

    def finished(self) -> "_Recipients":
        """Each address once, in the first of to, cc, bcc that names it."""
        to = list(dict.fromkeys(self.to))
        cc = [address for address in dict.fromkeys(self.cc) if address not in to]
        bcc = [address for address in dict.fromkeys(self.bcc) if address not in to and address not in cc]
        return _Recipients(to, cc, bcc, list(dict.fromkeys(self.reply_to)))

    def all(self) -> list[str]:
        return self.to + self.cc + self.bcc


def _marker_role(marker: str) -> str:
    if _BCC_MARKER.match(marker):
        return "bcc"
    return "to" if marker.lower() == "to" else "cc"


def _head_recipients(ws: _Workspace, start: int, end: int, recipients: _Recipients) -> None:
    """Addresses of a command part, each with the role of the marker before it (to until told otherwise)."""
    role, group = "to", []

    def assign(group_role: str) -> None:
        for index in group:
            recipients.add(group_role, ws.addresses[index])
        group.clear()

    for token in _ROLE_TOKEN.finditer(ws.key, start, end):
        kind = token.lastgroup
        if kind == "addr":
            group.append(int(token.group()[1:-1]))
            continue
        if kind == "sep":
            continue
        after = _ROLE_AFTER.match(ws.key, token.start(), end) if kind == "word" and group else None
        assign(_marker_role(after.group("paren") or after.group("word")) if after else role)
        if kind in ("bcc", "cc", "reply_to", "sender", "to"):
            role = kind
        elif _ROLE_RESET.match(token.group()):
            role = "to"
    assign(role)


def _peel_content_recipients(ws: _Workspace, segment: _Segment, recipients: _Recipients) -> _Segment:
    """Take the recipient clauses off the end of a content segment ("..., cc a@x.com", "... to b@y.org")."""
    end = segment.end
    while True:
        tail_start = _TRAILING_FILLER.search(ws.key, segment.start, end).start()
        clause = None
        for match in _CONTENT_RECIPIENTS.finditer(ws.key, segment.start, tail_start):
            if match.end() == tail_start:
                clause = match
        if clause is None:
            return _Segment(segment.kind, segment.start, end, segment.flavour, segment.verbatim)
        role = _marker_role(clause.group("marker"))
        for index in _ADDRESS_INDEX.findall(clause.group("list")):
            recipients.add(role, ws.addresses[int(index)])
        end = clause.start()


def _collect_recipients(
    ws: _Workspace, segments: list[_Segment], cues: list[tuple[int, int]], preamble: tuple[int, int] | None
) -> tuple[_Recipients, list[_Segment]]:
    """The recipients, and the content segments without the recipient clauses."""
    recipients = _Recipients([], [], [], [])
    content: list[_Segment] = []
    for segment in segments:
        if segment.kind == "head":
            _head_recipients(ws, segment.start, segment.end, recipients)
        elif segment.kind == "quote":
            content.append(segment)
        else:
            content.append(_peel_content_recipients(ws, segment, recipients))
    for start, end in cues:  # "telling a@x.com that ..."
        for index in _ADDRESS_INDEX.findall(ws.key, start, end):
            recipients.add("to", ws.addresses[int(index)])
    if not recipients.to:
        # Nothing addressed in the command: "to ADDRESS" inside the content names the recipient after all.
        for segment in content:
            if segment.kind == "quote":
                continue
            for match in _CONTENT_RECIPIENTS.finditer(ws.key, segment.start, segment.end):
                if match.group("marker").lower() == "to":
                    for index in _ADDRESS_INDEX.findall(match.group("list")):
                        recipients.add("to", ws.addresses[int(index)])
    if not recipients.to and preamble:
        _head_recipients(ws, *preamble, recipients)  # "a@x.com - tell her the package arrived"
    return recipients.finished(), content


# ---------------------------------------------------------------------------------------------------------
# Sending, 3: what to send

_LEAD_VERB_PHRASE = re.compile(
    rf"\s*(?:(?:{_SEND_VERB})(?:\s+(?:out|off|over|back|along|on|up))?(?:\s+(?:e-?mail|mail|message|note)s?)?\b"
    rf"|let\b(?=.*\bknow\b))",
    re.I | re.S,
)
# Parts of a head that are command, not content: recipients (with how they are described: "the client
# (a@x.com)", "Bob Smith a@x.com"), "an email", "a quick reminder", "by email", stray invalid addresses.
_HEAD_NOISE = re.compile(
    rf"""(?:(?:\b(?:the|my|our|your|his|her|their)\s+(?:(?!(?:to|for|with|cc|bcc|from)\b)[\w'-]+\s+){{0,2}}?
        |\b(?-i:[A-Z][\w'-]*\s+){{1,2}})
        (?:at\s+|\(\s*|<\s*|,\s*)?(?=\ue001))?
        (?:\b(?:to|for|with|cc|bcc|copy(?:ing)?|from)\s*[:=]?\s*)?{_ADDR_LIST}(?:\s*[)>])?(?:\s*\(?(?:in|on|as)\s+(?:the\s+)?b?cc\)?)?
    |\b(?:an?|the|this|my|one|another)\s+(?:(?:quick|short|brief|little|new|test|formal|friendly|nice|follow[- ]up|
        thank[- ]you|thanks|reminder|invitation)\s+)*(?:e-?mail|mail|message|note|line|memo|msg)s?\b
    |\b(?:(?:an?|the|one|another)\s+)?(?:(?:quick|short|brief|little|friendly|nice|gentle|final)\s+)*
        (?:thank[- ]you|reminder|invitation|invite)\b
    |\b(?:by|via|over|through|in)\s+(?:an?\s+)?(?:e-?mail|mail)\b|\bknow\b|(?<!\S)\S*@\S*""",
    re.I | re.X,
)
_ONLY_FILLER = re.compile(
    r"(?:\W|\b(?:please|pls|kindly|just|quickly|now|right\s+now|right\s+away|asap|for\s+me|it|this|that|them|him|"
    r"her|out|off|and|to|also|too|again|real|quick)\b)*",
    re.I,
)
_TRAILING_PLEASE = re.compile(r"\s*\b(?:please|pls|for\s+me)\W*$", re.I)
# Who the recipient is when no address says it: "the client", "my landlord", "Bob".
_DESCRIPTION = re.compile(
    r"\s*(?:to\s+|for\s+)?(?P<who>(?:(?:the|my|our|your|his|her|their)\s+[\w'-]+"
    r"(?:\s+(?!(?:about|saying|that|to|with|and|re|regarding|for|on|of|in|at|an?|the|by|via)\b)[\w'-]+)?|"
    r"them|him|her|everyone|everybody|all|me|us|(?!I\b|I')[A-Z][\w'-]*(?:\s+(?!I\b|I')[A-Z][\w'-]*)?))\b",
)
# "Send the invoice to a@x.com": an object to attach, not something to write (a clause is: "the build failed").
_OBJECT_PHRASE = re.compile(
    r"(?:an?|the|my|our|this|these|those|his|her|their|your)\s+[\w'-]+(?:\s+[\w'-]+){0,4}", re.I
)
_FINITE_VERB = re.compile(
    r"\b(?:is|are|was|were|be|been|will|won't|can|can't|could|should|would|has|have|had|did|does|do|don't|"
    r"doesn't|didn't|isn't|aren't|wasn't|must|need|needs|\w+'(?:re|ll|d|ve))\b|\b\w+ed\b",
    re.I,
)
_REPORT_WORDS = re.compile(
    r"""\b(?:analytics|stats|statistics|metrics|kpis?|deliverability|dashboard|success\s+rates?
    |(?<!bug\s)(?<!expense\s)(?<!incident\s)(?<!progress\s)(?<!financial\s)(?<!sales\s)(?<!project\s)(?<!lab\s)
     (?<!police\s)(?<!credit\s)(?<!weather\s)(?<!book\s)(?<!school\s)(?<!test\s)(?<!error\s)(?<!crash\s)reports?
    |(?:my|our|your|e-?mail|mail|sending|delivery|weekly|monthly|daily|quarterly|yearly|annual|today's|lifetime)\s+
     (?:numbers|figures)
    |(?:numbers|figures)\s+(?:for|from|over|of)\s+(?:the\s+)?(?:today|this|last|past|yesterday|week|month|quarter|year|
     lifetime|all)
    |(?:summary|overview|recap|breakdown|digest)\s+of\s+(?:my\s+|the\s+|our\s+)?(?:\w+\s+)?(?:e-?mails?|sending|sends|
     messages|deliveries|activity))\b""",
    re.I | re.X,
)
_NOUN_FLAVOUR = re.compile(
    r"\b(?P<thank>thank[- ]you|thanks)\b|\b(?P<remind>reminders?)\b|\b(?P<invite>invitations?|invites?)\b", re.I
)
_TEST_EMAIL = re.compile(r"\btest\s+(?:e-?mail|mail|message)\b|\ba\s+test\b", re.I)
_TOPIC_START = re.compile(r"(?:about|abt|regarding|concerning|re\s*:)\s*", re.I)
_EDGE_NOISE = re.compile(r"^[\s,;:.|\-]+|(?:[\s,;:|\-]|\band\b|\bthen\b)+$", re.I)


@dataclass(frozen=True)
class _SendRequest:
    recipients: _Recipients
    subject: str  # as written, or ""
    body: str  # the dictated content, before any phrasing
    body_flavour: str  # "" to send as written (capitalised), "verbatim" to keep, else a verb flavour
    topic: str  # "about ..."
    topic_flavour: str
    flavour: str  # of the leading verb, or of a noun such as "a reminder"
    description: str  # the recipient as described when no address names them ("the client")
    command_key: str  # head and topic in matching form: where report words and time ranges are read
    dictated: bool  # content came after a cue, so figures in it are its topic, not a report to send
    test: bool  # "send a test email"


def _clean(text: str) -> str:
    return _EDGE_NOISE.sub("", text).strip()


def _head_leftover(ws: _Workspace, segment: _Segment, has_address: bool) -> tuple[str, str]:
    """The words of the head that are neither command nor recipients, and the recipient it describes."""
    text = ws.text[segment.start : segment.end]
    key = ws.key[segment.start : segment.end]
    spans = [match.span() for match in _HEAD_NOISE.finditer(key)]
    verb = _LEAD_VERB_PHRASE.match(key)
    if verb:
        spans.append(verb.span())
    for start, end in spans:
        text = text[:start] + " " * (end - start) + text[end:]
    description = ""
    if not has_address:
        who = _DESCRIPTION.match(text)
        if who:
            description, text = who.group("who"), text[who.end() :]
    text = _SPACES.sub(" ", text).strip()
    if _ONLY_FILLER.fullmatch(text):
        return "", description
    return _clean(_TRAILING_PLEASE.sub("", text)), description


def _parse_send(ws: _Workspace, start: int, verb: str, preamble: tuple[int, int] | None) -> _SendRequest:
    segments, cues = _segments(ws, start, verb)
    recipients, content = _collect_recipients(ws, segments, cues, preamble)
    heads = [segment for segment in segments if segment.kind == "head"]
    flavour = _flavour(verb)
    noun = _NOUN_FLAVOUR.search(ws.key, heads[0].start, heads[0].end) if heads else None
    if noun and flavour == "send":
        flavour = noun.lastgroup  # "send a@x.com a reminder about ..."
    subject = body = topic = ""
    body_flavour, topic_flavour = "", flavour
    for segment in content:
        value = _clean(ws.restore(segment.start, segment.end))
        topic_start = _TOPIC_START.match(value)
        if segment.kind in ("body", "quote") and not segment.verbatim and topic_start:
            # "Tell a@x.com about the launch": a topic, whatever cue came before it.
            topic_flavour = segment.flavour or flavour
            segment, value = _Segment("topic", segment.start, segment.end), value[topic_start.end() :]
        if not value:
            continue
        if segment.kind == "subject" and not subject:
            subject = value
        elif segment.kind == "topic" and not topic:
            topic = value
        elif segment.kind in ("body", "quote") and not body:
            body, body_flavour = value, "verbatim" if segment.verbatim else segment.flavour
    dictated = bool(body)
    if preamble and not (body or topic or subject):
        # "I'm running late. Let a@x.com know.": what came before the verb is the message.
        body = _clean(_PLACEHOLDER.sub(" ", ws.text[preamble[0] : preamble[1]]))
    leftover, description = _head_leftover(ws, heads[0], bool(recipients.all())) if heads else ("", "")
    bare_object = _OBJECT_PHRASE.fullmatch(leftover) and not _FINITE_VERB.search(leftover)
    if leftover and not (body or topic or subject or bare_object):
        body, body_flavour = leftover, flavour
    command_key = " ".join(ws.key[seg.start : seg.end] for seg in segments if seg.kind in ("head", "topic"))
    return _SendRequest(
        recipients=recipients,
        subject=subject,
        body=body,
        body_flavour=body_flavour,
        topic=topic,
        topic_flavour=topic_flavour,
        flavour=flavour,
        description=description,
        command_key=command_key,
        dictated=dictated,
        test=bool(_TEST_EMAIL.search(command_key)),
    )


# ---------------------------------------------------------------------------------------------------------
# Sending, 4: phrasing the body and the subject

_LEADING_LINK = re.compile(r"^(?:that|to)\s+", re.I)
_INFINITIVE = re.compile(r"to\s+(.+)", re.I | re.S)
_WANTED = re.compile(r"for\s+(.+)", re.I | re.S)
_ASK_QUESTION = re.compile(r"(?:if|whether|when|where|what|who|why|how|which)\b", re.I)
_PHRASINGS = {
    "ask": "Could you please {}?",
    "tell": "Please {}.",
    "remind": "Just a reminder to {}.",
    "invite": "You're invited to {}.",
    "send": "I'm writing to {}.",
}
_FIRST_SENTENCE = re.compile(r"(?<=[.!?;])\s|\n")
_LEADING_ARTICLE = re.compile(r"^(?:the|a|an)\s+(?=\w)", re.I)
_DANGLING_END = re.compile(r"(?:[\s,;:\-]|\b(?:and|or|the|a|an|to|of|for|with|in|on|at|but)\b)+$", re.I)
_FIELD_WORDS = re.compile(r"\b(?:subject|body)\s*:", re.I)
_DOUBLE_SPACES = re.compile(r"[ \t]{2,}")


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text + "." if text[-1].isalnum() else text


def _compose_body(core: str, flavour: str) -> str:
    """The body for dictated content, phrased for the verb that introduced it ("remind ... to", "ask ... to")."""
    if flavour == "verbatim":
        return core[:1].upper() + core[1:]
    if not flavour:
        return _sentence(core)
    infinitive = _INFINITIVE.match(core)
    if infinitive and (flavour == "invite" or not _NOT_PURPOSE.match(infinitive.group(1))):
        return _PHRASINGS.get(flavour, _PHRASINGS["send"]).format(infinitive.group(1).rstrip(".!?"))
    wanted = _WANTED.match(core)
    if wanted and flavour in ("ask", "thank"):
        template = "Could I please get {}?" if flavour == "ask" else "Thank you for {}."
        return template.format(wanted.group(1).rstrip(".!?"))
    if flavour == "ask" and _ASK_QUESTION.match(core):
        return f"Could you let me know {core.rstrip('.!?')}?"
    if flavour == "remind":
        return _sentence("Just a reminder that " + _LEADING_LINK.sub("", core))
    return _sentence(core)


def _about_body(topic: str, flavour: str) -> str:
    topic = topic.rstrip(".!?")
    if flavour == "remind":
        return f"Just a reminder about {topic}."
    if flavour == "ask":
        return f"I have a question about {topic}."
    return f"About {topic}."


def _derive_subject(text: str) -> str:
    """A short subject from content: its first sentence, at most SUBJECT_MAX characters, cut at a word."""
    first = _FIRST_SENTENCE.split(text.strip(), maxsplit=1)[0]
    first = _WHITESPACE.sub(" ", _LEADING_ARTICLE.sub("", first)).strip(" .,;:!?")
    if len(first) > SUBJECT_MAX:
        cut = first[: SUBJECT_MAX + 1]
        cut = cut.rsplit(" ", 1)[0] if " " in cut else first[:SUBJECT_MAX]
        first = _DANGLING_END.sub("", cut)
    return first[:1].upper() + first[1:]


def _email_body(request: _SendRequest) -> str:
    if request.body:
        return _compose_body(request.body, request.body_flavour)
    if request.topic:
        return _about_body(request.topic, request.topic_flavour)
    if request.flavour == "thank":
        return "Thank you!"
    return "This is a test email." if request.test else ""


def _email_subject(request: _SendRequest, body: str) -> str:
    """The subject as written, else one derived from the topic or from the dictated content."""
    if request.subject:
        subject = request.subject.split("\n")[0].strip().rstrip(".,;:").strip()
        return subject if len(subject) <= _HEADER_MAX else subject[:_HEADER_MAX].rsplit(" ", 1)[0]
    if request.topic:
        return _derive_subject(("Reminder: " if request.topic_flavour == "remind" else "") + request.topic)
    if request.test and not request.body:
        return "Test email"
    flavour, core = request.body_flavour, _LEADING_LINK.sub("", request.body)
    if flavour in ("ask", "thank"):
        return "Quick question" if flavour == "ask" else "Thank you"
    if flavour in ("remind", "invite"):
        return _derive_subject(("Reminder: " if flavour == "remind" else "Invitation: ") + core)
    return _derive_subject(core if flavour in ("send", "tell") else body)


def _scrub(text: str, recipients: list[str]) -> str:
    """Remove recipient addresses and field labels that would otherwise leak into a subject or a body."""
    if recipients:
        text = _MENTIONED_ADDRESS.sub(
            lambda match: "" if match.group("addr").lower() in recipients else match.group(0), text
        )
    return _DOUBLE_SPACES.sub(" ", _FIELD_WORDS.sub("", text)).strip()


def _email_content(request: _SendRequest) -> tuple[str, str]:
    body = _email_body(request)
    subject = _email_subject(request, body)
    recipients = request.recipients.all()
    return _scrub(subject, recipients).replace("\n", " "), _scrub(body, recipients)


# ---------------------------------------------------------------------------------------------------------
# Information requests: analytics, status, messages

_HOWTO = re.compile(r"\bhow\s+(?:do|can|could|should|would)\s+(?:i|we|you|one)\b|\bhow\s+to\b", re.I)
_CAPABILITY = re.compile(
    r"\bwhat\s+(?:can|could)\s+(?:you|i)\s+(?:do|ask)\b|\bwhat\s+(?:actions|commands|things|features|functions|tools|"
    r"capabilities|options)\b|\bwhat\s+(?:do|does|can)\s+(?:you|this|it)\s+(?:do|support|offer|handle)\b|"
    r"\bwho\s+are\s+you\b|\bwhat\s+are\s+you\b|^\W*help\W*$|\byour\s+(?:capabilities|features|commands)\b",
    re.I,
)
_INBOX = re.compile(
    r"\b(?:inbox|unread|incoming|spam|junk|new\s+(?:e-?mails|mail|messages)|repl(?:y|ied|ies)|respond(?:ed)?|"
    r"(?:i|we)\s+(?:have\s+|'ve\s+)?(?:received|got|gotten)|received\s+(?:e-?mails?|mail|messages?)|"
    r"did\s+(?:i|we)\s+(?:get|receive)|sent\s+(?:to\s+)?(?:me|us))\b",
    re.I,
)
_ANALYTICS = re.compile(
    r"""\b(?:how\s+many|how\s+much|how\s+often|number\s+of|count|counts|counting|totals?|rates?|ratios?|percent(?:age)?s?|
    stats?|statistics?|analytics|metrics?|figures|numbers|kpis?|reports?|reporting|deliverability|performance|perform(?:ing|ed)?|
    summary|summari[sz]e|overview|breakdown|trends?|volume|dashboard|insights?|activity|tally)\b|%
    |\bhow(?:'s|\s+(?:am|are|is|was|were|did|do|does|have|has))\s+(?:i|we|my|our|things|it|the\s+\w+)\b[^?.!]*?
     \b(?:doing|going|looking|look|perform\w*|do|went|go|trending)\b""",
    re.I | re.X,
)
_STATUS = re.compile(
    r"""\b(?:connect\w*|disconnect\w*|reconnect\w*|re-connect\w*|(?:un)?linked|link\s+(?:my\s+|the\s+)?(?:gmail|google|
    account|mailbox)|log(?:ged)?[\s-]?(?:in|out|on)|login|sign(?:ed)?[\s-]?(?:in|on)|signin|re-?auth\w*|authori[sz]\w*|
    authenticat\w*|oauth|tokens?|credentials?|password|health\w*|log\s+(?:me\s+)?(?:back\s+)?in|
    ping\s+(?:the\s+)?(?:server|service|api)|up\s+and\s+running|outage|downtime|operational|
    (?:service|system|server|api|account|mailbox|gmail|smtp|connection)\s+status|status\s+of\s+(?:the\s+|my\s+)?
    (?:service|server|system|api|account|mailbox|connection|gmail|smtp))\b
    |\b(?:is|are|'s)\s+(?:the\s+|my\s+|your\s+|it\s+|everything\s+|this\s+)?(?:[\w-]+\s+){0,2}(?:working|broken|down|
     online|offline|up|running|available|alive|reachable|ok|okay|fine|configured|set\s*up|ready)\b
    |^\W*(?:check\s+)?(?:the\s+)?status\W*$""",
    re.I | re.X,
)
_LIST_STATUS_OF = re.compile(r"\bstatus(?:es)?\s+of\s+(?:my|the|all|our)?\s*(?:\w+\s+)?(?:e-?mails|messages)\b", re.I)
_EMAIL_THINGS = re.compile(
    r"\b(?:e-?mails?|mails|messages?|msgs?|sends|deliveries|outbox|sent\s+(?:items|folder))\b", re.I
)
_LIST_CUES = re.compile(
    r"\b(?:what|which)\s+(?:did|have|has)\s+(?:i|we)\s+(?:sent|send)\b|\b(?:sent|send)\s+(?:recently|lately)\b|"
    r"\b(?:recently|lately)\s+sent\b|\boutbox\b|\bcheck\s+(?:on\s+)?(?:my\s+|our\s+)?(?:e-?)?mail\b",
    re.I,
)
_MY_EMAILS = re.compile(
    r"\b(?:my|our|recent|latest|last|newest)\s+(?:\w+\s+)?(?:e-?mails?|messages?|mails?|sends)\b", re.I
)
_OFF_TOPIC = re.compile(
    r"\b(?:tell\s+me\s+about|explain|history\s+of|what\s+(?:is|are)\s+(?:an?\s+)?(?:e-?mails?|smtp|spf|dkim|dmarc|imap|pop)\b|"
    r"define|definition|invent\w*|how\s+does\s+e-?mail|poem|joke|story|weather|news|recipe)\b",
    re.I,
)
# Checked in order: the first family found is the status ("not sent yet" is pending before "sent" is sent).
_STATUS_WORDS = (
    (
        "pending",
        r"\bnot\s+(?:yet\s+)?(?:been\s+)?sent\s+yet|\bnot\s+yet\s+(?:been\s+)?sent|\byet\s+to\s+(?:be\s+sent|go\s+out)|"
        r"\bunsent\b|\b(?:haven't|have\s+not|hasn't|has\s+not)\s+(?:gone\s+out|been\s+sent)",
    ),
    (
        "failed",
        r"\b(?:fail(?:ed|ing|ures?|s)?|bounc(?:ed|es|ing|e)|undeliver(?:ed|able)|non-?delivered|errored|errors?|rejected|"
        r"unsuccessful)\b|\b(?:not|n't|never)\s+(?:be\s+|been\s+|get\s+|got\s+)?(?:delivered|go\s+(?:out|through)|"
        r"make\s+it|arrive|get\s+through|sent)\b",
    ),
    ("cancelled", r"\b(?:cancel(?:l?ed|lations?)|aborted|called\s+off)\b"),
    ("scheduled", r"\b(?:scheduled|upcoming|planned|future|set\s+to\s+go\s+out|due\s+to\s+go\s+out|later)\b"),
    ("queued", r"\b(?:queued|in\s+(?:the\s+)?queue|queue|waiting|on\s+hold|in\s+line)\b"),
    (
        "sending",
        r"\b(?:sending\s+(?:right\s+)?now|being\s+sent|in\s+(?:progress|flight|transit)|currently\s+sending|"
        r"going\s+out\s+(?:right\s+)?now)\b",
    ),
    (
        "sent",
        r"\b(?:delivered|went\s+out|gone\s+out|got\s+sent|been\s+sent|were\s+sent|was\s+sent|successfully|successful|"
        r"succeeded|went\s+through|made\s+it|arrived|sent\s+(?:e-?mails|messages|mails|ones|items|folder)|"
        r"(?:e-?mails|messages|mails)\s+sent)\b",
    ),
    ("pending", r"\b(?:pending|outstanding|stuck|in\s+the\s+outbox)\b"),
)
_STATUS_PATTERNS = tuple((status, re.compile(pattern, re.I)) for status, pattern in _STATUS_WORDS)
_LIMIT = re.compile(
    rf"""\b(?:last|latest|recent|newest|most\s+recent|past|previous|top|first|show|list|display|get|fetch|see|view|
        give\s+me)\s+(?:my\s+|the\s+)?(?P<a>{_NUM})(?!\s*(?:[\s-](?:hours?|hrs?|days?|weeks?|wks?|months?|mos|quarters?|
        years?|yrs?)\b|%|\s*percent))
    |\b(?P<b>{_NUM})\s+(?:(?:most\s+)?(?:recent|latest|newest|last|previous|failed|sent|queued|scheduled|cancelled|
        canceled|pending|bounced|delivered|undelivered|outgoing|new|successful)\s+)*(?:e-?mails?|messages?|mails?|sends|
        ones|items|entries|results)\b
    |\b(?:limit(?:ed)?(?:\s+(?:it|to|of|at))*|up\s+to|at\s+most|no\s+more\s+than|max(?:imum)?(?:\s+of)?)\s+(?P<c>{_NUM})
    """,
    re.I | re.X,
)
_SINGLE = re.compile(
    r"\b(?:the|my)\s+(?:very\s+)?(?:last|latest|most\s+recent|newest|previous)\s+(?:e-?mail|message|mail|send)\b(?!s)"
    r"|\b(?:last|latest)\s+one\b",
    re.I,
)
_EVERYTHING = re.compile(r"\ball\s+(?:of\s+)?(?:my\s+|the\s+|our\s+)?(?:\w+\s+)?(?:e-?mails|messages|mails)\b", re.I)
# "show my stats and email them to a@x.com" (then send) and "I'd like my stats sent to a@x.com" (send).
_SEND_THEM = re.compile(
    rf"\b(?:{_SEND_VERB})\s+(?:them|it|this|that|these|those|the\s+\w+)?\s*(?:to|over\s+to)\s+{_ADDR_LIST}", re.I
)
_SENT_TO = re.compile(
    rf"\b(?:sent|e-?mailed|mailed|forwarded|delivered|shared)\s+(?:over\s+)?(?:to|with)\s+{_ADDR_LIST}", re.I
)
_QUESTION_START = re.compile(r"\W*(?:how|what|which|who|when|did|do|does|is|are|was|were)\b", re.I)


def _list_parameters(key: str) -> dict:
    status = next((name for name, pattern in _STATUS_PATTERNS if pattern.search(key)), None)
    limit = DEFAULT_LIMIT
    match = _LIMIT.search(key)
    if match:
        limit = _number(match.group("a") or match.group("b") or match.group("c"))
    elif _SINGLE.search(key):
        limit = 1
    elif _EVERYTHING.search(key):
        limit = MAX_LIMIT
    return {"status": status, "limit": max(1, min(MAX_LIMIT, limit))}


def _about_messages(key: str) -> bool:
    mentions = any(pattern.search(key) for _, pattern in _STATUS_PATTERNS)
    mentions = mentions or bool(_EMAIL_THINGS.search(key) or _LIST_CUES.search(key))
    return mentions and not (_OFF_TOPIC.search(key) and not _MY_EMAILS.search(key))


def _plan_info(ws: _Workspace) -> RulesPlan | None:
    """The plan for a request for information, or None when it asks for nothing the service knows."""
    key = ws.key
    if ws.message_ids:
        return _message_plan(ws.message_ids)
    if _HOWTO.search(key) or _CAPABILITY.search(key):
        return _no_action(f"{CAPABILITIES} Just tell me what you'd like to do.")
    if _INBOX.search(key) and not _STATUS.search(key):
        return _no_action(f"I can't read your inbox or received mail. {CAPABILITIES}")
    if _ANALYTICS.search(key) and not _OFF_TOPIC.search(key):
        return _analytics_plan(ws)
    if _STATUS.search(key) and not _LIST_STATUS_OF.search(key):
        return _status_plan()
    if _MESSAGE_ID_LIKE.search(key):
        return _bad_id_plan()
    if _about_messages(key):
        return _list_plan(key)
    return None


# ---------------------------------------------------------------------------------------------------------
# Plans and their responses

_THANKS = re.compile(r"\b(?:thanks?|thx|ty|cheers)\b", re.I)
_MY_OR_OUR = re.compile(r"^(?:my|our)\b", re.I)
_PRONOUNS = {"them", "him", "her", "everyone", "everybody", "all", "me", "us"}
_CHANNEL_IN_HEAD = re.compile(
    r"\b(?:sms|txt|whats\s*app|slack|tweet|imessage|telegram|fax|voice\s*mail|voice\s+message|text\s+messages?|"
    r"an?\s+text(?!\s+(?:e-?mail|body))|(?:by|via|over|through)\s+(?:text|phone|sms|signal|teams))\b",
    re.I,
)
_GENERIC_SEND = re.compile(r"\s*(?:send|write|compose)\s+(?:e-?mails|messages|mail)\W*$", re.I)


def _no_action(response: str) -> RulesPlan:
    return RulesPlan(response=response, steps=[])


def _message_plan(ids: tuple[str, ...]) -> RulesPlan:
    steps = [Step("get_message", {"message_id": message_id}, []) for message_id in ids]
    return RulesPlan(f"I'll look up the status of {_join(ids)}.", steps)


def _bad_id_plan() -> RulesPlan:
    return RulesPlan(
        "That message id doesn't look right: ids look like msg_ followed by 24 lowercase hex characters. "
        "Which message should I look up?",
        [Step("get_message", {"message_id": ""}, ["message_id"])],
    )


def _status_plan() -> RulesPlan:
    return RulesPlan(
        "I'll check the service status and whether your mailbox is connected.", [Step("check_status", {}, [])]
    )


def _list_plan(key: str) -> RulesPlan:
    parameters = _list_parameters(key)
    status, limit = parameters["status"], parameters["limit"]
    what = {None: "message", "sending": "message being sent", "sent": "sent message"}.get(status, f"{status} message")
    if limit == 1:
        response = f"Here is your most recent {what}."
    else:
        response = f"Here are your {limit} most recent {what.replace('message', 'messages', 1)}."
    return RulesPlan(response, [Step("list_messages", parameters, [])])


def _analytics_plan(ws: _Workspace) -> RulesPlan:
    key = ws.key
    time = _time_parameters(key)
    figures = Step("get_analytics", dict(time), [])
    forward = _SEND_THEM.search(key)
    sent_to = _SENT_TO.search(key)
    if not forward and sent_to and _REPORT_WORDS.search(key, 0, sent_to.start()) and not _QUESTION_START.match(key):
        forward = sent_to
    if forward:
        recipients = _Recipients([], [], [], [])
        _head_recipients(ws, forward.start(), len(key), recipients)
        recipients = recipients.finished()
        report = Step("send_report", {"to": recipients.to, "cc": recipients.cc, **time}, [])
        if recipients.to and forward.re is _SENT_TO:
            return RulesPlan(f"I'll email your analytics for {_period(time)} to {_join(recipients.to)}.", [report])
        if recipients.to:
            return RulesPlan(
                f"Here are your email analytics for {_period(time)}; then I'll email them to {_join(recipients.to)}.",
                [figures, report],
            )
    return RulesPlan(f"Here are your email analytics for {_period(time)}.", [figures])


def _report_plan(request: _SendRequest) -> RulesPlan:
    time = _time_parameters(f"{request.command_key} {request.body}")
    recipients = request.recipients
    if not recipients.to:
        # The seed's rule: with nobody to send the figures to, show them first and ask for an address.
        return RulesPlan(
            f"Here are your figures for {_period(time)}; give me an address to email them to.",
            [
                Step("get_analytics", dict(time), []),
                Step("send_report", {"to": [], "cc": recipients.cc, **time}, ["to"]),
            ],
        )
    response = f"I'll email your analytics for {_period(time)} to {_join(recipients.to)}"
    response += f", copying {_join(recipients.cc)}." if recipients.cc else "."
    if recipients.bcc:
        response += f" Reports can't be blind-copied, so I left out {_join(recipients.bcc)}."
    return RulesPlan(response, [Step("send_report", {"to": recipients.to, "cc": recipients.cc, **time}, [])])


def _email_response(request: _SendRequest, subject: str, missing: list[str], invalid: list[str], verb: str) -> str:
    recipients = request.recipients
    note = f'"{invalid[0]}" is not a valid email address. ' if invalid and "to" in missing else ""
    if missing == ["to", "body"]:
        return note + "Who should I send it to, and what should it say? Give me their email address and the message."
    if missing == ["to"]:
        who = request.description
        if who and who.lower() not in _PRONOUNS:
            who = _MY_OR_OUR.sub("your", who)
            return note + f"What is {who}'s email address? Give me the address and I'll send it."
        return note + "Who should I send it to? Give me their email address."
    if missing == ["body"]:
        return f"What should the email to {_join(recipients.to)} say?"
    response = f"I'll email {_join(recipients.to)}"
    if subject:
        response += f' with the subject "{subject}"'
    extras = [f"copying {_join(recipients.cc)}"] if recipients.cc else []
    if recipients.bcc:
        extras.append(f"blind-copying {_join(recipients.bcc)}")
    response += (", " + " and ".join(extras) if extras else "") + "."
    if verb == "schedule":
        response += " Scheduling isn't available here, so it goes out when you confirm."
    return response


def _email_plan(ws: _Workspace, request: _SendRequest, verb: str) -> RulesPlan:
    subject, body = _email_content(request)
    recipients = request.recipients
    parameters = {
        "to": recipients.to,
        "cc": recipients.cc,
        "bcc": recipients.bcc,
        "subject": subject,
        "body": body,
        "body_type": "text",
        "reply_to": recipients.reply_to,
        "idempotency_key": None,
    }
    missing = [name for name, value in (("to", recipients.to), ("body", body)) if not value]
    invalid = [token for token in _AT_TOKEN.findall(ws.text) if len(token) > 1]
    response = _email_response(request, subject, missing, invalid, verb)
    return RulesPlan(response, [Step("send_email", parameters, missing)])


def _only_figures(content: str) -> bool:
    """Whether dictated content only names figures ("Email these stats to a@x.com: today's numbers")."""
    return bool(_REPORT_WORDS.search(content)) and not _FINITE_VERB.search(content)


def _plan_send(ws: _Workspace, start: int, verb: str, preamble: tuple[int, int] | None = None) -> RulesPlan:
    request = _parse_send(ws, start, verb, preamble)
    if _CHANNEL_IN_HEAD.search(request.command_key):
        return _no_action(f"I can only send email, not texts, calls or chat messages. {CAPABILITIES}")
    if verb.startswith(("forward", "fwd")) and ws.message_ids:
        return _no_action("I can't forward a stored message, but I can look it up or send a new email.")
    if _REPORT_WORDS.search(request.command_key) and (not request.dictated or _only_figures(request.body)):
        return _report_plan(request)
    nothing_given = not (request.recipients.all() or request.body or request.topic or request.subject)
    if nothing_given and _GENERIC_SEND.match(ws.key, start):
        return _no_action(f"Yes. {CAPABILITIES} Tell me who to email and what to say.")
    return _email_plan(ws, request, verb)


def _greeting(ws: _Workspace) -> RulesPlan:
    if _THANKS.search(ws.key):
        return _no_action(f"You're welcome! {CAPABILITIES}")
    if _WORD.search(ws.key):
        return _no_action(f"Hello! {CAPABILITIES} What would you like to do?")
    return _no_action(f"What would you like to do? {CAPABILITIES}")


def _refusal(ws: _Workspace, verb: str) -> RulesPlan:
    if ws.message_ids:
        return _no_action(f"I can't {verb} a message from here, but I can look up {_join(ws.message_ids)} for you.")
    what = next((what for pattern, what in _UNSUPPORTED if pattern.match(verb)), "do that")
    return _no_action(f"I can't {what}: this service only sends new mail. {CAPABILITIES}")


def plan_prompt(prompt: str) -> RulesPlan:
    """The actions a prompt asks for, the one that answers it first; no steps when no action covers it."""
    text = _normalise(prompt if isinstance(prompt, str) else "")
    ws = _workspace(text)
    start = _command_start(ws)
    if text.endswith("?") and _POLITE_QUESTION.search(ws.key, 0, start):
        # "Could you tell a@x.com the build is green?": the question mark is the request's, not the content's.
        ws = _workspace(text[:-1])
    if not _WORD.search(ws.key, start):
        return _greeting(ws)
    lead = _lead(ws.key, start)
    if lead.kind == "channel":
        return _no_action(f"I can only send email, not calls or text messages. {CAPABILITIES}")
    if lead.kind == "unsupported":
        return _refusal(ws, lead.verb)
    if lead.kind == "send" and _qualifies_as_send(ws, lead):
        return _plan_send(ws, start, lead.verb)
    if lead.kind == "other":
        later = _LATER_SEND.search(ws.key, start)
        if later:
            return _plan_send(ws, later.start("verb"), later.group("verb").lower(), (start, later.start()))
    plan = _plan_info(ws)
    if plan is not None:
        return plan
    if lead.kind == "other" and ws.addresses:
        return _plan_send(ws, start, "")  # an address and something to say, with no verb at all
    if _CHANNEL_IN_HEAD.search(ws.key):
        return _no_action(f"I can only send email, not texts, calls or chat messages. {CAPABILITIES}")
    return _no_action(f"I can't help with that. {CAPABILITIES}")
