"""Fixtures of the browser journeys: Chromium, and one app server on a scored small demo.

The journeys need the seeded truth of the small demo (the tiny one has no detectable drift)
and image-quality scores (the Image quality page's worst images). :func:`scored_demo_dir`
copies the session's small demo DB and scores it with :func:`quality.imaging.score.score_images`
(what ``make demo`` does with ``quality score --dataset chest-xray-demo``). Scoring takes a
minute or two on two cores, so under ``pytest -n`` the first worker that needs it builds it
in the run's shared temp folder, under a file lock, and the others reuse it.

Each worker then takes its own copy of the scored DB (:func:`journey_demo`), with one user per
role, and runs one ``streamlit run`` server on it (:func:`journey_app`) with sign-in required
(``QUALITY_DEMO_MODE=0``) for all its journeys. The journeys write (verdicts, check runs,
audit rows) only to that copy.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import service_missing
from sqlalchemy.orm import Session

from e2e.journey import CHROMIUM, CHROMIUM_ARGS, serve, server_log_tail
from quality import auth
from quality.db.session import make_engine

PASSWORD = "journey password 1"
USERS: dict[str, str] = {
    "labeling manager": "maria",
    "data scientist": "sam",
    "clinician": "clara",
}
"""One user per role (role → user name); each signs in with :data:`PASSWORD`."""


@dataclass(frozen=True)
class JourneyDemo:
    """The journeys' copy of the scored small demo.

    Attributes
    ----------
    url : SQLAlchemy URL of the copy (SQLite).
    folder : the copy's folder (``demo.db``, ``embeddings/``).
    dicom : the image store (the session's small demo ``dicom`` folder).
    truth : ``demo_truth.json``.
    """

    url: str
    folder: Path
    dicom: Path
    truth: dict[str, Any]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed journey's report carries the end of its app server's log."""
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            tail = server_log_tail(value) if isinstance(value, str) else None
            if tail:
                report.sections.append(("streamlit log (end)", tail))
    return report


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (one per worker)."""
    if not CHROMIUM.exists():
        service_missing("Chromium (/usr/bin/chromium)")
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


def _score(demo_dir: Path, out: Path) -> None:
    """Copy ``demo_dir``'s DB and truth file into ``out`` and score the copy on CPU."""
    from quality.imaging import model as qmodel
    from quality.imaging.score import score_images

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(demo_dir / "demo.db", out / "demo.db")
    truth = json.loads((demo_dir / "demo_truth.json").read_text())
    truth["dicom_root"] = str(demo_dir / truth["dicom_root"])  # absolute: the store
    (out / "demo_truth.json").write_text(json.dumps(truth))
    engine = make_engine(f"sqlite:///{out / 'demo.db'}")
    try:
        with Session(engine) as session:
            summary = score_images(
                session,
                dataset_id=truth["dataset"]["name"],
                device="cpu",
                embeddings_dir=out / "embeddings",
                model=qmodel.load_model(device="cpu"),
            )
        assert summary.scored > 0, summary
    finally:
        engine.dispose()  # checkpoints the WAL: the .db file alone is the whole DB


@pytest.fixture(scope="session")
def scored_demo_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The small demo's DB, scored, with its truth file and embeddings; built once per run.

    Read-only: the journeys take copies (:func:`journey_demo`).
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        out = tmp_path_factory.mktemp("scored_small")
        _score(request.getfixturevalue("small_demo_dir"), out)
        return out
    from filelock import FileLock

    # The run's temp root, shared by its workers (each has its own basetemp below it).
    out = tmp_path_factory.getbasetemp().parent / "e2e_scored_small"
    done = out / ".done"
    with FileLock(f"{out}.lock"):
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)  # a worker that died half-way
            _score(request.getfixturevalue("small_demo_dir"), out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def journey_demo(scored_demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> JourneyDemo:
    """This worker's copy of the scored demo, with one user per role (:data:`USERS`)."""
    folder = tmp_path_factory.mktemp("journey_demo")
    shutil.copyfile(scored_demo_dir / "demo.db", folder / "demo.db")
    shutil.copytree(scored_demo_dir / "embeddings", folder / "embeddings")
    truth = json.loads((scored_demo_dir / "demo_truth.json").read_text())
    url = f"sqlite:///{folder / 'demo.db'}"
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            for role, username in USERS.items():
                auth.add_user(session, username, role, PASSWORD)
            session.commit()
    finally:
        engine.dispose()
    return JourneyDemo(url=url, folder=folder, dicom=Path(truth["dicom_root"]), truth=truth)


@pytest.fixture(scope="session")
def journey_app(
    journey_demo: JourneyDemo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A ``streamlit run app.py`` server on :func:`journey_demo`, sign-in required."""
    folder = tmp_path_factory.mktemp("journey_app")
    env = {
        "QUALITY_STORE": str(journey_demo.dicom),
        "QUALITY_THUMB_CACHE_DIR": str(folder / "thumbs"),
    }
    with serve(journey_demo.url, folder, env) as base:
        yield base
