"""AppTest of the Spot-check page on the tiny demo (each test on its own copy of the DB).

A clinician adds their name, draws a sample, and completes three verdicts end to end; the
verdicts are then read back from the DB. Re-submitting updates the row instead of adding
one; a failed write says why and keeps what was typed; an empty, outdated or unreachable DB
gives a plain message. Runs after the first one execute the page file alone (the
Streamlit quirk documented in ``test_app_pages.py``); ``router.page_guard`` handles it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_demo_db
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

from quality import review as rv
from quality.db.schema import Review, User
from quality.db.session import make_engine, upgrade
from quality.ui import data

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PAGE = "pages/spot_check.py"
TIMEOUT = 90
UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/x"
REVIEWER = "dr-spot"


@pytest.fixture
def demo_url(tiny_demo: Path, tmp_path: Path) -> str:
    return copy_demo_db(tiny_demo, tmp_path)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    data.clear_caches()
    yield
    data.clear_caches()


def _open(monkeypatch: pytest.MonkeyPatch, url: str, role: str = "clinician") -> AppTest:
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["role"] = role
    at.run()
    at.switch_page(PAGE).run()
    # AppTest's switch_page run resends the role picker's first option: pick the role again.
    at.sidebar.selectbox[0].set_value(role).run()
    _ok(at)
    assert at.session_state["role"] == role
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in (at.error, at.info, at.warning, at.success) for e in kind]
    return "\n".join(str(p) for p in parts)


def _rows(url: str) -> list[Review]:
    engine = make_engine(url)
    with Session(engine) as s:
        rows = list(s.scalars(select(Review).order_by(Review.prediction_id)))
    engine.dispose()
    return rows


def _session_items(url: str, session_id: int) -> list[int]:
    engine = make_engine(url)
    with Session(engine) as s:
        ids = list(rv.session_items(s, session_id)["prediction_id"])
    engine.dispose()
    return ids


def _start(monkeypatch: pytest.MonkeyPatch, url: str, strategy: str = "random") -> AppTest:
    """Open the page, add the reviewer, draw 5 studies with seed 3."""
    at = _open(monkeypatch, url)
    assert at.title[0].value.endswith("Spot-check")
    assert at.selectbox(key="spot_reviewer").value == "➕ New reviewer…"
    assert "draw a sample to start" in _texts(at)
    at.text_input(key="spot_new_reviewer").input(REVIEWER)
    at.button(key="spot_add_reviewer").click().run()
    _ok(at)
    assert at.selectbox(key="spot_reviewer").value == REVIEWER
    at.selectbox(key="spot_strategy").select(strategy)
    at.number_input(key="spot_size").set_value(5)
    at.number_input(key="spot_seed").set_value(3)
    at.button(key="spot_draw").click().run()
    _ok(at)
    return at


def _widget(at: AppTest, kind: str, field: str) -> object:
    """The current study's widget ``spot_<field>_<session>_<prediction>``."""
    found = [w for w in getattr(at, kind) if str(w.key).startswith(f"spot_{field}_")]
    assert len(found) == 1, [w.key for w in getattr(at, kind)]
    return found[0]


def _values(arr: object) -> list[float]:
    """A plotly JSON array: a plain list, or plotly's typed ``{dtype, bdata}`` encoding."""
    if isinstance(arr, dict):
        return np.frombuffer(base64.b64decode(arr["bdata"]), dtype=arr["dtype"]).tolist()
    return list(arr)  # type: ignore[call-overload]


def _current_prediction(at: AppTest) -> int:
    return int(str(_widget(at, "selectbox", "label").key).rsplit("_", 1)[1])


def test_three_verdicts_end_to_end(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    at = _start(monkeypatch, demo_url)
    assert "5 studies to review" in _texts(at)
    session_id = int(at.selectbox(key="spot_session").value)
    items = _session_items(demo_url, session_id)
    assert len(items) == 5
    assert "Study 1 of 5" in at.markdown[0].value or any(
        "Study 1 of 5" in m.value for m in at.markdown
    )
    # The viewer draws the image with this version's prediction; doctors' labels start hidden.
    shown = {str(c.key): c.value for c in at.checkbox if str(c.key).startswith("spot_viewer_show_")}
    version = at.selectbox(key="spot_version")
    model_owner = f"spot_viewer_show_{version.format_func(version.value).split(' (')[0]}"
    assert shown.pop(model_owner) is True, shown
    assert shown and not any(shown.values())

    # 1: agree.
    assert _current_prediction(at) == items[0]
    at.button(key="spot_verdict_agree").click().run()
    _ok(at)
    assert "Saved “agree” on study 1" in _texts(at)
    # 2: disagree, with a corrected label, a box and a comment.
    assert _current_prediction(at) == items[1]
    label = _widget(at, "selectbox", "label")
    other = next(c for c in label.options if c not in ("(no correction)",))
    label.select(other)
    _widget(at, "checkbox", "boxon").check()
    for name, value in zip(("x0", "y0", "x1", "y1"), (4, 5, 40, 50), strict=True):
        _widget(at, "number_input", name).set_value(value)
    _widget(at, "text_area", "comment").input("edge of the lung")
    at.button(key="spot_verdict_disagree").click().run()
    _ok(at)
    # 3: unsure.
    assert _current_prediction(at) == items[2]
    at.button(key="spot_verdict_unsure").click().run()
    _ok(at)
    assert "3 of 5 done" in str(at.get("progress")[0].proto.text)

    rows = _rows(demo_url)
    assert [r.prediction_id for r in rows] == sorted(items[:3])
    by_pred = {r.prediction_id: r for r in rows}
    assert by_pred[items[0]].verdict == "agree"
    second = by_pred[items[1]]
    assert (second.verdict, second.corrected_label, second.comment) == (
        "disagree", other, "edge of the lung",
    )  # fmt: skip
    assert second.corrected_bbox == [4.0, 5.0, 40.0, 50.0]
    assert by_pred[items[2]].verdict == "unsure"
    engine = make_engine(demo_url)
    with Session(engine) as s:
        reviewer = s.scalar(select(User.id).where(User.username == REVIEWER))
    engine.dispose()
    assert {r.reviewer_id for r in rows} == {reviewer}

    # Re-submitting: back to study 3, change the verdict: same row, updated.
    before = by_pred[items[2]]
    at.button(key="spot_back").click().run()
    _ok(at)
    assert _current_prediction(at) == items[2]
    assert "you said **unsure**" in " ".join(m.value for m in at.markdown)
    at.button(key="spot_verdict_agree").click().run()
    _ok(at)
    rows = _rows(demo_url)
    assert len(rows) == 3
    again = {r.prediction_id: r for r in rows}[items[2]]
    assert again.id == before.id and again.verdict == "agree"
    assert again.updated_at > before.updated_at

    # The summary tab: per-version, per-class and per-source charts with CI error bars.
    charts = {c.proto.id.rsplit("-", 1)[-1]: c.proto.spec for c in at.get("plotly_chart")}
    assert {"spot_chart_version", "spot_chart_class", "spot_chart_source"} <= set(charts)
    bar = json.loads(charts["spot_chart_version"])["data"][0]
    assert bar["error_y"]["type"] == "data" and _values(bar["y"]) == [pytest.approx(2 / 3)]
    low, high = rv.wilson_interval(2, 3)
    assert _values(bar["error_y"]["arrayminus"]) == [pytest.approx(2 / 3 - low)]
    assert _values(bar["error_y"]["array"]) == [pytest.approx(high - 2 / 3)]
    disagreements = at.dataframe[0].value  # the one table on the page
    assert list(disagreements["prediction_id"]) == [items[1]]
    assert "patient_key" not in disagreements.columns
    labels = [b.proto.label for b in at.get("download_button")]
    assert "⬇️ Verdicts (CSV)" in labels and "⬇️ Disagreements (CSV)" in labels


def test_failed_write_keeps_the_entry(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    at = _start(monkeypatch, demo_url)
    pid = _current_prediction(at)
    # A box that is not a box: a validation error, shown, nothing written, entry kept.
    _widget(at, "checkbox", "boxon").check()
    _widget(at, "number_input", "x0").set_value(30)
    _widget(at, "number_input", "x1").set_value(10)
    _widget(at, "text_area", "comment").input("please keep this")
    at.button(key="spot_verdict_disagree").click().run()
    _ok(at)
    assert "Not saved" in _texts(at) and "x0 < x1" in _texts(at)
    assert _current_prediction(at) == pid
    assert _widget(at, "text_area", "comment").value == "please keep this"
    assert _rows(demo_url) == []

    # The database refuses the write: the clinician is told, and what they typed stays.
    engine = make_engine(demo_url)
    with engine.begin() as c:
        c.execute(
            text(
                "CREATE TRIGGER no_reviews BEFORE INSERT ON reviews "
                "BEGIN SELECT RAISE(ABORT, 'disk quota exceeded'); END"
            )
        )
    _widget(at, "checkbox", "boxon").uncheck()
    at.button(key="spot_verdict_disagree").click().run()
    _ok(at)
    assert "Not saved" in _texts(at) and "disk quota exceeded" in _texts(at)
    assert _widget(at, "text_area", "comment").value == "please keep this"
    assert _rows(demo_url) == []
    with engine.begin() as c:
        c.execute(text("DROP TRIGGER no_reviews"))
    engine.dispose()
    at.button(key="spot_verdict_disagree").click().run()
    _ok(at)
    rows = _rows(demo_url)
    assert [(r.prediction_id, r.verdict, r.comment) for r in rows] == [
        (pid, "disagree", "please keep this")
    ]


def test_strategy_that_cannot_run_says_why(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    at = _start(monkeypatch, demo_url, strategy="ood")  # the tiny demo copy is not scored
    assert "No sample drawn" in _texts(at) and "quality score" in _texts(at)
    assert not at.button(key="spot_draw").disabled


def test_outdated_schema_says_upgrade(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    engine = make_engine(demo_url)
    with engine.begin() as c:
        c.execute(text("DROP TABLE review_session_items"))
        c.execute(text("DROP TABLE review_sessions"))
    engine.dispose()
    at = _open(monkeypatch, demo_url)
    assert "quality db upgrade" in _texts(at)


def test_empty_db_shows_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    at = _open(monkeypatch, url)
    assert at.info and "has no data yet" in at.info[0].value


def test_unreachable_db_shows_error(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open(monkeypatch, UNREACHABLE)
    assert "Cannot reach the database" in _texts(at)


def test_labeling_manager_is_refused(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    monkeypatch.setenv("QUALITY_DB_URL", demo_url)
    at = AppTest.from_file(str(ROOT / PAGE), default_timeout=TIMEOUT)
    at.session_state["role"] = "labeling manager"
    at.session_state["_routed_by_app"] = True
    at.run()
    _ok(at)
    assert "cannot open this page" in _texts(at)
    assert not at.button
