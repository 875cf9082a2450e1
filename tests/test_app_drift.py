"""AppTest of the Drift page: the tiny demo, the small demo (where alerts fire), and empty,
blank and unreachable DBs.

The tiny demo has too few images per source-week for an alert: it checks that the page
renders every section. The small demo (read in place) holds the seeded drift at
east_imaging and the missing-predictions stretch, so the timeline carries alert markers.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import copy_demo_db
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest
from test_queries import add_example_rows

from quality.db.session import make_engine, upgrade
from quality.ui import data

ROOT = Path(__file__).resolve().parent.parent
PAGE = "pages/drift.py"
TIMEOUT = 90
UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/x"


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    data.clear_caches()
    yield
    data.clear_caches()


@pytest.fixture(scope="module")
def tiny_url(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return copy_demo_db(tiny_demo, tmp_path_factory.mktemp("drift_tiny"))


@pytest.fixture(scope="module")
def small_url(small_demo_dir: Path) -> str:
    return f"sqlite:///{small_demo_dir / 'demo.db'}"


def open_page(monkeypatch: pytest.MonkeyPatch, url: str) -> AppTest:
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["role"] = "admin"
    at.run()
    at.switch_page(PAGE).run()
    return at


def no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def traces(at: AppTest, key: str) -> list[dict]:
    chart = next(c for c in at.get("plotly_chart") if json.loads(c.proto.spec) and c.key == key)
    return json.loads(chart.proto.spec)["data"]


def test_renders_on_tiny_demo(monkeypatch: pytest.MonkeyPatch, tiny_url: str) -> None:
    at = open_page(monkeypatch, tiny_url)
    no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value.endswith("Drift")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == "31" and metrics["Scopes"] == "5"
    sections = [s.value for s in at.subheader]
    assert sections[:3] == ["Timeline", "Per source", "Reference vs current"]
    names = [t.get("name") for t in traces(at, "drift_timeline")]
    assert {"(all)", "east_imaging", "drift alert", "missing-input alert"} <= set(names)
    heat = traces(at, "drift_heatmap")[0]
    assert heat["type"] == "heatmap" and heat["y"][0] == "(all)" and len(heat["y"]) == 5
    labels = {b.label for b in at.get("download_button")}
    assert {"⬇️ Timeline", "⬇️ Test choice"} <= labels


def test_alert_markers_and_feature_picker_on_small_demo(
    monkeypatch: pytest.MonkeyPatch, small_url: str
) -> None:
    at = open_page(monkeypatch, small_url)
    no_exception(at)
    assert not at.error
    by_name = {t["name"]: t for t in traces(at, "drift_timeline")}
    drift_x = {x[:10] for x in by_name["drift alert"]["x"]}
    assert "2024-03-11" in drift_x  # east_imaging, the window after the drift began
    assert "east_imaging" in by_name["drift alert"]["text"]
    missing_x = {x[:10] for x in by_name["missing-input alert"]["x"]}
    assert {"2024-02-12", "2024-02-19"} <= missing_x
    assert int(at.metric[2].value) > 0 and int(at.metric[3].value) > 0  # alert counts
    # The feature picker starts on a drifted feature; change it and the scope.
    assert at.selectbox(key="drift_feature").value == "software_version"
    at.selectbox(key="drift_feature").set_value("kvp").run()
    no_exception(at)
    at.selectbox(key="drift_scope").set_value("east_imaging").run()
    no_exception(at)
    hist = traces(at, "drift_histogram")
    assert [t["type"] for t in hist] == ["histogram", "histogram"]
    assert hist[0]["name"].startswith("reference (n = 20)")
    assert any("ks" in c.value and "drifted" in c.value for c in at.caption)
    # A categorical feature is drawn as share bars.
    at.selectbox(key="drift_feature").set_value("photometric").run()
    no_exception(at)
    assert [t["type"] for t in traces(at, "drift_histogram")] == ["bar", "bar"]


def test_date_pickers_and_window_change_the_report(
    monkeypatch: pytest.MonkeyPatch, small_url: str
) -> None:
    at = open_page(monkeypatch, small_url)
    quiet = (dt.date(2024, 2, 26), dt.date(2024, 3, 3))
    at.date_input(key="drift_current_1").set_value(quiet).run()
    no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Windows"] == "1 × 7 d"
    assert metrics["Drift alerts"] == "0" and metrics["Missing-input alerts"] == "0"
    assert any("No alert in the current period" in s.value for s in at.success)
    at.selectbox(key="drift_window").set_value("1D").run()
    no_exception(at)
    assert {m.label: m.value for m in at.metric}["Windows"] == "7 × 1 d"
    at.selectbox(key="drift_by").set_value("(none)").run()
    no_exception(at)
    assert {m.label: m.value for m in at.metric}["Scopes"] == "1"


@pytest.mark.parametrize("schema", [False, True], ids=["no-schema", "no-rows"])
def test_empty_db_shows_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, schema: bool
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    if schema:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
    at = open_page(monkeypatch, url)
    no_exception(at)
    assert at.info and "has no data yet" in at.info[0].value
    assert not at.get("plotly_chart")


def test_unreachable_db_shows_error(monkeypatch: pytest.MonkeyPatch) -> None:
    at = open_page(monkeypatch, UNREACHABLE)
    no_exception(at)
    assert at.error and "Cannot reach the database" in at.error[0].value


def test_dataset_without_images_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'example.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as session:
        add_example_rows(session, tmp_path)
    engine.dispose()
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["role"] = "admin"
    at.session_state["_dataset_id_picker"] = 2  # "empty-ds": no version, no images
    at.run()
    at.switch_page(PAGE).run()
    no_exception(at)
    assert not at.error
    assert any("has no images yet" in i.value for i in at.info)
    at.sidebar.selectbox[1].set_value(1).run()  # "chest": 6 images, no predictions
    no_exception(at)
    assert {m.label: m.value for m in at.metric}["Images"] == "6"
