"""AppTest of the Labeling-worklist page: the tiny demo (with made-up embeddings for the
diversity strategy), the "all images" scope, empty and unreachable DBs.

On the demo every dataset image is annotated, so the page opens on the ``no_gold`` pool (the
images the expert panel has not adjudicated). Runs after the first execute the page file alone
(see ``test_app_pages.py``); ``router.page_guard`` keeps the router in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import copy_demo_db
from sqlalchemy import select
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

from quality.db.schema import DatasetItem, ImageQuality
from quality.db.session import make_engine, upgrade
from quality.ui import data
from quality.ui.image_quality import EMBEDDINGS_ENV

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PAGE = "pages/worklist.py"
TIMEOUT = 90
UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/x"


@pytest.fixture(scope="module")
def demo_url(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return copy_demo_db(tiny_demo, tmp_path_factory.mktemp("app_worklist"))


@pytest.fixture(scope="module")
def embedded_url(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A demo copy whose dataset images have 4-d embeddings (as ``quality score`` stores)."""
    folder = tmp_path_factory.mktemp("app_worklist_emb")
    url = copy_demo_db(tiny_demo, folder)
    emb_dir = folder / "embeddings"
    (emb_dir / "fake").mkdir(parents=True)
    engine = make_engine(url)
    with Session(engine) as s:
        ids = sorted(int(i) for i in s.scalars(select(DatasetItem.image_id).distinct()))
        vectors = np.random.default_rng(0).normal(size=(len(ids), 4)).astype(np.float32)
        np.savez(emb_dir / "fake" / "e.npz", image_id=np.array(ids), embedding=vectors)
        for row, image_id in enumerate(ids):
            s.add(ImageQuality(image_id=image_id, scorer_version="fake",
                               embedding_ref=f"fake/e.npz#{row}"))  # fmt: skip
        s.commit()
    engine.dispose()
    return url, emb_dir


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv(EMBEDDINGS_ENV, raising=False)
    data.clear_caches()
    yield
    data.clear_caches()


def _open(monkeypatch: pytest.MonkeyPatch, url: str, *, dataset: int | None = None) -> AppTest:
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["role"] = "admin"
    if dataset is not None:
        at.session_state["_dataset_id_picker"] = dataset
    at.run()
    return at.switch_page(PAGE).run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in (at.error, at.info, at.warning, at.success) for e in kind]
    return "\n".join(str(p) for p in parts)


def _table(at: AppTest) -> pd.DataFrame:
    return next(df.value for df in at.dataframe if "priority" in df.value.columns)


def _chart_keys(at: AppTest) -> list[str]:
    return [c.proto.id.rsplit("-", 1)[-1] for c in at.get("plotly_chart")]


def test_page_on_the_demo(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    at = _open(monkeypatch, demo_url)
    _ok(at)
    assert at.title[0].value.endswith("Labeling worklist")
    assert at.radio(key="wl_pool").value == "no_gold"  # every image is annotated
    assert at.selectbox(key="wl_strategy").value == "entropy"
    version = at.selectbox(key="wl_version")
    assert "production" in version.format_func(version.value)
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Unlabeled images"]) > 0
    table = _table(at)
    assert table["rank"].tolist() == list(range(1, len(table) + 1))
    assert table["priority"].is_monotonic_decreasing
    assert "uri" not in table.columns and "sop_uid" not in table.columns
    keys = _chart_keys(at)
    assert "wl_mix" in keys
    thumbs = [k for k in keys if k.startswith("wl_thumb_")]
    assert thumbs and thumbs[0] == f"wl_thumb_{table['image_id'].iloc[0]}"
    assert [b.label for b in at.get("download_button")] == ["⬇️ Worklist (CSV)"]


def test_strategies_and_budget(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    at = _open(monkeypatch, demo_url)
    at.number_input(key="wl_budget").set_value(5).run()
    _ok(at)
    assert len(_table(at)) == 5
    at.selectbox(key="wl_strategy").set_value("committee").run()
    _ok(at)
    assert len(_table(at)) == 5
    # No embeddings next to this copy: a warning that says what to run, no traceback.
    at.selectbox(key="wl_strategy").set_value("diversity").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "run `quality score` first" in _texts(at)
    # The unannotated pool is empty on the demo: the page says so.
    at.selectbox(key="wl_strategy").set_value("entropy").run()
    at.radio(key="wl_pool").set_value("unannotated").run()
    _ok(at)
    assert "nothing to rank" in _texts(at)


def test_diversity_with_embeddings(
    monkeypatch: pytest.MonkeyPatch, embedded_url: tuple[str, Path]
) -> None:
    url, emb_dir = embedded_url
    monkeypatch.setenv(EMBEDDINGS_ENV, str(emb_dir))
    at = _open(monkeypatch, url)
    at.selectbox(key="wl_strategy").set_value("diversity").run()
    _ok(at)
    table = _table(at)
    assert len(table) == min(50, int(at.metric[1].value))
    assert table["priority"].is_monotonic_decreasing  # k-center radii shrink


def test_all_images_scope(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    at = _open(monkeypatch, demo_url, dataset=-1)
    _ok(at)
    assert "pick one in the sidebar" in _texts(at)


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
