"""Tests of quality.ingest on SQLite and PostgreSQL (the ``session`` fixture runs both)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

import quality.ingest as ingest_mod
from quality import dicom
from quality.db.schema import Image, IngestError, Series, Source, Study
from quality.errors import StoreError
from quality.ingest import IngestSummary, ingest
from quality.store import open_store

SALT = "test-salt"
UID = "1.2.826.0.1.3680043.8.498.{}"  # pydicom's example root, fixed numbers for determinism


def write_dicom(
    path: Path,
    *,
    study: int,
    series: int,
    sop: int,
    patient_id: str,
    seed: int = 0,
    shape: tuple[int, int] = (16, 16),
    drop: tuple[str, ...] = (),
    **attrs: Any,
) -> Path:
    """Write a small CR-like uncompressed image with PHI in the header."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = UID.format(f"3.{sop}")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = UID.format(f"3.{sop}")
    ds.StudyInstanceUID = UID.format(f"1.{study}")
    ds.SeriesInstanceUID = UID.format(f"2.{series}")
    ds.PatientName = f"Patient^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19600101"
    ds.PatientAge = "061Y"
    ds.PatientSex = "M"
    ds.InstitutionName = "General Hospital Secret"
    ds.StationName = "ROOM-SECRET"
    ds.StudyDate = "20240131"
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "X1"
    ds.KVP = "110"
    ds.SeriesNumber = series
    ds.InstanceNumber = sop
    ds.ImagerPixelSpacing = [0.15, 0.16]
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deliberately invalid values (PatientAge="garbage")
        for key, value in attrs.items():
            setattr(ds, key, value)
    for key in drop:
        delattr(ds, key)
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, size=shape, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _store(root: Path) -> dict[str, Path]:
    """8 good files in 3 sources, 4 bad ones, 1 hidden file (skipped)."""
    f: dict[str, Path] = {}
    f["a0"] = write_dicom(
        root / "siteA/st1/se1/0.dcm", study=1, series=1, sop=1, patient_id="P-1", seed=1
    )
    f["a1"] = write_dicom(
        root / "siteA/st1/se1/1.dcm", study=1, series=1, sop=2, patient_id="P-1", seed=2
    )
    f["a2"] = write_dicom(
        root / "siteA/st1/se1/2.dcm", study=1, series=1, sop=3, patient_id="P-1", seed=3
    )
    f["a3"] = write_dicom(
        root / "siteA/st1/se2/0.dcm", study=1, series=2, sop=4, patient_id="P-1", seed=4
    )
    f["b0"] = write_dicom(root / "siteB/st2/se3/0.dcm", study=2, series=3, sop=5, patient_id="P-2", seed=5,
                          Manufacturer="Other", PatientAge="garbage", StudyDate="2024xx01")  # fmt: skip
    f["b1"] = write_dicom(
        root / "siteB/st2/se3/1.dcm", study=2, series=3, sop=6, patient_id="P-2", seed=6
    )
    f["b2"] = write_dicom(root / "siteB/st3/se4/0.dcm", study=3, series=4, sop=7, patient_id="P-3", seed=7,
                          Modality="CT", RescaleSlope="1", RescaleIntercept="-1024")  # fmt: skip
    f["loose"] = write_dicom(root / "loose.dcm", study=4, series=5, sop=8, patient_id="P-4", seed=8)
    # broken ones
    trunc = write_dicom(
        root / "siteB/bad/truncated.dcm", study=5, series=6, sop=9, patient_id="P-5"
    )
    trunc.write_bytes(trunc.read_bytes()[:-200])
    f["truncated"] = trunc
    f["notes"] = root / "siteB/bad/notes.txt"
    f["notes"].write_text("not an image")
    f["nosop"] = write_dicom(root / "siteB/bad/nosop.dcm", study=5, series=6, sop=10,
                             patient_id="P-5", drop=("SOPInstanceUID",))  # fmt: skip
    f["dup"] = write_dicom(
        root / "siteB/bad/dup.dcm", study=1, series=1, sop=1, patient_id="P-1", seed=9
    )
    write_dicom(root / "siteA/.hidden.dcm", study=6, series=7, sop=11, patient_id="P-6")
    return f


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    root = tmp_path / "store"
    return root, _store(root)


def _count(session: Session, model: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _check_identity(summary: IngestSummary) -> None:
    assert summary.indexed + summary.unchanged + summary.errors == summary.files_seen
    assert sum(summary.error_kinds.values()) == summary.errors


def _snapshot(session: Session) -> dict[str, Any]:
    """DB content without ids and timestamps, for comparing runs."""
    images = session.execute(
        select(Image, Series.series_uid).join(Series, Image.series_id == Series.id)
    ).all()
    studies = session.execute(select(Study, Source.name).join(Source, isouter=True)).all()
    drop = {"id", "series_id", "ingested_at", "study_id", "source_id", "at"}

    def cols(obj: Any) -> dict[str, Any]:
        return {c.key: getattr(obj, c.key) for c in obj.__table__.columns if c.key not in drop}

    return {
        "images": sorted((json.dumps(cols(i), default=str, sort_keys=True), s) for i, s in images),
        "studies": sorted((json.dumps(cols(st), default=str, sort_keys=True), n) for st, n in studies),
        "series": sorted(json.dumps(cols(s), default=str, sort_keys=True) for s in session.scalars(select(Series))),
        "errors": sorted(json.dumps(cols(e), default=str, sort_keys=True) for e in session.scalars(select(IngestError))),
    }  # fmt: skip


# --------------------------------------------------------------------------- tests


def test_first_run_counts_rows_and_phi(
    session: Session, store: tuple[Path, dict[str, Path]], caplog: pytest.LogCaptureFixture
) -> None:
    root, files = store
    calls: list[tuple[int, int, str]] = []
    with caplog.at_level(logging.DEBUG):
        summary = ingest(
            session, str(root), workers=1, salt=SALT, progress=lambda *a: calls.append(a)
        )
    _check_identity(summary)
    assert summary.files_seen == 12
    assert (summary.indexed, summary.unchanged, summary.errors) == (8, 0, 4)
    assert summary.error_kinds == {
        "truncated": 1,
        "not_dicom": 1,
        "missing_uid": 1,
        "duplicate_sop_uid": 1,
    }
    assert calls[-1] == (12, 12, "ingest") and all(c[2] == "ingest" for c in calls)
    assert set(summary.as_dict()) >= {
        "files_seen",
        "indexed",
        "unchanged",
        "errors",
        "seconds",
        "files_per_s",
    }

    assert _count(session, Image) == 8 and _count(session, IngestError) == 4
    assert _count(session, Study) == 4 and _count(session, Series) == 5
    assert set(session.scalars(select(Source.name))) == {"siteA", "siteB", "unknown"}
    kinds = dict(session.execute(select(IngestError.uri, IngestError.kind)).all())
    assert kinds[str(files["truncated"].resolve())] == "truncated"
    assert kinds[str(files["notes"].resolve())] == "not_dicom"
    assert kinds[str(files["nosop"].resolve())] == "missing_uid"
    assert kinds[str(files["dup"].resolve())] == "duplicate_sop_uid"
    for err in session.scalars(select(IngestError)):
        assert err.message and err.file_size and err.file_mtime

    # Study fields; patient key is the salted hash, never the PatientID.
    st1 = session.scalars(select(Study).where(Study.study_uid == UID.format("1.1"))).one()
    assert st1.patient_key == dicom.patient_key("P-1", SALT) != "P-1"
    assert (st1.modality, st1.body_part, st1.patient_age_years, st1.patient_sex) == (
        "CR",
        "CHEST",
        61,
        "M",
    )
    assert str(st1.study_date) == "2024-01-31"
    st2 = session.scalars(select(Study).where(Study.study_uid == UID.format("1.2"))).one()
    assert st2.patient_age_years is None and st2.study_date is None  # garbage tolerated
    se = session.scalars(select(Series).where(Series.series_uid == UID.format("2.1"))).one()
    assert (se.manufacturer, se.model, se.kvp, se.series_number) == ("ACME", "X1", 110.0, 1)

    # Image fields and pixel hash; the stored URI opens in the viewer.
    img = session.scalars(select(Image).where(Image.sop_uid == UID.format("3.1"))).one()
    assert img.uri == str(files["a0"].resolve())
    pixels = dicom.load_pixels(img.uri).frames[0]
    assert img.pixel_sha256 == hashlib.sha256(pixels.astype(np.uint16).tobytes()).hexdigest()
    assert (img.rows, img.cols, img.n_frames, img.bits_stored, img.photometric) == (
        16,
        16,
        1,
        12,
        "MONOCHROME2",
    )
    assert (img.spacing_row, img.spacing_col) == (0.15, 0.16)
    assert img.transfer_syntax == ExplicitVRLittleEndian and img.instance_number == 1
    assert img.file_size == files["a0"].stat().st_size

    # No PHI anywhere in stored headers or logs.
    for header in session.scalars(select(Image.header)):
        assert not set(header) & dicom.PHI_KEYWORDS
        text = json.dumps(header)
        assert "P-1" not in text and "Secret" not in text and "Patient^" not in text
        assert header["Modality"] in ("CR", "CT")
    assert "P-1" not in caplog.text and "Patient^" not in caplog.text


def test_second_run_is_idempotent(session: Session, store: tuple[Path, dict[str, Path]]) -> None:
    root, _ = store
    ingest(session, str(root), workers=1, salt=SALT)
    before = _snapshot(session)
    ids = sorted(session.scalars(select(Image.id)))
    again = ingest(session, str(root), workers=1, salt=SALT)
    _check_identity(again)
    assert (again.indexed, again.unchanged, again.errors) == (0, 8, 4)
    assert again.error_kinds == {
        "truncated": 1,
        "not_dicom": 1,
        "missing_uid": 1,
        "duplicate_sop_uid": 1,
    }
    session.expire_all()
    assert _snapshot(session) == before
    assert sorted(session.scalars(select(Image.id))) == ids


class _Killed(BaseException):
    """Stands for SIGKILL in the middle of a run."""


def test_resumable_after_kill(
    session: Session, store: tuple[Path, dict[str, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = store
    real = ingest_mod._parse_one
    seen = {"n": 0}

    def dying(path: str, salt: str, state: Any) -> tuple[str, Any, Any]:
        seen["n"] += 1
        if seen["n"] > 7:
            raise _Killed
        return real(path, salt, state)

    monkeypatch.setattr(ingest_mod, "_parse_one", dying)
    with pytest.raises(_Killed):
        ingest(session, str(root), workers=1, salt=SALT, batch_size=3)
    session.rollback()
    committed = _count(session, Image) + _count(session, IngestError)
    assert committed == 6  # two whole batches of 3; the third was never committed

    monkeypatch.setattr(ingest_mod, "_parse_one", real)
    resumed = ingest(session, str(root), workers=1, salt=SALT, batch_size=3)
    _check_identity(resumed)
    # loose, a0-a3 and dup were committed: 5 unchanged, dup still an error, 3 new errors.
    assert (resumed.indexed, resumed.unchanged, resumed.errors) == (3, 5, 4)
    assert _count(session, Image) == 8 and _count(session, IngestError) == 4
    assert len(set(session.scalars(select(Image.sop_uid)))) == 8
    final = ingest(session, str(root), workers=1, salt=SALT)
    assert (final.indexed, final.unchanged, final.errors) == (0, 8, 4)


def test_changed_files(session: Session, store: tuple[Path, dict[str, Path]]) -> None:
    root, files = store
    ingest(session, str(root), workers=1, salt=SALT)
    old = session.scalars(select(Image).where(Image.uri == str(files["a1"].resolve()))).one()
    old_id, old_hash = old.id, old.pixel_sha256

    # a1 gets new pixels; notes.txt becomes a valid DICOM; a2 becomes garbage.
    write_dicom(files["a1"], study=1, series=1, sop=2, patient_id="P-1", seed=99)
    write_dicom(files["notes"], study=7, series=8, sop=12, patient_id="P-7")
    files["a2"].write_bytes(b"garbage" * 10)
    for name in ("a1", "notes", "a2"):
        os.utime(files[name], (1_700_000_000, 1_700_000_000 + len(name)))

    summary = ingest(session, str(root), workers=1, salt=SALT)
    _check_identity(summary)
    assert (summary.indexed, summary.unchanged, summary.errors) == (2, 6, 4)
    assert summary.error_kinds == {
        "truncated": 1,
        "not_dicom": 1,
        "missing_uid": 1,
        "duplicate_sop_uid": 1,
    }
    session.expire_all()
    new = session.scalars(select(Image).where(Image.sop_uid == UID.format("3.2"))).one()
    assert new.id == old_id and new.pixel_sha256 != old_hash
    assert new.file_mtime == files["a1"].stat().st_mtime
    uris = set(session.scalars(select(IngestError.uri)))
    assert str(files["notes"].resolve()) not in uris and str(files["a2"].resolve()) in uris
    # a2 broke after it was indexed: its image row stays (annotations hang on it), and the
    # error row says what is wrong now.
    assert session.scalars(select(Image).where(Image.uri == str(files["a2"].resolve()))).one()
    assert _count(session, Image) == 9 and _count(session, IngestError) == 4
    again = ingest(session, str(root), workers=1, salt=SALT)
    _check_identity(again)
    assert (again.indexed, again.errors) == (0, 4)


def test_retry_errors(session: Session, store: tuple[Path, dict[str, Path]]) -> None:
    root, _ = store
    ingest(session, str(root), workers=1, salt=SALT)
    retried = ingest(session, str(root), workers=1, salt=SALT, retry_errors=True)
    _check_identity(retried)
    assert (retried.indexed, retried.unchanged, retried.errors) == (0, 8, 4)
    assert _count(session, IngestError) == 4


def test_one_and_two_workers_give_identical_rows(
    session: Session, store: tuple[Path, dict[str, Path]]
) -> None:
    root, _ = store
    two = ingest(session, str(root), workers=2, salt=SALT, batch_size=5)
    snap_two = _snapshot(session)
    for model in (IngestError, Image, Series, Study, Source):
        session.execute(delete(model))
    session.commit()
    one = ingest(session, str(root), workers=1, salt=SALT)
    session.expire_all()
    assert _snapshot(session) == snap_two
    assert (one.indexed, one.errors) == (two.indexed, two.errors) == (8, 4)


def test_bad_arguments(session: Session, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        ingest(session, str(tmp_path / "nope"), salt=SALT)
    with pytest.raises(StoreError, match="unsupported store scheme 'gs'"):
        ingest(session, "gs://bucket/prefix", salt=SALT)
    with pytest.raises(ValueError, match="workers"):
        ingest(session, str(tmp_path), salt=SALT, workers=0)
    with pytest.raises(ValueError, match="salt"):
        ingest(session, str(tmp_path), salt="")
    (tmp_path / "empty").mkdir()
    empty = ingest(session, str(tmp_path / "empty"), salt=SALT)
    assert empty.as_dict()["files_seen"] == 0


# --------------------------------------------------------------------------- store


def test_local_store_listing_and_safety(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "b/c").mkdir(parents=True)
    (root / "a.dcm").write_bytes(b"1")
    (root / "b/c/z.dcm").write_bytes(b"22")
    (root / "b/.hidden").write_bytes(b"3")
    (root / ".git").mkdir()
    (root / ".git/x").write_bytes(b"4")
    outside = tmp_path / "secret.dcm"
    outside.write_bytes(b"5")
    (root / "link_out.dcm").symlink_to(outside)
    (root / "link_in.dcm").symlink_to(root / "a.dcm")
    store = open_store(f"file://{root}")
    entries = list(store.list())
    assert [e.key for e in entries] == ["a.dcm", "b/c/z.dcm", "link_in.dcm"]
    assert [e.size for e in entries] == [1, 2, 1]
    assert all(Path(e.uri).is_absolute() for e in entries)
    with store.open(entries[1].uri) as fh:
        assert fh.read() == b"22"
    assert store.local_path("b/c/z.dcm") == (root / "b/c/z.dcm").resolve()
    for bad in ("../secret.dcm", str(outside), "link_out.dcm", "b/../../secret.dcm"):
        with pytest.raises(StoreError, match="escapes"):
            store.local_path(bad)
    with pytest.raises(StoreError, match="unsupported store scheme 'ftp'"):
        open_store("ftp://pacs.example/wado")
    with pytest.raises(StoreError, match="not a folder"):
        open_store(str(root / "a.dcm"))


# --------------------------------------------------------------------------- CLI


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("QUALITY_DB_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "quality.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )


def test_cli_ingest_json(store: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    root, _ = store
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    res = _cli("ingest", str(root), "--json", "--db", db, "--workers", "1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    assert set(payload).issuperset({"indexed", "unchanged", "errors", "files_seen", "seconds"})
    assert (payload["files_seen"], payload["indexed"], payload["errors"]) == (12, 8, 4)

    missing = _cli("ingest", str(tmp_path / "nope"), "--json", "--db", db, cwd=tmp_path)
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr and missing.stdout == ""
