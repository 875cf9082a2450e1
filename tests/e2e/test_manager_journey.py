"""Browser journey of a labeling manager (Playwright, Debian Chromium).

Signs in, opens the Doctors page, finds the seeded careless and biased doctors of
``demo_truth.json`` flagged in the team table, opens the careless doctor's drill-down and
exports the report as CSV: the downloaded file has one row per annotator of the truth file
and flags both seeded doctors, and the export is in the audit log under the manager's name.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from e2e.conftest import PASSWORD, USERS, JourneyDemo
from e2e.journey import (
    choose,
    download,
    grid_rows,
    journey,
    open_page,
    page_title,
    sign_in,
    wait_idle,
)
from quality.db.schema import AuditLog
from quality.db.session import make_engine

MANAGER = USERS["labeling manager"]


def _classification_task(truth: dict[str, Any]) -> str:
    return next(name for name, t in truth["tasks"].items() if t["kind"] == "classification")


def test_manager_finds_flagged_doctor_and_exports(
    journey_app: str, journey_demo: JourneyDemo, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    truth = journey_demo.truth
    careless, biased = truth["careless_doctor"], truth["biased_doctor"]
    annotators = {d["code"] for d in truth["doctors"]} | {e["code"] for e in truth["experts"]}
    task = _classification_task(truth)

    with journey(browser, tmp_path, "journey-manager") as (page, shots):
        page.goto(journey_app)
        sign_in(page, MANAGER, PASSWORD)
        expect(page_title(page, "Overview")).to_be_visible()
        wait_idle(page)

        open_page(page, "Doctors")
        task_box = page.get_by_role("combobox", name="Labeling task", exact=True)
        if not (task_box.input_value() or "").startswith(f"{task} "):
            choose(page, "Labeling task", re.compile(rf"^{re.escape(task)} · "))
        expect(task_box).to_have_value(re.compile(rf"^{re.escape(task)} · "))

        # The team table: one row per annotator, the seeded doctors flagged.
        team = page.get_by_test_id("stDataFrame").first
        expect(team.locator("[role=row]")).to_have_count(len(annotators) + 1)
        header, *rows = grid_rows(team)
        code_col, flag_col = header.index("doctor"), header.index("flags")
        shown = {r[code_col]: r[flag_col] for r in rows}
        assert set(shown) == annotators
        flagged = {code for code, flags in shown.items() if flags.startswith("🚩")}
        assert {careless, biased} <= flagged, shown
        shots("team", at=page.get_by_role("heading", name="Team", exact=True), key=True)

        # The careless doctor's drill-down.
        choose(page, "Doctor", re.compile(rf"^#\d+ {re.escape(careless)} "))
        expect(
            page.get_by_text(re.compile(rf"^{re.escape(careless)} is flagged: "))
        ).to_be_visible()
        expect(
            page.get_by_text(f"Worst disagreements of {careless} with consensus")
        ).to_be_visible()
        shots("drilldown", at=page.get_by_role("heading", name="One doctor", exact=True), key=True)

        # Export: a real download of the report.
        path = download(page, "⬇️ CSV", tmp_path)
        shots("exported")

    assert path.name == f"doctors-{task}.csv"
    report = list(csv.DictReader(io.StringIO(path.read_text())))
    assert len(report) == len(annotators)
    by_code = {r["code"]: r for r in report}
    assert set(by_code) == annotators
    assert by_code[careless]["flags"] == shown[careless].removeprefix("🚩").strip()
    assert by_code[biased]["flags"] == shown[biased].removeprefix("🚩").strip()
    assert "low agreement" in by_code[careless]["flags"]
    assert "bias" in by_code[biased]["flags"]

    # The export is audited under the manager's name.
    engine = make_engine(journey_demo.url)
    try:
        with Session(engine) as s:
            exports = s.scalars(
                select(AuditLog).where(AuditLog.username == MANAGER, AuditLog.action == "export")
            ).all()
    finally:
        engine.dispose()
    assert [(e.target, e.details.get("rows")) for e in exports] == [(path.name, len(annotators))]
