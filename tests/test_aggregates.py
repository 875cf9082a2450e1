"""Materialised results (``quality.db.aggregates``) on SQLite and PostgreSQL.

The tiny demo is built once per DB kind and refreshed; then every stored result must equal
what its builder computes live, every write must make the results that read the written
table stale (and only those), ``ingest`` and ``score`` must refresh at their end, a payload
naming anything but data classes must be refused, and a page must serve the stored result
without calling the builder.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import pickle
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DEMO_SALT, copy_demo_db
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

from quality.db import aggregates
from quality.db.schema import (
    TRACKED_TABLES,
    Annotation,
    Annotator,
    DataChange,
    LabelingTask,
    MaterializedResult,
)
from quality.db.session import make_engine, upgrade
from quality.demo import build_demo
from quality.ingest import ingest
from quality.ui import data

ROOT = Path(__file__).resolve().parent.parent

# The clock fields of a card are brought to the reading time (on_load): not compared.
_CLOCK_FIELDS = {"generated_at", "age_days"}


def assert_same(a: Any, b: Any, path: str = "result") -> None:
    """Deep equality of builder results: dataclasses, frames, arrays, floats with NaN."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), path
        for f in dataclasses.fields(a):
            if f.name in _CLOCK_FIELDS:
                continue
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, pd.DataFrame):
        if "age_days" in a:  # the overview's clock column: seconds apart
            np.testing.assert_allclose(a["age_days"], b["age_days"], atol=1e-3, err_msg=path)
            a, b = a.drop(columns="age_days"), b.drop(columns="age_days")
        pd.testing.assert_frame_equal(a, b, obj=path)
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b, obj=path)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert a == b, path


def _versions(session: Session) -> dict[str, int]:
    return {n: int(v) for n, v in session.execute(select(DataChange.name, DataChange.version))}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def demo_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The tiny demo in a fresh DB of each kind, its results refreshed."""
    out = tmp_path_factory.mktemp(f"agg_{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{out / 'demo.db'}"
        cluster = None
    else:
        cluster = request.getfixturevalue("pg_cluster")
        if cluster is None:
            from conftest import service_missing

            service_missing("PostgreSQL (initdb/pg_ctl under /usr/lib/postgresql/*/bin)")
        url = cluster.new_database()
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as s:
        build_demo(s, out, seed=0, size="tiny", salt=DEMO_SALT, workers=1)
        aggregates.refresh(s)
        s.commit()
    engine.dispose()
    yield url
    if cluster is not None:
        cluster.drop_database(url)


@pytest.fixture
def session(demo_db: str) -> Iterator[Session]:
    engine = make_engine(demo_db)
    with Session(engine, expire_on_commit=False) as s:
        yield s
    engine.dispose()


# --------------------------------------------------------------------------- equality


def test_every_stored_result_equals_its_builder(session: Session) -> None:
    n_checked = 0
    for kind, spec in aggregates.KINDS.items():
        keys = spec.keys(session)
        if kind.startswith("iq_"):
            assert keys == [], kind  # the tiny demo is not scored
            continue
        assert keys, f"{kind}: the tiny demo has something to compute ahead"
        stored = aggregates.stored_keys(session, kind)
        assert len(stored) == len(keys), kind
        for key in keys:
            found, value = aggregates.lookup(session, kind, *key)
            assert found, (kind, key)
            assert_same(value, spec.build(session, *key), f"{kind}{key}")
            n_checked += 1
    # 5 counts (1 + 1 + 2 + 2 + 2), 2 tasks × 2 reports, card, 2 EDA, 2 + 2 drift,
    # 2 comparisons, 1 suggestion, 1 worklist, 2 exact-duplicate scans; the tiny demo is not
    # scored (no image-quality results).
    assert n_checked == 8 + 4 + 1 + 2 + 4 + 2 + 1 + 1 + 2


def test_get_serves_the_stored_result_without_building(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = aggregates.KINDS["doctor_report"]
    key = spec.keys(session)[0]
    expected = aggregates.lookup(session, "doctor_report", *key)[1]

    def boom(*_args: Any) -> Any:
        raise AssertionError("the builder ran although a current result is stored")

    monkeypatch.setitem(aggregates.KINDS, "doctor_report", dataclasses.replace(spec, build=boom))
    got = aggregates.get(session, "doctor_report", *key)
    assert_same(got, expected)
    assert aggregates.built_at(session, "doctor_report", *key) is not None
    # A key that was never stored is built live (here: the builder, which refuses).
    with pytest.raises(AssertionError, match="builder ran"):
        aggregates.get(session, "doctor_report", key[0], 7)


def test_results_of_another_code_version_are_stale(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = aggregates.KINDS["store_totals"].keys(session)[0]
    assert aggregates.lookup(session, "store_totals", *key)[0] is True
    monkeypatch.setattr(aggregates, "CODE_VERSION", aggregates.CODE_VERSION + "-next")
    assert aggregates.lookup(session, "store_totals", *key) == (False, None)
    # A refresh under the new code rebuilds it, and it is current again.
    done = aggregates.refresh(session, ["store_totals"])
    assert [r.status for r in done] == ["built"]
    assert aggregates.lookup(session, "store_totals", *key)[0] is True
    session.rollback()


def test_card_clock_fields_are_brought_to_now(session: Session) -> None:
    key = aggregates.KINDS["card"].keys(session)[0]
    before = dt.datetime.now(dt.UTC)
    card = aggregates.get(session, "card", *key)
    assert card.generated_at >= before
    live = aggregates.KINDS["card"].build(session, *key)
    assert card.freshness == live.freshness
    assert card.age_days == pytest.approx(live.age_days, abs=1e-3)


# --------------------------------------------------------------------------- safety


class _Evil:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def test_a_payload_naming_other_code_is_refused(session: Session, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    row = session.execute(
        select(MaterializedResult.id).where(MaterializedResult.kind == "store_totals")
    ).scalar_one()
    good = session.scalar(select(MaterializedResult.payload).where(MaterializedResult.id == row))
    session.execute(
        MaterializedResult.__table__.update()
        .where(MaterializedResult.id == row)
        .values(payload=zlib.compress(pickle.dumps(_Evil(marker))))
    )
    session.commit()
    try:
        assert aggregates.lookup(session, "store_totals") == (False, None)
        totals = aggregates.get(session, "store_totals")  # computed live instead
        assert totals.n_images > 0
        assert not marker.exists()
    finally:
        session.execute(
            MaterializedResult.__table__.update()
            .where(MaterializedResult.id == row)
            .values(payload=good)
        )
        session.commit()
    assert aggregates.lookup(session, "store_totals")[0]


class _Getattr:
    def __reduce__(self) -> tuple[Any, ...]:
        return (getattr, (1, "__class__"))


def test_the_loader_takes_zoneinfo_timestamps_and_refuses_other_getattr() -> None:
    import zoneinfo

    stamps = pd.to_datetime(["2024-01-01T08:00", "2024-07-01T08:00"]).tz_localize(
        zoneinfo.ZoneInfo("Europe/Paris")
    )
    frame = pd.DataFrame({"at": stamps, "label": pd.Series(["a", None], dtype="string")})
    assert "getattr" in str(pickle.dumps(frame))  # ZoneInfo pickles through getattr
    assert_same(aggregates._loads(aggregates._dumps(frame)), frame)
    with pytest.raises(pickle.UnpicklingError, match="getattr"):
        aggregates._loads(zlib.compress(pickle.dumps(_Getattr())))


# --------------------------------------------------------------------------- staleness


def test_a_write_makes_its_readers_stale_and_refresh_rebuilds_them(session: Session) -> None:
    task_key = aggregates.KINDS["doctor_report"].keys(session)[0]
    task_id = task_key[0]
    before = _versions(session)
    assert set(before) == set(TRACKED_TABLES)
    n_before = aggregates.get(session, "list_tasks", None)
    image_id, annotator_id = session.execute(
        select(Annotation.image_id, Annotation.annotator_id)
        .where(Annotation.task_id == task_id)
        .limit(1)
    ).one()
    classes = session.scalar(select(LabelingTask.classes).where(LabelingTask.id == task_id))
    session.execute(
        insert(Annotation).values(
            task_id=task_id,
            image_id=image_id,
            annotator_id=annotator_id,
            label=classes[0],
            created_at=dt.datetime(2024, 3, 1, tzinfo=dt.UTC),
            duration_s=5.0,
        )
    )
    session.commit()
    after = _versions(session)
    # One row in one statement: +1 with row triggers (SQLite) and statement triggers (PG).
    assert after["annotations"] == before["annotations"] + 1
    assert {k: v for k, v in after.items() if k != "annotations"} == {
        k: v for k, v in before.items() if k != "annotations"
    }

    # Readers of annotations are stale and computed live; the others are still served.
    assert aggregates.lookup(session, "doctor_report", *task_key) == (False, None)
    assert aggregates.lookup(session, "list_tasks", None) == (False, None)
    assert aggregates.lookup(session, "store_totals")[0]
    assert aggregates.lookup(session, "images_by_source", None)[0]
    live = aggregates.get(session, "list_tasks", None)
    row = live.loc[live["id"] == task_id, "n_annotations"].iloc[0]
    old = n_before.loc[n_before["id"] == task_id, "n_annotations"].iloc[0]
    assert row == old + 1

    done = {(r.kind, r.key): r.status for r in aggregates.refresh(session)}
    session.commit()
    assert done[("list_tasks", "[null]")] == "built"
    assert done[("doctor_report", aggregates._key(task_key))] == "built"
    assert done[("store_totals", "[]")] == "current"
    assert done[("images_by_source", "[null]")] == "current"
    found, stored = aggregates.lookup(session, "list_tasks", None)
    assert found
    assert_same(stored, live)

    # Deleting it again is a write too.
    session.execute(
        delete(Annotation).where(Annotation.created_at == dt.datetime(2024, 3, 1, tzinfo=dt.UTC))
    )
    session.commit()
    assert _versions(session)["annotations"] > after["annotations"]
    assert aggregates.lookup(session, "list_tasks", None) == (False, None)


def test_updates_count_as_writes(session: Session) -> None:
    before = _versions(session)["annotators"]
    session.execute(
        Annotator.__table__.update().where(Annotator.id == 1).values(specialty="radiology")
    )
    session.commit()
    assert _versions(session)["annotators"] == before + 1


# --------------------------------------------------------------------------- schema behind


def test_a_db_behind_the_schema_computes_live(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine, "0004")
    try:
        with Session(engine) as s:
            assert aggregates.stamp(s, ["images"]) is None
            assert aggregates.lookup(s, "store_totals") == (False, None)
            assert aggregates.get(s, "store_totals").n_images == 0
            assert aggregates.refresh(s) == []
            # The session is still usable after the failed look-ups (PostgreSQL savepoints).
            assert s.execute(text("select 1")).scalar_one() == 1
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- writers


def test_ingest_refreshes_at_its_end(db_url: str, tiny_demo: Path, tmp_path: Path) -> None:
    store = tmp_path / "dicom"
    shutil.copytree(tiny_demo / "dicom", store)
    engine = make_engine(db_url)
    upgrade(engine)
    try:
        with Session(engine) as s:
            summary = ingest(s, str(store), workers=1, salt="s")
            assert summary.indexed > 0
            found, totals = aggregates.lookup(s, "store_totals")
            assert found and totals.n_images == summary.indexed
            for kind in ("dataset_overview", "images_by_source", "filter_options"):
                for key in aggregates.KINDS[kind].keys(s):
                    assert aggregates.lookup(s, kind, *key)[0], (kind, key)
    finally:
        engine.dispose()


def test_score_refreshes_at_its_end(tiny_demo: Path, tmp_path: Path) -> None:
    from quality.imaging import model as qmodel
    from quality.imaging import score as qs

    url = copy_demo_db(tiny_demo, tmp_path)
    engine = make_engine(url)
    upgrade(engine)
    torch.manual_seed(0)
    net = qmodel.IQANet().eval()
    try:
        with Session(engine) as s:
            assert aggregates.KINDS["iq_report"].keys(s) == []  # nothing scored yet
            qs.score_images(s, device="cpu", model=net)
            keys = aggregates.KINDS["iq_report"].keys(s)
            assert len(keys) == 2  # the demo dataset and all images
            for kind in ("iq_report", "iq_metric_values", "iq_projection"):
                for key in aggregates.KINDS[kind].keys(s):
                    found, value = aggregates.lookup(s, kind, *key)
                    assert found, (kind, key)
                    assert_same(value, aggregates.KINDS[kind].build(s, *key))
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- pages


def test_doctors_page_serves_the_stored_report(
    tiny_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = copy_demo_db(tiny_demo, tmp_path)
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as s:
        aggregates.refresh(s)
        s.commit()
        n_stored = s.scalar(
            select(func.count())
            .select_from(MaterializedResult)
            .where(MaterializedResult.kind == "doctor_report")
        )
    engine.dispose()
    assert n_stored == 2

    def boom(*_args: Any) -> Any:
        raise AssertionError("the page built the report live")

    for kind in ("doctor_report", "list_tasks", "store_totals"):
        spec = aggregates.KINDS[kind]
        monkeypatch.setitem(aggregates.KINDS, kind, dataclasses.replace(spec, build=boom))
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("QUALITY_DB_URL", url)
    data.clear_caches()
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.session_state["role"] = "admin"
        at.switch_page("pages/doctors.py")
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert at.title[0].value.endswith("Doctors")
        assert [h.value for h in at.header][:3] == ["Team", "One doctor", "Compare two doctors"]
    finally:
        data.clear_caches()
