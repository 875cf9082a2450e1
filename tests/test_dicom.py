"""Tests of quality.dicom: PHI rules, pixel hashing, decoding and display windowing."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from quality import dicom
from quality.errors import DicomReadError

PATIENT_ID = "PID-SECRET-4711"
PATIENT_NAME = "Doe^Jane"


def write_image(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    **attrs: Any,
) -> Path:
    """Write a small uncompressed single-frame DICOM image with PHI in its header."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.InstitutionName = "St Secret Hospital"
    ds.StationName = "XR-ROOM-7"
    ds.Modality = "DX"
    ds.Manufacturer = "ACME"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.add_new(0x00091010, "LO", "private vendor secret")
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _ramp(bits: int = 12, shape: tuple[int, int] = (8, 16)) -> np.ndarray:
    n = shape[0] * shape[1]
    return np.linspace(0, 2**bits - 1, n).round().astype(np.uint16).reshape(shape)


# --------------------------------------------------------------------------- PHI


def test_phi_keywords_are_dictionary_keywords() -> None:
    unknown = [k for k in dicom.PHI_KEYWORDS if pydicom.datadict.tag_for_keyword(k) is None]
    assert unknown == []
    assert len(dicom.PHI_KEYWORDS) > 100
    assert {"PatientName", "PatientID", "InstitutionName", "AccessionNumber"} <= dicom.PHI_KEYWORDS


def test_is_phi_rules() -> None:
    assert dicom.is_phi("PatientID")
    assert dicom.is_phi("SomeDoctor", vr="PN")
    assert dicom.is_phi("", tag=0x00091010)
    assert dicom.is_phi("Whatever", tag=0x00291010)
    assert not dicom.is_phi("Modality", vr="CS", tag=0x00080060)
    assert not dicom.is_phi("StudyInstanceUID", vr="UI")


def test_masked_header_hides_phi(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.dcm", _ramp())
    rows = dicom.masked_header(path)
    by_kw = {r["keyword"]: r for r in rows if r["keyword"]}
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "StationName"):
        assert by_kw[kw]["value"] == dicom.MASK
    assert by_kw["Modality"]["value"] == "DX"
    assert by_kw["TransferSyntaxUID"]["value"] == ExplicitVRLittleEndian
    assert {r["value"] for r in rows if r["tag"] == "(0009,1010)"} == {dicom.MASK}
    assert all(set(r) == {"tag", "keyword", "vr", "value"} for r in rows)
    text = json.dumps(rows)
    assert PATIENT_ID not in text and "Doe" not in text and "Secret" not in text
    assert "PixelData" not in by_kw


def test_index_record_header_json_has_no_phi(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.dcm", _ramp(), PatientAge="045Y", PatientSex="F")
    rec = dicom.index_record(path, salt="pepper")
    header = rec["image"]["header"]
    assert not set(header) & dicom.PHI_KEYWORDS
    text = json.dumps(rec, default=str)
    assert PATIENT_ID not in text and "Doe" not in text and "Secret" not in text
    assert header["Modality"] == "DX"
    assert rec["study"]["patient_key"] == dicom.patient_key(PATIENT_ID, "pepper")
    assert rec["study"]["patient_age_years"] == 45
    assert rec["study"]["patient_sex"] == "F"
    assert rec["image"]["rows"] == 8 and rec["image"]["cols"] == 16


def test_patient_key_stable_and_salted() -> None:
    key = dicom.patient_key("12345", "salt")
    assert key == dicom.patient_key("12345", "salt")
    assert key == hashlib.sha256(b"salt\x0012345").hexdigest()[:16]
    assert len(key) == 16 and "12345" not in key
    assert dicom.patient_key("12345", "other") != key
    assert dicom.patient_key(None, "salt") == dicom.patient_key("", "salt")


@given(st.text(max_size=20))
def test_parsers_never_raise(text: str) -> None:
    date = dicom.parse_date(text)
    age = dicom.parse_age(text)
    assert date is None or 1 <= date.year <= 9999
    assert age is None or 0 <= age <= 130


@pytest.mark.parametrize(
    ("value", "years"),
    [("045Y", 45), ("018M", 1), ("006M", 0), ("010D", 0), ("003W", 0), ("45", 45), ("abc", None)],
)
def test_parse_age(value: str, years: int | None) -> None:
    assert dicom.parse_age(value) == years


# --------------------------------------------------------------------------- pixel hash


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # explicit VR little endian
        "MR_small_implicit.dcm",  # implicit VR
        "MR_small_bigendian.dcm",  # explicit VR big endian
        "rtdose.dcm",  # multi-frame, implicit VR
        "JPEG2000.dcm",  # encapsulated
        "MR_small_RLE.dcm",  # encapsulated RLE
        "JPEG2000-embedded-sequence-delimiter.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "image_dfl.dcm",  # deflated: full-read fallback
    ],
)
def test_pixel_sha256_matches_pixeldata(name: str) -> None:
    path = get_testdata_file(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = hashlib.sha256(pydicom.dcmread(path).PixelData).hexdigest()
    assert dicom.pixel_sha256(path) == expected


def test_pixel_sha256_synthetic(tmp_path: Path) -> None:
    pixels = _ramp()
    path = write_image(tmp_path / "a.dcm", pixels)
    assert dicom.pixel_sha256(path) == hashlib.sha256(pixels.tobytes()).hexdigest()


def test_pixel_sha256_none_without_pixels() -> None:
    assert dicom.pixel_sha256(get_testdata_file("rtplan.dcm")) is None


def test_truncated_pixel_data_is_an_error() -> None:
    with pytest.raises(DicomReadError) as info:
        dicom.pixel_sha256(get_testdata_file("MR_truncated.dcm"))
    assert info.value.kind == "truncated"


def test_truncated_header_is_an_error() -> None:
    with pytest.raises(DicomReadError) as info:
        dicom.read_header(get_testdata_file("rtplan_truncated.dcm"))
    assert info.value.kind == "truncated"


def test_not_dicom(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello, not an image")
    with pytest.raises(DicomReadError) as info:
        dicom.index_record(path, salt="s")
    assert info.value.kind == "not_dicom" and str(path) in str(info.value)


def test_missing_uid(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.dcm", _ramp())
    ds = pydicom.dcmread(path)
    del ds.SOPInstanceUID
    ds.save_as(path)
    with pytest.raises(DicomReadError) as info:
        dicom.index_record(path, salt="s")
    assert info.value.kind == "missing_uid"


# --------------------------------------------------------------------------- decode + window


def test_load_pixels_applies_rescale(tmp_path: Path) -> None:
    pixels = _ramp()
    path = write_image(
        tmp_path / "ct.dcm",
        pixels,
        RescaleSlope="2",
        RescaleIntercept="-1024",
        PixelSpacing=[0.5, 0.7],
    )
    img = dicom.load_pixels(path)
    assert img.frames.shape == (1, 8, 16) and img.frames.dtype == np.float32
    np.testing.assert_allclose(img.frames[0], pixels * 2.0 - 1024.0)
    assert img.pixel_spacing == (0.5, 0.7)
    assert img.bits_stored == 12 and img.modality == "DX"


def test_load_pixels_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(DicomReadError) as info:
        dicom.load_pixels(path)
    assert info.value.kind == "not_dicom"
    with pytest.raises(DicomReadError) as info:
        dicom.load_pixels(get_testdata_file("rtplan.dcm"))
    assert info.value.kind == "no_pixels"


def test_manual_window_formula() -> None:
    """PS3.3 C.11.2.1.2.1 with c=40, w=400: below c-0.5-(w-1)/2 black, above c-0.5+(w-1)/2 white."""
    x = np.array([[-500.0, -160.0, 39.5, 239.0, 239.5, 1000.0]], dtype=np.float32)
    img = dicom.DecodedImage(frames=x[None], photometric="MONOCHROME2", bits_stored=16)
    out = dicom.to_display(img, center=40, width=400)
    expected = np.clip(((x - 39.5) / 399.0 + 0.5), 0, 1) * 255
    np.testing.assert_array_equal(out, np.rint(expected).astype(np.uint8))
    assert out.tolist() == [[0, 0, 128, 255, 255, 255]]


def test_window_presets() -> None:
    assert dicom.WINDOW_PRESETS["lung"] == (-600, 1500)
    assert dicom.WINDOW_PRESETS["soft tissue"] == (40, 400)
    x = np.linspace(-1000, 1000, 64, dtype=np.float32).reshape(1, 8, 8)
    img = dicom.DecodedImage(frames=x, photometric="MONOCHROME2", bits_stored=16)
    for center, width in dicom.WINDOW_PRESETS.values():
        out = dicom.to_display(img, center=center, width=width)
        assert out.dtype == np.uint8 and out.shape == (8, 8)
        assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotone for MONOCHROME2


def test_to_display_rejects_bad_input() -> None:
    img = dicom.DecodedImage(
        frames=np.zeros((1, 2, 2), np.float32), photometric="MONOCHROME2", bits_stored=8
    )
    with pytest.raises(ValueError, match="frame"):
        dicom.to_display(img, frame=1)
    with pytest.raises(ValueError, match="width"):
        dicom.to_display(img, center=0, width=0)


def test_monochrome1_12bit_is_inverted(tmp_path: Path) -> None:
    pixels = _ramp(12)
    path = write_image(
        tmp_path / "m1.dcm",
        pixels,
        photometric="MONOCHROME1",
        WindowCenter="2048",
        WindowWidth="4096",
    )
    img = dicom.load_pixels(path)
    assert img.photometric == "MONOCHROME1" and img.bits_stored == 12
    out = dicom.to_display(img)
    # MONOCHROME1: stored 0 is white, stored 4095 is black, monotone decreasing in between.
    assert out[0, 0] == 255 and out[-1, -1] == 0
    assert np.all(np.diff(out.ravel().astype(int)) <= 0)
    same_as_m2 = 255 - dicom.to_display(
        dicom.DecodedImage(
            frames=img.frames,
            photometric="MONOCHROME2",
            bits_stored=12,
            window_center=2048,
            window_width=4096,
        )
    )
    np.testing.assert_array_equal(out, same_as_m2)
    # Auto window and manual window are inverted too.
    img.window_center = img.window_width = None
    assert dicom.to_display(img)[0, 0] == 255
    assert dicom.to_display(img, center=2048, width=4096)[-1, -1] == 0


def test_voi_lut_sequence_applied(tmp_path: Path) -> None:
    """A step LUT (0 below 2048, 4095 from 2048) beats the header window."""
    lut = [0] * 2048 + [4095] * 2048
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 12])  # LUTDescriptor
    item.add_new(0x00283006, "US", lut)  # LUTData
    pixels = _ramp(12)
    path = write_image(
        tmp_path / "voi.dcm",
        pixels,
        VOILUTSequence=Sequence([item]),
        WindowCenter="100",
        WindowWidth="10",
    )
    img = dicom.load_pixels(path)
    assert img.has_voi_lut
    out = dicom.to_display(img)
    np.testing.assert_array_equal(out, np.where(pixels >= 2048, 255, 0).astype(np.uint8))
    # A manual window still wins over the LUT.
    manual = dicom.to_display(img, center=2048, width=4096)
    assert 0 < int(manual.mean()) < 255 and len(np.unique(manual)) > 2


def test_auto_window_and_constant_frame() -> None:
    x = np.arange(10000, dtype=np.float32).reshape(1, 100, 100)
    img = dicom.DecodedImage(frames=x, photometric="MONOCHROME2", bits_stored=16)
    out = dicom.to_display(img)
    assert out.min() == 0 and out.max() == 255
    flat = dicom.DecodedImage(
        frames=np.full((1, 4, 4), 7, np.float32), photometric="MONOCHROME2", bits_stored=8
    )
    assert dicom.to_display(flat).max() == 0


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("JPEG2000.dcm", (1, 1024, 256)),
        ("MR_small_RLE.dcm", (1, 64, 64)),
        ("SC_rgb_rle_2frame.dcm", (2, 100, 100)),
        ("examples_palette.dcm", (1, 350, 800)),
        ("SC_ybr_full_422_uncompressed.dcm", (1, 100, 100)),
    ],
)
def test_load_compressed_and_colour(name: str, shape: tuple[int, int, int]) -> None:
    img = dicom.load_pixels(get_testdata_file(name))
    assert img.frames.shape == shape
    out = dicom.to_display(img, frame=shape[0] - 1)
    assert out.shape == shape[1:] and out.dtype == np.uint8


def test_colour_is_luminance() -> None:
    img = dicom.load_pixels(get_testdata_file("SC_rgb_small_odd.dcm"))
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_small_odd.dcm"))
    rgb = ds.pixel_array.astype(np.float32)
    np.testing.assert_allclose(
        img.frames[0], rgb @ np.array([0.299, 0.587, 0.114], np.float32), rtol=1e-5
    )
    assert img.is_color and img.window_center is None
