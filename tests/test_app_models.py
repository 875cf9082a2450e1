"""AppTest of the Models page: the tiny demo, a DB with one model version, empty and
unreachable DBs.

Runs after the first execute the page file alone (the Streamlit quirk documented at the top
of ``test_app_pages.py``); the page's ``router.page_guard`` keeps the router in place.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_demo_db
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest
from test_queries import add_example_rows

from quality.db.session import make_engine, upgrade
from quality.ui import data

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PAGE = "pages/models.py"
TIMEOUT = 90
UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/x"


@pytest.fixture(scope="module")
def demo_url(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return copy_demo_db(tiny_demo, tmp_path_factory.mktemp("app_models"))


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    data.clear_caches()
    yield
    data.clear_caches()


def _open(monkeypatch: pytest.MonkeyPatch, url: str, *, role: str = "admin") -> AppTest:
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["role"] = role
    at.run()
    return at.switch_page(PAGE).run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in (at.error, at.info, at.warning, at.success) for e in kind]
    return "\n".join(str(p) for p in parts)


def _charts(at: AppTest) -> dict[str, dict]:
    return {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def _array(value: object) -> np.ndarray:
    """A plotly trace array: a list, or a typed binary ``{dtype, bdata}`` block."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value, dtype=float)


def test_page_on_the_demo(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    at = _open(monkeypatch, demo_url)
    _ok(at)
    assert at.title[0].value.endswith("Models")
    # Defaults: production as baseline, shadow as candidate, the doctors' consensus as truth.
    assert "v1 · production" in at.selectbox(key="models_baseline").format_func(
        at.selectbox(key="models_baseline").value
    )
    assert "v2 · shadow" in at.selectbox(key="models_candidate").format_func(
        at.selectbox(key="models_candidate").value
    )
    assert at.radio(key="models_truth").value == "consensus"
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Images compared"]) > 0
    assert {"AUC v1", "AUC v2", "ΔAUC", "Label agreement", "v1 median", "v2 p95"} <= set(metrics)
    charts = _charts(at)
    assert {"models_roc", "models_pr", "models_scatter", "models_sources"} <= set(charts)
    roc = charts["models_roc"]["data"]
    assert [t["name"].split()[0] for t in roc[:2]] == ["v1", "v2"]
    fpr = _array(roc[0]["x"])
    assert fpr[0] == 0 and fpr[-1] == 1  # from (0, 0) to (1, 1)
    # The checklist: a verdict badge and one ✅/❌/⚠️ line per item, a source among them.
    lines = [str(m.value) for m in at.markdown]
    assert any("READY" in line for line in lines)
    items = [line for line in lines if line[:1] in {"✅", "❌", "⚠"}]
    assert any("Overall AUC" in line for line in items)
    assert any("Latency" in line for line in items)
    assert any("AUC at " in line for line in items)
    # Flipped cases: a table, and thumbnails keyed by image id.
    tables = [df.value for df in at.dataframe]
    sources = next(t for t in tables if "ΔAUC" in t.columns)
    assert len(sources) >= 1 and sources["ΔAUC"].str.match(r"^[+-]\d").all()
    flips = [k for k in charts if k.startswith("models_flip_")]
    flipped = next(t for t in tables if "finding_flip" in t.columns)
    assert flips and len(flipped) >= len(flips)  # the tiny demo has a few flipped cases
    labels = [b.label for b in at.get("download_button")]
    assert "⬇️ By source (CSV)" in labels and "⬇️ Checklist (CSV)" in labels


def test_switching_truth_and_versions(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    at = _open(monkeypatch, demo_url)
    at.radio(key="models_truth").set_value("gold").run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert "Images compared" in metrics
    # The same version twice is refused with a warning, not a traceback.
    base = at.selectbox(key="models_baseline").value
    at.selectbox(key="models_candidate").set_value(base).run()
    assert not at.exception
    assert "two different versions" in _texts(at)


def test_one_model_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as s:
        add_example_rows(s, tmp_path)
    engine.dispose()
    at = _open(monkeypatch, url)
    _ok(at)
    assert "needs two model versions" in _texts(at)


@pytest.mark.parametrize("schema", [False, True], ids=["no-schema", "no-rows"])
def test_empty_db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, schema: bool) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    if schema:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
    at = _open(monkeypatch, url)
    _ok(at)
    assert "has no data yet" in _texts(at)


def test_unreachable_db(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open(monkeypatch, UNREACHABLE)
    assert not at.exception, [e.value for e in at.exception]
    assert at.error and "Cannot reach the database" in at.error[0].value
