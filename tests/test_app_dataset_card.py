"""AppTest of the Dataset card page: the tiny demo, editing, snapshots and diffs, and the DBs
that are empty, unreachable or at an older schema revision.

The page file is opened directly, as the router would run it (``_routed_by_app`` set before
every run, the dataset picked in session state): its writers are form callbacks, and the
page itself never depends on the other pages of the menu.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import copy_demo_db
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest
from test_snapshot import build_example

from quality.card import build_card, card_markdown
from quality.db.schema import Dataset, DatasetVersion
from quality.db.session import make_engine, upgrade
from quality.ui import data

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "dataset_card.py")
TIMEOUT = 60
UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/x"


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    data.clear_caches()
    yield
    data.clear_caches()


@pytest.fixture
def demo_url(tiny_demo: Path, tmp_path: Path) -> str:
    return copy_demo_db(tiny_demo, tmp_path)


@pytest.fixture
def example_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'example.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as s:
        build_example(s)
        s.add(Dataset(name="fresh"))
        s.commit()
    engine.dispose()
    return url


def _run(at: AppTest) -> AppTest:
    at.session_state["_routed_by_app"] = True
    return at.run()


def _open(monkeypatch: pytest.MonkeyPatch, url: str, dataset_id: int | None = 1) -> AppTest:
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    at.session_state["role"] = "admin"
    at.session_state["dataset_id"] = dataset_id
    return _run(at)


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _markdown(at: AppTest) -> str:
    return "\n".join(str(m.value) for m in at.markdown)


def _charts(at: AppTest) -> dict[str, dict]:
    return {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _db_card(url: str, dataset: str = "chest-xray-demo"):
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            return build_card(s, dataset, n_resamples=10)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- demo


def test_renders_the_demo_card(monkeypatch, demo_url):
    at = _open(monkeypatch, demo_url)
    _ok(at)
    assert at.title[0].value.endswith("Dataset card")
    card = _db_card(demo_url)
    metrics = _metrics(at)
    assert metrics["Images"] == f"{card.counts['images']:,}"
    assert metrics["Versions"] == "1"
    assert at.selectbox(key="card_version").value == "v1"
    charts = _charts(at)
    assert charts["card_balance"]["data"][0]["type"] == "bar"
    sources = {x for trace in charts["card_sources"]["data"] for x in trace["x"]}
    assert sources == set(card.sources["source"])
    md = _markdown(at)
    for heading in ("## Composition", "## Labeling", "## Quality", "## License and maintenance"):
        assert heading in md
    assert any("before labels were frozen" in w.value for w in at.warning)
    labels = [b.proto.label for b in at.get("download_button")]
    assert "⬇️ Card (Markdown)" in labels and "⬇️ Status (JSON)" in labels
    assert "⬇️ class-balance (CSV)" in labels and "⬇️ sources (CSV)" in labels


def test_edit_and_save_a_field(monkeypatch, demo_url):
    at = _open(monkeypatch, demo_url)
    text_ = "Benchmark chest-finding classifiers on four sites."
    at.text_area(key="card_field_1_motivation").input(text_)
    at.button(key="card_save").click()
    _run(at)
    _ok(at)
    assert [s.value for s in at.success] == ["Saved the card's text."]
    assert text_ in _markdown(at)  # the card shown is rebuilt after the save
    card = _db_card(demo_url)
    assert card.fields == {"motivation": text_}
    assert text_ in card_markdown(card)


def test_snapshot_then_diff(monkeypatch, demo_url):
    at = _open(monkeypatch, demo_url)
    at.text_input(key="card_snapshot_note").input("pin pixels and labels")
    at.button(key="card_snapshot").click()
    _run(at)
    _ok(at)
    assert at.success[0].value.startswith("Created v2")
    assert at.selectbox(key="card_version").value == "v2"
    assert (at.selectbox(key="card_diff_old").value, at.selectbox(key="card_diff_new").value) == (
        "v1",
        "v2",
    )
    metrics = _metrics(at)
    assert (metrics["Added"], metrics["Removed"], metrics["Moved split"]) == ("0", "0", "0")
    assert metrics["Versions"] == "2"
    assert "## Changes since v1" in _markdown(at)
    # The same working set again: nothing new.
    at.button(key="card_snapshot").click()
    _run(at)
    _ok(at)
    assert at.info[0].value.startswith("Unchanged: the working set equals v2")
    engine = make_engine(demo_url)
    with Session(engine) as s:
        notes = dict(s.execute(select(DatasetVersion.version, DatasetVersion.note)).all())
    engine.dispose()
    assert notes["v2"] == "pin pixels and labels"


# --------------------------------------------------------------------------- other states


def test_dataset_without_version_snapshots_its_first(monkeypatch, example_url):
    at = _open(monkeypatch, example_url, dataset_id=2)
    _ok(at)
    assert any("no version yet" in w.value for w in at.warning)
    assert at.checkbox(key="card_snapshot_add_new").value is True
    at.button(key="card_snapshot").click()
    _run(at)
    _ok(at)
    assert at.success[0].value == "Created v1 (6 images, 6 new)."
    assert _metrics(at)["Images"] == "6"


def test_all_images_asks_for_a_dataset(monkeypatch, example_url):
    at = _open(monkeypatch, example_url, dataset_id=None)
    _ok(at)
    assert "pick a dataset in the sidebar" in at.info[0].value


@pytest.mark.parametrize("schema", [False, True], ids=["no-schema", "no-rows"])
def test_empty_db_says_so(monkeypatch, tmp_path, schema):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    if schema:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
    at = _open(monkeypatch, url)
    _ok(at)
    assert "has no data yet" in at.info[0].value


def test_unreachable_db_shows_error(monkeypatch):
    at = _open(monkeypatch, UNREACHABLE)
    assert not at.exception, [e.value for e in at.exception]
    assert "Cannot reach the database" in at.error[0].value


def test_outdated_schema_says_how_to_upgrade(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    upgrade(engine, "0001")
    with engine.begin() as c:
        c.execute(text("INSERT INTO datasets (name) VALUES ('old')"))
    engine.dispose()
    at = _open(monkeypatch, url)
    assert not at.exception, [e.value for e in at.exception]
    assert "quality db upgrade" in at.error[0].value
