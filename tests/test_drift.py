"""Tests for quality/drift.py: parsing, the monitor on hand-built frames, the feature SQL on
SQLite and PostgreSQL, the monitoring report, and the seeded drift of the small demo.

The DB example (``add_drift_rows``), checkable by hand:

=====  ======  ==========  =========  ===========================================  ========
image  source  study date  in ds v2?  predictions of model m                       iq (s2)
=====  ======  ==========  =========  ===========================================  ========
i1     A       2024-01-01  yes (+v1)  v1: 0.2 then 0.9 "nodule" (newest); v2: 0.3  mean 200
i2     A       2024-01-02  yes        v1: empty row (no score, no label)            mean 300
i3     B       2024-01-09  yes        v1: 0.55 "nodule"                             -
i4     B       2024-01-10  yes        (none: missing)                               -
i5     B       (none)      yes        v1: 0.1 "normal"                              -
i6     A       2024-01-03  no         -                                             -
=====  ======  ==========  =========  ===========================================  ========

i1 also has an older image-quality row (scorer s1, mean 100); the newest scorer is s2.
Task ``finding`` (normal, nodule, opacity): i1 doctors normal + nodule (expert nodule: not
counted) → 0.5; i2 opacity + opacity → 1.0; i3 normal → 0.0. Task ``kind`` (benign,
malignant; no ``normal``: the first class is the normal one): i1 malignant → 1.0.
i3 has no kVp. i2's SoftwareVersions is multi-valued.
"""

from __future__ import annotations

import datetime as dt
import doctest
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sqlalchemy.orm import Session

from quality import drift, drift_tests
from quality.db.schema import (
    Annotation,
    Annotator,
    Dataset,
    DatasetItem,
    DatasetVersion,
    Image,
    ImageQuality,
    LabelingTask,
    Model,
    ModelVersion,
    Prediction,
    Series,
    Source,
    Study,
)
from quality.db.session import make_engine
from quality.drift import (
    ALL_SCOPE,
    DriftMonitor,
    build_drift_report,
    choice_table,
    drift_columns,
    feature_frame,
    feature_values,
    flag_columns,
    monitoring_report,
    parse_date_range,
    parse_period,
    parse_test_overrides,
)
from quality.drift_tests import DRIFT_TESTS, benjamini_hochberg
from quality.errors import DatasetNotFoundError, DriftInputError

UTC = dt.UTC
D = dt.date


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("module", [drift, drift_tests], ids=lambda m: m.__name__)
def test_docstring_examples(module) -> None:  # type: ignore[no-untyped-def]
    # The modules are outside pytest's doctest paths; their examples must still hold.
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_parse_date_range() -> None:
    assert parse_date_range("2024-01-08:2024-02-04") == (D(2024, 1, 8), D(2024, 2, 4))
    assert parse_date_range(":2024-02-04") == (None, D(2024, 2, 4))
    assert parse_date_range(None) == (None, None)
    assert parse_date_range("") == (None, None)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("2024-01-08", "START:END"),
        ("2024-01-08:2024-02-04:x", "START:END"),
        ("2024-13-01:", "not an ISO date"),
        ("yesterday:today", "not an ISO date"),
        ("2024-02-04:2024-01-08", "after end"),
    ],
)
def test_parse_date_range_errors(text: str, match: str) -> None:
    with pytest.raises(DriftInputError, match=match) as info:
        parse_date_range(text, option="--current")
    assert info.value.field == "--current"


def test_parse_period() -> None:
    assert parse_period("7D") == pd.Timedelta(days=7)
    assert parse_period("2w") == pd.Timedelta(days=14)
    assert parse_period("48h") == pd.Timedelta(days=2)
    assert parse_period("8h", whole_days=False) == pd.Timedelta(hours=8)
    for bad in ("0D", "7", "seven days", "1.5D"):
        with pytest.raises(DriftInputError, match="not a period"):
            parse_period(bad)
    with pytest.raises(DriftInputError, match="whole days"):
        parse_period("8h")
    with pytest.raises(DriftInputError, match="divide 24"):
        parse_period("5h", whole_days=False)


def test_parse_test_overrides() -> None:
    assert parse_test_overrides(["kvp=ks", "a=b=psi"]) == {"kvp": "ks", "a=b": "psi"}
    assert parse_test_overrides(None) == {}
    with pytest.raises(DriftInputError, match="COLUMN=TEST"):
        parse_test_overrides(["kvp"])
    with pytest.raises(DriftInputError, match="valid names") as info:
        parse_test_overrides(["kvp=t-test"])
    for name in DRIFT_TESTS:
        assert name in str(info.value)


# --------------------------------------------------------------------------- hand-built frames


def make_frame(rows: list[tuple[str, str, float, str]], **extra: list) -> pd.DataFrame:
    """A feature frame from ``(date, source, kvp, software)`` rows plus extra columns."""
    frame = pd.DataFrame(rows, columns=["study_date", "source", "kvp", "software_version"])
    frame.insert(0, "image_id", np.arange(len(frame)))
    frame.insert(1, "sop_uid", [f"1.2.{i}" for i in range(len(frame))])
    frame["study_date"] = pd.to_datetime(frame["study_date"])
    frame["software_version"] = frame["software_version"].astype(object)
    for name, values in extra.items():
        frame[name.replace("__", ":")] = values
    return frame


def days(start: str, n: int, per_day: int) -> list[str]:
    first = D.fromisoformat(start)
    return [str(first + dt.timedelta(days=d)) for d in range(n) for _ in range(per_day)]


def steady_frame(seed: int = 0) -> pd.DataFrame:
    """3 weeks from 2024-01-01, 4 images a day at A and at B; B's kVp drops in week 3."""
    rng = np.random.default_rng(seed)
    rows = []
    for day in days("2024-01-01", 21, 1):
        week3 = day >= "2024-01-15"
        for source in ("A", "B"):
            for _ in range(4):
                kvp = rng.normal(100.0 if (week3 and source == "B") else 120.0, 2.0)
                software = "5.0" if (week3 and source == "B") else "4.3"
                rows.append((day, source, kvp, software))
    return make_frame(rows)


def test_windows_tile_the_current_period_and_cut_the_last() -> None:
    frame = steady_frame()
    result = (
        DriftMonitor(reference_days=7, window="7D")
        .fit(frame)
        .evaluate(frame, (D(2024, 1, 8), D(2024, 1, 19)))
    )
    assert result.reference == (D(2024, 1, 1), D(2024, 1, 7))
    windows = result.timeline[["window_start", "window_end"]].drop_duplicates()
    assert windows.to_records(index=False).tolist() == [
        (D(2024, 1, 8), D(2024, 1, 14)),
        (D(2024, 1, 15), D(2024, 1, 19)),
    ]
    assert result.n_windows == 2 and result.window_days == 7
    assert result.scopes == [ALL_SCOPE, "A", "B"]
    tl = result.timeline.set_index(["scope", "window_start"])
    assert tl.loc[("A", D(2024, 1, 8)), "n_current"] == 28  # 7 days × 4 images
    assert tl.loc[("A", D(2024, 1, 15)), "n_current"] == 20  # the cut window: 5 days
    assert tl.loc[("B", D(2024, 1, 8)), "n_reference"] == 28


def test_default_periods_first_four_weeks_then_the_rest() -> None:
    rows = [(d, "A", 120.0, "x") for d in days("2024-01-01", 40, 1)]
    frame = make_frame(rows)
    monitor = DriftMonitor().fit(frame)
    assert monitor.reference_ == (D(2024, 1, 1), D(2024, 1, 28))
    result = monitor.evaluate(frame)
    assert result.current == (D(2024, 1, 29), D(2024, 2, 9))
    assert result.n_windows == 2


def test_drift_found_at_its_source_only() -> None:
    frame = steady_frame()
    result = DriftMonitor(reference_days=7).fit(frame).evaluate(frame)
    tl = result.timeline.set_index(["scope", "window_start"])
    week2, week3 = D(2024, 1, 8), D(2024, 1, 15)
    assert not tl.loc[("A", week2), "drift_alert"] and not tl.loc[("A", week3), "drift_alert"]
    assert not tl.loc[("B", week2), "drift_alert"]
    assert tl.loc[("B", week3), "drift_alert"]
    assert set(tl.loc[("B", week3), "drifted_columns"].split(", ")) == {"kvp", "software_version"}
    # The source-level fault shows in the whole dataset too, diluted by A.
    assert tl.loc[(ALL_SCOPE, week3), "drift_alert"]
    drift = result.alerts.loc[result.alerts["kind"] == "drift"]
    assert set(drift["scope"]) == {ALL_SCOPE, "B"}
    assert (drift["window_start"] == week3).all()


def test_window_tests_use_benjamini_hochberg_per_window_and_scope() -> None:
    frame = steady_frame()
    result = DriftMonitor(reference_days=7).fit(frame).evaluate(frame)
    for (_, _), table in result.tests.groupby(["scope", "window_start"]):
        p = table.loc[table["kind"] == "p_value", "p_value"].dropna()
        rejected, adjusted = benjamini_hochberg(p.to_numpy(), alpha=0.05)
        np.testing.assert_allclose(table.loc[p.index, "p_adjusted"], adjusted)
        np.testing.assert_array_equal(table.loc[p.index, "drifted"], rejected)


def test_bh_keeps_a_lone_small_p_value_from_alerting() -> None:
    """Twenty null columns and one with raw p ≈ 0.02: not significant after BH."""
    ref_days, cur_days = days("2024-01-01", 10, 10), days("2024-01-11", 5, 10)
    rows = [(d, "A", 0.0, "x") for d in ref_days + cur_days]
    same = np.r_[np.linspace(0, 1, 100), np.linspace(0, 1, 50)]  # KS p = 1
    extra = {f"x{i}": same for i in range(20)}
    shifted = np.r_[np.linspace(0, 1, 100), np.linspace(0.25, 1.25, 50)]  # KS p = 0.0204
    frame = make_frame(rows, signal=shifted, **extra)
    result = DriftMonitor(reference_days=10, window="5D", by=None).fit(frame).evaluate(frame)
    table = result.tests.set_index("column")
    assert table.loc["signal", "p_value"] == pytest.approx(0.020411808688368782)
    m = int((table["kind"] == "p_value").sum())  # 20 nulls, the signal, kvp and software
    assert m == 23
    assert table.loc["signal", "p_adjusted"] == pytest.approx(m * table.loc["signal", "p_value"])
    assert not result.timeline["drift_alert"].any()


def test_too_few_images_skip_the_drift_tests() -> None:
    rows = [(d, "A", 120.0, "x") for d in days("2024-01-01", 7, 5)]
    rows += [("2024-01-08", "A", 90.0, "y"), ("2024-01-09", "A", 91.0, "y")]
    frame = make_frame(rows)
    result = DriftMonitor(reference_days=7, by=None).fit(frame).evaluate(frame)
    row = result.timeline.iloc[0]
    assert row["status"] == "too few images" and row["n_current"] == 2
    assert not row["drift_alert"] and result.tests.empty
    lowered = DriftMonitor(reference_days=7, by=None, min_images=2).fit(frame).evaluate(frame)
    assert lowered.timeline.iloc[0]["drift_alert"]


def test_overrides_change_the_test_and_are_validated() -> None:
    frame = steady_frame()
    result = DriftMonitor(reference_days=7, tests={"kvp": "psi"}).fit(frame).evaluate(frame)
    assert set(result.tests.loc[result.tests["column"] == "kvp", "test"]) == {"psi"}
    assert set(result.tests.loc[result.tests["column"] == "software_version", "test"]) <= {
        "z",
        "chisquare",
    }
    with pytest.raises(DriftInputError, match="no feature") as info:
        DriftMonitor(tests={"kVp": "ks"}).fit(frame)
    assert "kvp" in str(info.value)  # the message lists the features
    with pytest.raises(DriftInputError, match="valid names"):
        DriftMonitor(tests={"kvp": "anderson"}).fit(frame)


def test_bad_settings_and_periods() -> None:
    frame = steady_frame()
    with pytest.raises(DriftInputError, match="--alpha"):
        DriftMonitor(alpha=1.5).fit(frame)
    with pytest.raises(DriftInputError, match="--window"):
        DriftMonitor(window="soon").fit(frame)
    with pytest.raises(DriftInputError, match="--by") as info:
        DriftMonitor(by="vendor").fit(frame)
    assert "source" in str(info.value)
    with pytest.raises(DriftInputError, match="no image between"):
        DriftMonitor(reference=(D(2023, 1, 1), D(2023, 1, 31))).fit(frame)
    with pytest.raises(DriftInputError, match="fit"):
        DriftMonitor().evaluate(frame)
    monitor = DriftMonitor(reference_days=7).fit(frame)
    with pytest.raises(DriftInputError, match="--current"):
        monitor.evaluate(frame, (D(2024, 2, 1), D(2024, 1, 1)))
    undated = frame.assign(study_date=pd.NaT)
    with pytest.raises(DriftInputError, match="study date"):
        DriftMonitor().fit(undated)


def flag_frame(
    ref_missing: int, cur_missing: int, n_ref: int = 20, n_cur: int = 10
) -> pd.DataFrame:
    """A reference week of ``n_ref`` images and a current week of ``n_cur``, with flags."""
    rows = [("2024-01-01", "A", 120.0, "x")] * n_ref + [("2024-01-08", "A", 120.0, "x")] * n_cur
    missing = [i < ref_missing for i in range(n_ref)] + [i < cur_missing for i in range(n_cur)]
    return make_frame(rows, missing__v1=missing, empty__v1=[False] * (n_ref + n_cur))


def _check(result, check: str) -> pd.Series:  # type: ignore[no-untyped-def]
    rows = result.missing.loc[
        (result.missing["check"] == check) & (result.missing["scope"] == ALL_SCOPE)
    ]
    assert len(rows) == 1
    return rows.iloc[0]


def run_flags(frame: pd.DataFrame, **kw: float):  # type: ignore[no-untyped-def]
    return DriftMonitor(reference_days=7, by=None, **kw).fit(frame).evaluate(frame)


def test_missing_input_alert_one_sided_fisher() -> None:
    result = run_flags(flag_frame(0, 5))
    row = _check(result, "missing:v1")
    # Hypergeometric tail: 5 missing of 30, all 5 in the current 10: C(10,5) / C(30,5).
    assert row["p_value"] == pytest.approx(math.comb(10, 5) / math.comb(30, 5), rel=1e-9)
    expected = stats.fisher_exact([[5, 5], [0, 20]], alternative="greater").pvalue
    assert row["p_value"] == pytest.approx(expected, rel=1e-12)
    assert (row["reference_share"], row["current_share"], row["rise"]) == (0.0, 0.5, 0.5)
    assert row["alert"]
    alerts = result.alerts
    assert list(alerts["kind"]) == ["missing_input"] and list(alerts["what"]) == ["missing:v1"]
    assert not result.timeline.iloc[0]["drift_alert"]  # kept apart from distribution drift
    assert result.timeline.iloc[0]["missing_alert"]


def test_missing_input_fall_never_alerts() -> None:
    result = run_flags(flag_frame(10, 0))  # half missing in the reference, none now
    row = _check(result, "missing:v1")
    assert row["p_value"] == 1.0 and row["rise"] == -0.5 and not row["alert"]


def test_missing_input_needs_the_minimum_rise() -> None:
    # 0/2000 then 60/1000: overwhelming evidence, but a rise of only 6 points.
    frame = flag_frame(0, 60, n_ref=2000, n_cur=1000)
    row = _check(run_flags(frame), "missing:v1")
    assert row["p_adjusted"] < 1e-10 and row["rise"] == pytest.approx(0.06)
    assert not row["alert"]
    assert _check(run_flags(frame, min_rise=0.05), "missing:v1")["alert"]


def test_missing_input_single_image_is_not_enough() -> None:
    row = _check(run_flags(flag_frame(0, 1)), "missing:v1")
    assert row["p_value"] == pytest.approx(10 / 30) and not row["alert"]


def test_missing_metadata_and_empty_predictions() -> None:
    frame = flag_frame(0, 0)
    frame.loc[frame["study_date"] == "2024-01-08", "kvp"] = [np.nan] * 6 + [120.0] * 4
    result = run_flags(frame)
    assert _check(result, "missing_meta:kvp")["alert"]
    assert _check(result, "missing_meta:kvp")["kind"] == "metadata"
    assert not _check(result, "empty:v1")["alert"]
    # The missing-input checks of one (window, scope) are corrected together.
    checks = result.missing
    _, adjusted = benjamini_hochberg(checks["p_value"].to_numpy())
    np.testing.assert_allclose(checks["p_adjusted"], adjusted)


def test_volume_drop_binomial_test() -> None:
    rows = [(d, "A", 120.0, "x") for d in days("2024-01-01", 7, 10)]
    rows += [(d, "A", 120.0, "x") for d in days("2024-01-08", 5, 2)]  # 10 images in 5 days
    frame = make_frame(rows)
    row = _check(run_flags(frame), "volume")
    # The window is cut at the last study date: 5 days, so 70 · 5/7 = 50 images expected.
    assert row["expected"] == pytest.approx(50.0) and row["x_current"] == 10
    assert row["rise"] == pytest.approx(10 / 50)
    expected = stats.binomtest(10, 80, 5 / 12, alternative="less").pvalue
    assert row["p_value"] == pytest.approx(expected, rel=1e-12)
    assert row["alert"]
    steady = make_frame([(d, "A", 120.0, "x") for d in days("2024-01-01", 14, 10)])
    assert not _check(run_flags(steady), "volume")["alert"]


def test_flags_are_not_drift_columns() -> None:
    frame = flag_frame(0, 5)
    assert flag_columns(frame) == ["missing:v1", "empty:v1"]
    assert drift_columns(frame) == ["kvp", "software_version"]


def test_pooled_table_and_choice_table() -> None:
    frame = steady_frame()
    monitor = DriftMonitor(reference_days=7).fit(frame)
    result = monitor.evaluate(frame)
    assert set(result.pooled["scope"]) == {ALL_SCOPE, "A", "B"}
    current = frame.loc[frame["study_date"] >= "2024-01-08"]
    choice = choice_table(
        monitor.reference_frame_, current, tests={"software_version": "chisquare"},
        columns=monitor.columns_,
    ).set_index("column")  # fmt: skip
    assert choice.loc["kvp", "test"] == "ks" and choice.loc["kvp", "chosen_by"] == "auto"
    assert "56" in choice.loc["kvp", "why"] and "k = 56 > 5" in choice.loc["kvp", "why"]
    assert choice.loc["software_version", "chosen_by"] == "override"
    assert choice.loc["software_version", "kind"] == "p_value"


# --------------------------------------------------------------------------- the DB example


def _t(day: str, hour: int = 12) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


def add_drift_rows(session: Session) -> None:
    """The example of the module docstring."""
    a, b = Source(name="A", manufacturer="Acme"), Source(name="B", manufacturer="Bolt")
    session.add_all([a, b])
    session.flush()
    spec = [  # key, source, date, kvp, software, study time
        ("i1", a, D(2024, 1, 1), 120.0, "1.0", "083000"),
        ("i2", a, D(2024, 1, 2), 121.0, ["1.0", "2.0"], "173000"),
        ("i3", b, D(2024, 1, 9), None, "1.0", "101500"),
        ("i4", b, D(2024, 1, 10), 118.0, "1.0", "230000"),
        ("i5", b, None, 119.0, "1.0", None),
        ("i6", a, D(2024, 1, 3), 120.0, "1.0", "120000"),
    ]
    img: dict[str, Image] = {}
    for n, (key, src, date, kvp, software, time) in enumerate(spec, start=1):
        study = Study(study_uid=f"1.2.9.1.{n}", patient_key=f"p{n}", modality="DX",
                      study_date=date, source_id=src.id)  # fmt: skip
        session.add(study)
        session.flush()
        series = Series(series_uid=f"1.2.9.2.{n}", study_id=study.id, modality="DX",
                        manufacturer=src.manufacturer, model="M1", kvp=kvp)  # fmt: skip
        session.add(series)
        session.flush()
        header = {"SoftwareVersions": software}
        if time:
            header["StudyTime"] = time
        img[key] = Image(sop_uid=f"1.2.9.3.{n}", series_id=series.id, uri=f"/x/{key}.dcm",
                         rows=512, cols=512, bits_stored=12, photometric="MONOCHROME2",
                         spacing_row=0.7, spacing_col=0.7, header=header)  # fmt: skip
        session.add(img[key])
    session.flush()
    ds = Dataset(name="ds")
    session.add(ds)
    session.flush()
    v1 = DatasetVersion(
        dataset_id=ds.id, version="v1", content_hash="a", created_at=_t("2024-01-01")
    )
    v2 = DatasetVersion(
        dataset_id=ds.id, version="v2", content_hash="b", created_at=_t("2024-02-01")
    )
    session.add_all([v1, v2])
    session.flush()
    session.add(DatasetItem(version_id=v1.id, image_id=img["i1"].id, split="train"))
    for key in ("i1", "i2", "i3", "i4", "i5"):
        session.add(DatasetItem(version_id=v2.id, image_id=img[key].id, split="train"))
    finding = LabelingTask(dataset_id=ds.id, name="finding", kind="classification",
                           classes=["normal", "nodule", "opacity"])  # fmt: skip
    kind = LabelingTask(dataset_id=ds.id, name="kind", kind="classification",
                        classes=["benign", "malignant"])  # fmt: skip
    boxes = LabelingTask(dataset_id=ds.id, name="boxes", kind="bbox", classes=["nodule"])
    d1, d2 = Annotator(code="D1", kind="doctor"), Annotator(code="D2", kind="doctor")
    e1 = Annotator(code="E1", kind="expert")
    session.add_all([finding, kind, boxes, d1, d2, e1])
    session.flush()
    for task, who, key, label in [
        (finding, d1, "i1", "normal"), (finding, d2, "i1", "nodule"), (finding, e1, "i1", "nodule"),
        (finding, d1, "i2", "opacity"), (finding, d2, "i2", "opacity"),
        (finding, d1, "i3", "normal"), (finding, d2, "i3", None),
        (kind, d1, "i1", "malignant"), (boxes, d1, "i2", "nodule"),
    ]:  # fmt: skip
        session.add(Annotation(task_id=task.id, image_id=img[key].id, annotator_id=who.id,
                               label=label, created_at=_t("2024-01-20")))  # fmt: skip
    model = Model(name="m", task_id=finding.id)
    session.add(model)
    session.flush()
    mv1 = ModelVersion(model_id=model.id, version="v1", status="production")
    mv2 = ModelVersion(model_id=model.id, version="v2", status="shadow")
    session.add_all([mv1, mv2])
    session.flush()
    for mv, key, score, label, at in [
        (mv1, "i1", 0.2, "normal", _t("2024-01-01", 9)),
        (mv1, "i1", 0.9, "nodule", _t("2024-01-01", 10)),
        (mv1, "i2", None, None, _t("2024-01-02")),
        (mv1, "i3", 0.55, "nodule", _t("2024-01-09")),
        (mv1, "i5", 0.1, "normal", _t("2024-01-11")),
        (mv2, "i1", 0.3, "normal", _t("2024-01-01")),
    ]:
        session.add(Prediction(model_version_id=mv.id, image_id=img[key].id, score=score,
                               label=label, created_at=at))  # fmt: skip
    for key, scorer, mean, at in [
        ("i1", "s1", 100.0, _t("2024-01-05")),
        ("i1", "s2", 200.0, _t("2024-01-06")),
        ("i2", "s2", 300.0, _t("2024-01-06")),
    ]:
        session.add(ImageQuality(image_id=img[key].id, scorer_version=scorer, mean=mean,
                                 quality_score=mean / 400, scored_at=at))  # fmt: skip
    session.commit()


def _values(frame: pd.DataFrame, col: str) -> list:
    return [
        None if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in frame[col]
    ]


def test_feature_frame_sql(session: Session) -> None:
    add_drift_rows(session)
    f = feature_frame(session, "ds")
    assert list(f["sop_uid"]) == [f"1.2.9.3.{n}" for n in (1, 2, 3, 4, 5)]  # by date, NaT last
    assert list(f.columns[:4]) == ["image_id", "sop_uid", "study_date", "source"]
    assert f["study_date"].iloc[0] == pd.Timestamp("2024-01-01") and pd.isna(
        f["study_date"].iloc[4]
    )
    assert list(f["source"]) == ["A", "A", "B", "B", "B"]
    assert _values(f, "software_version") == ["1.0", "1.0\\2.0", "1.0", "1.0", "1.0"]
    assert _values(f, "kvp") == [120.0, 121.0, None, 118.0, 119.0]
    assert list(f["manufacturer"]) == ["Acme", "Acme", "Bolt", "Bolt", "Bolt"]
    assert f["spacing_mm"].tolist() == [0.7] * 5 and f["rows"].tolist() == [512.0] * 5
    # Newest scorer version only.
    assert _values(f, "iq_mean") == [200.0, 300.0, None, None, None]
    # Doctors only; the normal class of "kind" is its first class.
    assert _values(f, "finding_rate:finding") == [0.5, 1.0, 0.0, None, None]
    assert _values(f, "finding_rate:kind") == [1.0, None, None, None, None]
    assert "finding_rate:boxes" not in f
    # Newest prediction row per image and version; flags.
    assert _values(f, "score:v1") == [0.9, None, 0.55, None, 0.1]
    assert _values(f, "label:v1") == ["nodule", None, "nodule", None, "normal"]
    assert f["empty:v1"].tolist() == [False, True, False, False, False]
    assert f["missing:v1"].tolist() == [False, False, False, True, False]
    assert f["missing:v2"].tolist() == [False, True, True, True, True]
    assert f["empty:v2"].tolist() == [False] * 5
    assert f["empty:v1"].dtype == bool and f["score:v1"].dtype == np.float64
    assert flag_columns(f) == ["empty:v1", "missing:v1", "empty:v2", "missing:v2"]


def test_feature_frame_all_images_and_errors(session: Session) -> None:
    add_drift_rows(session)
    every = feature_frame(session, None)
    assert len(every) == 6 and "1.2.9.3.6" in set(every["sop_uid"])
    assert every["missing:v1"].sum() == 2  # i4 and i6
    by_id = feature_frame(session, 1)
    assert len(by_id) == 5
    with pytest.raises(DatasetNotFoundError, match="ds"):
        feature_frame(session, "nope")


def test_feature_frame_dataset_without_rows(session: Session) -> None:
    session.add(Dataset(name="empty"))
    session.commit()
    f = feature_frame(session, "empty")
    assert f.empty and list(f.columns[:4]) == ["image_id", "sop_uid", "study_date", "source"]
    with pytest.raises(DriftInputError, match="no images"):
        build_drift_report(session, "empty")


def test_build_drift_report_on_the_example(session: Session) -> None:
    add_drift_rows(session)
    rep = build_drift_report(session, "ds", reference=(D(2024, 1, 1), D(2024, 1, 2)), window="8D")
    assert (rep.dataset, rep.version, rep.n_undated) == ("ds", "v2", 1)
    assert rep.result.current == (D(2024, 1, 3), D(2024, 1, 10))
    tl = rep.result.timeline.set_index("scope")
    assert tl.loc[ALL_SCOPE, "n_current"] == 2 and tl.loc[ALL_SCOPE, "status"] == "too few images"
    assert tl.loc["B", "status"] == "no reference images"
    payload = rep.as_dict()
    json.dumps(payload)  # JSON-ready
    assert payload["scopes"] == [ALL_SCOPE, "A", "B"] and payload["n_windows"] == 1
    values = feature_values(rep, "kvp")
    assert sorted(values.loc[values["period"] == "reference", "value"]) == [120.0, 121.0]
    with pytest.raises(DriftInputError):
        feature_values(rep, "sop_uid")


def test_monitoring_report_aggregates(session: Session) -> None:
    add_drift_rows(session)
    text, result = monitoring_report(
        session, "ds", period="1D", since=D(2024, 1, 1), until=D(2024, 1, 10)
    )
    assert result.current == (D(2024, 1, 1), D(2024, 1, 10))
    lines = text.splitlines()
    assert lines[0] == "# Monitoring report: ds (v2)"
    assert "| 2024-01-01 | 1 | 1 | 0 |" in lines  # period, images, A, B
    assert "| 2024-01-10 | 1 | 0 | 1 |" in lines
    # v1 on 2024-01-02: one row, empty; on 2024-01-10: no row (missing).
    assert "| 2024-01-02 | v1 | 1 | 1 | 0 | 1 |  |" in lines
    assert "| 2024-01-10 | v1 | 1 | 0 | 1 | 0 |  |" in lines
    assert "| 2024-01-01 | v1 | 1 | 1 | 0 | 0 | 0.9 |" in lines
    hist = [ln for ln in lines if ln.startswith("| 2024-01-01 | v1 | 0 |")]
    assert hist == ["| 2024-01-01 | v1 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 0 | 1 |"]  # 0.9 → last bin
    html_text, _ = monitoring_report(session, "ds", period="8h", since=D(2024, 1, 1),
                                     until=D(2024, 1, 2), format="html")  # fmt: skip
    assert html_text.startswith("<!DOCTYPE html>") and "<script" not in html_text
    assert "2024-01-01 08:00" in html_text and "2024-01-02 16:00" in html_text
    with pytest.raises(DriftInputError, match="md or html"):
        monitoring_report(session, "ds", format="pdf")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the small demo


@pytest.fixture(scope="module")
def demo_report(small_demo_dir: Path):  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{small_demo_dir / 'demo.db'}")
    with Session(engine) as session:
        rep = build_drift_report(session, "chest-xray-demo")
    engine.dispose()
    truth = json.loads((small_demo_dir / "demo_truth.json").read_text())
    return rep, truth


def test_demo_drift_found_at_its_source_within_one_window(demo_report) -> None:  # type: ignore[no-untyped-def]
    rep, truth = demo_report
    (seeded,) = truth["drift"]
    start = D.fromisoformat(seeded["start_date"])
    tl = rep.result.timeline
    at_source = tl.loc[(tl["scope"] == seeded["source"]) & tl["drift_alert"]]
    assert not at_source.empty
    first = at_source.iloc[0]
    # Never before the drift began, and no later than one window after its start.
    assert first["window_end"] >= start
    assert first["window_start"] <= start + dt.timedelta(days=rep.result.window_days)
    assert (at_source["window_end"] >= start).all()
    drifted = set(first["drifted_columns"].split(", "))
    assert {"kvp", "software_version"} <= drifted
    # It stays drifted in every later window that could be tested.
    later = tl.loc[(tl["scope"] == seeded["source"]) & (tl["window_start"] > first["window_start"])]
    assert later.loc[later["status"] == "tested", "drift_alert"].all()


def test_demo_no_false_alarms_on_undrifted_sources(demo_report) -> None:  # type: ignore[no-untyped-def]
    rep, truth = demo_report
    drifted_sources = {d["source"] for d in truth["drift"]}
    undrifted = [s["name"] for s in truth["sources"] if s["name"] not in drifted_sources]
    assert len(undrifted) == 3
    tl = rep.result.timeline
    pairs = tl.loc[tl["scope"].isin(undrifted)]
    assert len(pairs) == 3 * rep.result.n_windows and rep.result.n_windows >= 8
    rate = pairs["drift_alert"].mean()  # missing-input alerts are true events: not counted
    assert rate <= 0.05, pairs.loc[
        pairs["drift_alert"], ["scope", "window_start", "drifted_columns"]
    ]


def test_demo_missing_predictions_raise_an_alert(demo_report) -> None:  # type: ignore[no-untyped-def]
    rep, truth = demo_report
    tl = rep.result.timeline
    whole = tl.loc[tl["scope"] == ALL_SCOPE]
    missing = rep.result.missing
    for stretch in truth["missing_predictions"]:
        lo, hi = D.fromisoformat(stretch["start_date"]), D.fromisoformat(stretch["end_date"])
        covering = whole.loc[(whole["window_start"] <= hi) & (whole["window_end"] >= lo)]
        assert not covering.empty and covering["missing_alert"].all(), stretch
        check = f"{stretch['kind']}:{stretch['version']}"
        hits = missing.loc[
            (missing["scope"] == ALL_SCOPE) & (missing["check"] == check) & missing["alert"]
        ]
        assert any(hits["window_start"].between(covering["window_start"].min(), hi)), check
    # The missing-input alert is its own kind, never a drifted column.
    assert not rep.result.tests["column"].str.startswith(("missing:", "empty:")).any()
    # No missing-input alert outside the stretches.
    lo = min(D.fromisoformat(s["start_date"]) for s in truth["missing_predictions"])
    hi = max(D.fromisoformat(s["end_date"]) for s in truth["missing_predictions"])
    outside = tl.loc[(tl["window_end"] < lo) | (tl["window_start"] > hi)]
    assert not outside["missing_alert"].any()
