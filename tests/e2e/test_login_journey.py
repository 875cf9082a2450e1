"""Browser journey (Playwright, Debian Chromium): sign in as a clinician, see only the
clinician's pages, get refused at a manager page's URL, sign out.

The app runs as a real ``streamlit run app.py`` server on a free loopback port, with
``QUALITY_DEMO_MODE=0``, on a copy of the tiny demo DB holding a clinician and an admin.
Screenshots go to a temporary folder; with ``QUALITY_SAVE_SCREENSHOTS=1`` the final ones are
also copied to ``docs/screenshots/login-*.png``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import copy_demo_db
from sqlalchemy.orm import Session

from e2e.journey import journey, menu, page_title, serve, sign_in, wait_idle
from quality import auth
from quality.db.session import make_engine, upgrade

CLINICIAN, ADMIN = "clara", "adam"
PASSWORD = "clinician password 1"
CLINICIAN_MENU = {"Overview", "Browser", "Spot-check"}


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
    with serve(url, folder, {"QUALITY_THUMB_CACHE_DIR": str(folder / "thumbs")}) as base:
        yield base


def test_clinician_journey(app_url: str, browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    with journey(browser, tmp_path, "login") as (page, shots):
        page.goto(app_url)
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        assert not page.locator('[data-testid="stSidebarNav"]').count()  # no menu yet
        shots("sign-in", key=True)

        # A wrong password: the plain message, still the sign-in page.
        sign_in(page, CLINICIAN, "not the password")
        expect(page.get_by_text("wrong username or password")).to_be_visible()

        sign_in(page, CLINICIAN, PASSWORD)
        expect(page_title(page, "Overview")).to_be_visible()
        expect(page.get_by_text("Signed in as")).to_be_visible()
        expect(page.locator('[data-testid="stSidebarNav"] a')).to_have_count(len(CLINICIAN_MENU))
        assert menu(page) == CLINICIAN_MENU
        wait_idle(page)
        shots("clinician-menu", key=True)

        # A manager's page by URL: a new session asks for the sign-in, then refuses.
        page.goto(f"{app_url}/doctors")
        sign_in(page, CLINICIAN, PASSWORD)
        expect(page.get_by_text("The clinician role cannot open this page.")).to_be_visible()
        wait_idle(page)
        assert not page.get_by_role("heading", name="Doctors").count()
        assert not page.locator('[data-testid="stDataFrame"]').count()
        assert menu(page) == CLINICIAN_MENU
        shots("refused", key=True)

        page.get_by_role("button", name=re.compile("Sign out")).click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        expect(page.get_by_text("You are signed out.")).to_be_visible()
