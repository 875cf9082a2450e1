"""Dataset snapshots, frozen labels and version diffs (``quality.snapshot``), on SQLite and
PostgreSQL, with a hand-built example small enough to check by hand.

The example (:func:`build_example`): sources A (GE) and B (Siemens); dataset ``ds`` with
version ``v1`` (a legacy content hash, no frozen labels) holding

====  =======  ======  =====  =================================================
img   patient  source  split  ``finding`` labels (newest per annotator wins)
====  =======  ======  =====  =================================================
i1    p1       A       train  D1 nodule→normal, D2 normal, D3 ``nodul`` (invalid)
i2    p2       A       val    D1 nodule, D2 normal (a tie)
i3    p3       B       test   D1 nodule, D2 nodule, D3 normal
i4    p1       A       train  D1 normal, E1 nodule, gold nodule
====  =======  ======  =====  =================================================

and two images in no version: ``n1`` (patient p1, so train) and ``n2`` (new patient p4).
Task ``box`` (bbox) has one box by D1 on i1.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from quality.cli import app
from quality.db.schema import (
    Annotation,
    Annotator,
    Dataset,
    DatasetItem,
    DatasetVersion,
    Image,
    LabelingTask,
    ReferenceLabel,
    Series,
    Source,
    Study,
    VersionLabel,
)
from quality.db.session import make_engine, upgrade
from quality.errors import SchemaOutdatedError, SnapshotError, VersionNotFoundError
from quality.snapshot import (
    DEFAULT_SPLIT_SHARES,
    HASH_SCHEME,
    TIE,
    UNLABELLED,
    _next_version_name,
    class_counts,
    diff_versions,
    list_versions,
    patient_split,
    resolve_version,
    snapshot,
)

T0 = dt.datetime(2024, 1, 1, 9, tzinfo=dt.UTC)
LEGACY_HASH = "0" * 64
IMAGES = (
    # name, patient, source, modality, split in v1 (None: in no version)
    ("i1", "p1", "A", "DX", "train"),
    ("i2", "p2", "A", "DX", "val"),
    ("i3", "p3", "B", "CR", "test"),
    ("i4", "p1", "A", "DX", "train"),
    ("n1", "p1", "A", "DX", None),
    ("n2", "p4", "B", "CR", None),
)
FINDING = (
    # image, annotator, label, hours after T0
    ("i1", "D1", "nodule", 0),
    ("i1", "D1", "normal", 24),
    ("i1", "D2", "normal", 1),
    ("i1", "D3", "nodul", 2),
    ("i2", "D1", "nodule", 3),
    ("i2", "D2", "normal", 4),
    ("i3", "D1", "nodule", 5),
    ("i3", "D2", "nodule", 6),
    ("i3", "D3", "normal", 7),
    ("i4", "D1", "normal", 8),
    ("i4", "E1", "nodule", 9),
)


def pixel_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


@dataclass
class Example:
    """Ids of the example's rows, by name."""

    dataset_id: int
    images: dict[str, int]
    tasks: dict[str, int]
    annotators: dict[str, int]
    v1: int


def build_example(session: Session) -> Example:
    """Insert the example of the module docstring; commit; return its ids."""
    sources = {
        "A": Source(name="A", manufacturer="GE"),
        "B": Source(name="B", manufacturer="Siemens"),
    }
    session.add_all(sources.values())
    session.flush()
    images = {}
    for k, (name, patient, src, modality, _) in enumerate(IMAGES):
        study = Study(
            study_uid=f"1.2.{name}",
            patient_key=patient,
            modality=modality,
            study_date=dt.date(2024, 1, 1 + k),
            source_id=sources[src].id,
        )
        session.add(study)
        session.flush()
        series = Series(
            series_uid=f"1.4.{name}",
            study_id=study.id,
            modality=modality,
            manufacturer=sources[src].manufacturer,
            model=f"model-{src}",
        )
        session.add(series)
        session.flush()
        img = Image(
            sop_uid=f"1.3.{name}",
            series_id=series.id,
            uri=f"/store/{name}.dcm",
            pixel_sha256=pixel_hash(name),
            rows=64,
            cols=64,
        )
        session.add(img)
        session.flush()
        images[name] = img.id
    ds = Dataset(name="ds", owner="team", license="CC-BY-4.0", description="example")
    session.add(ds)
    session.flush()
    v1 = DatasetVersion(dataset_id=ds.id, version="v1", content_hash=LEGACY_HASH, created_at=T0)
    session.add(v1)
    session.flush()
    for name, _, _, _, split in IMAGES:
        if split is not None:
            session.add(DatasetItem(version_id=v1.id, image_id=images[name], split=split))
    finding = LabelingTask(
        dataset_id=ds.id, name="finding", kind="classification", classes=["normal", "nodule"]
    )
    box = LabelingTask(dataset_id=ds.id, name="box", kind="bbox", classes=["nodule"])
    people = {
        code: Annotator(code=code, kind="expert" if code.startswith("E") else "doctor")
        for code in ("D1", "D2", "D3", "E1")
    }
    session.add_all([finding, box, *people.values()])
    session.flush()
    for img, code, label, hours in FINDING:
        session.add(
            Annotation(
                task_id=finding.id,
                image_id=images[img],
                annotator_id=people[code].id,
                label=label,
                created_at=T0 + dt.timedelta(hours=hours),
            )
        )
    session.add(
        Annotation(
            task_id=box.id,
            image_id=images["i1"],
            annotator_id=people["D1"].id,
            label="nodule",
            bbox=[1, 2, 30, 40],
            created_at=T0,
        )
    )
    session.add(
        ReferenceLabel(task_id=finding.id, image_id=images["i4"], kind="gold", label="nodule")
    )
    session.commit()
    return Example(
        dataset_id=ds.id,
        images=images,
        tasks={"finding": finding.id, "box": box.id},
        annotators={k: v.id for k, v in people.items()},
        v1=v1.id,
    )


@pytest.fixture
def example(session: Session) -> Example:
    return build_example(session)


def items_of(session: Session, version_id: int) -> list[tuple[int, str]]:
    return sorted(
        session.execute(
            select(DatasetItem.image_id, DatasetItem.split).where(
                DatasetItem.version_id == version_id
            )
        ).all()
    )


def version_id(session: Session, name: str) -> int:
    return session.scalar(select(DatasetVersion.id).where(DatasetVersion.version == name))


def frozen(session: Session, vid: int, task_id: int) -> dict[int, tuple[str | None, str]]:
    rows = session.execute(
        select(VersionLabel.image_id, VersionLabel.label, VersionLabel.basis).where(
            VersionLabel.version_id == vid, VersionLabel.task_id == task_id
        )
    ).all()
    return {int(i): (label, basis) for i, label, basis in rows}


# --------------------------------------------------------------------------- labels


def test_first_snapshot_freezes_labels_and_is_idempotent(session, example):
    v1 = resolve_version(session, example.dataset_id, "v1")
    assert not v1.labels_frozen
    counts = class_counts(session, v1, example.dataset_id)
    got = {(r.split, r.label): r.n_images for r in counts.itertuples()}
    # i1 normal (newest D1 label; D3's typo does not vote), i4 nodule (gold beats a tie),
    # i2 a tie, i3 nodule by majority.
    assert got == {("train", "normal"): 1, ("train", "nodule"): 1, ("val", TIE): 1,
                   ("test", "nodule"): 1}  # fmt: skip
    assert set(counts["task"]) == {"finding"}  # bbox tasks have no class balance

    result = snapshot(session, "ds", note="first frozen")
    session.commit()
    assert result.created and result.version == "v2" and result.previous == "v1"
    assert result.n_items == 4 and result.n_new == 0
    v2 = version_id(session, "v2")
    assert items_of(session, v2) == items_of(session, example.v1)
    img = example.images
    assert frozen(session, v2, example.tasks["finding"]) == {
        img["i1"]: ("normal", "majority"),
        img["i2"]: (None, "tie"),
        img["i3"]: ("nodule", "majority"),
        img["i4"]: ("nodule", "gold"),
    }
    info = resolve_version(session, example.dataset_id, "v2")
    assert info.labels_frozen and info.note == "first frozen"
    assert list_versions(session, example.dataset_id)["version"].tolist() == ["v2", "v1"]

    # The hash, recomputed from the documented recipe, independently of the code.
    records = [["item", f"1.3.{n}", s, pixel_hash(n)] for n, _, _, _, s in IMAGES if s]
    records += [
        ["annotation", "finding", f"1.3.{i}", c, lab, None, None] for i, c, lab, _ in FINDING
    ]
    records += [["annotation", "box", "1.3.i1", "D1", "nodule", [1, 2, 30, 40], None]]
    records += [["reference", "finding", "gold", "1.3.i4", "nodule", None, None]]
    lines = sorted(json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in records)
    text_ = HASH_SCHEME + "\n" + "".join(line + "\n" for line in lines)
    assert result.content_hash == hashlib.sha256(text_.encode()).hexdigest()

    # The same working set again: nothing is written.
    n_items = session.scalar(select(func.count(DatasetItem.id)))
    again = snapshot(session, "ds", note="again")
    session.commit()
    assert again.status == "unchanged" and not again.created
    assert again.version == "v2" and again.content_hash == result.content_hash
    assert session.scalar(select(func.count(DatasetVersion.id))) == 2
    assert session.scalar(select(func.count(DatasetItem.id))) == n_items


def test_relabel_changes_hash_and_versions_stay_immutable(session, example):
    snapshot(session, "ds")
    session.commit()
    v2 = version_id(session, "v2")
    before = {vid: items_of(session, vid) for vid in (example.v1, v2)}
    labels_before = frozen(session, v2, example.tasks["finding"])
    v2_hash = resolve_version(session, example.dataset_id, "v2").content_hash
    # D3 breaks the tie on i2: a relabel, nothing else changes.
    session.add(
        Annotation(
            task_id=example.tasks["finding"],
            image_id=example.images["i2"],
            annotator_id=example.annotators["D3"],
            label="nodule",
            created_at=T0 + dt.timedelta(days=3),
        )
    )
    session.commit()
    third = snapshot(session, "ds", add_new=True)
    session.commit()
    assert third.created and third.version == "v3" and third.content_hash != v2_hash
    assert {vid: items_of(session, vid) for vid in (example.v1, v2)} == before
    assert frozen(session, v2, example.tasks["finding"]) == labels_before
    assert resolve_version(session, example.dataset_id, "v2").content_hash == v2_hash
    diff = diff_versions(session, "ds", "v2", "v3")
    assert diff.labels_basis == "frozen"
    assert diff.label_changes.to_dict("records") == [
        {"task": "finding", "old_label": TIE, "new_label": "nodule", "n_images": 1}
    ]


def test_add_new_assigns_splits_by_patient(session, example):
    result = snapshot(session, "ds", add_new=True)
    session.commit()
    assert result.created and result.n_new == 2 and result.n_items == 6
    splits = dict(items_of(session, version_id(session, "v2")))
    img = example.images
    # n1's patient p1 is in train; p4 is new: a split drawn from its key with v1's shares.
    assert splits[img["n1"]] == "train"
    expected = patient_split("p4", {"train": 0.5, "val": 0.25, "test": 0.25})
    assert splits[img["n2"]] == expected
    assert result.new_by_split == dict(Counter(["train", expected]))
    # Unlabelled new images get no frozen label.
    assert img["n2"] not in frozen(session, version_id(session, "v2"), example.tasks["finding"])


def test_patient_split_is_deterministic_and_follows_the_shares():
    shares = {"train": 0.7, "val": 0.2, "test": 0.1}
    keys = [f"patient-{i}" for i in range(4000)]
    drawn = Counter(patient_split(k, shares) for k in keys)
    assert [patient_split(k, shares) for k in keys[:50]] == [
        patient_split(k, dict(shares)) for k in keys[:50]
    ]
    for split, share in shares.items():
        assert abs(drawn[split] / len(keys) - share) < 0.03, drawn
    assert {patient_split(k, {"train": 0, "val": 1, "test": 0}) for k in keys[:100]} == {"val"}
    # Shares that do not sum to 1 are normalised; no share at all falls back to the default.
    assert patient_split("x", {"train": 0, "val": 0, "test": 0}) in DEFAULT_SPLIT_SHARES


def test_first_versions_and_version_names(session, example):
    session.add(Dataset(name="fresh"))
    session.commit()
    with pytest.raises(SnapshotError, match="--add-new"):
        snapshot(session, "fresh")
    result = snapshot(session, "fresh", add_new=True)
    session.commit()
    # Every indexed image is in no version of "fresh": all six come in, v1 is made.
    assert result.created and result.version == "v1" and result.previous is None
    assert result.n_items == len(IMAGES)
    for name in ("v7", "release-a"):
        session.add(DatasetVersion(dataset_id=example.dataset_id, version=name, content_hash="x"))
    session.commit()
    assert _next_version_name(session, example.dataset_id) == "v8"


def test_empty_working_set_is_an_error(session):
    session.add(Dataset(name="nothing"))
    session.commit()
    with pytest.raises(SnapshotError, match="empty"):
        snapshot(session, "nothing", add_new=True)


# --------------------------------------------------------------------------- diff


def test_diff_counts_added_removed_moved_and_sources(session, example):
    img = example.images
    vx = DatasetVersion(dataset_id=example.dataset_id, version="vx", content_hash="1" * 64)
    session.add(vx)
    session.flush()
    # vx: i3 removed, i2 moved val → test, n2 added; i1 and i4 kept.
    for name, split in (("i1", "train"), ("i4", "train"), ("i2", "test"), ("n2", "val")):
        session.add(DatasetItem(version_id=vx.id, image_id=img[name], split=split))
    session.commit()
    d = diff_versions(session, "ds", "v1", "vx")
    assert (d.n_old, d.n_new, d.n_added, d.n_removed, d.n_moved) == (4, 4, 1, 1, 1)
    assert d.split_moves.to_dict("records") == [
        {"from_split": "val", "to_split": "test", "n_images": 1}
    ]
    by_split = {
        r.split: (r.n_old, r.n_new, r.n_added, r.n_removed) for r in d.by_split.itertuples()
    }
    assert by_split == {"train": (2, 2, 0, 0), "val": (1, 1, 1, 0), "test": (1, 1, 0, 1)}
    sources = {r.source: (r.n_old, r.n_new, r.delta) for r in d.sources.itertuples()}
    assert sources == {"A": (3, 3, 0), "B": (1, 1, 0)}
    assert d.added["sop_uid"].tolist() == ["1.3.n2"]
    assert d.removed["sop_uid"].tolist() == ["1.3.i3"]
    assert d.moved[["sop_uid", "from_split", "to_split"]].values.tolist() == [
        ["1.3.i2", "val", "test"]
    ]
    # vx has no frozen labels: the class balance uses today's labels, changes are unknown.
    assert d.labels_basis == "current" and d.label_changes is None
    balance = {r.label: (r.n_old, r.n_new) for r in d.class_balance.itertuples()}
    assert balance == {"normal": (1, 1), "nodule": (2, 1), TIE: (1, 1), UNLABELLED: (0, 1)}
    assert json.loads(json.dumps(d.as_dict()))["n_added"] == 1


def test_diff_defaults_and_unknown_versions(session, example):
    with pytest.raises(VersionNotFoundError, match=r"before v1"):
        diff_versions(session, "ds", None, "v1")
    snapshot(session, "ds")
    session.commit()
    d = diff_versions(session, "ds", None, None)
    assert (d.old, d.new) == ("v1", "v2")
    assert d.n_changes == 0 and not d.same_content  # the legacy v1 hash differs
    with pytest.raises(VersionNotFoundError, match="known versions: v1, v2"):
        diff_versions(session, "ds", "v1", "v9")


# --------------------------------------------------------------------------- migration


def test_migration_0002_keeps_rows_and_sets_defaults(db_url):
    engine = make_engine(db_url)
    try:
        upgrade(engine, "0001")
        with engine.begin() as c:
            c.execute(text("INSERT INTO datasets (name) VALUES ('old')"))
            c.execute(text("INSERT INTO sources (name) VALUES ('s')"))
            c.execute(text("INSERT INTO studies (study_uid, patient_key) VALUES ('1', 'p')"))
            c.execute(text("INSERT INTO series (series_uid, study_id) VALUES ('2', 1)"))
            c.execute(
                text(
                    "INSERT INTO images (sop_uid, series_id, uri, n_frames, header) "
                    "VALUES ('3', 1, '/x.dcm', 1, '{}')"
                )
            )
            c.execute(
                text(
                    "INSERT INTO dataset_versions (dataset_id, version, content_hash) "
                    "VALUES (1, 'v1', 'h')"
                )
            )
            c.execute(
                text(
                    "INSERT INTO dataset_items (version_id, image_id, split) VALUES (1, 1, 'train')"
                )
            )
        with Session(engine) as s, pytest.raises(SchemaOutdatedError, match="quality db upgrade"):
            list_versions(s, 1)
        upgrade(engine)
        with Session(engine) as s:
            assert s.scalar(select(func.count(DatasetItem.id))) == 1
            assert s.scalar(select(Dataset.card_fields)) == {}
            assert s.scalar(select(DatasetVersion.labels_frozen)) is False
            assert snapshot(s, "old").version == "v2"
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- CLI


def _sqlite_example(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'ex.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as s:
        build_example(s)
    engine.dispose()
    return url


def test_cli_snapshot(tmp_path):
    url = _sqlite_example(tmp_path)
    runner = CliRunner()
    first = runner.invoke(app, ["dataset", "snapshot", "ds", "--note", "n", "--json", "--db", url])
    assert first.exit_code == 0, first.output
    payload = json.loads(first.stdout)
    assert payload["status"] == "created" and payload["version"] == "v2" and payload["note"] == "n"
    again = runner.invoke(app, ["dataset", "snapshot", "ds", "--db", url])
    assert again.exit_code == 0 and "unchanged" in again.stdout
    added = runner.invoke(app, ["dataset", "snapshot", "ds", "--add-new", "--json", "--db", url])
    assert json.loads(added.stdout)["n_new"] == 2
    bad = runner.invoke(app, ["dataset", "snapshot", "nope", "--db", url])
    assert bad.exit_code == 2 and "known datasets: ds" in bad.stderr
