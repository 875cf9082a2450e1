"""Render the demo's pixels and write them as DICOM Part 10 files.

Every file is Explicit VR Little Endian with a complete file meta group. Headers follow
each source's vendor profile (:data:`quality.demo.plan.SOURCES`); seeded header defects
(missing, wrong or PHI-bearing tags) are applied last, and the truncated file is cut in the
middle of its PixelData after it has been written.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from quality.demo import phantoms
from quality.demo.plan import DRIFT, DemoPlan, ImageSpec

__all__ = ["render", "write_all", "write_file"]

_SOP_CLASS = {
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "OT": "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
}
_IMPLEMENTATION_UID = str(generate_uid(entropy_srcs=["quality-workbench", "demo", "impl"]))
_IMPLEMENTATION_NAME = "QUALITY_WB_01"
_MIN_PARALLEL_FILES = 48


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7, index])


def _chest(seed: int, spec: ImageSpec) -> NDArray[np.float32]:
    src = spec.source
    gain, offset = src.gain, src.offset
    if spec.drifted:
        gain *= DRIFT["gain_factor"]
        offset += DRIFT["offset_delta"]
    if spec.anatomy is None:
        raise ValueError(f"image {spec.index} is a chest image without anatomy")
    return phantoms.chest_radiograph(
        _rng(seed, spec.index), spec.anatomy, spec.finding, spec.rows, spec.cols,
        gain=gain, offset=offset, noise=src.noise, psf_px=0.7 * spec.cols / 512,
    )  # fmt: skip


def render(
    seed: int, spec: ImageSpec, images: Sequence[ImageSpec]
) -> tuple[NDArray[Any], dict[str, Any]]:
    """Stored pixel values of one image and the parameters of any seeded degradation.

    Parameters
    ----------
    seed : demo seed.
    spec : the image.
    images : all images of the plan (duplicates re-render their original).

    Returns
    -------
    pixels : ``uint16`` ``(rows, cols)`` for radiographs (12 bits used, MONOCHROME1 already
        inverted), ``int16`` stored values (HU + 1024) for CT, ``uint8`` for the
        secondary capture.
    params : degradation parameters for the truth file (empty when clean).
    """
    rng = _rng(seed, spec.index)
    params: dict[str, Any] = {}
    if spec.kind == "ct":
        hu = phantoms.ct_slice(rng, spec.z, spec.rows, spec.cols)
        return (np.clip(np.rint(hu), -1024, 3071) + 1024).astype(np.int16), params
    if spec.kind == "texture":
        return np.rint(phantoms.natural_texture(rng, spec.rows, spec.cols)).astype(np.uint8), params
    if spec.kind == "canister":
        img = phantoms.canister_radiograph(rng, spec.rows, spec.cols)
    elif spec.dup_of is not None:
        base, _ = render(seed, images[spec.dup_of], images)
        if spec.dup_kind == "exact":
            return base, params
        # Undo the stored-value inversion, perturb, and invert again.
        inv = spec.source.photometric == "MONOCHROME1"
        pres = (phantoms.MAX_12BIT - base if inv else base).astype(np.float32)
        img, params = phantoms.near_duplicate(pres, _rng(seed, spec.index + 1_000_000))
    elif spec.degradation in ("blank_flat", "blank_noise"):
        img = phantoms.blank_image(rng, spec.rows, spec.cols, flat=spec.degradation == "blank_flat")
    else:
        img = _chest(seed, spec)
        if spec.degradation is not None:
            img, params = phantoms.degrade(
                img, spec.degradation, _rng(seed, spec.index + 2_000_000), scale=spec.cols / 512
            )
    stored = np.rint(img).astype(np.uint16)
    if spec.source.photometric == "MONOCHROME1" and spec.kind != "canister":
        # MONOCHROME1 stores the presentation inverted. For the seeded "inverted" defect the
        # presentation already is the negative, so the file ends up with MONOCHROME2-like
        # values under a MONOCHROME1 flag: the classic wrong-photometric error.
        stored = (phantoms.MAX_12BIT - stored).astype(np.uint16)
    return stored, params


def _window(pixels: NDArray[Any]) -> tuple[float, float]:
    lo, hi = np.percentile(pixels[::4, ::4], [1, 99])
    return float(round((lo + hi) / 2)), float(max(round(hi - lo), 1))


def _dataset(spec: ImageSpec, plan: DemoPlan, pixels: NDArray[Any]) -> Dataset:
    src = spec.source
    patient = plan.patients[spec.patient]
    modality = {"ct": "CT", "texture": "OT"}.get(spec.kind, src.modality)
    date = spec.date.strftime("%Y%m%d")
    t = dt.time(spec.seconds // 3600, spec.seconds // 60 % 60, spec.seconds % 60)
    time = t.strftime("%H%M%S")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASS[modality]
    meta.MediaStorageSOPInstanceUID = spec.sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_NAME

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"] if modality == "CT" else ["ORIGINAL", "PRIMARY"]
    if modality == "OT":
        ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = _SOP_CLASS[modality]
    ds.SOPInstanceUID = spec.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.AccessionNumber = spec.accession
    ds.Modality = modality
    ds.Manufacturer = src.manufacturer
    ds.InstitutionName = src.institution
    ds.ReferringPhysicianName = ""
    ds.StationName = src.station
    ds.StudyDescription = "CT CHEST" if modality == "CT" else "CHEST PA"
    ds.SeriesDescription = {
        "CT": "THORAX 1.0 B30f", "OT": "SCREEN CAPTURE",
    }.get(modality, "PA" if spec.series_number == 1 else f"PA (resent {spec.series_number})")  # fmt: skip
    ds.ManufacturerModelName = src.ct_model if modality == "CT" else src.model
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{patient.age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.DeviceSerialNumber = f"{src.station}-SN0001"
    ds.SoftwareVersions = src.software
    if spec.drifted and modality != "CT":
        ds.SoftwareVersions = DRIFT["software_after"]
    if modality in ("CR", "DX"):
        kvp = DRIFT["kvp_after"] if spec.drifted else src.kvp
        rng = _rng(plan.seed, spec.index + 3_000_000)
        ds.KVP = f"{kvp + float(rng.normal(0, 1.5)):.1f}"
        ds.ExposureTime = int(rng.integers(8, 25))
        ds.XRayTubeCurrent = int(rng.integers(200, 400))
        ds.Exposure = int(rng.integers(2, 6))
        ds.DistanceSourceToDetector = "1800"
        ds.ViewPosition = "PA"
        ds.PatientOrientation = ["L", "F"]
        ds.ImagerPixelSpacing = [src.spacing_mm, src.spacing_mm]
        ds.PixelSpacing = [src.spacing_mm, src.spacing_mm]
        if modality == "DX":
            ds.DetectorType = "SCINTILLATOR"
            ds.PresentationIntentType = "FOR PRESENTATION"
    if modality == "CT":
        spacing = round(360.0 / spec.cols, 4)
        ds.KVP = "120"
        ds.XRayTubeCurrent = 180
        ds.SliceThickness = "5.0"
        ds.ConvolutionKernel = "B30f" if src.manufacturer == "SIEMENS" else "STANDARD"
        ds.FrameOfReferenceUID = str(generate_uid(entropy_srcs=["for", spec.series_uid]))
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [-180.0, -180.0, round(-5.0 * spec.instance_number, 2)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = round(-5.0 * spec.instance_number, 2)
        ds.PixelSpacing = [spacing, spacing]
    if modality == "OT":
        ds.ConversionType = "WSD"
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = spec.accession[-5:]
    ds.SeriesNumber = spec.series_number
    ds.InstanceNumber = spec.instance_number

    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = pixels.shape
    if modality == "OT":
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    elif modality == "CT":
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = ["40", "-600"], ["400", "1500"]
        ds.WindowCenterWidthExplanation = ["MEDIASTINUM", "LUNG"]
    else:
        ds.PhotometricInterpretation = "MONOCHROME2" if spec.kind == "canister" else src.photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
        center, width = _window(pixels)
        ds.WindowCenter, ds.WindowWidth = f"{center:.0f}", f"{width:.0f}"
        ds.PresentationLUTShape = (
            "INVERSE" if ds.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
        )
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()

    for tag in spec.header_edits.get("delete", []):
        if tag in ds:
            delattr(ds, tag)
    for tag, value in spec.header_edits.get("set", {}).items():
        setattr(ds, tag, value)
    return ds


def write_file(root: Path, plan: DemoPlan, index: int) -> dict[str, Any]:
    """Render and write one image of the plan under ``root``.

    Returns
    -------
    ``{"index", "params", "size", "truncated_at"}``: degradation parameters, the final file
    size in bytes, and for a truncated file the byte offset where it was cut.
    """
    spec = plan.images[index]
    pixels, params = render(plan.seed, spec, plan.images)
    ds = _dataset(spec, plan, pixels)
    path = root / spec.relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    size = path.stat().st_size
    truncated_at = None
    if spec.truncated:
        # PixelData is the last element: cut half-way through its value.
        n_pixel = len(ds.PixelData)
        truncated_at = size - n_pixel // 2
        with path.open("r+b") as fh:
            fh.truncate(truncated_at)
        size = truncated_at
    return {"index": index, "params": params, "size": size, "truncated_at": truncated_at}


def _write_chunk(root: Path, plan: DemoPlan, indices: list[int]) -> list[dict[str, Any]]:
    return [write_file(root, plan, i) for i in indices]


def write_all(
    root: Path,
    plan: DemoPlan,
    *,
    workers: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[dict[str, Any]]:
    """Write every file of the plan under ``root``; parallel across processes for big plans.

    The output does not depend on ``workers``: each file has its own seeded generator.

    Returns
    -------
    One :func:`write_file` record per image, in plan order.
    """
    n = len(plan.images)
    label = "writing DICOM files"
    workers = workers if workers is not None else (os.cpu_count() or 1)
    results: list[dict[str, Any]] = []
    if workers <= 1 or n < _MIN_PARALLEL_FILES:
        for i in range(n):
            results.append(write_file(root, plan, i))
            if progress is not None and (i % 8 == 7 or i == n - 1):
                progress(i + 1, n, label)
        return results
    chunk = max(4, n // (workers * 8))
    chunks = [list(range(i, min(i + chunk, n))) for i in range(0, n, chunk)]
    # "spawn" keeps worker processes independent of whatever threads the caller runs.
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_write_chunk, root, plan, c) for c in chunks]
        for fut in futures:
            results.extend(fut.result())
            if progress is not None:
                progress(len(results), n, label)
    return results
