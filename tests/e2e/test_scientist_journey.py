"""Browser journey of a data scientist (Playwright, Debian Chromium).

Signs in; opens the dataset card (its counts are the truth file's, no checks yet); runs the
data tests (the run is stored, and the seeded missing file, truncated file, out-of-schema
label and out-of-image box are among the failing checks, with the truth file's counts), and
the card's status turns to failing; opens the Drift page and downloads
its alerts (a drift alert at the truth file's drifted source, in the window of its start
date, and none there before it); opens the Image quality page (the worst image shown is one
of the truth file's seeded defects, and the gallery follows the scores in the DB).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from e2e.conftest import PASSWORD, USERS, JourneyDemo
from e2e.journey import download, journey, open_page, page_title, sign_in, wait_idle
from quality.db.schema import CheckRun, Image, ImageQuality
from quality.db.session import make_engine

SCIENTIST = USERS["data scientist"]


def _metrics(page: Any) -> dict[str, str]:
    """The ``st.metric`` tiles of the page: label → value."""
    out = {}
    for tile in page.get_by_test_id("stMetric").all():
        label = tile.get_by_test_id("stMetricLabel").inner_text().strip()
        out[label] = tile.get_by_test_id("stMetricValue").inner_text().strip()
    return out


def _n_check_runs(url: str) -> int:
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            return int(s.scalar(select(func.count()).select_from(CheckRun)) or 0)
    finally:
        engine.dispose()


def _sop_uids(url: str, image_ids: list[int]) -> dict[int, str]:
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            rows = s.execute(select(Image.id, Image.sop_uid).where(Image.id.in_(image_ids)))
            return {int(i): str(uid) for i, uid in rows}
    finally:
        engine.dispose()


def _worst_in_db(url: str) -> int:
    """The scored image with the lowest quality score (ties: lowest id), as the page orders."""
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            return int(
                s.scalars(
                    select(ImageQuality.image_id)
                    .where(ImageQuality.quality_score.is_not(None))
                    .order_by(ImageQuality.quality_score, ImageQuality.image_id)
                    .limit(1)
                ).one()
            )
    finally:
        engine.dispose()


@pytest.mark.e2e_long
def test_scientist_card_data_tests_drift_and_worst_images(
    journey_app: str, journey_demo: JourneyDemo, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    truth = journey_demo.truth
    dataset = truth["dataset"]["name"]
    images = [i for i in truth["images"].values() if i["in_dataset"]]
    defects = truth["defects"]
    (drift,) = truth["drift"]
    drift_start = dt.date.fromisoformat(drift["start_date"])
    runs_before = _n_check_runs(journey_demo.url)

    with journey(browser, tmp_path, "journey-scientist") as (page, shots):
        page.goto(journey_app)
        sign_in(page, SCIENTIST, PASSWORD)
        expect(page_title(page, "Overview")).to_be_visible()
        wait_idle(page)

        # 1. The dataset card: the counts of the truth file.
        open_page(page, "Dataset card")
        expect(page.get_by_text(re.compile(rf"^{re.escape(dataset)} "))).to_be_visible()
        expect(page.get_by_test_id("stMetric")).to_have_count(6)
        tiles = _metrics(page)
        assert tiles["Images"] == f"{len(images):,}"
        assert tiles["Studies"] == f"{len({i['study_uid'] for i in images}):,}"
        assert tiles["Patients"] == f"{len({i['patient_id'] for i in images}):,}"
        assert tiles["Sources"] == f"{len(truth['sources']):,}"
        expect(page.get_by_text(re.compile(r"status: no-checks$"))).to_be_visible()
        shots("card", key=True)

        # 2. Data tests: run them; the seeded defects fail their checks.
        open_page(page, "Data tests")
        page.get_by_role("button", name="▶️ Run the data tests").click()
        verdict = page.get_by_text(re.compile(r"^Run \d+ failed: "))
        expect(verdict).to_be_visible()
        wait_idle(page)
        run_id = int(re.search(r"Run (\d+) failed", verdict.inner_text()).group(1))
        expected = {
            "integrity.missing_files": len(defects["missing_file"]),
            "syntax.ingest_errors": len(defects["truncated"]),
            "semantic.label_not_in_schema": len(defects["label_not_in_schema"]),
            "semantic.box_outside_image": len(defects["box_outside_image"]),
        }
        for check, n in expected.items():
            title = f"❌ {check} — {n:,} failed"
            expect(page.get_by_test_id("stExpander").filter(has_text=title)).to_have_count(1)
        shots("data-tests", at=page.get_by_role("heading", name="Results", exact=True), key=True)

        # The card is the data product's status: the failed run makes it "failing".
        open_page(page, "Dataset card")
        expect(page.get_by_text(re.compile(r"status: failing$"))).to_be_visible()

        # 3. Drift: an alert at the seeded source, from the window of its start date.
        open_page(page, "Drift")
        expect(page.get_by_role("heading", name="Downloads", exact=True)).to_be_visible()
        tiles = _metrics(page)
        assert int(tiles["Drift alerts"]) > 0
        shots("drift", at=page.get_by_role("heading", name="Timeline", exact=True), key=True)
        alerts_csv = download(page, "⬇️ Alerts", tmp_path)

        # 4. Image quality: the worst images.
        open_page(page, "Image quality")
        expect(page.get_by_role("heading", name="Worst images", exact=True)).to_be_visible()
        captions = page.get_by_test_id("stMarkdownContainer").filter(
            has_text=re.compile(r"^image \d+ · ")
        )
        expect(captions.first).to_be_visible()
        first = captions.first.inner_text()
        shots(
            "worst-images",
            at=page.get_by_role("heading", name="Worst images", exact=True),
            key=True,
        )

    # The data tests run is stored.
    assert _n_check_runs(journey_demo.url) == runs_before + 1
    assert run_id > 0

    # The drift alerts as downloaded from the page.
    alerts = list(csv.DictReader(io.StringIO(alerts_csv.read_text())))
    at_source = [a for a in alerts if a["kind"] == "drift" and a["scope"] == drift["source"]]
    assert at_source, f"no drift alert at {drift['source']}"
    first_alert = min(at_source, key=lambda a: a["window_start"])
    start = dt.date.fromisoformat(first_alert["window_start"])
    end = dt.date.fromisoformat(first_alert["window_end"])
    window = end - start + dt.timedelta(days=1)
    assert end >= drift_start, "an alert at the drifted source before the drift began"
    assert start <= drift_start + window, "the drift was found late"
    alerted = {a["what"] for a in at_source}
    assert alerted & set(drift["what"]), alerted

    # The worst image shown: the DB's lowest score, and a seeded defect.
    image_id = int(re.match(r"image (\d+) · ", first).group(1))
    assert image_id == _worst_in_db(journey_demo.url)
    seeded = {r["sop_uid"]: kind for kind, recs in defects.items() for r in recs if "sop_uid" in r}
    sop_uid = _sop_uids(journey_demo.url, [image_id])[image_id]
    assert sop_uid in seeded, f"the worst image {image_id} is not a seeded defect"
