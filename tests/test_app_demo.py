"""Every page renders on the real demo data (the tiny demo size, built once per module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import copy_demo_db
from streamlit.testing.v1 import AppTest

from quality.ui import data
from quality.ui.nav import PAGES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo_url(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return copy_demo_db(tiny_demo, tmp_path_factory.mktemp("app_demo"))


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch, demo_url: str) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("QUALITY_DB_URL", demo_url)
    data.clear_caches()
    yield
    data.clear_caches()


@pytest.mark.parametrize("spec", PAGES, ids=[p.key for p in PAGES])
def test_page_renders_on_demo(spec) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state["role"] = "admin"
    at.run()
    at.switch_page(spec.path).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert at.title and at.title[0].value.endswith(spec.title)


def test_browser_shows_every_demo_modality() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state["role"] = "admin"
    at.run()
    at.switch_page("pages/browser.py").run()
    modalities = at.multiselect(key="browser_modalities")
    assert {"CR", "DX"} <= set(modalities.options)
    for modality in modalities.options:
        at.multiselect(key="browser_modalities").set_value([modality]).run()
        assert not at.exception, (modality, [e.value for e in at.exception])
        assert not at.error, (modality, [e.value for e in at.error])
