"""Logs, outputs and error messages never carry PHI.

Files seeded with distinctive identifiers (a patient name, an ID, an institution, a birth
date, an operator) go through ``quality ingest`` (in-process with every logger at DEBUG,
SQLAlchemy's statement-and-parameter log included, and as a subprocess with and without
``--json``), ``quality check``, ``quality phi-audit`` and :func:`quality.dicom.masked_header`.
Among them: a file whose broken header holds the PHI, a duplicate SOP Instance UID, a file
cut inside its pixels, and a text file that quotes the PHI. None of the strings may appear
in a log record, stdout, stderr, an exception text or an ``ingest_errors.message`` row.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from quality import dicom
from quality.cli import app
from quality.db.schema import Dataset as DatasetRow
from quality.db.schema import IngestError
from quality.db.session import make_engine
from quality.errors import DicomReadError
from quality.snapshot import snapshot

ROOT = Path(__file__).resolve().parent.parent
PHI = {
    "name": "Zyxwv^Secret",
    "id": "PHI-98765",
    "institution": "Qwertyuiop Secret Hospital",
    "birth": "19450317",
    "operator": "Plokij^Operator",
}
# Parts a formatter might print on their own (a PN split into components, say).
NEEDLES = [*PHI.values(), "Zyxwv", "98765", "Qwertyuiop", "Plokij"]
runner = CliRunner()


def _dataset(sop: str, study: str = "1.2.826.0.1.77.1", rows: int = 16) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, study + ".1"
    ds.PatientName, ds.PatientID = PHI["name"], PHI["id"]
    ds.PatientBirthDate, ds.InstitutionName = PHI["birth"], PHI["institution"]
    ds.OperatorsName = PHI["operator"]
    ds.ImageComments = f"patient {PHI['name']} id {PHI['id']}"
    ds.Modality, ds.StudyDate = "CR", "20240105"
    ds.Rows = ds.Columns = rows
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(rows * rows, dtype=np.uint16) % 4000).tobytes()
    return ds


def _seed(folder: Path) -> Path:
    """Good, duplicate, truncated, broken-header and not-DICOM files, all carrying PHI."""
    src = folder / "site_a"
    src.mkdir(parents=True)
    _dataset("1.2.826.0.1.77.10").save_as(src / "good.dcm", enforce_file_format=True)
    dup = _dataset("1.2.826.0.1.77.10", study="1.2.826.0.1.77.2")
    dup.PixelData = bytes(len(dup.PixelData))
    dup.save_as(src / "dup.dcm", enforce_file_format=True)
    _dataset("1.2.826.0.1.77.11").save_as(src / "cut.dcm", enforce_file_format=True)
    raw = (src / "cut.dcm").read_bytes()
    (src / "cut.dcm").write_bytes(raw[: len(raw) - 200])
    # A broken header: right after the patient's name, an element that claims 4 GB.
    _dataset("1.2.826.0.1.77.12").save_as(src / "broken.dcm", enforce_file_format=True)
    raw = (src / "broken.dcm").read_bytes()
    at = raw.index(PHI["name"].encode()) + len(PHI["name"])
    at += at % 2
    (src / "broken.dcm").write_bytes(raw[:at] + b"\x10\x00\x21\x00LO\xff\xff" + raw[at:])
    (src / "notes.dcm").write_text(f"DICM {PHI['name']} {PHI['id']} {PHI['birth']}\n")
    return folder


def _assert_clean(text: str, where: str) -> None:
    leaked = [n for n in NEEDLES if n in text]
    assert not leaked, f"PHI {leaked} in {where}"


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[Path, str]:
    folder = _seed(tmp_path / "store")
    url = f"sqlite:///{tmp_path / 'phi.db'}"
    return folder, url


def test_ingest_check_audit_in_process_log_nothing(
    seeded: tuple[Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    folder, url = seeded
    caplog.set_level(logging.DEBUG)  # every logger, SQLAlchemy's SQL + parameters included
    logging.getLogger("sqlalchemy.engine").setLevel(logging.DEBUG)
    outputs = []
    for args in (["--json"], []):
        res = runner.invoke(app, ["ingest", str(folder), "--db", url, "--workers", "1", *args])
        assert res.exit_code == 0, res.output
        outputs.append(res.output + (res.stderr if res.stderr_bytes else ""))
    engine = make_engine(url)
    with Session(engine) as s:
        errors = s.execute(select(IngestError.kind, IngestError.message)).all()
        s.add(DatasetRow(name="phi-ds"))
        s.flush()
        snapshot(s, "phi-ds", add_new=True)
        s.commit()
    engine.dispose()
    kinds = {k for k, _ in errors}
    assert {"duplicate_sop_uid", "truncated", "not_dicom"} <= kinds, errors
    assert len(errors) >= 4  # the broken header too
    for kind, message in errors:
        _assert_clean(f"{kind}: {message}", "ingest_errors.message")
    for args in (["check", "phi-ds", "--store", str(folder)], ["phi-audit", "phi-ds"]):
        for fmt in (["--json"], []):
            res = runner.invoke(app, [*args, "--db", url, *fmt])
            assert res.exit_code in (0, 1), res.output
            outputs.append(res.output + (res.stderr if res.stderr_bytes else ""))
    assert "PatientName" in outputs[-1]  # the audit names the attribute, not its value
    for text in outputs:
        _assert_clean(text, "CLI output")
    assert any(r.name.startswith("sqlalchemy.engine") for r in caplog.records), (
        "the SQL log was not captured: the test would prove nothing about it"
    )
    for record in caplog.records:
        _assert_clean(record.getMessage(), f"log record of {record.name}")
        if record.exc_info:
            _assert_clean(str(record.exc_info[1]), f"exception logged by {record.name}")


def test_masked_header_and_read_errors_hold_no_phi(seeded: tuple[Path, str]) -> None:
    folder, _ = seeded
    rows = dicom.masked_header(folder / "site_a" / "good.dcm")
    _assert_clean(repr(rows), "masked_header")
    assert {r["keyword"] for r in rows if r["value"] == dicom.MASK} >= {
        "PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "OperatorsName",
    }  # fmt: skip
    for name in ("broken.dcm", "cut.dcm", "notes.dcm"):
        path = folder / "site_a" / name
        for fn in (dicom.masked_header, dicom.index_record, dicom.load_pixels):
            try:
                out = fn(path, salt="s") if fn is dicom.index_record else fn(path)
            except DicomReadError as exc:
                _assert_clean(str(exc), f"{fn.__name__}({name})")
            else:
                _assert_clean(repr(out), f"{fn.__name__}({name})")


def test_ingest_as_a_subprocess_prints_no_phi(seeded: tuple[Path, str]) -> None:
    folder, url = seeded
    env = {**os.environ, "QUALITY_DB_URL": url}
    for args in (["--json"], []):
        proc = subprocess.run(
            [sys.executable, "-m", "quality.cli", "ingest", str(folder), "--workers", "2", *args],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        _assert_clean(proc.stdout, "ingest stdout")
        _assert_clean(proc.stderr, "ingest stderr")
    assert '"files_seen": 5' in proc.stdout or "files_seen" in proc.stdout
