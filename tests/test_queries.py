"""Read-side queries (quality/db/queries.py) on SQLite and PostgreSQL, on rows checkable by hand.

The example DB (``add_example_rows``; also used by the app tests):

=====  ========  ======  ==========  =======  ======  =========================
study  modality  source  date        patient  images  in dataset "chest" (v2)?
=====  ========  ======  ==========  =======  ======  =========================
S1     CR        Alpha   2024-01-10  p1       2       yes (v1 holds only S1)
S2     DX        Beta    2024-02-20  p2       1       yes
S3     CT        Alpha   2024-03-05  p1       3       yes
S4     CR        Beta    (none)      p3       1       no
=====  ========  ======  ==========  =======  ======  =========================

Dataset "chest": 2 versions; v2 has 6 images, 3 studies, 2 patients. 3 annotations (newest
2024-03-10), 2 predictions on its images (a third is on S4). Newest ingest 2024-03-15.
Dataset "empty-ds": no versions, no timestamps. Ingest errors: 2 ``truncated``, 1 ``not_dicom``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import DB_KINDS, service_missing
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from quality.db import queries as q
from quality.db.schema import (
    Annotation,
    Annotator,
    Dataset,
    DatasetItem,
    DatasetVersion,
    Image,
    IngestError,
    LabelingTask,
    Model,
    ModelVersion,
    Prediction,
    Series,
    Source,
    Study,
)
from quality.db.session import make_engine, upgrade
from quality.errors import DatabaseUnavailableError, EmptyDatabaseError

UTC = dt.UTC


def t(day: str) -> dt.datetime:
    """A UTC timestamp at noon of an ISO day."""
    return dt.datetime.fromisoformat(day).replace(hour=12, tzinfo=UTC)


# (study key, modality, source, date, patient, n images)
EXAMPLE_STUDIES = [
    ("S1", "CR", "Alpha", dt.date(2024, 1, 10), "p1", 2),
    ("S2", "DX", "Beta", dt.date(2024, 2, 20), "p2", 1),
    ("S3", "CT", "Alpha", dt.date(2024, 3, 5), "p1", 3),
    ("S4", "CR", "Beta", None, "p3", 1),
]


def example_uri(root: Path, study: str, index: int) -> str:
    """Where the example image ``index`` of ``study`` lives (files written by the app tests)."""
    return str(root / f"{study}_{index}.dcm")


def add_example_rows(session: Session, root: Path) -> dict[str, int]:
    """Insert the example DB of the module docstring; return ids by name."""
    alpha = Source(name="Alpha", manufacturer="Siemens")
    beta = Source(name="Beta", manufacturer="GE")
    session.add_all([alpha, beta])
    session.flush()
    images: dict[str, list[Image]] = {}
    for key, modality, src, date, patient, n in EXAMPLE_STUDIES:
        study = Study(
            study_uid=f"1.2.826.0.1.{key[1]}",
            patient_key=patient,
            modality=modality,
            body_part="CHEST",
            study_date=date,
            source_id=(alpha if src == "Alpha" else beta).id,
        )
        session.add(study)
        session.flush()
        series = Series(
            series_uid=f"1.2.826.0.2.{key[1]}",
            study_id=study.id,
            modality=modality,
            series_number=1,
            description=f"{modality} series",
        )
        session.add(series)
        session.flush()
        images[key] = []
        for i in range(n):
            img = Image(
                sop_uid=f"1.2.826.0.3.{key[1]}.{i}",
                series_id=series.id,
                uri=example_uri(root, key, i),
                instance_number=i + 1,
                rows=32,
                cols=32,
                photometric="MONOCHROME2",
                ingested_at=t("2024-03-15") if key == "S3" else t("2024-01-15"),
            )
            session.add(img)
            images[key].append(img)
    session.flush()

    chest = Dataset(
        name="chest",
        owner="imaging-team",
        license="CC-BY-4.0",
        description="Example chest set",
        updated_at=t("2024-03-01"),
    )
    empty = Dataset(name="empty-ds", owner="nobody", license=None, description=None)
    session.add_all([chest, empty])
    session.flush()
    v1 = DatasetVersion(
        dataset_id=chest.id, version="v1", content_hash="a" * 64, created_at=t("2024-01-20")
    )
    v2 = DatasetVersion(
        dataset_id=chest.id, version="v2", content_hash="b" * 64, created_at=t("2024-03-12")
    )
    session.add_all([v1, v2])
    session.flush()
    for img in images["S1"]:
        session.add(DatasetItem(version_id=v1.id, image_id=img.id, split="train"))
    for key, split in (("S1", "train"), ("S2", "val"), ("S3", "test")):
        for img in images[key]:
            session.add(DatasetItem(version_id=v2.id, image_id=img.id, split=split))

    task = LabelingTask(dataset_id=chest.id, name="finding", kind="classification", classes=[])
    doc = Annotator(code="D01", kind="doctor")
    session.add_all([task, doc])
    session.flush()
    for img, day in zip(
        (images["S1"][0], images["S2"][0], images["S3"][0]),
        ("2024-02-01", "2024-03-10", "2024-03-02"),
        strict=True,
    ):
        session.add(
            Annotation(
                task_id=task.id, image_id=img.id, annotator_id=doc.id, label="normal",
                created_at=t(day),
            )
        )  # fmt: skip
    model = Model(name="m", task_id=task.id)
    session.add(model)
    session.flush()
    mv = ModelVersion(model_id=model.id, version="1", status="production")
    session.add(mv)
    session.flush()
    for img in (images["S1"][0], images["S3"][1], images["S4"][0]):
        session.add(
            Prediction(
                model_version_id=mv.id, image_id=img.id, label="normal", score=0.9,
                created_at=t("2024-03-03"),
            )
        )  # fmt: skip
    session.add_all(
        [
            IngestError(uri="/x/a.dcm", kind="truncated", message="file ends early"),
            IngestError(uri="/x/b.dcm", kind="truncated", message="file ends early"),
            IngestError(uri="/x/c.txt", kind="not_dicom", message="no DICM preamble"),
        ]
    )
    session.commit()
    return {"chest": chest.id, "empty": empty.id}


@dataclass
class Example:
    """The example DB, built once per module and DB kind (the tests only read it)."""

    session: Session
    ids: dict[str, int]
    root: Path


@pytest.fixture(scope="module", params=DB_KINDS)
def example(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Example]:
    root = tmp_path_factory.mktemp("example")
    cluster = None
    if request.param == "sqlite":
        url = f"sqlite:///{root / 'example.db'}"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        if cluster is None:
            service_missing("PostgreSQL (initdb/pg_ctl under /usr/lib/postgresql/*/bin)")
        url = cluster.new_database()
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as s:
        ids = add_example_rows(s, root)
        yield Example(s, ids, root)
    engine.dispose()
    if cluster is not None:
        cluster.drop_database(url)


# ---------------------------------------------------------------------- overview


def test_dataset_overview_counts(example: Example) -> None:
    session, ids = example.session, example.ids
    df = q.dataset_overview(session, now=t("2024-03-20"))
    assert list(df.columns) == q.OVERVIEW_COLUMNS
    assert list(df["name"]) == ["chest", "empty-ds"]
    chest = df.set_index("name").loc["chest"]
    assert chest["dataset_id"] == ids["chest"]
    assert chest["owner"] == "imaging-team"
    assert chest["n_versions"] == 2
    assert chest["latest_version"] == "v2"
    assert (chest["n_images"], chest["n_studies"], chest["n_patients"]) == (6, 3, 2)
    assert chest["n_annotations"] == 3
    assert chest["n_predictions"] == 2
    assert chest["last_update"] == t("2024-03-15")
    assert chest["age_days"] == pytest.approx(5.0)
    assert chest["freshness"] == "fresh"


def test_dataset_overview_empty_dataset(example: Example) -> None:
    session = example.session
    empty = q.dataset_overview(session, now=t("2024-03-20")).set_index("name").loc["empty-ds"]
    assert empty["n_versions"] == 0
    assert pd.isna(empty["latest_version"])
    assert empty[["n_images", "n_studies", "n_patients", "n_annotations"]].sum() == 0
    assert pd.isna(empty["last_update"])
    assert empty["freshness"] == "unknown"


@pytest.mark.parametrize(
    ("now", "status"),
    [("2024-03-22", "fresh"), ("2024-04-01", "aging"), ("2024-04-14", "aging"), ("2024-05-01", "stale")],
)  # fmt: skip
def test_freshness_thresholds(example: Example, now: str, status: str) -> None:
    session = example.session
    df = q.dataset_overview(session, now=t(now))
    assert df.set_index("name").loc["chest", "freshness"] == status


def test_freshness_status_edges() -> None:
    assert q.freshness_status(q.FRESH_DAYS) == "fresh"
    assert q.freshness_status(q.STALE_DAYS) == "aging"
    assert q.freshness_status(q.STALE_DAYS + 0.01) == "stale"
    assert q.freshness_status(None) == "unknown"


def test_totals_and_breakdowns(example: Example) -> None:
    session, ids = example.session, example.ids
    totals = q.store_totals(session)
    assert totals == q.StoreTotals(
        n_datasets=2, n_sources=2, n_studies=4, n_patients=3, n_series=4, n_images=7,
        n_ingest_errors=3,
    )  # fmt: skip
    assert not totals.is_empty
    errors = q.ingest_error_summary(session)
    assert errors.to_dict("records") == [
        {"kind": "truncated", "count": 2},
        {"kind": "not_dicom", "count": 1},
    ]
    by_src = q.images_by_source(session)
    assert by_src.to_dict("records") == [
        {"source": "Alpha", "modality": "CR", "n_images": 2},
        {"source": "Alpha", "modality": "CT", "n_images": 3},
        {"source": "Beta", "modality": "CR", "n_images": 1},
        {"source": "Beta", "modality": "DX", "n_images": 1},
    ]
    in_chest = q.images_by_source(session, ids["chest"])
    assert in_chest["n_images"].sum() == 6
    assert "CR" not in set(in_chest.loc[in_chest["source"] == "Beta", "modality"])
    assert list(q.list_datasets(session)["name"]) == ["chest", "empty-ds"]


def test_empty_schema_has_zero_totals(session: Session) -> None:
    assert q.store_totals(session).is_empty
    assert q.dataset_overview(session).empty
    assert q.studies_page(session)[1] == 0


# ---------------------------------------------------------------------- browser


def test_filter_options(example: Example) -> None:
    session, ids = example.session, example.ids
    opts = q.filter_options(session)
    assert opts == {
        "sources": ["Alpha", "Beta"],
        "modalities": ["CR", "CT", "DX"],
        "date_min": dt.date(2024, 1, 10),
        "date_max": dt.date(2024, 3, 5),
    }
    scoped = q.filter_options(session, ids["chest"])
    assert scoped["modalities"] == ["CR", "CT", "DX"]
    assert q.filter_options(session, ids["empty"]) == {
        "sources": [], "modalities": [], "date_min": None, "date_max": None,
    }  # fmt: skip


def test_studies_page_contents_and_order(example: Example) -> None:
    session = example.session
    df, total = q.studies_page(session)
    assert total == 4
    assert list(df.columns) == q.STUDY_COLUMNS
    # Newest first, undated last.
    assert list(df["study_uid"]) == [
        "1.2.826.0.1.3",
        "1.2.826.0.1.2",
        "1.2.826.0.1.1",
        "1.2.826.0.1.4",
    ]
    first = df.iloc[0]
    assert (first["modality"], first["source"], first["n_series"], first["n_images"]) == (
        "CT",
        "Alpha",
        1,
        3,
    )
    assert first["study_date"] == dt.date(2024, 3, 5)
    assert pd.isna(df.iloc[3]["study_date"])


def test_studies_pagination(example: Example) -> None:
    session = example.session
    seen: list[str] = []
    for page in range(3):
        df, total = q.studies_page(session, page=page, page_size=3)
        assert total == 4
        seen += list(df["study_uid"])
    assert len(seen) == 4 and len(set(seen)) == 4
    df, total = q.studies_page(session, page=1, page_size=3)
    assert len(df) == 1 and total == 4
    df, total = q.studies_page(session, page=9, page_size=3)
    assert df.empty and total == 4


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"sources": ["Alpha"]}, {"1", "3"}),
        ({"modalities": ["CR"]}, {"1", "4"}),
        ({"modalities": ["CR", "DX"], "sources": ["Beta"]}, {"2", "4"}),
        ({"date_from": dt.date(2024, 2, 1)}, {"2", "3"}),
        ({"date_to": dt.date(2024, 2, 20)}, {"1", "2"}),
        ({"date_from": dt.date(2024, 2, 20), "date_to": dt.date(2024, 2, 20)}, {"2"}),
        ({"sources": [], "modalities": []}, {"1", "2", "3", "4"}),
    ],
)
def test_studies_filters(example: Example, kwargs: dict[str, object], expected: set[str]) -> None:
    session = example.session
    df, total = q.studies_page(session, **kwargs)  # type: ignore[arg-type]
    assert total == len(expected)
    assert {uid.rsplit(".", 1)[1] for uid in df["study_uid"]} == expected


def test_studies_dataset_scope(example: Example) -> None:
    session, ids = example.session, example.ids
    df, total = q.studies_page(session, dataset_id=ids["chest"], modalities=["CR"])
    assert total == 1 and list(df["study_uid"]) == ["1.2.826.0.1.1"]
    assert q.studies_page(session, dataset_id=ids["empty"])[1] == 0


@pytest.mark.parametrize(
    "evil", ["CR' OR 1=1 --", "'; DROP TABLE studies; --", 'Alpha" OR "1"="1', "%", "*"]
)
def test_filter_values_are_bound_parameters(example: Example, evil: str) -> None:
    session = example.session
    assert q.studies_page(session, modalities=[evil])[1] == 0
    assert q.studies_page(session, sources=[evil])[1] == 0
    assert q.study_images(session, evil).empty
    # Nothing was dropped or changed.
    assert q.studies_page(session)[1] == 4


def test_studies_page_validates_paging(session: Session) -> None:
    with pytest.raises(ValueError, match="page must be"):
        q.studies_page(session, page=-1)
    with pytest.raises(ValueError, match="page_size"):
        q.studies_page(session, page_size=0)


def test_study_images(example: Example) -> None:
    session = example.session
    df = q.study_images(session, "1.2.826.0.1.3")
    assert list(df.columns) == q.STUDY_IMAGE_COLUMNS
    assert list(df["instance_number"]) == [1, 2, 3]
    assert list(df["uri"]) == [example_uri(example.root, "S3", i) for i in range(3)]
    assert set(df["modality"]) == {"CT"}
    assert q.study_images(session, "no-such-study").empty


# ---------------------------------------------------------------------- errors


def test_missing_schema_is_empty_database_error(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'blank.db'}")
    with Session(engine) as s, pytest.raises(EmptyDatabaseError, match="has no data yet"):
        q.dataset_overview(s)
    engine.dispose()


def test_missing_schema_on_postgresql(pg_url: str) -> None:
    engine = create_engine(pg_url)
    with Session(engine) as s, pytest.raises(EmptyDatabaseError):
        q.studies_page(s)
    engine.dispose()


def test_unreachable_database_is_domain_error() -> None:
    engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/x")
    with Session(engine) as s, pytest.raises(DatabaseUnavailableError, match=r"127\.0\.0\.1:1"):
        q.store_totals(s)
    engine.dispose()
