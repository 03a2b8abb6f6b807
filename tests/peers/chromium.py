"""Debian's Chromium for the browser tests, installed on first use and driven by Playwright's sync API.

    from peers.chromium import browser  # noqa: F401  (the fixture)

    def test_dashboard(server, browser):  # a plain `def` test: the sync API cannot run inside asyncio's loop
        browser.page.goto(f"{server.url}/dashboard")
        browser.page.get_by_role("button", name="Refresh").click()
        browser.screenshot("dashboard")      # tests/artifacts/screenshots/dashboard.png, the full page
        assert browser.errors == []          # console errors, uncaught exceptions, failed requests

`ensure_chromium()` returns /usr/bin/chromium, first installing Debian's packages `chromium` and `fonts-dejavu-core`
(pages render no text without a font) with apt-get where they are missing: as root only, under a file lock so that
parallel test processes do not race. Playwright's own browser downloads are not used.

`Browser` (also a context manager) starts the Playwright driver and a headless Chromium (--no-sandbox: the tests run
as root), opens `page` in a fresh context and records, for every page of that context:
  - `console_errors`: console messages of type "error" (console.error(), and the browser's own, e.g. "Failed to load
    resource: the server responded with a status of 404"), as "text (url:line)";
  - `page_errors`: uncaught exceptions and unhandled promise rejections, as their stack (or message);
  - `failed_requests`: requests that got no response ("GET url: net::ERR_CONNECTION_REFUSED") and responses with an
    HTTP status of 400 or more ("GET url: HTTP 500");
  - `console`: every console message, as "type: text", for reading when a test fails.
`errors` has all three kinds (prefixed "console: ", "pageerror: ", "request: ") less those matching a pattern given to
`ignore()` (and /favicon.ico, which Chromium asks every site for); `assert_no_errors()` raises AssertionError listing
them.

The `browser` fixture starts one Browser per test (0.7-1 s here: driver, Chromium, page) and closes it afterwards. When
the test passed but `errors` is not empty at teardown, the fixture fails the test with them; when the test failed, it
saves a screenshot `failed-<test name>.png` first. Playwright's sync API leaves its event loop marked as the thread's
running loop while it is started, which would break the `async def` tests run after it: that is why the fixture
stops it after every test, and refuses `async def` tests (use Playwright's async API there).
"""

import contextlib
import fcntl
import inspect
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
FONTS_PACKAGE = "fonts-dejavu-core"  # without any font, pages render no text
APT_TIMEOUT = 1200  # seconds, for each apt-get command
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
# Chromium asks every site for /favicon.ico, and logs a console error when it is not there.
IGNORED_BY_DEFAULT = (r"/favicon\.ico\b",)


# Installing Chromium.


def _package_installed(name: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", name], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and result.stdout.startswith("ii")


def _missing_packages() -> list[str]:
    missing = [] if os.access(CHROMIUM, os.X_OK) else ["chromium"]
    if shutil.which("dpkg-query") and not _package_installed(FONTS_PACKAGE):
        missing.append(FONTS_PACKAGE)
    return missing


def _apt_get(*args: str) -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Waits for dpkg's lock rather than failing at once while another apt-get runs.
    command = ["apt-get", "-o", "DPkg::Lock::Timeout=600", *args]
    try:
        result = subprocess.run(
            command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=APT_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        output = getattr(exc, "stdout", None) or ""
        raise RuntimeError(f"{' '.join(command)} failed: {exc}\n{output}".strip()) from exc
    output = f"{result.stdout}\n{result.stderr}".strip()
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {result.returncode}:\n{output}")
    return output


def ensure_chromium() -> str:
    """Returns the path of Debian's Chromium, first installing the packages `chromium` and `fonts-dejavu-core`
    with apt-get where they are missing (as root only), under a file lock against parallel test processes."""
    if not _missing_packages():
        return str(CHROMIUM)
    with open(Path(tempfile.gettempdir(), "emailmcp-chromium-apt.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            missing = _missing_packages()  # another process may have installed them while this one waited
            if not missing:
                return str(CHROMIUM)
            packages = " ".join(missing)
            if shutil.which("apt-get") is None:
                raise RuntimeError(f"the browser tests need the Debian packages {packages}, and there is no apt-get")
            if os.geteuid() != 0:
                raise RuntimeError(
                    f"the browser tests need the Debian packages {packages}, and only root can install them: "
                    f"run `sudo apt-get install --no-install-recommends {packages}`, or the tests as root"
                )
            _apt_get("update")
            output = _apt_get("install", "-y", "--no-install-recommends", *missing)
            if not os.access(CHROMIUM, os.X_OK):
                raise RuntimeError(f"apt-get installed {packages} but there is no {CHROMIUM}:\n{output}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return str(CHROMIUM)


# Driving it.


def _screenshot_path(name: str, directory: Path) -> Path:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name.removesuffix(".png")).strip("-.") or "screenshot"
    return directory / f"{stem}.png"


class Browser:
    """A headless Debian Chromium through Playwright's sync API, one context with `page` open, recording what went
    wrong on its pages. `context_options` go to Playwright's `browser.new_context()` (defaults: locale en-US, time
    zone UTC), e.g. base_url=server.url (then `page.goto("/dashboard")`) or color_scheme="dark". Use it in plain
    `def` tests only."""

    def __init__(
        self,
        *,
        viewport: tuple[int, int] = (1280, 800),
        timeout: float = 10,
        screenshot_dir: Path = SCREENSHOTS,
        **context_options: Any,
    ) -> None:
        self.viewport = viewport
        self.timeout = timeout  # seconds, Playwright's default for actions, waits and navigations
        self.screenshot_dir = screenshot_dir
        self.context_options = context_options
        self.console: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.failed_requests: list[str] = []
        self._ignored = [re.compile(pattern) for pattern in IGNORED_BY_DEFAULT]
        self._playwright = None
        self._browser = None
        self.context = None  # playwright.sync_api.BrowserContext
        self.page = None  # playwright.sync_api.Page, the first page of the context

    def start(self) -> "Browser":
        from playwright.sync_api import sync_playwright

        executable = ensure_chromium()
        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=executable, headless=True, args=["--no-sandbox"]
            )
            width, height = self.viewport
            options = {
                "viewport": {"width": width, "height": height},
                "locale": "en-US",
                "timezone_id": "UTC",
                **self.context_options,
            }
            self.context = self._browser.new_context(**options)
            self.context.set_default_timeout(self.timeout * 1000)
            self.context.on("page", self._watch)
            self.page = self.context.new_page()
        except BaseException:
            self.close()
            raise
        return self

    def new_page(self):
        """Another page (tab) in the same context, watched like the first."""
        return self.context.new_page()

    def _watch(self, page) -> None:
        page.on("console", self._on_console)
        page.on("pageerror", self._on_page_error)
        page.on("requestfailed", self._on_request_failed)
        page.on("response", self._on_response)

    def _on_console(self, message) -> None:
        self.console.append(f"{message.type}: {message.text}")
        if message.type == "error":
            location = message.location or {}
            line = location.get("lineNumber", -1) + 1  # Playwright counts from 0
            where = f" ({location['url']}{f':{line}' if line else ''})" if location.get("url") else ""
            self.console_errors.append(f"{message.text}{where}")

    def _on_page_error(self, error) -> None:
        self.page_errors.append(error.stack or f"{error.name or 'Error'}: {error.message}")

    def _on_request_failed(self, request) -> None:
        self.failed_requests.append(f"{request.method} {request.url}: {request.failure or 'failed'}")

    def _on_response(self, response) -> None:
        if response.status >= 400:
            self.failed_requests.append(f"{response.request.method} {response.url}: HTTP {response.status}")

    def ignore(self, *patterns: str) -> None:
        """Leaves out of `errors` those matching any of these regular expressions (re.search), e.g. an expected 404."""
        self._ignored += [re.compile(pattern) for pattern in patterns]

    @property
    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed requests so far, less those ignored."""
        found = [
            *(f"console: {text}" for text in self.console_errors),
            *(f"pageerror: {text}" for text in self.page_errors),
            *(f"request: {text}" for text in self.failed_requests),
        ]
        return [error for error in found if not any(pattern.search(error) for pattern in self._ignored)]

    def clear(self) -> None:
        """Forgets the messages and errors recorded so far."""
        for recorded in (self.console, self.console_errors, self.page_errors, self.failed_requests):
            recorded.clear()

    def assert_no_errors(self) -> None:
        if errors := self.errors:
            raise AssertionError("the browser saw errors:\n" + "\n".join(errors))

    def screenshot(self, name: str, page=None) -> Path:
        """Saves a PNG of the whole page (scrolled height, not only the viewport) as
        tests/artifacts/screenshots/<name>.png and returns its path."""
        path = _screenshot_path(name, self.screenshot_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        (page or self.page).screenshot(path=path, full_page=True)
        return path

    def close(self) -> None:
        """Closes Chromium and stops the Playwright driver; safe to call twice."""
        browser, playwright = self._browser, self._playwright
        self._browser = self._playwright = self.context = self.page = None
        try:
            if browser is not None:
                with contextlib.suppress(Exception):  # already gone, e.g. after a crash
                    browser.close()
        finally:
            if playwright is not None:
                playwright.stop()

    def __enter__(self) -> "Browser":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture
def browser(request) -> Iterator[Browser]:
    """A started Browser for one plain `def` test, closed afterwards. Fails the test at teardown if the browser saw
    errors that were neither ignored (`browser.ignore(pattern)`) nor cleared (`browser.clear()`); saves
    `failed-<test name>.png` when the test failed."""
    if inspect.iscoroutinefunction(getattr(request, "function", None)):
        pytest.fail(
            f"{request.node.nodeid}: the browser fixture uses Playwright's sync API, which cannot run inside "
            "asyncio's loop: write the test as a plain `def`",
            pytrace=False,
        )
    failed_before = request.session.testsfailed
    instance = Browser().start()
    try:
        yield instance
        if request.session.testsfailed > failed_before:  # the test's call failed (counted before teardown)
            with contextlib.suppress(Exception):
                instance.screenshot(f"failed-{request.node.name}")
        elif errors := instance.errors:
            pytest.fail("the browser saw errors:\n" + "\n".join(errors), pytrace=False)
    finally:
        instance.close()
