"""A browser stand-in for the OAuth consent flow: follows redirects by hand with a cookie-keeping httpx2 client,
fills in the OIDC provider's (oidc-provider devInteractions) login form and confirms or cancels its consent form,
and stops at the redirect back to the service without requesting it.

    callback = authorize_in_browser(start_url, login="alice@example.com", stop_at="http://127.0.0.1:8000/v1/oauth/")
    # e.g. http://127.0.0.1:8000/v1/oauth/google/callback?code=...&state=...&iss=...

The login form takes any login (the password is ignored): the account's sub is the login, its email the login if it
contains '@', otherwise <login>@example.com. "deny" follows the pages' "[ Cancel ]" link, after which the provider
redirects back with error=access_denied.
"""

import html
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Literal
from urllib.parse import urljoin

import httpx2

MAX_STEPS = 20


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)


class _PageParser(HTMLParser):
    """Collects the page's forms (with their named inputs) and links, and its visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self.links: list[tuple[str, str]] = []  # (href, text)
        self.text: list[str] = []
        self._form: Form | None = None
        self._link: list[str] | None = None  # [href, text...]
        self._skip = 0  # inside <style> or <script>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag in ("style", "script"):
            self._skip += 1
        elif tag == "form":
            self._form = Form(attributes.get("action", ""), attributes.get("method", "get").lower())
            self.forms.append(self._form)
        elif tag in ("input", "button", "textarea", "select") and self._form is not None and attributes.get("name"):
            if tag != "button":  # a named button counts only when clicked; none of the provider's forms has one
                self._form.fields[attributes["name"]] = attributes.get("value", "")
        elif tag == "a" and "href" in attributes:
            self._link = [attributes["href"]]

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script"):
            self._skip = max(0, self._skip - 1)
        elif tag == "form":
            self._form = None
        elif tag == "a" and self._link is not None:
            self.links.append((self._link[0], " ".join("".join(self._link[1:]).split())))
            self._link = None

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self.text.append(data)
        if self._link is not None:
            self._link.append(data)


def _parse(page: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(page)
    parser.close()
    return parser


def _page_text(page: str) -> str:
    try:
        text = " ".join(" ".join(_parse(page).text).split())
    except Exception:  # not HTML after all
        text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))
    return text[:3000]


def authorize_in_browser(
    authorization_url: str,
    login: str,
    stop_at: str,
    action: Literal["consent", "deny"] = "consent",
    *,
    password: str = "any-password",
    timeout: float = 10,
) -> str:
    """Walks the provider's pages from `authorization_url` and returns the first redirect Location that starts
    with `stop_at` (the service's callback URL), without requesting it. `authorization_url` may also be a URL of
    the service that redirects to the provider."""
    with httpx2.Client(follow_redirects=False, timeout=timeout) as client:
        response = client.get(authorization_url)
        history: list[str] = [f"GET {authorization_url}"]
        for _ in range(MAX_STEPS):
            if response.is_redirect:
                location = urljoin(str(response.url), response.headers["location"])
                if location.startswith(stop_at):
                    return location
                history.append(f"{response.status_code} -> GET {location}")
                response = client.get(location)
                continue
            if response.status_code != 200 or "html" not in response.headers.get("content-type", ""):
                raise AssertionError(
                    f"the browser got stuck at {response.request.method} {response.url}: {response.status_code}\n"
                    f"{_page_text(response.text)}\nsteps: {history}"
                )
            page = _parse(response.text)
            if action == "deny":
                cancel = next((href for href, text in page.links if "cancel" in text.lower()), None)
                cancel = cancel or next((href for href, _ in page.links if href.rstrip("/").endswith("/abort")), None)
                if cancel is None:
                    raise AssertionError(
                        f"no cancel link on {response.url}:\n{_page_text(response.text)}\nsteps: {history}"
                    )
                location = urljoin(str(response.url), cancel)
                history.append(f"cancel -> GET {location}")
                response = client.get(location)
                continue
            form = _choose_form(page.forms)
            if form is None:
                raise AssertionError(
                    f"no login or consent form on {response.url}:\n{_page_text(response.text)}\nsteps: {history}"
                )
            data = dict(form.fields)
            if "login" in data:
                data["login"] = login
            if "password" in data:
                data["password"] = password
            target = urljoin(str(response.url), form.action or str(response.url))
            history.append(f"{data.get('prompt', 'form')} -> {form.method.upper()} {target}")
            post = form.method == "post"
            response = client.post(target, data=data) if post else client.get(target, params=data)
        raise AssertionError(f"no redirect to {stop_at} after {MAX_STEPS} steps: {history}")


def _choose_form(forms: list[Form]) -> Form | None:
    """The login form (it has a `login` field) or the consent form (prompt=consent), else the only form."""
    for form in forms:
        if "login" in form.fields or form.fields.get("prompt") in ("login", "consent"):
            return form
    return forms[0] if len(forms) == 1 else None
