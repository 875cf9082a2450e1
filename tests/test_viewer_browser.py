"""The Browser's viewer with overlays, on the example DB of ``test_app_pages``.

The CT study S3 has three slices: D01 labelled slice 1 ``normal`` (task ``finding``), and
model ``m`` version ``1`` predicted ``normal`` 0.9 on slice 2. Predictions show by default,
doctors' annotations start hidden and can be switched on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest
from test_app_pages import APP, ROOT, TIMEOUT, populated_url  # noqa: F401 (fixture)

from quality.ui import data

CT_SLICE = "browser_slice_1.2.826.0.2.3"


@pytest.fixture(autouse=True)
def _fresh_caches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    data.clear_caches()
    yield
    data.clear_caches()


def _corner(at: AppTest) -> str:
    fig: dict[str, Any] = json.loads(at.get("plotly_chart")[0].proto.spec)
    return " ".join(a["text"] for a in fig["layout"].get("annotations", []))


def test_browser_shows_predictions_and_hides_doctors_by_default(
    monkeypatch: pytest.MonkeyPatch,
    populated_url: str,  # noqa: F811
) -> None:
    monkeypatch.setenv("QUALITY_DB_URL", populated_url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["role"] = "admin"
    at.run()
    at.switch_page("pages/browser.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="browser_study").value == "1.2.826.0.1.3"
    # Slice 1: only D01's label, hidden by default.
    d01 = at.checkbox(key="browser_viewer_show_D01")
    assert d01.value is False and "D01" not in _corner(at)
    d01.check().run()
    assert "D01 (finding): normal" in _corner(at)
    # Slice 2: the model's prediction, shown with its score; D01 has nothing there.
    at.slider(key=CT_SLICE).set_value(2).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.checkbox(key="browser_viewer_show_m 1").value is True
    assert "m 1: normal 0.90" in _corner(at)
    assert "D01" not in _corner(at)
    assert "1 of 1 overlay(s) shown" in "\n".join(c.value for c in at.caption)
