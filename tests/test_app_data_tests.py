"""AppTest of the Data tests page on the tiny demo (a copy per test: runs write to the DB).

``QUALITY_STORE`` points at the tiny demo's files, so the store checks run. Runs after the
first one execute the page file alone (see ``test_app_pages.py``); the page's
``router.page_guard`` keeps the router in place.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import copy_demo_db
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

from quality.db.schema import CheckResult, CheckRun
from quality.db.session import make_engine, upgrade
from quality.ui import data

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PAGE = "pages/data_tests.py"
TIMEOUT = 120
UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/x"


@pytest.fixture
def demo_url(tiny_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("QUALITY_STORE", str(tiny_demo / "dicom"))
    return copy_demo_db(tiny_demo, tmp_path)


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
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
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in (at.error, at.info, at.warning, at.success) for e in kind]
    return "\n".join(str(p) for p in parts)


def _counts(url: str) -> tuple[int, int]:
    engine = make_engine(url)
    with Session(engine) as s:
        runs = int(s.scalar(select(func.count(CheckRun.id))) or 0)
        results = int(s.scalar(select(func.count(CheckResult.id))) or 0)
    engine.dispose()
    return runs, results


def _downloads(at: AppTest) -> list[str]:
    return [b.proto.label for b in at.get("download_button")]


def test_page_renders_before_any_run(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    at = _open(monkeypatch, demo_url)
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value.endswith("Data tests")
    assert at.radio(key="dt_rules_source").value == "Shipped rules file"
    assert "No runs yet" in _texts(at)
    assert "⬇️ Suggested rules (YAML)" in _downloads(at)
    assert not at.button(key="dt_run").disabled


def test_running_writes_a_run_and_shows_failures(
    monkeypatch: pytest.MonkeyPatch, demo_url: str
) -> None:
    at = _open(monkeypatch, demo_url)
    at.button(key="dt_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    runs, results = _counts(demo_url)
    assert runs == 1 and results > 15
    assert "Run 1 failed" in _texts(at)
    # History chart: one run, FAIL on top.
    charts = {
        c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")
    }
    spec = charts["dt_history"]
    assert [t["x"] for t in spec["data"][:1]] == [["run 1"]]
    assert spec["data"][-1]["text"] == ["FAIL"]
    # The latest run's results table, and the failing rows of each failed check.
    assert at.selectbox(key="dt_run_pick").value == 1
    table = next(df.value for df in at.dataframe if "check_name" in df.value.columns)
    statuses = dict(zip(table["check_name"], table["status"], strict=True))
    assert statuses["semantic.box_outside_image"] == "❌ failed"
    assert statuses["rule.chest images only"] == "❌ failed"
    titles = [e.proto.label for e in at.expander]
    assert any(t.startswith("❌ semantic.box_outside_image — 1 failed") for t in titles)
    assert any("rule.chest images only · line 12" in t for t in titles)
    failing = [df.value for df in at.dataframe if "sop_uid" in df.value.columns]
    assert failing and all("patient_name" not in f.columns for f in failing)
    labels = _downloads(at)
    assert "⬇️ Results (CSV)" in labels and labels.count("⬇️ Failing rows (CSV)") >= 8
    knee = next(f for f in failing if "KNEE" in set(f["value"].astype(str)))
    assert knee["field"].tolist() == ["body_part"]


def test_second_run_and_run_picker(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    at = _open(monkeypatch, demo_url)
    at.radio(key="dt_rules_source").set_value("Built-in checks only").run()
    at.button(key="dt_run").click().run()
    at.radio(key="dt_rules_source").set_value("Shipped rules file").run()
    at.button(key="dt_run").click().run()
    assert not at.exception and not at.error
    assert _counts(demo_url)[0] == 2
    picker = at.selectbox(key="dt_run_pick")
    assert picker.options[0].startswith("run 2") and picker.value == 2
    picker.set_value(1).run()
    table = next(df.value for df in at.dataframe if "check_name" in df.value.columns)
    assert not any(n.startswith("rule.") for n in table["check_name"])  # run 1: no rules


def test_bad_pasted_rules_show_the_line(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    at = _open(monkeypatch, demo_url)
    at.radio(key="dt_rules_source").set_value("Paste rules").run()
    assert at.button(key="dt_run").disabled  # nothing pasted yet
    at.text_area(key="dt_rules_text").input("rules:\n  - column: kvp\n    between: [40]\n").run()
    assert not at.exception
    message = at.error[0].value
    assert "line 3" in message and "`between`" in message and "pasted rules" in message
    assert at.button(key="dt_run").disabled
    # An unknown task is found when the rules run: the line is shown, nothing is stored.
    at.text_area(key="dt_rules_text").input(
        "rules:\n  - name: readers\n    annotations_per_image: {task: nope, at_least: 2}\n"
    ).run()
    assert not at.error
    at.button(key="dt_run").click().run()
    assert not at.exception
    assert "line 3" in at.error[0].value and "unknown task 'nope'" in at.error[0].value
    assert _counts(demo_url) == (0, 0)


def test_good_pasted_rules_run(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    at = _open(monkeypatch, demo_url)
    at.radio(key="dt_rules_source").set_value("Paste rules").run()
    at.text_area(key="dt_rules_text").input("rules:\n  - column: rows\n    at_least: 1\n").run()
    at.text_input(key="dt_reference").input("2024-01-01..2024-02-15").run()
    at.button(key="dt_run").click().run()
    assert not at.exception and not at.error
    table = next(df.value for df in at.dataframe if "check_name" in df.value.columns)
    assert table.set_index("check_name").loc["rule.rows >= 1", "status"] == "✅ passed"
    assert any(n.startswith("distribution.ks.") for n in table["check_name"])


def test_all_images_asks_for_a_dataset(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> None:
    at = _open(monkeypatch, demo_url, dataset=-1)
    assert "pick a dataset in the sidebar" in _texts(at)
    assert not at.button


def test_empty_db_shows_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    at = _open(monkeypatch, url)
    assert at.info and "has no data yet" in at.info[0].value
    assert not at.error


def test_unreachable_db_shows_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUALITY_DB_URL", UNREACHABLE)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception
    assert "Cannot reach the database" in _texts(at)
