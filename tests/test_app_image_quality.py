"""AppTest of the Image quality page on the tiny demo, scored once per module on CPU.

Runs after the first one execute the page file alone (the Streamlit quirk documented at the
top of ``test_app_pages.py``); the page's ``router.page_guard`` keeps the router in place.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import copy_demo_db
from sqlalchemy import select
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

from quality.db.schema import ImageQuality
from quality.db.session import make_engine, upgrade
from quality.ui import data

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PAGE = "pages/image_quality.py"
TIMEOUT = 90
UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/x"


@pytest.fixture(scope="module")
def scored_url(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A copy of the tiny demo DB, scored with the shipped model on CPU; embeddings in
    ``embeddings/`` beside the DB, where ``quality score`` puts them (and the page looks)."""
    from quality.imaging.score import score_images

    folder = tmp_path_factory.mktemp("demo_iq")
    url = copy_demo_db(tiny_demo, folder)
    engine = make_engine(url)
    with Session(engine) as session:
        summary = score_images(
            session, device="cpu", batch_size=16, embeddings_dir=folder / "embeddings"
        )
        assert summary.scored > 0
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def unscored_url(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return copy_demo_db(tiny_demo, tmp_path_factory.mktemp("demo_iq_unscored"))


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    data.clear_caches()
    yield
    data.clear_caches()


def _open(monkeypatch: pytest.MonkeyPatch, url: str, *, role: str = "admin") -> AppTest:
    """Run the router once, then switch to the page."""
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["role"] = role
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _charts(at: AppTest) -> dict[str, str]:
    return {c.proto.id.rsplit("-", 1)[-1]: c.proto.spec for c in at.get("plotly_chart")}


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in (at.error, at.info, at.warning, at.success) for e in kind]
    return "\n".join(str(p) for p in parts)


def _markdown(at: AppTest) -> str:
    return "\n".join(str(m.value) for m in at.markdown)


def _defects(url: str) -> dict[int, str]:
    """``image_id → defect_type`` of the scored rows."""
    engine = make_engine(url)
    with Session(engine) as session:
        rows = session.execute(select(ImageQuality.image_id, ImageQuality.defect_type)).all()
    engine.dispose()
    return {int(i): str(d) for i, d in rows}


# --------------------------------------------------------------------------- scored


def test_page_renders_every_section(monkeypatch: pytest.MonkeyPatch, scored_url: str) -> None:
    at = _open(monkeypatch, scored_url)
    _ok(at)
    assert at.title[0].value.endswith("Image quality")
    assert at.selectbox(key="iq_version").value == "iqa-v1"
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Images scored"].replace(",", "")) > 0
    charts = _charts(at)
    assert {"iq_dist_source", "iq_dist_manufacturer", "iq_dist_modality"} <= set(charts)
    assert json.loads(charts["iq_dist_source"])["data"][0]["type"] == "box"
    assert "iq_defects" in charts
    worst = [k for k in charts if k.startswith("iq_worst_")]
    assert len(worst) == at.slider(key="iq_worst_n").value
    # The embedding map and the click-through card of the default (worst) image.
    scatter = json.loads(charts["iq_embedding"])
    assert scatter["data"][0]["type"] in {"scatter", "scattergl"}
    assert "iq_pick_thumb" in charts
    assert any("PCA of the CNN embeddings" in str(c.value) for c in at.caption)
    # Duplicates and leakage: the tiny demo seeds both.
    assert "Exact clusters" in metrics and "Near clusters" in metrics
    assert any(k.startswith(("iq_dup_exact_", "iq_dup_near_")) for k in charts)
    # The tiny demo seeds a patient leak: a FAIL badge (markdown) and the patients' table.
    assert "FAIL ·" in _markdown(at) and "Patients in more than one split" in _markdown(at)
    assert any("patient_key" in df.value.columns for df in at.dataframe)
    labels = [b.proto.label for b in at.get("download_button")]
    assert "⬇️ Worst images (CSV)" in labels and "⬇️ Metric values (CSV)" in labels


def test_defect_filter(monkeypatch: pytest.MonkeyPatch, scored_url: str) -> None:
    at = _open(monkeypatch, scored_url)
    options = at.selectbox(key="iq_defect").options
    assert options[0] == "(all defects)" and len(options) > 1
    defect = options[1]
    at.selectbox(key="iq_defect").select(defect).run()
    _ok(at)
    shown = [int(k.rsplit("_", 1)[1]) for k in _charts(at) if k.startswith("iq_worst_")]
    assert shown
    defects = _defects(scored_url)
    assert {defects[i] for i in shown} == {defect}
    assert len(shown) == min(
        at.slider(key="iq_worst_n").value, list(defects.values()).count(defect)
    )


def test_metric_and_colour_switch(monkeypatch: pytest.MonkeyPatch, scored_url: str) -> None:
    at = _open(monkeypatch, scored_url)
    at.selectbox(key="iq_metric").select("sharpness").run()
    _ok(at)
    box = json.loads(_charts(at)["iq_dist_modality"])
    assert box["layout"]["yaxis"]["title"]["text"] == "sharpness"
    at.radio(key="iq_color").set_value("OOD").run()
    _ok(at)
    names = {t.get("name") for t in json.loads(_charts(at)["iq_embedding"])["data"]}
    assert names <= {"OOD", "in-distribution", "not scored"}
    ids = at.selectbox(key="iq_pick").options
    at.selectbox(key="iq_pick").select(ids[-1]).run()
    _ok(at)
    assert "iq_pick_thumb" in _charts(at)


# --------------------------------------------------------------------------- nothing to show


def test_unscored_db_says_how_to_score(monkeypatch: pytest.MonkeyPatch, unscored_url: str) -> None:
    at = _open(monkeypatch, unscored_url)
    _ok(at)
    assert "not scored yet" in _texts(at) and "quality score --dataset" in _texts(at)
    assert not at.get("plotly_chart")


def test_empty_db_shows_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    at = _open(monkeypatch, url)
    assert at.info and "has no data yet" in at.info[0].value


def test_unreachable_db_shows_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUALITY_DB_URL", UNREACHABLE)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception
    assert "Cannot reach the database" in _texts(at)


# --------------------------------------------------------------------------- roles


def _direct(monkeypatch: pytest.MonkeyPatch, url: str, role: str) -> AppTest:
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(str(ROOT / PAGE), default_timeout=TIMEOUT)
    at.session_state["role"] = role
    at.session_state["_routed_by_app"] = True
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_clinician_is_refused(monkeypatch: pytest.MonkeyPatch, unscored_url: str) -> None:
    at = _direct(monkeypatch, unscored_url, "clinician")
    assert "cannot open this page" in _texts(at)
    assert not at.metric and not at.get("plotly_chart")


def test_data_scientist_is_allowed(monkeypatch: pytest.MonkeyPatch, unscored_url: str) -> None:
    at = _direct(monkeypatch, unscored_url, "data scientist")
    assert "cannot open this page" not in _texts(at)
    assert "not scored yet" in _texts(at)


def test_duplicate_scan_uses_cnn_embeddings(scored_url: str) -> None:
    """The page's duplicate scan gets the scored images' embeddings, and confirming hash
    pairs by embedding cosine keeps the pixel-identical copies."""
    from sqlalchemy.orm import Session

    from quality.db.session import make_engine
    from quality.imaging.duplicates import duplicate_report
    from quality.imaging.report import dataset_embeddings

    folder = Path(scored_url.removeprefix("sqlite:///")).parent
    engine = make_engine(scored_url)
    with Session(engine) as session:
        emb = dataset_embeddings(session, dataset_id=1, embeddings_dir=folder / "embeddings")
        assert emb is not None and len(emb) > 0
        assert emb["embedding"].map(len).nunique() == 1  # one vector length
        norms = emb["embedding"].map(lambda v: float((v**2).sum()) ** 0.5)
        assert norms.between(0.99, 1.01).all()  # the CNN's embeddings are L2-normalised
        with_emb = duplicate_report(session, dataset_id=1, embeddings=emb)
        without = duplicate_report(session, dataset_id=1)
        assert dataset_embeddings(session, dataset_id=1, embeddings_dir=None) is None
    engine.dispose()
    exact_with = set(with_emb.near.loc[with_emb.near["kind"] == "exact", "image_id"])
    exact_without = set(without.near.loc[without.near["kind"] == "exact", "image_id"])
    assert exact_with == exact_without
    assert set(with_emb.near["image_id"]) <= set(without.near["image_id"])
