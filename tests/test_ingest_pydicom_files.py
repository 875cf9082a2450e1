"""Robustness: every file bundled with pydicom is indexed or recorded as an error."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select
from sqlalchemy.orm import Session

from quality.db.schema import Image, IngestError
from quality.ingest import ingest

TEST_FILES = Path(get_testdata_file("CT_small.dcm")).resolve().parent
KNOWN_GOOD = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small.dcm",
    "693_J2KI.dcm",  # JPEG 2000, encapsulated
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, colour
    "examples_jpeg2k.dcm",  # JPEG 2000 lossless
    "ExplVR_BigEnd.dcm",  # explicit VR big endian
    "liver_1frame.dcm",
    "image_dfl.dcm",  # deflated
]


def _all_files() -> list[Path]:
    return sorted(
        p for p in TEST_FILES.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(TEST_FILES).parts
        )
    )  # fmt: skip


def test_every_pydicom_test_file(session: Session) -> None:
    files = _all_files()
    assert len(files) >= 86
    summary = ingest(session, str(TEST_FILES), workers=2, salt="s")
    assert summary.files_seen == len(files)
    assert summary.indexed + summary.unchanged + summary.errors == summary.files_seen
    images = dict(session.execute(select(Image.uri, Image.pixel_sha256)).all())
    errors = session.scalars(select(IngestError)).all()
    assert len(images) + len(errors) == len(files)
    assert {e.uri for e in errors}.isdisjoint(images)
    for err in errors:
        assert err.kind.strip() and err.message.strip()
    kinds = {e.kind for e in errors}
    assert {"not_dicom", "truncated", "missing_uid"} <= kinds

    for name in KNOWN_GOOD:
        path = str(TEST_FILES / name)
        assert path in images, f"{name} was not indexed"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = hashlib.sha256(pydicom.dcmread(path).PixelData).hexdigest()
        assert images[path] == expected, name

    by_uri = {e.uri: e.kind for e in errors}
    assert by_uri[str(TEST_FILES / "MR_truncated.dcm")] == "truncated"
    assert by_uri[str(TEST_FILES / "rtplan_truncated.dcm")] == "truncated"
    assert by_uri[str(TEST_FILES / "README.txt")] == "not_dicom"
    assert images[str(TEST_FILES / "rtplan.dcm")] is None  # valid, no pixel data

    again = ingest(session, str(TEST_FILES), workers=1, salt="s")
    assert (again.indexed, again.unchanged, again.errors) == (0, summary.indexed, summary.errors)


@pytest.mark.parametrize(
    "name", ["JPEG2000.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm", "rtdose.dcm"]
)
def test_known_good_alone(session: Session, tmp_path: Path, name: str) -> None:
    """Files that share a SOP UID with another test file index fine on their own."""
    (tmp_path / "s").mkdir()
    shutil.copy(TEST_FILES / name, tmp_path / "s" / name)
    summary = ingest(session, str(tmp_path / "s"), workers=1, salt="s")
    assert (summary.indexed, summary.errors) == (1, 0)
    sha = session.scalars(select(Image.pixel_sha256)).one()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sha == hashlib.sha256(pydicom.dcmread(tmp_path / "s" / name).PixelData).hexdigest()
