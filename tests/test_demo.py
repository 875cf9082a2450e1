"""Demo data: determinism by seed, the seeded truth, and the CLI on the small size."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from quality.cli import app
from quality.config import get_settings
from quality.db.schema import (
    Annotation,
    Annotator,
    DatasetItem,
    Image,
    IngestError,
    LabelingTask,
    Prediction,
    Study,
)
from quality.db.session import make_engine, upgrade
from quality.demo import SIZES, TRUTH_FILE, build_demo, db_content_hash
from quality.dicom import PHI_KEYWORDS, patient_key
from quality.errors import QualityError

SALT = "test-salt"


def _build(tmp: Path, seed: int, size: str = "tiny") -> tuple[str, dict[str, Any]]:
    engine = make_engine(f"sqlite:///{tmp / 'demo.db'}")
    upgrade(engine)
    with Session(engine) as s:
        build_demo(s, tmp, seed=seed, size=size, salt=SALT, workers=1)
        digest = db_content_hash(s)
    engine.dispose()
    return digest, json.loads((tmp / TRUTH_FILE).read_text())


def test_sizes_are_public_without_tiny():
    assert SIZES == ("small", "medium", "large")


def test_same_seed_same_content_other_seed_differs(tmp_path: Path):
    h1, t1 = _build(tmp_path / "a", seed=3)
    h2, t2 = _build(tmp_path / "b", seed=3)
    h3, _ = _build(tmp_path / "c", seed=4)
    assert h1 == h2
    assert t1 == t2
    assert h3 != h1
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.dcm"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.dcm"))
    assert files_a == files_b
    for rel in files_a[:10]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_rerun_wipes_files_but_needs_an_empty_db(tmp_path: Path):
    _build(tmp_path, seed=0)
    stale = tmp_path / "dicom" / "stale.dcm"
    stale.write_bytes(b"x")
    engine = make_engine(f"sqlite:///{tmp_path / 'demo.db'}")
    with Session(engine) as s, pytest.raises(QualityError, match="empty database"):
        build_demo(s, tmp_path, seed=0, size="tiny", salt=SALT, workers=1)
    (tmp_path / "demo.db").unlink()
    _build(tmp_path, seed=0)
    assert not stale.exists()
    engine.dispose()


def test_refuses_foreign_dicom_folder(tmp_path: Path, engine: Engine):
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "precious.dcm").write_bytes(b"x")
    with Session(engine) as s, pytest.raises(QualityError, match="not written by"):
        build_demo(s, tmp_path, seed=0, size="tiny", salt=SALT, workers=1)
    assert (tmp_path / "dicom" / "precious.dcm").exists()


def test_unknown_size_raises(tmp_path: Path, engine: Engine):
    with Session(engine) as s, pytest.raises(QualityError, match="size"):
        build_demo(s, tmp_path, size="huge", salt=SALT)


def test_tiny_demo_on_each_db(session: Session, tmp_path: Path):
    """The tiny demo on SQLite and PostgreSQL, and its truth checked against the DB."""
    summary = build_demo(session, tmp_path, seed=1, size="tiny", salt=SALT, workers=1)
    truth = json.loads((tmp_path / TRUTH_FILE).read_text())
    assert summary.images == session.scalar(select(func.count()).select_from(Image))
    _check_truth_against_db(session, truth, tmp_path)


def _check_truth_against_db(
    session: Session, truth: dict[str, Any], out: Path, salt: str = SALT
) -> None:
    root = out / truth["dicom_root"]
    # The truncated file is an ingest error, not an image.
    errors = {Path(u).resolve() for u in session.scalars(select(IngestError.uri))}
    for rec in truth["defects"]["truncated"]:
        assert (root / rec["path"]).resolve() in errors
    sops = set(session.scalars(select(Image.sop_uid)))
    assert not {r["sop_uid"] for r in truth["defects"]["truncated"]} & sops

    # Every doctor annotates; 2–3 doctors per non-exam image and task; all of them on the exam.
    codes = dict(session.execute(select(Annotator.id, Annotator.code)).all())
    kinds = dict(session.execute(select(Annotator.code, Annotator.kind)).all())
    rows = session.execute(
        select(LabelingTask.name, Image.sop_uid, Annotation.annotator_id)
        .join(LabelingTask, Annotation.task_id == LabelingTask.id)
        .join(Image, Annotation.image_id == Image.id)
    ).all()
    doctors = {d["code"] for d in truth["doctors"]}
    assert {codes[a] for _, _, a in rows if kinds[codes[a]] == "doctor"} == doctors
    per_item = Counter((t, sop) for t, sop, a in rows if kinds[codes[a]] == "doctor")
    exam = set(truth["exam_set"])
    dataset_sops = {s for s, v in truth["images"].items() if v["in_dataset"]}
    for task in truth["tasks"]:
        for sop in dataset_sops:
            n = per_item[(task, sop)]
            assert n == len(doctors) if sop in exam else 2 <= n <= 3, (task, sop, n)

    # The leaking patient is in two splits; every other patient in one.
    split_rows = session.execute(
        select(Study.patient_key, DatasetItem.split)
        .join(Image, DatasetItem.image_id == Image.id)
        .join(Image.series)
        .join(Study)
    ).all()
    splits: dict[str, set[str]] = {}
    for key, split in split_rows:
        splits.setdefault(key, set()).add(split)
    [leak] = truth["defects"]["patient_leak"]
    assert leak["patient_key"] == patient_key(leak["patient_id"], salt)
    assert splits[leak["patient_key"]] == {"train", "test"}
    assert [k for k, v in splits.items() if len(v) > 1] == [leak["patient_key"]]

    # The careless doctor is the least sensitive and the least specific.
    by_code = {d["code"]: d for d in truth["doctors"]}
    careless = by_code[truth["careless_doctor"]]
    assert careless["careless"]
    assert careless["sensitivity"] == min(d["sensitivity"] for d in truth["doctors"])
    assert careless["specificity"] == min(d["specificity"] for d in truth["doctors"])
    assert by_code[truth["biased_doctor"]]["specificity"] < 0.75

    # No PHI in stored headers: no PHI keyword, and none of the names in the files.
    phi = set(PHI_KEYWORDS)
    for header in session.scalars(select(Image.header)):
        text = json.dumps(header)
        assert not phi & set(header), phi & set(header)
        assert "DOE^JANE" not in text and "DEMO^" not in text

    # Predictions: both versions, and no rows for v1 inside the "missing" window.
    n_pred = session.scalar(select(func.count()).select_from(Prediction))
    assert n_pred and n_pred < 2 * len(dataset_sops)


def test_files_are_valid_dicom_and_match_truth(tmp_path: Path):
    _, truth = _build(tmp_path, seed=2)
    root = tmp_path / "dicom"
    broken = {r["path"] for r in truth["defects"]["truncated"]}
    deleted = {r["path"] for r in truth["defects"]["missing_file"]}
    for sop, info in truth["images"].items():
        path = root / info["path"]
        if info["path"] in deleted:
            assert not path.exists()
            continue
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPInstanceUID == sop and pydicom.uid.UID(sop).is_valid
        if info["path"] in broken:
            with pytest.raises(ValueError):
                _ = ds.pixel_array
            continue
        arr = ds.pixel_array
        assert arr.shape == (ds.Rows, ds.Columns)
        if info["kind"] == "chest":
            assert ds.BitsStored == 12 and arr.max() <= 4095
    phi = truth["defects"]["phi_in_header"][0]
    assert pydicom.dcmread(root / phi["path"]).get(phi["tag"]) == phi["value"]
    photometric = {
        pydicom.dcmread(root / v["path"], stop_before_pixels=True).PhotometricInterpretation
        for v in truth["images"].values()
        if v["source"] == "west_center" and v["kind"] == "chest" and v["path"] not in deleted
    }
    assert photometric == {"MONOCHROME1"}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("small")
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--json", "--db",
                                   f"sqlite:///{out / 'demo.db'}"])  # fmt: skip
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_cli_small_demo(small_demo: tuple[Path, dict[str, Any]]):
    out, payload = small_demo
    assert (out / "demo.db").exists() and (out / TRUTH_FILE).exists()
    truth = json.loads((out / TRUTH_FILE).read_text())
    assert truth["size"] == "small" and truth["seed"] == 0
    assert payload["files"] == len(truth["images"])
    assert payload["errors"] == len(truth["defects"]["truncated"])
    assert payload["images"] == payload["files"] - payload["errors"]
    assert 240 <= sum(v["kind"] == "chest" for v in truth["images"].values()) <= 400
    assert payload["annotations"] > 2 * 2 * 240
    assert payload["seconds"] > 0  # timed; its speed is a benchmark figure, not a test
    assert len(truth["doctors"]) == 12 and len(truth["experts"]) == 2
    assert len(truth["exam_set"]) == 30
    for kind in ("blur", "noise", "under_exposure", "over_exposure", "inverted_photometric",
                 "blank", "truncated", "non_medical", "missing_tags", "wrong_tags",
                 "phi_in_header", "exact_duplicate", "near_duplicate", "patient_leak"):  # fmt: skip
        assert truth["defects"][kind], kind
    engine = make_engine(f"sqlite:///{out / 'demo.db'}")
    with Session(engine) as s:
        _check_truth_against_db(s, truth, out, get_settings().phi_salt)
        # Exact duplicates share the pixel hash of their original.
        sha = dict(s.execute(select(Image.sop_uid, Image.pixel_sha256)).all())
        for rec in truth["defects"]["exact_duplicate"]:
            assert sha[rec["sop_uid"]] == sha[rec["duplicate_of"]]
    engine.dispose()
    versions = {v["version"]: v for v in truth["models"]["versions"]}
    assert versions["v1"]["status"] == "production" and versions["v2"]["status"] == "shadow"
    assert versions["v2"]["auc"] > versions["v1"]["auc"]
    reg = versions["v2"]["regression"]["source"]
    assert versions["v2"]["auc_by_source"][reg] < versions["v1"]["auc_by_source"][reg]
