"""AppTest of the EDA page: the tiny demo, all images, an empty dataset, an empty DB and an
unreachable one.

The page script runs directly, as the router would run it (``_routed_by_app`` set before each
run, the sidebar's dataset in ``dataset_id``): reruns execute the page file alone (see the
quirk in ``test_app_pages.py``), and ``test_app_demo.py`` already drives every page through
the router.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

from quality import eda
from quality.db.schema import Dataset
from quality.db.session import make_engine, upgrade
from quality.ui import data
from quality.ui.router import ROUTED_KEY

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "eda.py")
TIMEOUT = 60
UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/x"
SECTION_CHARTS = {
    "eda_balance_source",
    "eda_balance_split",
    "eda_coverage",
    "eda_missing_source",
    "eda_missing_week",
}


@pytest.fixture(scope="module")
def demo_url(tiny_demo: Path) -> str:
    # Read-only: the page never writes.
    return f"sqlite:///{tiny_demo / 'demo.db'}"


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    data.clear_caches()
    yield
    data.clear_caches()


def _run(at: AppTest) -> AppTest:
    at.session_state[ROUTED_KEY] = True
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _open(
    monkeypatch: pytest.MonkeyPatch, url: str, *, dataset: int | None = 1, role: str = "admin"
) -> AppTest:
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.session_state["role"] = role
    at.session_state["dataset_id"] = dataset
    return _run(at)


def _charts(at: AppTest) -> dict[str, dict]:
    return {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def _downloads(at: AppTest) -> list[str]:
    return [b.proto.label for b in at.get("download_button")]


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in (at.error, at.info, at.warning, at.success) for e in kind]
    return "\n".join(str(p) for p in parts)


def _markdown(at: AppTest) -> str:
    return "\n".join(str(m.value) for m in at.markdown)


def test_every_section_and_widget_on_the_demo(
    monkeypatch: pytest.MonkeyPatch, demo_url: str
) -> None:
    at = _open(monkeypatch, demo_url)
    assert not at.error and not at.main.warning, _texts(at)  # sidebar: demo-mode warning
    assert at.title[0].value.endswith("EDA")
    truth = json.loads(
        (Path(demo_url.removeprefix("sqlite:///")).parent / "demo_truth.json").read_text()
    )
    n_images = sum(
        1 for r in truth["images"].values() if r["in_dataset"] and "truncated" not in r["defects"]
    )
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Images"] == f"{n_images:,}" and metrics["Sources"] == "4"
    assert [h.value for h in at.header] == [
        "Notable facts",
        "Distributions",
        "Class balance",
        "Annotation coverage",
        "Missing values",
        "Download",
    ]
    charts = _charts(at)
    assert set(charts) == {f"eda_dist_{k}" for k in eda.DISTRIBUTIONS} | SECTION_CHARTS
    source_bars = charts["eda_dist_photometric"]["data"]
    assert {t["type"] for t in source_bars} == {"bar"}
    assert {t["name"] for t in source_bars} == {
        "east_imaging",
        "north_clinic",
        "south_hospital",
        "west_center",
    }
    assert charts["eda_missing_source"]["data"][0]["type"] == "heatmap"
    # One CSV per table: facts, each distribution, balance, coverage, two missing maps.
    labels = _downloads(at)
    assert len(labels) == 1 + len(eda.DISTRIBUTIONS) + 4 + 1
    assert sum(label.endswith("(CSV)") for label in labels) == len(labels) - 1
    assert "⬇️ Whole profile (JSON)" in labels
    assert "west_center is 100% MONOCHROME1" in _markdown(at)
    assert int(metrics["Notable facts"]) >= 1

    # Reruns (the page alone): shares side by side, then the other task's coverage.
    at.radio(key="eda_y_mode").set_value("Share of the source")
    _run(at)
    layout = _charts(at)["eda_dist_kvp"]["layout"]
    assert layout["barmode"] == "group" and layout["yaxis"]["tickformat"] == ".0%"
    # The demo has a classification and a bbox task: coverage offers both.
    picker = at.selectbox(key="eda_coverage_task")
    assert set(picker.options) == {"finding", "finding-box"}
    picker.set_value("finding-box")
    _run(at)
    assert not at.error
    bars = _charts(at)["eda_coverage"]["data"]
    assert {t["type"] for t in bars} == {"bar"}


def test_all_images(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    at = _open(monkeypatch, demo_url, dataset=None)
    assert not at.error
    truth = json.loads(
        (Path(demo_url.removeprefix("sqlite:///")).parent / "demo_truth.json").read_text()
    )
    n_files = sum(1 for r in truth["images"].values() if "truncated" not in r["defects"])
    assert {m.label: m.value for m in at.metric}["Images"] == f"{n_files:,}"


def test_dataset_without_images(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bare.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as session:
        session.add(Dataset(name="bare"))
        session.commit()
    engine.dispose()
    at = _open(monkeypatch, url, dataset=1)
    assert "no images yet" in _texts(at)
    assert not at.get("plotly_chart") and not at.metric


def test_unknown_dataset_warns(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    at = _open(monkeypatch, demo_url, dataset=999)
    assert "profile cannot be built" in _texts(at) and "unknown dataset" in _texts(at)
    assert not at.get("plotly_chart")


@pytest.mark.parametrize("schema", [False, True], ids=["no-schema", "no-rows"])
def test_empty_db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, schema: bool) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    if schema:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
    at = _open(monkeypatch, url, dataset=None)
    assert at.info and "has no data yet" in at.info[0].value
    assert not at.get("plotly_chart")


def test_unreachable_db(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open(monkeypatch, UNREACHABLE, dataset=None)
    assert "Cannot reach the database" in _texts(at)
    assert not at.get("plotly_chart")


def test_clinician_is_refused(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    at = _open(monkeypatch, demo_url, role="clinician")
    assert "cannot open this page" in _texts(at)
    assert not at.metric and not at.get("plotly_chart")
