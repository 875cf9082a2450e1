"""Browser journey (Playwright, Debian Chromium): sign in as a clinician, see only the
clinician's pages, get refused at a manager page's URL, sign out.

The app runs as a real ``streamlit run app.py`` server on a free loopback port, with
``QUALITY_DEMO_MODE=0``, on a copy of the tiny demo DB holding a clinician and an admin.
Screenshots go to a temporary folder; with ``QUALITY_SAVE_SCREENSHOTS=1`` the final ones are
also copied to ``docs/screenshots/login-*.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import copy_demo_db, service_missing
from netutil import free_port
from sqlalchemy.orm import Session

from quality import auth
from quality.db.session import make_engine, upgrade

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
CLINICIAN, ADMIN = "clara", "adam"
PASSWORD = "clinician password 1"
CLINICIAN_MENU = {"Overview", "Browser", "Spot-check"}
START_TIMEOUT_S = 90
STEP_TIMEOUT_MS = 60_000


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def app_url(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A streamlit server on a copy of the tiny demo with a clinician and an admin."""
    folder = tmp_path_factory.mktemp("e2e")
    url = copy_demo_db(tiny_demo, folder)
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as s:
        auth.add_user(s, CLINICIAN, "clinician", PASSWORD, display_name="Dr Clara")
        auth.add_user(s, ADMIN, "admin", "admin password 12")
        s.commit()
    engine.dispose()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUALITY_")}
    env |= {"QUALITY_DB_URL": url, "QUALITY_DEMO_MODE": "0", "PYTHONUNBUFFERED": "1"}
    log = (folder / "streamlit.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
            "--server.port", str(port), "--server.address", "127.0.0.1",
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
        ],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(base):
            if server.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (folder / "streamlit.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"streamlit did not start (exit {server.poll()}):\n{tail}")
            time.sleep(0.3)
        yield base
    finally:
        # The whole process group: streamlit may have started helpers.
        with_group = server.poll() is None
        if with_group:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        service_missing("Chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_missing("Playwright (the Python package)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _sign_in(page: object, username: str, password: str) -> None:
    page.get_by_label("User name").fill(username)  # type: ignore[attr-defined]
    page.get_by_label("Password", exact=True).fill(password)  # type: ignore[attr-defined]
    page.get_by_role("button", name=re.compile("Sign in")).click()  # type: ignore[attr-defined]


def _menu(page: object) -> set[str]:
    links = page.locator('[data-testid="stSidebarNav"] a')  # type: ignore[attr-defined]
    # A link reads "<icon>\n\n<title>": keep the title.
    return {t.strip().splitlines()[-1].strip() for t in links.all_inner_texts()}


def test_clinician_journey(app_url: str, browser: object, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    # Two shared cores: a page run can take seconds (expect's own default is 5 s).
    expect.set_options(timeout=STEP_TIMEOUT_MS)
    shots: dict[str, Path] = {}

    def shot(name: str) -> None:
        shots[name] = tmp_path / f"login-{name}.png"
        page.screenshot(path=str(shots[name]), full_page=True)

    context = browser.new_context(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
    context.set_default_timeout(STEP_TIMEOUT_MS)
    page = context.new_page()
    try:
        page.goto(app_url)
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert not page.locator('[data-testid="stSidebarNav"]').count()  # no menu yet
        shot("sign-in")

        # A wrong password: the plain message, still the sign-in page.
        _sign_in(page, CLINICIAN, "not the password")
        expect(page.get_by_text("wrong username or password")).to_be_visible()

        _sign_in(page, CLINICIAN, PASSWORD)
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        expect(page.get_by_text("Signed in as")).to_be_visible()
        expect(page.locator('[data-testid="stSidebarNav"] a')).to_have_count(len(CLINICIAN_MENU))
        assert _menu(page) == CLINICIAN_MENU
        shot("clinician-menu")

        # A manager's page by URL: a new session asks for the sign-in, then refuses.
        page.goto(f"{app_url}/doctors")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        _sign_in(page, CLINICIAN, PASSWORD)
        expect(page.get_by_text("The clinician role cannot open this page.")).to_be_visible()
        assert not page.get_by_role("heading", name="Doctors").count()
        assert not page.locator('[data-testid="stDataFrame"]').count()
        assert _menu(page) == CLINICIAN_MENU
        shot("refused")

        page.get_by_role("button", name=re.compile("Sign out")).click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        expect(page.get_by_text("You are signed out.")).to_be_visible()
    finally:
        context.close()
    if os.environ.get("QUALITY_SAVE_SCREENSHOTS") == "1":
        target = ROOT / "docs" / "screenshots"
        target.mkdir(parents=True, exist_ok=True)
        for path in shots.values():
            shutil.copyfile(path, target / path.name)
