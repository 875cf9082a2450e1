"""Distribution checks against a reference, and the robust z-score (:mod:`quality.checks`).

The DB (SQLite and PostgreSQL) holds dataset ``d`` with two versions of 30 images each:

* ``ref``: study days 2024-01-01 … 01-10 with 2, 3, 4, 3, 2, 3, 4, 3, 3, 3 images; kVp
  ``100 + (i mod 7)``; sources Alpha/Beta alternating;
* ``cur``: days 2024-01-11 … 01-17 with 3, 3, 3, 12, 3, 3, 3 images; kVp ``130 + (i mod
  7)``; the same sources;
* ``all``: every image of both (the newest version), for date-range references.

The DB is built once per module and DB kind; the tests only read it.

Images per day, reference: median 3, MAD 0, mean absolute deviation 0.4, so
``z = (x - 3) / (1.253314 · 0.4)``: 12 images gives z ≈ 17.95 (an anomaly), 2 or 4 give
±1.99 (not).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import DB_KINDS
from scipy import stats
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_checks import shared_db

from quality.checks import (
    DISTRIBUTION_COLUMNS,
    ROBUST_Z_LIMIT,
    CheckOutcome,
    DateRange,
    parse_reference,
    robust_z,
    run_checks,
)
from quality.db.schema import (
    Dataset,
    DatasetItem,
    DatasetVersion,
    Image,
    Series,
    Source,
    Study,
)
from quality.errors import QualityError

REF_DAYS = [2, 3, 4, 3, 2, 3, 4, 3, 3, 3]
CUR_DAYS = [3, 3, 3, 12, 3, 3, 3]
START = dt.date(2024, 1, 1)


def _add_version(
    session: Session, ds: Dataset, label: str, per_day: list[int], first: dt.date, kvp0: float
) -> list[float]:
    # The later first study day, the later the version (cur is the newest).
    created = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC) + dt.timedelta(days=60)
    version = DatasetVersion(
        dataset_id=ds.id, version=label, content_hash=label[0] * 64, created_at=created
    )
    session.add(version)
    session.flush()
    kvps: list[float] = []
    i = 0
    for day, n in enumerate(per_day):
        for _ in range(n):
            key = f"{label}{i}"
            src = _source(session, "Alpha" if i % 2 == 0 else "Beta")
            study = Study(
                study_uid=f"1.2.3.{label}.{i}",
                patient_key=key,
                modality="DX",
                body_part="CHEST",
                study_date=first + dt.timedelta(days=day),
                source_id=src.id,
            )
            session.add(study)
            session.flush()
            kvp = kvp0 + (i % 7)
            series = Series(series_uid=f"1.2.4.{label}.{i}", study_id=study.id, kvp=kvp)
            session.add(series)
            session.flush()
            img = Image(
                sop_uid=f"1.2.5.{label}.{i}",
                series_id=series.id,
                uri=f"/store/{key}.dcm",
                rows=256,
                cols=256,
                photometric="MONOCHROME2",
                header={},
            )
            session.add(img)
            session.flush()
            session.add(DatasetItem(version_id=version.id, image_id=img.id, split="train"))
            kvps.append(kvp)
            i += 1
    session.flush()
    return kvps


def _source(session: Session, name: str) -> Source:
    found = session.scalar(select(Source).where(Source.name == name))
    if found is not None:
        return found
    src = Source(name=name)
    session.add(src)
    session.flush()
    return src


def _build(session: Session, root: Path) -> dict[str, list[float]]:
    """Versions ``ref`` and ``cur`` (module docstring) and ``all`` (every image, newest)."""
    ds = Dataset(name="d")
    session.add(ds)
    session.flush()
    ref = _add_version(session, ds, "ref", REF_DAYS, START, 100.0)
    cur = _add_version(session, ds, "cur", CUR_DAYS, dt.date(2024, 1, 11), 130.0)
    both = DatasetVersion(
        dataset_id=ds.id, version="all", content_hash="f" * 64,
        created_at=dt.datetime(2024, 6, 1, tzinfo=dt.UTC),
    )  # fmt: skip
    session.add(both)
    session.flush()
    for image_id in session.scalars(select(Image.id)):
        session.add(DatasetItem(version_id=both.id, image_id=image_id, split="train"))
    session.commit()
    return {"ref": ref, "cur": cur}


@pytest.fixture(scope="module", params=DB_KINDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Session, dict[str, list[float]], Path]]:
    yield from shared_db(request, tmp_path_factory, _build)


@pytest.fixture
def session(shared: tuple[Session, dict[str, list[float]], Path]) -> Iterator[Session]:
    """The module's read-only session (overrides the per-test one of conftest)."""
    yield shared[0]
    shared[0].rollback()


@pytest.fixture
def kvps(shared: tuple[Session, dict[str, list[float]], Path]) -> dict[str, list[float]]:
    return shared[1]


def _by_name(outcomes: list[CheckOutcome]) -> dict[str, CheckOutcome]:
    return {o.name: o for o in outcomes if o.category == "distribution"}


def test_robust_z_formula() -> None:
    ref = [9.0, 10.0, 11.0, 10.0, 12.0]  # median 10, MAD 1
    z = robust_z([10.0, 30.0, 7.0, np.nan], ref)
    assert z[:3] == pytest.approx([0.0, 0.6745 * 20, 0.6745 * -3])
    assert math.isnan(z[3])
    # MAD 0: the mean absolute deviation (0.4 here) takes over.
    assert robust_z([12.0, 2.0], REF_DAYS) == pytest.approx(
        [9 / (1.253314 * 0.4), -1 / (1.253314 * 0.4)]
    )
    # Both 0: 0 at the median, infinite elsewhere.
    assert robust_z([5.0, 6.0, 4.0], [5.0, 5.0]).tolist() == [0.0, math.inf, -math.inf]
    with pytest.raises(ValueError, match="non-empty"):
        robust_z([1.0], [])


def test_parse_reference() -> None:
    assert parse_reference("v1") == "v1"
    assert parse_reference(" 2024-01-01..2024-01-31 ") == DateRange(
        dt.date(2024, 1, 1), dt.date(2024, 1, 31)
    )
    assert str(DateRange(dt.date(2024, 1, 1), dt.date(2024, 1, 2))) == "2024-01-01..2024-01-02"
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_reference("yesterday..today")
    with pytest.raises(ValueError, match="before the start"):
        parse_reference("2024-02-01..2024-01-01")


def test_version_reference_equals_scipy(session: Session, kvps: dict[str, list[float]]) -> None:
    report = run_checks(session, "d", version="cur", reference="ref", checks=[], save=False)
    assert report.reference == "ref" and report.passed  # distribution checks only warn
    got = _by_name(report.outcomes)
    expected = {f"distribution.ks.{c}" for c, k in DISTRIBUTION_COLUMNS.items() if k == "num"}
    expected |= {
        f"distribution.chisquare.{c}" for c, k in DISTRIBUTION_COLUMNS.items() if k == "cat"
    }
    expected |= {"distribution.daily.n_images", "distribution.daily.mean_kvp"}
    assert set(got) == expected
    kvp = got["distribution.ks.kvp"]
    ks = stats.ks_2samp(kvps["ref"], kvps["cur"])
    assert kvp.details["p_value"] == pytest.approx(ks.pvalue, rel=1e-12)
    assert kvp.details["statistic"] == pytest.approx(ks.statistic)
    assert (kvp.passed, kvp.n_failed, kvp.severity) == (False, 1, "warning")
    assert kvp.failing["field"].tolist() == ["kvp"]
    # Identical distributions do not drift; an all-missing column is not run.
    assert got["distribution.chisquare.source"].passed
    assert got["distribution.ks.rows"].passed
    assert got["distribution.ks.patient_age"].status == "not_run"


def test_daily_anomalies_against_reference_days(
    session: Session, kvps: dict[str, list[float]]
) -> None:
    report = run_checks(session, "d", version="cur", reference="ref", checks=[], save=False)
    daily = _by_name(report.outcomes)["distribution.daily.n_images"]
    assert (daily.n_checked, daily.n_failed) == (7, 1)
    row = daily.failing.iloc[0]
    assert row["day"] == dt.date(2024, 1, 14) and row["value"] == 12
    assert row["robust_z"] == pytest.approx(9 / (1.253314 * 0.4))
    assert daily.details["reference_median"] == 3
    # Mean kVp per day moved by 30 kV against a reference spread of a few kV.
    mean_kvp = _by_name(report.outcomes)["distribution.daily.mean_kvp"]
    assert mean_kvp.n_failed == 7
    assert (np.abs(mean_kvp.failing["robust_z"]) > ROBUST_Z_LIMIT).all()


def test_date_range_reference(session: Session, kvps: dict[str, list[float]]) -> None:
    """One version, split by study date: inside the range is the reference."""
    report = run_checks(session, "d", reference="2024-01-01..2024-01-10", checks=[], save=False)
    assert report.scope.version == "all" and report.reference == "2024-01-01..2024-01-10"
    got = _by_name(report.outcomes)
    kvp = got["distribution.ks.kvp"]
    assert kvp.details["p_value"] == pytest.approx(
        stats.ks_2samp(kvps["ref"], kvps["cur"]).pvalue, rel=1e-12
    )
    assert got["distribution.daily.n_images"].n_failed == 1
    # A range that holds every image leaves no current sample.
    empty = run_checks(session, "d", reference=("2024-01-01", "2024-12-31"), checks=[], save=False)
    (only,) = [o for o in empty.outcomes if o.category == "distribution"]
    assert only.status == "not_run" and "current" in only.message


def test_no_reference_is_one_not_run(session: Session, kvps: dict[str, list[float]]) -> None:
    report = run_checks(session, "d", checks=[], save=False)
    (only,) = report.outcomes
    assert (only.name, only.status) == ("distribution", "not_run")
    assert report.scope.version == "all"  # the newest by created_at
    with pytest.raises(QualityError, match="no version 'v9'"):
        run_checks(session, "d", reference="v9", checks=[], save=False)
    with pytest.raises(QualityError, match="YYYY-MM-DD"):
        run_checks(session, "d", reference="a..b", checks=[], save=False)
