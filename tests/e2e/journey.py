"""Helpers of the browser journeys: the app server, Chromium, sign-in, waits and screenshots.

The app runs as a real ``streamlit run app.py`` server on a free loopback port
(:func:`serve`); Playwright drives Debian's Chromium (``/usr/bin/chromium``, headless; it
downloads no browser). A password sign-in lasts as long as the tab's Streamlit session, so a
journey moves between pages through the sidebar menu (:func:`open_page`); a typed URL
(``page.goto``) starts a new session and asks for the sign-in again.

Screenshots (:class:`Shots`) always go to the test's temporary folder; with
``QUALITY_SAVE_SCREENSHOTS=1`` the ones a journey marks as key are copied to
``docs/screenshots/<prefix>-<step>.png``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "ROOT",
    "SAVE_SCREENSHOTS",
    "START_TIMEOUT_S",
    "STEP_TIMEOUT_MS",
    "Shots",
    "choose",
    "download",
    "grid_rows",
    "journey",
    "menu",
    "new_page",
    "open_page",
    "page_title",
    "serve",
    "server_log_tail",
    "sign_in",
    "wait_idle",
]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
START_TIMEOUT_S = 90
STEP_TIMEOUT_MS = 90_000
"""Bound of one step (a page run on two shared cores can take tens of seconds on the small
demo; Playwright's own default is 5 s for ``expect`` and 30 s for actions)."""
SAVE_SCREENSHOTS = os.environ.get("QUALITY_SAVE_SCREENSHOTS") == "1"
SERVER_LOGS: dict[str, Path] = {}
"""Base URL → log file of each server :func:`serve` started (for failure reports)."""
VIEWPORT = {"width": 1280, "height": 800}
"""The window of every journey (and of its screenshots)."""


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def serve(db_url: str, folder: Path, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Run ``streamlit run app.py`` on ``db_url`` with sign-in required; yield its base URL.

    Parameters
    ----------
    db_url : the app's ``QUALITY_DB_URL``.
    folder : where the server's log goes (``streamlit.log``).
    env : more ``QUALITY_*`` settings (the caller's own ``QUALITY_*`` variables are not
        passed on, so a developer's settings cannot leak into the journey).
    """
    from netutil import free_port

    port = free_port()
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("QUALITY_")}
    run_env |= {"QUALITY_DB_URL": db_url, "QUALITY_DEMO_MODE": "0", "PYTHONUNBUFFERED": "1"}
    run_env |= dict(env or {})
    log_path = folder / "streamlit.log"
    log = log_path.open("wb")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
            "--server.port", str(port), "--server.address", "127.0.0.1",
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            # The journeys run on the working tree: an edit made meanwhile must not reload
            # modules under a running journey (and the watcher costs CPU).
            "--server.fileWatcherType", "none",
        ],
        cwd=ROOT, env=run_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    SERVER_LOGS[base] = log_path
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(base):
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"streamlit did not start (exit {server.poll()}):\n{tail}")
            time.sleep(0.3)
        yield base
    finally:
        # The whole process group: streamlit may have started helpers.
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=20)
        log.close()


def server_log_tail(base: str, n_chars: int = 4000) -> str | None:
    """The end of the log of the server at ``base`` (started by :func:`serve`), if any."""
    path = SERVER_LOGS.get(base)
    if path is None or not path.exists():
        return None
    return path.read_text(errors="replace")[-n_chars:]


def new_page(browser: Any) -> tuple[Any, Any]:
    """A fresh browser context (its own cookies, downloads accepted) and a page in it."""
    from playwright.sync_api import expect

    # Two shared cores: a page run can take seconds (expect's own default is 5 s).
    expect.set_options(timeout=STEP_TIMEOUT_MS)
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(STEP_TIMEOUT_MS)
    return context, context.new_page()


def wait_idle(page: Any, *, settle_ms: int = 300) -> None:
    """Wait until this session's script run is over.

    The app root carries the run state (``data-test-script-state``, the attribute
    Streamlit's own browser tests wait on). A click's rerun request reaches it a moment
    after the click, so the state must read ``notRunning`` twice, ``settle_ms`` apart.
    """
    from playwright.sync_api import expect

    app = page.get_by_test_id("stApp")
    deadline = time.monotonic() + STEP_TIMEOUT_MS / 1000
    while True:
        expect(app).to_have_attribute("data-test-script-state", "notRunning")
        page.wait_for_timeout(settle_ms)
        if app.get_attribute("data-test-script-state") == "notRunning":
            return
        if time.monotonic() > deadline:
            pytest.fail("the app kept running past the step timeout")


def sign_in(page: Any, username: str, password: str) -> None:
    """Fill and send the sign-in form (the page must show it)."""
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name=re.compile("Sign in")).click()


def menu(page: Any) -> set[str]:
    """The page titles of the sidebar menu."""
    links = page.locator('[data-testid="stSidebarNav"] a')
    # A link reads "<icon>\n\n<title>": keep the title.
    return {t.strip().splitlines()[-1].strip() for t in links.all_inner_texts()}


def page_title(page: Any, title: str) -> Any:
    """The page's own title (its ``st.title``: "<icon> <title>"), and no other level-1
    heading: a page may render Markdown with a ``#`` heading of its own (the dataset card)."""
    name = re.compile(rf"^\W*{re.escape(title)}\s*$")
    return page.get_by_role("heading", name=name, level=1)


def open_page(page: Any, title: str) -> None:
    """Open a page through the sidebar menu (same session, still signed in) and wait for its
    run to finish."""
    from playwright.sync_api import expect

    link = page.locator('[data-testid="stSidebarNav"] a').filter(
        has_text=re.compile(rf"^\W*{re.escape(title)}\s*$")
    )
    link.click()
    expect(page_title(page, title)).to_be_visible()
    wait_idle(page)


def choose(page: Any, label: str, option: str | re.Pattern[str]) -> None:
    """Pick ``option`` (an option's text, or a pattern it matches) in the select box
    labelled ``label``, and wait for the rerun to finish.

    A select box is a combobox; its list opens on a click. A click that lands while the page
    is still drawing can be swallowed, so the click is repeated until the list shows.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    wait_idle(page)
    box = page.get_by_role("combobox", name=label, exact=True)
    item = page.get_by_role("option", name=option, exact=isinstance(option, str))
    for _ in range(5):
        box.click()
        try:
            expect(item).to_be_visible(timeout=5_000)
            break
        except (AssertionError, PlaywrightTimeout):
            page.keyboard.press("Escape")
    item.click()
    wait_idle(page)


def download(page: Any, button: str, folder: Path) -> Path:
    """Click the download button named ``button`` and return the downloaded file (saved in
    ``folder`` under the name the app gave it)."""
    with page.expect_download() as info:
        page.get_by_role("button", name=button, exact=True).click()
    path = folder / info.value.suggested_filename
    info.value.save_as(path)
    wait_idle(page)
    return path


def grid_rows(table: Any) -> list[list[str]]:
    """The rows of an ``st.dataframe`` (header first) as the grid's accessible table shows
    them: the cells drawn on the canvas, in the columns that fit the view."""
    from playwright.sync_api import expect

    expect(table.locator("[role=row]").first).to_be_attached()
    return [
        [c.strip() for c in row.locator("[role=gridcell], [role=columnheader]").all_text_contents()]
        for row in table.locator("[role=row]").all()
    ]


class Shots:
    """Screenshots of one journey.

    Parameters
    ----------
    page : the Playwright page.
    folder : the test's temporary folder (every shot goes there).
    prefix : file name prefix, ``journey-<role>``.
    """

    def __init__(self, page: Any, folder: Path, prefix: str) -> None:
        self.page = page
        self.folder = folder
        self.prefix = prefix
        self.taken: list[Path] = []
        self.key: list[Path] = []

    def __call__(self, step: str, *, at: Any = None, key: bool = False) -> Path:
        """Take ``<prefix>-<step>.png`` of the view; ``key`` marks it for ``docs/screenshots``.

        Streamlit scrolls its main area inside the window, so a "full page" shot is the
        window: ``at`` (a locator) is scrolled to the top of the view first.
        """
        self.page.mouse.move(0, 0)  # no hover toolbars in the picture
        if at is not None:
            at.first.evaluate("el => el.scrollIntoView({block: 'start'})")
            self.page.wait_for_timeout(300)  # the scroll and lazy charts settle
        path = self.folder / f"{self.prefix}-{step}.png"
        self.page.screenshot(path=str(path))
        self.taken.append(path)
        if key:
            self.key.append(path)
        return path

    def publish(self) -> None:
        """With ``QUALITY_SAVE_SCREENSHOTS=1``, copy the key shots to ``docs/screenshots``."""
        if not SAVE_SCREENSHOTS:
            return
        target = ROOT / "docs" / "screenshots"
        target.mkdir(parents=True, exist_ok=True)
        for path in self.key:
            shutil.copyfile(path, target / path.name)


@contextlib.contextmanager
def journey(browser: Any, folder: Path, prefix: str) -> Iterator[tuple[Any, Shots]]:
    """A page in a fresh context and its :class:`Shots`; closes the context at the end.

    On a failure the view at that moment is saved as ``<prefix>-failed.png`` in ``folder``;
    on success the key shots are published (:meth:`Shots.publish`).
    """
    context, page = new_page(browser)
    shots = Shots(page, folder, prefix)
    try:
        yield page, shots
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(folder / f"{prefix}-failed.png"), timeout=10_000)
        raise
    finally:
        context.close()
    shots.publish()
