"""Smoke test of ``bench/load.py``: the load test's own code path, small.

Three sessions at once on PostgreSQL with the tiny demo (two reviewers who draw the same
samples, one data-scientist reader), each for exactly ten actions, bounded by actions and
not by time so the counts are exact: no errors, no lost, mismatched or duplicated verdict,
one audit row per saved verdict, every session at its ten actions. The choices of a session
come from ``Random(f"{seed}:{session number}")`` and a reviewer's next study depends only on
its own verdicts, so the flow (how many verdicts, how many samples drawn) is the same on
every run; the exact figures pinned below would move only if the flow changed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from conftest import DEMO_SALT
from sqlalchemy import select
from sqlalchemy.orm import Session

from quality.db.schema import Review, User
from quality.db.session import make_engine, upgrade
from quality.demo import build_demo
from quality.ui import data

ROOT = Path(__file__).resolve().parent.parent
ACTIONS = 10


def _load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "load.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_load"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


load = _load_module()


@pytest.fixture
def tiny_pg(pg_url: str, tmp_path: Path) -> Iterator[str]:
    """The tiny demo built into a fresh PostgreSQL database."""
    engine = make_engine(pg_url)
    upgrade(engine)
    with Session(engine) as s:
        build_demo(s, tmp_path / "demo", seed=0, size="tiny", salt=DEMO_SALT, workers=1)
    engine.dispose()
    data.clear_caches()
    yield pg_url
    data.clear_caches()


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(20, 0, -1)]
    assert load._percentile(values, 95) == 19.0
    assert load._percentile(values, 50) == 10.0
    assert load._percentile([3.0], 95) == 3.0


def test_apptest_threads_restores_streamlit() -> None:
    from streamlit import config
    from streamlit.runtime import Runtime
    from streamlit.testing.v1 import app_test, local_script_runner

    before = (config.get_option, app_test.patch_config_options,
              local_script_runner.require_widgets_deltas,
              local_script_runner.LocalScriptRunner.__init__)  # fmt: skip
    with load.apptest_threads():
        assert Runtime.exists() is True
        assert Runtime.instance() is Runtime.instance()
        assert app_test.patch_config_options is not before[1]
    assert Runtime.exists() is False
    after = (config.get_option, app_test.patch_config_options,
             local_script_runner.require_widgets_deltas,
             local_script_runner.LocalScriptRunner.__init__)  # fmt: skip
    assert after == before


def test_three_sessions_no_errors_no_lost_verdicts(
    tiny_pg: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("QUALITY_THUMB_CACHE_DIR", str(tmp_path / "thumbs"))
    cfg = load.LoadConfig(
        db_url=tiny_pg,
        sessions=3,
        reviewers=2,
        seconds=600.0,  # a bound that never ends the test: the actions do
        max_actions=ACTIONS,
        think=(0.0, 0.05),
        sample_size=3,
        seed=0,
        page_timeout=120.0,
    )
    result = load.run_load(cfg)

    assert result.errors == 0, result.error_samples
    assert result.ok
    sessions = result.sessions
    assert [(s["kind"], s["role"]) for s in sessions] == [
        ("reviewer", "clinician"), ("reviewer", "clinician"), ("reader", "data scientist"),
    ]  # fmt: skip
    assert [s["actions"] for s in sessions] == [ACTIONS] * 3
    assert sum(p["n"] for p in result.pages.values()) == 3 * ACTIONS
    assert result.pages["sign_in"]["n"] == 3 and result.pages["sign_in_page"]["n"] == 3

    v = result.verdicts
    assert v["clicks"] == result.pages["spot_check:verdict"]["n"]
    assert v["acknowledged"] == v["clicks"] == v["audit_rows"]
    assert v["stored"] == v["distinct_pairs"]
    assert (v["lost"], v["mismatched"], v["duplicates"], v["unacknowledged_rows"]) == (0, 0, 0, 0)
    # The seeded flow: each reviewer saves 5 verdicts, finishes its first 3-study sample
    # and draws the next one (same seeds: the same sample), so the pair judged the same 5.
    assert [s["verdicts_acknowledged"] for s in sessions] == [5, 5, 0]
    assert [s["draws"] for s in sessions] == [2, 2, 0]
    assert v["shared_predictions"] == 5

    # What the reviewers were told is what the DB holds, row by row.
    engine = make_engine(tiny_pg)
    with Session(engine) as s:
        names = {s_["name"] for s_ in sessions if s_["kind"] == "reviewer"}
        rows = s.execute(
            select(User.username, Review.prediction_id, Review.verdict, Review.comment)
            .join(User, User.id == Review.reviewer_id)
            .where(User.username.in_(names))
        ).all()
    engine.dispose()
    assert len(rows) == v["stored"]
    assert all(r.comment.startswith(f"{r.username} n") for r in rows)
    assert {r.verdict for r in rows} <= {"agree", "disagree", "unsure"}
