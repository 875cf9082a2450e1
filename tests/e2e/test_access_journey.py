"""Browser journey: a role is refused at another role's page URL (Playwright, Debian Chromium).

A data scientist types the URL of the labeling worklist (a labeling manager's page) and of
the Audit page (admins only), and a labeling manager the URL of the Spot-check page (a
clinician's): each time a new session asks for the sign-in, then the page refuses the role,
shows no data, and the menu stays the role's own. The clinician's refusal at the Doctors
page is in ``test_login_journey.py``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest import PASSWORD, USERS
from e2e.journey import journey, menu, sign_in, wait_idle
from quality.ui.nav import allowed_pages

SLUGS = {"data scientist": "scientist", "labeling manager": "manager"}
CASES = [
    ("data scientist", "worklist", "Labeling worklist"),
    ("data scientist", "audit", "Audit"),
    ("labeling manager", "spot_check", "Spot-check"),
]


@pytest.mark.parametrize(("role", "url_path", "title"), CASES)
def test_wrong_role_is_refused_at_a_page_url(
    journey_app: str, browser: Any, tmp_path: Path, role: str, url_path: str, title: str
) -> None:
    from playwright.sync_api import expect

    own_menu = {p.title for p in allowed_pages(role)}
    assert title not in own_menu  # the case is a refusal by construction

    with journey(browser, tmp_path, f"journey-{SLUGS[role]}") as (page, shots):
        page.goto(f"{journey_app}/{url_path}")
        sign_in(page, USERS[role], PASSWORD)
        expect(page.get_by_text(f"The {role} role cannot open this page.")).to_be_visible()
        wait_idle(page)
        assert not page.get_by_role("heading", name=re.compile(re.escape(title))).count()
        assert not page.locator('[data-testid="stDataFrame"]').count()
        assert not page.get_by_test_id("stButton").filter(has_text=re.compile("Agree|Run")).count()
        expect(page.locator('[data-testid="stSidebarNav"] a')).to_have_count(len(own_menu))
        assert menu(page) == own_menu
        shots(f"refused-{url_path}", key=url_path == "worklist")
