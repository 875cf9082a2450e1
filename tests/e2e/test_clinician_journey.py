"""Browser journey of a clinician on the Spot-check page (Playwright, Debian Chromium).

Signs in, draws a sample of the shadow model version's predictions and gives five verdicts
(one with a corrected label and a comment); then the DB holds exactly five new reviews,
under the signed-in clinician, on the sample's first five studies, with the verdicts chosen.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from e2e.conftest import PASSWORD, USERS, JourneyDemo
from e2e.journey import choose, journey, open_page, page_title, sign_in, wait_idle
from quality.db.schema import Review, ReviewSession, ReviewSessionItem, User
from quality.db.session import make_engine

CLINICIAN = USERS["clinician"]
VERDICTS = ("agree", "disagree", "unsure", "agree", "disagree")
BUTTONS = {"agree": "👍 Agree", "disagree": "👎 Disagree", "unsure": "🤷 Unsure"}
CORRECTED_AT = 1  # the first "disagree": a corrected label and a comment
COMMENT = "Looks normal to me: no opacity."


def _n_reviews(url: str) -> int:
    """All review rows of the DB, whoever gave them."""
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            return int(s.scalar(select(func.count()).select_from(Review)) or 0)
    finally:
        engine.dispose()


def test_clinician_gives_five_verdicts(
    journey_app: str, journey_demo: JourneyDemo, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    classes = next(t["classes"] for t in journey_demo.truth["tasks"].values())
    corrected: str | None = None
    reviews_before = _n_reviews(journey_demo.url)

    with journey(browser, tmp_path, "journey-clinician") as (page, shots):
        page.goto(journey_app)
        sign_in(page, CLINICIAN, PASSWORD)
        expect(page_title(page, "Overview")).to_be_visible()
        wait_idle(page)

        open_page(page, "Spot-check")
        expect(page.get_by_text(f"Reviewing as {CLINICIAN} (signed in).")).to_be_visible()
        page.get_by_role("button", name="🎲 Draw and start").click()
        expect(page.get_by_text(re.compile(r"^Drew .*: \d+ studies to review\."))).to_be_visible()
        expect(page.get_by_text(re.compile(r"^Study 1 of \d+$"))).to_be_visible()
        wait_idle(page)
        shots("study", at=page.get_by_text(re.compile(r"^Study 1 of \d+$")), key=True)

        for k, verdict in enumerate(VERDICTS):
            expect(page.get_by_text(re.compile(rf"^Study {k + 1} of \d+$"))).to_be_visible()
            if k == CORRECTED_AT:
                said = page.get_by_test_id("stMetric").filter(has_text="Model says")
                model_label = said.get_by_test_id("stMetricValue").inner_text().strip()
                corrected = next(c for c in classes if c != model_label)
                choose(page, "Corrected label", corrected)
                page.get_by_label("Comment").fill(COMMENT)
                page.get_by_label("Comment").blur()
                wait_idle(page)
            page.get_by_role("button", name=BUTTONS[verdict], exact=True).click()
            saved = re.compile(rf"Saved “{verdict}” on study {k + 1}\b")
            expect(page.get_by_text(saved)).to_be_visible()
            wait_idle(page)
        expect(page.get_by_text(re.compile(rf"^{len(VERDICTS)} of \d+ done$"))).to_be_visible()
        shots("verdicts", at=page_title(page, "Spot-check"), key=True)

    engine = make_engine(journey_demo.url)
    try:
        with Session(engine) as s:
            user_id = s.scalars(select(User.id).where(User.username == CLINICIAN)).one()
            (review_session,) = s.scalars(
                select(ReviewSession).where(ReviewSession.created_by == user_id)
            ).all()
            order = s.scalars(
                select(ReviewSessionItem.prediction_id)
                .where(ReviewSessionItem.session_id == review_session.id)
                .order_by(ReviewSessionItem.position)
            ).all()
            reviews = s.scalars(select(Review).where(Review.reviewer_id == user_id)).all()
            got = {
                r.prediction_id: (r.verdict, r.corrected_label, r.comment or None) for r in reviews
            }
    finally:
        engine.dispose()
    assert _n_reviews(journey_demo.url) - reviews_before == len(VERDICTS)  # exactly 5 new rows
    assert len(reviews) == len(VERDICTS)
    expected = {
        pid: (v, corrected, COMMENT) if k == CORRECTED_AT else (v, None, None)
        for k, (pid, v) in enumerate(zip(order, VERDICTS, strict=False))
    }
    assert got == expected
