"""Built-in data checks of :mod:`quality.checks`, and the stored history of runs.

Every test runs on SQLite and on PostgreSQL (the ``session`` fixture) over the small
hand-made DB of :func:`add_check_rows`, where each defect sits on one known image:

========  =======  ============================================================
image     split    defect
========  =======  ============================================================
I1        train    same pixels as I2; patient P1 (also I4)
I2        train    same pixels as I1; box outside the 100x100 image; label
                   ``nodul`` (not in the schema); an empty prediction
I3        val      CR; header PatientAge ``142Y``; boxes ``[1, 2, 3]`` and ``7``
I4        test     patient P1 again (train and test); PixelSpacing ``0\\0``;
                   box with ``x1 < x0``
I5        train    no modality, no body part; PatientAge ``45``, PatientSex ``X``;
                   a box that is a JSON object
I6        train    no photometric; DX header without any pixel spacing; box with a
                   text coordinate; its file is missing from the store
I7        (none)   outside the version, yet annotated and gold-labelled
========  =======  ============================================================

Store-wide: study S6 has no series, series X8 no images, one ``ingest_errors`` row.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import DB_KINDS, service_missing
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from quality import checks
from quality.checks import BUILTIN_CHECKS, CheckOutcome, run_checks
from quality.db.schema import (
    Annotation,
    Annotator,
    CheckResult,
    CheckRun,
    Dataset,
    DatasetItem,
    DatasetVersion,
    Image,
    IngestError,
    LabelingTask,
    Model,
    ModelVersion,
    Prediction,
    ReferenceLabel,
    Series,
    Source,
    Study,
)
from quality.db.session import make_engine, upgrade
from quality.errors import DatasetNotFoundError, QualityError
from quality.store import open_store

T0 = dt.datetime(2024, 2, 1, 12, tzinfo=dt.UTC)

# key: (patient, modality, body_part, date, age, sex, source, kvp)
STUDIES: dict[str, tuple[Any, ...]] = {
    "S1": ("P1", "DX", "CHEST", dt.date(2024, 1, 1), 40, "M", "Alpha", 100.0),
    "S2": ("P2", "DX", "CHEST", dt.date(2024, 1, 2), 50, "F", "Alpha", 110.0),
    "S3": ("P3", "CR", "CHEST", dt.date(2024, 1, 3), None, "F", "Beta", 120.0),
    "S4": ("P1", "DX", "CHEST", dt.date(2024, 1, 4), 40, "M", "Beta", 130.0),
    "S5": ("P5", None, None, dt.date(2024, 1, 5), 30, "M", "Beta", 90.0),
    "S7": ("P7", "DX", "CHEST", dt.date(2024, 1, 7), 70, "F", "Alpha", 100.0),
}


def _header(age: str, sex: str, date: str, spacing: list[float] | None) -> dict[str, Any]:
    head: dict[str, Any] = {"PatientAge": age, "PatientSex": sex, "StudyDate": date}
    if spacing is not None:
        head["PixelSpacing"] = spacing
        head["ImagerPixelSpacing"] = spacing
    return head


# key: (study, split, sha, photometric, spacing_row, header)
IMAGES: dict[str, tuple[Any, ...]] = {
    "I1": (
        "S1",
        "train",
        "a" * 64,
        "MONOCHROME2",
        0.5,
        _header("040Y", "M", "20240101", [0.5, 0.5]),
    ),
    "I2": (
        "S2",
        "train",
        "a" * 64,
        "MONOCHROME2",
        0.5,
        _header("050Y", "F", "20240102", [0.5, 0.5]),
    ),
    "I3": ("S3", "val", "c" * 64, "MONOCHROME1", 1.0, _header("142Y", "F", "20240103", [1.0, 1.0])),
    "I4": (
        "S4",
        "test",
        "d" * 64,
        "MONOCHROME2",
        None,
        _header("040Y", "M", "20240104", [0.0, 0.0]),
    ),
    "I5": ("S5", "train", "e" * 64, "MONOCHROME2", 0.5, _header("45", "X", "20240105", [0.5, 0.5])),
    "I6": ("S1", "train", "f" * 64, None, None, _header("040Y", "M", "20240101", None)),
    "I7": ("S7", None, "g" * 64, "MONOCHROME2", 0.5, _header("070Y", "F", "20240107", [0.5, 0.5])),
}


def sop(key: str) -> str:
    return f"1.2.826.0.9.{key[1:]}"


def add_check_rows(session: Session, root: Path) -> dict[str, int]:
    """Insert the DB of the module docstring; URIs are ``root/store/<sop>.dcm``. Returns ids."""
    ids: dict[str, int] = {}
    sources = {n: Source(name=n, manufacturer="Acme") for n in ("Alpha", "Beta")}
    session.add_all(sources.values())
    session.flush()
    series: dict[str, Series] = {}
    study_ids: dict[str, int] = {}
    for key, (patient, modality, body, date, age, sex, src, kvp) in STUDIES.items():
        study = Study(
            study_uid=f"1.2.826.0.7.{key[1:]}",
            patient_key=patient,
            modality=modality,
            body_part=body,
            study_date=date,
            patient_age_years=age,
            patient_sex=sex,
            source_id=sources[src].id,
        )
        session.add(study)
        session.flush()
        study_ids[key] = study.id
        series[key] = Series(
            series_uid=f"1.2.826.0.8.{key[1:]}", study_id=study.id, modality=modality, kvp=kvp
        )
        session.add(series[key])
    orphan_study = Study(study_uid="1.2.826.0.7.6", patient_key="P6", modality="DX")
    session.add(orphan_study)
    session.flush()
    session.add(Series(series_uid="1.2.826.0.8.8", study_id=study_ids["S1"]))  # X8: no images
    session.flush()
    for key, (study, _, sha, photometric, spacing, header) in IMAGES.items():
        img = Image(
            sop_uid=sop(key),
            series_id=series[study].id,
            uri=str(root / "store" / f"{sop(key)}.dcm"),
            pixel_sha256=sha,
            rows=100,
            cols=100,
            photometric=photometric,
            spacing_row=spacing,
            spacing_col=spacing,
            header=header,
        )
        session.add(img)
        session.flush()
        ids[key] = img.id
    ds = Dataset(name="chest", owner="team")
    other = Dataset(name="other")
    session.add_all([ds, other])
    session.flush()
    v1 = DatasetVersion(dataset_id=ds.id, version="v1", content_hash="0" * 64)
    session.add(v1)
    session.flush()
    ids |= {"dataset": ds.id, "version": v1.id, "other": other.id}
    for key, (_, split, *_rest) in IMAGES.items():
        if split is not None:
            session.add(DatasetItem(version_id=v1.id, image_id=ids[key], split=split))
    tasks = {
        "finding": LabelingTask(
            dataset_id=ds.id, name="finding", kind="classification", classes=["normal", "nodule"]
        ),
        "box": LabelingTask(dataset_id=ds.id, name="box", kind="bbox", classes=["nodule"]),
        "notes": LabelingTask(dataset_id=ds.id, name="notes", kind="classification", classes=[]),
    }
    docs = {c: Annotator(code=c, kind="doctor") for c in ("D1", "D2")}
    session.add_all([*tasks.values(), *docs.values()])
    session.flush()
    ids |= {f"task_{k}": t.id for k, t in tasks.items()}

    def ann(task: str, img: str, doc: str, label: str | None, bbox: Any = None) -> None:
        session.add(
            Annotation(
                task_id=tasks[task].id,
                image_id=ids[img],
                annotator_id=docs[doc].id,
                label=label,
                bbox=bbox,
                created_at=T0,
            )
        )

    ann("finding", "I1", "D1", "normal")
    ann("finding", "I1", "D2", "normal")
    ann("finding", "I2", "D1", "nodul")
    ann("finding", "I2", "D2", "nodule")
    for key in ("I3", "I4", "I5", "I6", "I7"):
        ann("finding", key, "D1", "normal")
    ann("notes", "I1", "D1", "anything goes")
    ann("box", "I1", "D1", "nodule", [10, 10, 20, 20])
    ann("box", "I1", "D2", "normal", None)
    ann("box", "I2", "D1", "nodule", [90, 90, 120, 95])
    ann("box", "I3", "D1", "nodule", [1, 2, 3])
    ann("box", "I4", "D1", "nodule", [20, 20, 10, 30])
    ann("box", "I5", "D1", "normal", None)
    ann("box", "I6", "D1", "nodule", ["a", 1, 2, 3])
    ann("box", "I5", "D2", "nodule", {"x0": 1})  # JSON object, not a list
    ann("box", "I3", "D2", "nodule", 7)  # JSON scalar
    session.add(
        ReferenceLabel(task_id=tasks["finding"].id, image_id=ids["I7"], kind="gold", label="normal")
    )
    model = Model(name="clf", task_id=tasks["finding"].id)
    session.add(model)
    session.flush()
    mv = ModelVersion(model_id=model.id, version="v1", status="production")
    session.add(mv)
    session.flush()
    session.add_all(
        [
            Prediction(
                model_version_id=mv.id, image_id=ids["I1"], label="normal", score=0.1, created_at=T0
            ),
            Prediction(
                model_version_id=mv.id, image_id=ids["I2"], label=None, score=None, created_at=T0
            ),
        ]
    )
    session.add(IngestError(uri=str(root / "store" / "bad.dcm"), kind="truncated", message="cut"))
    session.commit()
    return ids


def shared_db(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    build: Callable[[Session, Path], Any],
) -> Iterator[tuple[Session, Any, Path]]:
    """Body of a module-scoped fixture (``params=DB_KINDS``): one migrated DB filled by
    ``build(session, root)``, for tests that only read (``save=False``); yields ``(session,
    what build returned, root)``. One DB per module and kind keeps these tests fast."""
    root = tmp_path_factory.mktemp("checks_db")
    cluster = None
    if request.param == "sqlite":
        url = f"sqlite:///{root / 'checks.db'}"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        if cluster is None:
            service_missing("PostgreSQL (initdb/pg_ctl under /usr/lib/postgresql/*/bin)")
        url = cluster.new_database()
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as s:
        built = build(s, root)
        yield s, built, root
    engine.dispose()
    if cluster is not None:
        cluster.drop_database(url)


@pytest.fixture(scope="module", params=DB_KINDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Session, dict[str, int], Path]]:
    yield from shared_db(request, tmp_path_factory, add_check_rows)


@pytest.fixture
def ro(shared: tuple[Session, dict[str, int], Path]) -> Iterator[Session]:
    """The shared read-only session (rolled back after each test)."""
    session = shared[0]
    yield session
    session.rollback()


@pytest.fixture
def rows(session: Session, tmp_path: Path) -> dict[str, int]:
    """Fresh rows on the function-scoped ``session``, for tests that write."""
    return add_check_rows(session, tmp_path)


def outcome(session: Session, name: str, **kwargs: Any) -> CheckOutcome:
    report = run_checks(session, "chest", checks=[name], save=False, **kwargs)
    return next(o for o in report.outcomes if o.name == name)


def failing_keys(o: CheckOutcome) -> set[str]:
    return {f"I{s.rsplit('.', 1)[1]}" for s in o.failing["sop_uid"].dropna()}


# --------------------------------------------------------------------------- built-ins


def test_registry_names_and_categories() -> None:
    assert len(BUILTIN_CHECKS) == 15
    for name, spec in BUILTIN_CHECKS.items():
        assert name.split(".")[0] == spec.category
        assert spec.category in checks.CATEGORIES
        assert spec.severity in ("error", "warning")


def test_exact_duplicates(ro: Session) -> None:
    o = outcome(ro, "duplicates.exact")
    assert (o.passed, o.n_checked, o.n_failed, o.severity) == (False, 6, 2, "error")
    assert failing_keys(o) == {"I1", "I2"}
    assert list(o.failing.columns[:4]) == checks.FAILING_COLUMNS
    dup = o.failing.set_index("sop_uid")["duplicate_of"]
    assert dup[sop("I2")] == sop("I1") and pd.isna(dup[sop("I1")])


def test_required_fields_per_field(ro: Session) -> None:
    o = outcome(ro, "missing.required_fields")
    assert (o.n_checked, o.n_failed) == (6, 2)
    assert o.details["per_field"] == {
        "modality": 1,
        "body_part": 1,
        "study_date": 0,
        "rows": 0,
        "cols": 0,
        "photometric": 1,
        "pixel_spacing": 1,
    }
    pairs = set(zip(o.failing["sop_uid"], o.failing["field"], strict=True))
    assert pairs == {
        (sop("I5"), "modality"),
        (sop("I5"), "body_part"),
        (sop("I6"), "photometric"),
        (sop("I6"), "pixel_spacing"),
    }


def test_empty_predictions(ro: Session) -> None:
    o = outcome(ro, "missing.empty_predictions")
    assert (o.n_checked, o.n_failed, o.severity) == (2, 1, "warning")
    assert failing_keys(o) == {"I2"} and o.failing["value"].iloc[0] == "clf v1"


def test_ingest_errors(ro: Session) -> None:
    o = outcome(ro, "syntax.ingest_errors")
    assert (o.n_failed, o.n_checked) == (1, 8)  # 7 images + 1 error, store-wide
    assert o.failing["field"].tolist() == ["truncated"]
    assert o.failing["uri"].iloc[0].endswith("bad.dcm")


def test_bbox_format(ro: Session) -> None:
    o = outcome(ro, "syntax.bbox_format")
    # Boxes present on I1-I4 and I6, plus an object (I5) and a scalar (I3); JSON null (no
    # box) is not judged.
    assert (o.n_checked, o.n_failed) == (7, 5)
    assert failing_keys(o) == {"I3", "I4", "I5", "I6"}


def test_header_values(ro: Session) -> None:
    o = outcome(ro, "syntax.header_values")
    assert o.n_failed == 2 and o.details["per_field"] == {
        "PatientAge": 1,
        "StudyDate": 0,
        "PatientSex": 1,
    }
    assert set(zip(o.failing["field"], o.failing["value"], strict=True)) == {
        ("PatientAge", "45"),
        ("PatientSex", "X"),
    }


def test_box_outside_image(ro: Session) -> None:
    o = outcome(ro, "semantic.box_outside_image")
    assert (o.n_checked, o.n_failed) == (2, 1)  # only well-formed boxes are judged
    assert failing_keys(o) == {"I2"}
    assert o.failing[["task", "annotator", "cols"]].iloc[0].tolist() == ["box", "D1", 100]


def test_label_not_in_schema(ro: Session) -> None:
    o = outcome(ro, "semantic.label_not_in_schema")
    # finding: 8 labels on the version's images; box: 7 labels of drawn boxes; notes: no
    # classes, not judged.
    assert (o.n_checked, o.n_failed) == (15, 1)
    assert o.failing[["value", "task", "annotator"]].iloc[0].tolist() == ["nodul", "finding", "D1"]
    assert "notes" in o.message


def test_impossible_age_reads_the_header(ro: Session) -> None:
    o = outcome(ro, "semantic.impossible_age")
    assert o.n_failed == 1 and failing_keys(o) == {"I3"}
    assert o.failing["value"].iloc[0] == "142Y"


def test_zero_spacing_reads_the_header(ro: Session) -> None:
    o = outcome(ro, "semantic.zero_spacing")
    assert o.n_failed == 1 and failing_keys(o) == {"I4"}
    assert set(o.failing["field"]) == {"PixelSpacing", "ImagerPixelSpacing"}


def test_orphans(ro: Session) -> None:
    o = outcome(ro, "integrity.orphans")
    assert o.n_failed == 2
    assert o.details["annotations_outside"] == 1 and o.details["reference_labels_outside"] == 1
    assert set(o.failing["field"]) == {"annotation", "reference_label"}
    assert failing_keys(o) == {"I7"}


def test_store_orphans(ro: Session) -> None:
    o = outcome(ro, "integrity.store_orphans")
    assert (o.n_failed, o.severity) == (2, "warning")
    assert set(o.failing["value"]) == {"1.2.826.0.7.6", "1.2.826.0.8.8"}


def test_patient_in_two_splits(ro: Session) -> None:
    o = outcome(ro, "integrity.patient_in_two_splits")
    assert (o.n_checked, o.n_failed) == (4, 1)  # P1, P2, P3, P5
    assert failing_keys(o) == {"I1", "I4", "I6"}  # P1's images (I6 shares I1's study)
    assert set(o.failing["patient_key"]) == {"P1"}
    assert set(o.failing["value"]) == {"train", "test"}
    assert o.failing["uri"].notna().all()


def test_store_checks_not_run_without_store(ro: Session) -> None:
    for name in ("integrity.missing_files", "duplicates.near"):
        o = outcome(ro, name)
        assert (o.ran, o.passed, o.status, o.severity) == (False, True, "not_run", "warning")
        assert o.message.startswith("not run:")


def test_missing_files_with_a_store(shared: tuple[Session, dict[str, int], Path]) -> None:
    session, _, root = shared
    folder = root / "store"
    folder.mkdir(exist_ok=True)
    for key in ("I1", "I2", "I3", "I4", "I5"):
        (folder / f"{sop(key)}.dcm").write_bytes(b"x")
    o = outcome(session, "integrity.missing_files", store=open_store(str(folder)))
    assert (o.n_checked, o.n_failed) == (6, 1)
    assert failing_keys(o) == {"I6"} and o.failing["value"].iloc[0] == "file not found in the store"


def test_a_store_that_holds_none_of_the_images_is_not_run(ro: Session, tmp_path: Path) -> None:
    session = ro
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("integrity.missing_files", "duplicates.near"):
        o = outcome(session, name, store=open_store(str(elsewhere)))
        assert o.status == "not_run" and "store" in o.message


def test_failing_rows_are_capped(ro: Session) -> None:
    o = run_checks(ro, "chest", checks=["syntax.bbox_format"], save=False, max_failing=1)
    bbox = o.outcomes[0]
    assert bbox.n_failed == 5 and len(bbox.failing) == 1
    with pytest.raises(ValueError, match="max_failing"):
        run_checks(ro, "chest", save=False, max_failing=0)


def test_clean_dataset_passes(session: Session, rows: dict[str, int]) -> None:
    """A dataset whose version has only clean I1 passes every check that judges its rows."""
    other = session.get(Dataset, rows["other"])
    assert other is not None
    v = DatasetVersion(dataset_id=other.id, version="v1", content_hash="1" * 64)
    session.add(v)
    session.flush()
    session.add(DatasetItem(version_id=v.id, image_id=rows["I1"], split="train"))
    session.commit()
    report = run_checks(session, "other", save=False)
    by = {o.name: o for o in report.outcomes}
    for name in (
        "duplicates.exact",
        "missing.required_fields",
        "syntax.header_values",
        "semantic.impossible_age",
        "semantic.zero_spacing",
        "integrity.patient_in_two_splits",
    ):
        assert by[name].passed and by[name].n_failed == 0, (name, by[name].message)
    # Store-wide facts still fail the run: the ingest error belongs to no dataset.
    assert not by["syntax.ingest_errors"].passed and not report.passed


def test_unknown_dataset_version_and_check(ro: Session) -> None:
    with pytest.raises(DatasetNotFoundError, match="chest"):
        run_checks(ro, "nope", save=False)
    with pytest.raises(QualityError, match="versions: v1"):
        run_checks(ro, "chest", version="v9", save=False)
    with pytest.raises(QualityError, match="no versions"):
        run_checks(ro, "other", save=False)
    with pytest.raises(ValueError, match=r"valid checks: duplicates\.exact"):
        run_checks(ro, "chest", checks=["nope"], save=False)


# --------------------------------------------------------------------------- history


def test_run_is_stored_and_read_back(session: Session, rows: dict[str, int]) -> None:
    report = run_checks(session, "chest")
    assert report.run_id is not None and not report.passed
    n_results = session.scalar(
        select(func.count(CheckResult.id)).where(CheckResult.run_id == report.run_id)
    )
    assert n_results == len(report.outcomes)
    run = session.get(CheckRun, report.run_id)
    assert run is not None and run.passed is False and run.finished_at is not None
    assert run.summary["version"] == "v1"
    assert run.summary["categories"]["semantic"]["n_failed"] == 4

    history = checks.check_history(session, rows["dataset"])
    assert list(history.columns) == checks.HISTORY_COLUMNS
    row = history.iloc[0]
    errors = sum(o.status == "failed" and o.severity == "error" for o in report.outcomes)
    warnings = sum(o.status == "failed" and o.severity == "warning" for o in report.outcomes)
    assert (row["run_id"], bool(row["passed"]), row["version"]) == (report.run_id, False, "v1")
    assert (row["n_failed_errors"], row["n_failed_warnings"]) == (errors, warnings)
    assert row["n_not_run"] == 3  # missing files, near duplicates, distribution
    assert row["n_checks"] == len(report.outcomes)

    results = checks.check_run_results(session, report.run_id)
    assert list(results.columns) == checks.RESULT_COLUMNS
    assert results["check_name"].tolist() == [o.name for o in report.outcomes]
    dup = results.set_index("check_name").loc["duplicates.exact"]
    assert dup["status"] == "failed" and dup["n_checked"] == 6
    assert {r["sop_uid"] for r in dup["failing"]} == {sop("I1"), sop("I2")}
    assert results.set_index("check_name").loc["integrity.missing_files", "status"] == "not_run"


def test_history_orders_runs_and_is_empty_for_others(
    session: Session, rows: dict[str, int]
) -> None:
    first = run_checks(session, "chest", checks=["duplicates.exact"])
    second = run_checks(session, "chest", checks=["semantic.zero_spacing"])
    history = checks.check_history(session, rows["dataset"])
    assert history["run_id"].tolist() == [first.run_id, second.run_id]
    assert history["n_checks"].tolist() == [2, 2]  # + the distribution "not run"
    assert checks.check_history(session, rows["other"]).empty
    assert checks.check_run_results(session, 10_000).empty


def test_no_save_writes_nothing(ro: Session) -> None:
    report = run_checks(ro, "chest", save=False)
    assert report.run_id is None
    assert ro.scalar(select(func.count(CheckRun.id))) == 0


def test_report_as_dict_and_text(ro: Session) -> None:
    report = run_checks(ro, "chest", save=False)
    payload = report.as_dict()
    assert payload["passed"] is False and payload["version"] == "v1"
    names = [c["name"] for c in payload["checks"]]
    assert names[: len(BUILTIN_CHECKS)] == list(BUILTIN_CHECKS)
    json.dumps(payload)  # JSON-ready throughout
    text = checks.format_text(report)
    assert text.startswith("data tests of chest v1: FAILED")
    assert "FAIL error   semantic.zero_spacing" in text
    assert "SKIP warning integrity.missing_files: not run" in text
