"""PHI audit and de-identification (quality.phi, ``quality phi-audit``, ``quality deidentify``).

The tiny demo's files carry synthetic PHI (patient names and IDs, accession numbers, the
institution and station, descriptions, and ``DOE^JANE`` in two headers): the audit must find
exactly those attributes, never print a value, and find nothing on a cleaned copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.tag import Tag
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from quality import dicom, phi
from quality.cli import app
from quality.db.schema import Dataset, Series, Study
from quality.db.session import make_engine
from quality.errors import DatasetNotFoundError, PhiInputError
from quality.ingest import ingest
from quality.snapshot import snapshot

runner = CliRunner()
SALT = "phi-test-salt"
DATASET = "chest-xray-demo"
# What quality/demo/files.py writes into every header with a value (PatientBirthDate and
# ReferringPhysicianName are written empty; dates, age and sex are kept by the options).
DEMO_PHI = {
    "AccessionNumber",
    "DeviceSerialNumber",
    "InstitutionName",
    "PatientID",
    "PatientName",
    "SeriesDescription",
    "StationName",
    "StudyDescription",
    "StudyID",
}


def _truth(demo: Path) -> dict:
    return json.loads((demo / "demo_truth.json").read_text())


def _phi_strings(demo: Path) -> set[str]:
    """Identifying values the demo wrote: names, IDs, accession numbers, the seeded PHI."""
    values: set[str] = {"DOE^JANE", "555-0100"}
    for path in sorted((demo / "dicom").rglob("*.dcm"))[:60]:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except (OSError, ValueError, EOFError):
            continue
        for kw in ("PatientName", "PatientID", "AccessionNumber", "InstitutionName"):
            value = str(ds.get(kw, "") or "").strip()
            if value:
                values.add(value)
    return values


def _assert_no_phi(text: str, demo: Path) -> None:
    leaked = sorted(v for v in _phi_strings(demo) if v in text)
    assert not leaked, f"PHI values in the output: {leaked}"


def _copy(src: Path, dst: Path, **set_values: object) -> Path:
    ds = pydicom.dcmread(src)
    for kw, value in set_values.items():
        setattr(ds, kw, value)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)
    return dst


def _a_demo_file(demo: Path) -> Path:
    ok = {
        rec["path"]
        for rec in _truth(demo)["images"].values()
        if not rec["defects"] and rec["modality"] in ("DX", "CR")
    }
    return demo / "dicom" / sorted(ok)[0]


# --------------------------------------------------------------------------- the profile


def test_profile_table_is_the_standard_one():
    by_kw = {a.keyword: a for a in phi.BASIC_PROFILE}
    assert len(phi.BASIC_PROFILE) == len({a.tag for a in phi.BASIC_PROFILE}) > 400
    assert all(pydicom.datadict.keyword_for_tag(a.tag) == a.keyword for a in phi.BASIC_PROFILE)
    assert by_kw["PatientName"].action == "Z" and by_kw["PatientID"].action == "Z"
    assert by_kw["InstitutionName"].action == "X/Z/D"
    assert by_kw["SOPInstanceUID"].action == "U"
    assert by_kw["ReferencedImageSequence"].action == "X/Z/U*"
    assert by_kw["StudyDate"].retained_by == "dates"
    assert by_kw["PatientAge"].retained_by == "patient"
    assert by_kw["PatientBirthDate"].retained_by is None  # birth dates are never kept
    # Private tags, curves and overlay data are X by rule, not by row.
    assert phi.profile_action(0x00291010).action == "X"
    assert phi.profile_action(0x50020010).keyword == "CurveData"
    assert phi.profile_action(0x60023000).keyword == "OverlayData"
    assert phi.profile_action(int(Tag("Rows"))) is None


def test_is_phi_covers_the_profile():
    # quality.dicom masks and drops everything the profile does not keep (UIDs apart).
    assert phi.PHI_KEYWORDS <= dicom.PHI_KEYWORDS
    assert not phi.PHI_KEYWORDS & phi.UID_KEYWORDS
    assert dicom.is_phi("BarcodeValue") and dicom.is_phi("InstitutionName")
    assert not dicom.is_phi("StudyDate") and not dicom.is_phi("SOPInstanceUID")


def test_pseudonym_is_stable_and_salted():
    a = phi.pseudonym("D01", SALT)
    assert a == phi.pseudonym("D01", SALT) and a.startswith("Doctor-") and len(a) == 13
    assert a != phi.pseudonym("D02", SALT) and a != phi.pseudonym("D01", "other")
    assert "D01" not in a


# --------------------------------------------------------------------------- the audit


def test_audit_finds_the_demo_phi_and_prints_no_value(tiny_demo):
    truth = _truth(tiny_demo)
    engine = make_engine(f"sqlite:///{tiny_demo / 'demo.db'}")
    with Session(engine) as session:
        report = phi.phi_audit(session, DATASET)
    engine.dispose()
    in_dataset = {s for s, rec in truth["images"].items() if rec["in_dataset"]}
    seeded = {r["tag"] for r in truth["defects"]["phi_in_header"] if r["sop_uid"] in in_dataset}
    assert seeded, "the tiny demo seeds PHI into dataset images"
    assert set(report.attributes) == DEMO_PHI | seeded
    for rec in truth["defects"]["phi_in_header"]:
        if rec["sop_uid"] in in_dataset:
            assert rec["sop_uid"] in report.attributes[rec["tag"]]["examples"]
    # The file deleted after ingest is an error row, not a crash.
    missing = {r["sop_uid"] for r in truth["defects"]["missing_file"]}
    assert {e["sop_uid"] for e in report.errors} == missing & in_dataset
    assert report.n_audited + len(report.errors) == report.n_images
    assert not report.passed and report.n_flagged == report.n_audited
    assert {"SOPInstanceUID", "StudyInstanceUID"} <= set(report.uids)
    text = json.dumps(report.as_dict())
    _assert_no_phi(text, tiny_demo)
    assert all(set(r) <= {"image_id", "sop_uid", "tags", "private", "burned_in"}
               for r in report.images)  # fmt: skip


def test_audit_limit_and_bad_input(tiny_demo):
    engine = make_engine(f"sqlite:///{tiny_demo / 'demo.db'}")
    with Session(engine) as session:
        assert phi.phi_audit(session, DATASET, limit=3).n_images == 3
        with pytest.raises(DatasetNotFoundError, match=DATASET):
            phi.phi_audit(session, "no-such-dataset")
        with pytest.raises(PhiInputError, match="limit"):
            phi.phi_audit(session, DATASET, limit=0)
    engine.dispose()


def test_burned_in_private_tags_and_unknown(tiny_demo, tmp_path):
    src = _a_demo_file(tiny_demo)
    store = tmp_path / "store"
    _copy(src, store / "a" / "yes.dcm", BurnedInAnnotation="YES", SOPInstanceUID="1.2.3.1")
    _copy(src, store / "a" / "us.dcm", Modality="US", SOPInstanceUID="1.2.3.2")
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = "1.2.3.3"
    block = ds.private_block(0x0029, "ACME 1.0", create=True)
    block.add_new(0x10, "LO", "PRIVATE NOTE")
    ds.save_as(store / "a" / "private.dcm", enforce_file_format=True)
    report = phi.phi_audit_store(str(store))
    assert report.burned_in["yes"] == {"n_images": 1, "examples": ["1.2.3.1"]}
    assert report.burned_in["unknown"] == {"n_images": 1, "examples": ["1.2.3.2"]}
    assert report.private["n_images"] == 1 and report.private["n_tags"] >= 2
    assert not report.passed
    # Cleaning drops the private block but keeps BurnedInAnnotation: still flagged.
    clean = tmp_path / "clean"
    phi.deidentify_folder(store, clean, salt=SALT)
    after = phi.phi_audit_store(str(clean))
    assert after.private["n_images"] == 0 and not after.attributes
    assert after.burned_in["yes"]["n_images"] == 1 and not after.passed
    assert after.burned_in["unknown"]["n_images"] == 1  # information only


def test_unreadable_store_files_are_errors(tmp_path, tiny_demo):
    store = tmp_path / "store"
    (store / "s").mkdir(parents=True)
    (store / "s" / "junk.dcm").write_bytes(b"not a dicom file at all" * 10)
    shutil.copyfile(_a_demo_file(tiny_demo), store / "s" / "ok.dcm")
    report = phi.phi_audit_store(str(store))
    assert report.n_images == 2 and report.n_audited == 1
    assert report.errors == [
        {"key": "s/junk.dcm", "kind": "not_dicom", "message": report.errors[0]["message"]}
    ]


# --------------------------------------------------------------------------- cleaning


def _headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.rglob("*.dcm"))]


def test_cleaned_copy_audits_clean_and_keeps_its_structure(tiny_demo, tmp_path, session):
    truth = _truth(tiny_demo)
    clean = tmp_path / "clean"
    summary = phi.deidentify_folder(tiny_demo / "dicom", clean, salt=SALT)
    truncated = {r["path"] for r in truth["defects"]["truncated"]}
    assert {s["key"] for s in summary.skipped} == truncated
    assert summary.n_written == summary.n_files - len(truncated)
    # Folder names below the source (accession numbers) are gone; the source stays.
    assert {p.parent.name for p in clean.rglob("*.dcm")} == {
        Path(p).parts[0] for p in (r["path"] for r in truth["images"].values())
    } - set()
    originals = [
        pydicom.dcmread(tiny_demo / "dicom" / rec["path"], stop_before_pixels=True)
        for rec in truth["images"].values()
        if rec["path"] not in truncated and (tiny_demo / "dicom" / rec["path"]).exists()
    ]
    cleaned = _headers(clean)
    assert len(cleaned) == len(originals) == summary.n_written
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "PatientID"):
        assert len({str(d.get(kw)) for d in cleaned}) == len({str(d.get(kw)) for d in originals})
    assert not {str(d.SOPInstanceUID) for d in cleaned} & {str(d.SOPInstanceUID) for d in originals}
    for ds in cleaned:
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert str(ds.file_meta.MediaStorageSOPInstanceUID) == str(ds.SOPInstanceUID)
        assert not str(ds.get("PatientName", "")) and not ds.get("InstitutionName")
        assert ds.StudyDate and ds.PatientSex  # kept by the options
    text = "\n".join(str(d) for d in cleaned)
    _assert_no_phi(text, tiny_demo)
    assert phi.phi_audit_store(str(clean)).passed
    # Ingest the cleaned copy into a fresh DB (SQLite and PostgreSQL), make a dataset over
    # it: the audit of that dataset finds nothing, and the studies/series stay grouped.
    ingest(session, str(clean), workers=1, salt=SALT)
    session.add(Dataset(name="clean"))
    session.flush()
    snapshot(session, "clean", add_new=True)
    session.commit()
    n_studies = session.scalar(select(func.count(Study.id)))
    n_series = session.scalar(select(func.count(Series.id)))
    assert n_studies == len({str(d.StudyInstanceUID) for d in originals})
    assert n_series == len({str(d.SeriesInstanceUID) for d in originals})
    report = phi.phi_audit(session, "clean")
    assert report.passed and not report.attributes and not report.errors
    assert report.n_audited == summary.n_written


def test_deidentify_is_deterministic_per_salt(tiny_demo, tmp_path):
    src = _a_demo_file(tiny_demo)
    phi.deidentify_file(src, tmp_path / "a.dcm", salt=SALT)
    phi.deidentify_file(src, tmp_path / "b.dcm", salt=SALT)
    phi.deidentify_file(src, tmp_path / "c.dcm", salt="another")
    a, b, c = (pydicom.dcmread(tmp_path / f"{n}.dcm") for n in "abc")
    assert a.SOPInstanceUID == b.SOPInstanceUID != c.SOPInstanceUID
    assert a.PatientID == b.PatientID != c.PatientID
    assert a.PixelData == pydicom.dcmread(src).PixelData  # pixels untouched


def test_deidentify_folder_refuses_bad_targets(tiny_demo, tmp_path):
    with pytest.raises(PhiInputError, match="SRC"):
        phi.deidentify_folder(tmp_path / "nope", tmp_path / "out", salt=SALT)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(PhiInputError, match="not an empty folder"):
        phi.deidentify_folder(tiny_demo / "dicom", tmp_path / "full", salt=SALT)
    with pytest.raises(PhiInputError, match="inside"):
        phi.deidentify_folder(tiny_demo / "dicom", tiny_demo / "dicom" / "out", salt=SALT)


def test_masked_header_reveal(tiny_demo):
    path = _a_demo_file(tiny_demo)
    masked = {r["keyword"]: r["value"] for r in dicom.masked_header(path)}
    shown = {r["keyword"]: r["value"] for r in dicom.masked_header(path, reveal=True)}
    assert masked["PatientName"] == dicom.MASK
    assert shown["PatientName"] == str(pydicom.dcmread(path).PatientName) != dicom.MASK
    assert masked["Rows"] == shown["Rows"]


# --------------------------------------------------------------------------- CLI


def test_cli_phi_audit_exit_codes_and_json(tiny_demo, tmp_path):
    db = f"sqlite:///{tiny_demo / 'demo.db'}"
    res = runner.invoke(app, ["phi-audit", DATASET, "--db", db, "--json"])
    assert res.exit_code == 1, res.output
    payload = json.loads(res.stdout)
    assert payload["passed"] is False and set(payload["attributes"]) >= DEMO_PHI
    _assert_no_phi(res.output, tiny_demo)
    human = runner.invoke(app, ["phi-audit", DATASET, "--db", db])
    assert human.exit_code == 1 and "PatientName" in human.stdout
    _assert_no_phi(human.output, tiny_demo)

    clean = tmp_path / "clean"
    res = runner.invoke(app, ["deidentify", str(tiny_demo / "dicom"), str(clean), "--json"])
    assert res.exit_code == 1  # the truncated file could not be cleaned (and is left out)
    assert json.loads(res.stdout)["n_skipped"] == 1
    res = runner.invoke(app, ["phi-audit", "--store", str(clean), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["passed"] is True

    res = runner.invoke(app, ["phi-audit", "no-such-dataset", "--db", db])
    assert res.exit_code == 2 and "no-such-dataset" in res.stderr
    assert runner.invoke(app, ["phi-audit", "--db", db]).exit_code == 2
    assert runner.invoke(app, ["phi-audit", DATASET, "--limit", "0", "--db", db]).exit_code == 2
    res = runner.invoke(app, ["deidentify", str(tiny_demo / "dicom"), str(clean)])
    assert res.exit_code == 2 and "not an empty folder" in res.stderr
