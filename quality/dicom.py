"""DICOM access for the workbench: header fields, PHI rules, pixel hashing, decoding, windowing.

Which function fits which need:

* :func:`index_record` - everything ingest stores for one file (study, series and image
  fields, a PHI-free header JSON, the PixelData hash), from a header-only read. Pixels are
  hashed as stored bytes and never decoded.
* :func:`load_pixels` + :func:`to_display` - the image viewer: full decode (compressed
  transfer syntaxes through the pylibjpeg plugins), Modality LUT, then VOI windowing to 8 bits.
* :func:`masked_header` - the header viewer: every top-level element with PHI masked.
* :data:`PHI_KEYWORDS` / :func:`is_phi` - the identifying attributes, and
  :func:`patient_key` - the salted pseudonym that replaces PatientID in the DB.

De-identification policy
------------------------
:data:`PHI_KEYWORDS` follows the DICOM PS3.15 Annex E *Basic Application Level
Confidentiality Profile*, with three of its options applied, because the workbench needs
those attributes and they do not identify a patient on their own:

* *Retain UIDs* - Study/Series/SOP Instance UIDs are the keys of the DB;
* *Retain Longitudinal Temporal Information with Full Dates* - study, series and
  acquisition dates/times are kept (drift is measured over them); birth dates are not;
* *Retain Patient Characteristics* - age, sex, size and weight are kept.

Descriptions and comments (StudyDescription, SeriesDescription, ImageComments, ...) are free
text that may name people, so they count as PHI (the *Clean Descriptors* option is not
applied). On top of the list, :func:`is_phi` treats every private tag, every person-name
(``PN``) element and every tag without a dictionary keyword as PHI.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import math
import os
import re
import struct
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from quality.errors import DicomReadError, StoreError, StoreUnavailableError
from quality.phi import PHI_KEYWORDS as PROFILE_PHI_KEYWORDS
from quality.store import is_remote, open_uri, store_for_uri

__all__ = [
    "BINARY_VRS",
    "MASK",
    "PHI_KEYWORDS",
    "PHI_TAGS",
    "WINDOW_PRESETS",
    "DecodedImage",
    "header_json",
    "index_record",
    "is_phi",
    "load_pixels",
    "masked_header",
    "parse_age",
    "parse_date",
    "patient_key",
    "pixel_sha256",
    "read_header",
    "scrub",
    "slice_order",
    "to_display",
]

MASK = "«masked»"
"""What :func:`masked_header` shows instead of a PHI value."""

_CURATED_PHI: frozenset[str] = frozenset(
    {
        # Patient identity (PS3.15 Annex E, Table E.1-1)
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientBirthName",
        "PatientMotherBirthName",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientTelecomInformation",
        "PatientComments",
        "PatientInstitutionResidence",
        "PatientReligiousPreference",
        "PatientState",
        "PatientTransportArrangements",
        "PatientInsurancePlanCodeSequence",
        "PatientPrimaryLanguageCodeSequence",
        "PatientPrimaryLanguageModifierCodeSequence",
        "PatientBirthDateInAlternativeCalendar",
        "PatientDeathDateInAlternativeCalendar",
        "PatientAlternativeCalendar",
        "PatientSexNeutered",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence",
        "ReferencedPatientAliasSequence",
        "ReferencedPatientPhotoSequence",
        "ReferencedPatientSequence",
        "MedicalRecordLocator",
        "MedicalAlerts",
        "Allergies",
        "EthnicGroup",
        "Occupation",
        "MilitaryRank",
        "BranchOfService",
        "CountryOfResidence",
        "RegionOfResidence",
        "SmokingStatus",
        "AdditionalPatientHistory",
        "PregnancyStatus",
        "LastMenstrualDate",
        "SpecialNeeds",
        "InsurancePlanIdentification",
        "ResponsiblePerson",
        "ResponsibleOrganization",
        "ResponsiblePersonRole",
        # Visit, admission, order
        "AdmissionID",
        "IssuerOfAdmissionID",
        "AdmittingDiagnosesDescription",
        "AdmittingDiagnosesCodeSequence",
        "DischargeDiagnosisDescription",
        "ServiceEpisodeID",
        "ServiceEpisodeDescription",
        "IssuerOfServiceEpisodeID",
        "CurrentPatientLocation",
        "VisitComments",
        "AccessionNumber",
        "StudyID",
        "StudyIDIssuer",
        "PlacerOrderNumberImagingServiceRequest",
        "FillerOrderNumberImagingServiceRequest",
        "OrderCallbackPhoneNumber",
        "OrderEnteredBy",
        "OrderEntererLocation",
        "ReasonForStudy",
        "ReasonForTheRequestedProcedure",
        "ReasonForTheImagingServiceRequest",
        "RequestedProcedureComments",
        "RequestedProcedureDescription",
        "RequestedProcedureID",
        "RequestedProcedureLocation",
        "RequestedContrastAgent",
        "RequestingPhysician",
        "RequestingService",
        "RequestAttributesSequence",
        "ImagingServiceRequestComments",
        "PreMedication",
        # People and places
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionCodeSequence",
        "InstitutionalDepartmentName",
        "InstitutionalDepartmentTypeCodeSequence",
        "ReferringPhysicianName",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "ReferringPhysicianIdentificationSequence",
        "ConsultingPhysicianName",
        "ConsultingPhysicianIdentificationSequence",
        "PhysiciansOfRecord",
        "PhysiciansOfRecordIdentificationSequence",
        "PerformingPhysicianName",
        "PerformingPhysicianIdentificationSequence",
        "NameOfPhysiciansReadingStudy",
        "PhysiciansReadingStudyIdentificationSequence",
        "OperatorsName",
        "OperatorIdentificationSequence",
        "PersonName",
        "PersonAddress",
        "PersonTelephoneNumbers",
        "PersonTelecomInformation",
        "PersonIdentificationCodeSequence",
        "HumanPerformerName",
        "HumanPerformerOrganization",
        "ActualHumanPerformersSequence",
        "ScheduledHumanPerformersSequence",
        "ScheduledPerformingPhysicianName",
        "ScheduledPerformingPhysicianIdentificationSequence",
        "ContentCreatorName",
        "ContentCreatorIdentificationCodeSequence",
        "AuthorObserverSequence",
        "ParticipantSequence",
        "VerifyingObserverName",
        "VerifyingObserverSequence",
        "VerifyingObserverIdentificationCodeSequence",
        "VerifyingOrganization",
        "ReviewerName",
        "PhysicianApprovingInterpretation",
        "InterpretationRecorder",
        "InterpretationTranscriber",
        "InterpretationAuthor",
        "InterpretationApproverSequence",
        "DistributionName",
        "DistributionAddress",
        "NamesOfIntendedRecipientsOfResults",
        "IntendedRecipientsOfResultsIdentificationSequence",
        "CustodialOrganizationSequence",
        # Devices and stations (identify a site; Retain Device Identity is not applied)
        "DeviceSerialNumber",
        "DeviceUID",
        "StationName",
        "DetectorID",
        "GantryID",
        "GeneratorID",
        "CassetteID",
        "PlateID",
        "ModifyingDeviceID",
        "PerformedStationAETitle",
        "PerformedStationName",
        "PerformedStationNameCodeSequence",
        "PerformedStationGeographicLocationCodeSequence",
        "PerformedLocation",
        "ScheduledStationAETitle",
        "ScheduledStationName",
        "ScheduledStationNameCodeSequence",
        "ScheduledStationGeographicLocationCodeSequence",
        "ScheduledProcedureStepLocation",
        "ScheduledStudyLocation",
        "ScheduledStudyLocationAETitle",
        "ScheduledPatientInstitutionResidence",
        # Free text and descriptors (Clean Descriptors option not applied)
        "StudyDescription",
        "SeriesDescription",
        "ProtocolName",
        "PerformedProcedureStepDescription",
        "PerformedProcedureStepID",
        "ScheduledProcedureStepDescription",
        "ImageComments",
        "FrameComments",
        "StudyComments",
        "AcquisitionComments",
        "ImagePresentationComments",
        "DerivationDescription",
        "ContributionDescription",
        "ModifiedImageDescription",
        "IdentifyingComments",
        "TextComments",
        "TextString",
        "Impressions",
        "InterpretationText",
        "InterpretationDiagnosisDescription",
        "ResultsComments",
        "ResultsIDIssuer",
        "InterpretationIDIssuer",
        "ResultsDistributionListSequence",
        "TopicTitle",
        "TopicSubject",
        "TopicAuthor",
        "TopicKeywords",
        "ConfidentialityConstraintOnPatientDataDescription",
        "ContentSequence",
        "GraphicAnnotationSequence",
        "IconImageSequence",
        "OriginalAttributesSequence",
        "ModifiedAttributesSequence",
        "DigitalSignaturesSequence",
        "DataSetTrailingPadding",
    }
)
"""A curated list of identifying attributes, kept because it is stricter than the profile in
places (EthnicGroup, SmokingStatus, ... which *Retain Patient Characteristics* would keep)."""

PHI_KEYWORDS: frozenset[str] = _CURATED_PHI | PROFILE_PHI_KEYWORDS
"""DICOM keywords of identifying attributes: every attribute that PS3.15 Table E.1-1 does not
keep under the options in the module docstring (:data:`quality.phi.PHI_KEYWORDS`, the one
machine-readable copy of the table), plus the curated list above. Use :func:`is_phi` rather
than this set directly: it also catches private tags and person names."""

PHI_TAGS: frozenset[int] = frozenset(
    int(Tag(kw)) for kw in PHI_KEYWORDS if pydicom.datadict.tag_for_keyword(kw) is not None
)
"""The tags of :data:`PHI_KEYWORDS`, as integers ``0xggggeeee``."""

BINARY_VRS: frozenset[str] = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "SQ"})
"""VRs never stored in the header JSON: bulk binary values and sequences."""

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "soft tissue": (40.0, 400.0),
}
"""Standard CT windows as ``(center, width)`` in Hounsfield units (window level L, width W):
lung L −600 W 1500, mediastinum L 50 W 350, bone L 400 W 1800, soft tissue L 40 W 400.

References: M. Hofer, *CT Teaching Manual*, 4th ed., Thieme 2010, ch. 1 (window settings);
Radiopaedia, "Windowing (CT)", https://radiopaedia.org/articles/windowing-ct (soft tissue
is given there as L 50 W 400; L 40 is the common abdominal variant)."""

_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_PIXEL_TAG_BYTES = {struct.pack("<HH", t >> 16, t & 0xFFFF): "<" for t in _PIXEL_TAGS} | {
    struct.pack(">HH", t >> 16, t & 0xFFFF): ">" for t in _PIXEL_TAGS
}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"UN", b"UC", b"UR", b"UT", b"SQ"}
_DEFLATED = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"}
_ITEM = 0xE000FFFE  # (FFFE,E000) read as little-endian uint32 of (group, element)
_SEQ_DELIM = 0xE0DDFFFE
_CHUNK = 1 << 20
_MAX_JSON_STR = 256
_UID_RE = re.compile(r"^[0-9.]{1,64}$")


# --------------------------------------------------------------------------- PHI


def is_phi(keyword: str, *, vr: str | None = None, tag: int | None = None) -> bool:
    """Whether an element identifies a person or site and must be masked or dropped.

    Parameters
    ----------
    keyword : the DICOM keyword (``""`` for private or unknown tags).
    vr : the element's value representation, if known; ``PN`` is always PHI.
    tag : the element's tag as ``0xggggeeee``, if known; private tags (odd group) are PHI.

    Returns
    -------
    bool
        True for keywords in :data:`PHI_KEYWORDS`, person names, private tags and elements
        without a dictionary keyword.
    """
    if not keyword or keyword in PHI_KEYWORDS:
        return True
    if vr == "PN":
        return True
    return tag is not None and (tag >> 16) % 2 == 1


def patient_key(patient_id: str | None, salt: str) -> str:
    """Pseudonymous, stable patient key: the first 16 hex digits of ``sha256(salt, id)``.

    A missing or blank PatientID hashes like the empty string, so all such studies share one
    key (they cannot be told apart anyway).

    Parameters
    ----------
    patient_id : the PatientID (0010,0020) value, or None.
    salt : a secret; without it the key could be brute-forced from known IDs.
    """
    pid = (patient_id or "").strip()
    return hashlib.sha256(f"{salt}\x00{pid}".encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- header reading


def _uri(path: str | os.PathLike[str]) -> str:
    return os.fspath(path)


def _open(path: str | os.PathLike[str], *, whole: bool = False) -> BinaryIO:
    """Open a local path or a remote ``images.uri`` (:func:`quality.store.open_uri`).

    Raises
    ------
    DicomReadError
        ``read_error`` when it cannot be opened (missing file, outside its store root).
    StoreUnavailableError
        A remote store that cannot be reached: not a defect of the file, so not mapped.
    """
    uri = _uri(path)
    try:
        return open_uri(path, whole=whole)
    except StoreUnavailableError:
        raise
    except StoreError as exc:
        raise DicomReadError(uri, "read_error", f"cannot open: {scrub(str(exc))}") from exc
    except OSError as exc:
        raise DicomReadError(uri, "read_error", f"cannot open the file: {exc.strerror}") from exc


def _remote_call(uri: str, fn: Any) -> Any:
    """``fn(uri)`` of a store capability, its StoreErrors mapped like :func:`_open`'s."""
    try:
        return fn(uri)
    except StoreUnavailableError:
        raise
    except StoreError as exc:
        raise DicomReadError(uri, "read_error", scrub(str(exc))) from exc


def _looks_like_raw_dataset(fp: BinaryIO) -> bool:
    """A file without preamble/meta that starts with a group 0x0008 element (old ACR-NEMA style)."""
    fp.seek(0)
    head = fp.read(2)
    fp.seek(0)
    return head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x08")


def _dcmread(fp: BinaryIO, uri: str, *, stop_before_pixels: bool) -> Dataset:
    """``dcmread`` that also accepts meta-less datasets and maps failures to DicomReadError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels)
            except InvalidDicomError:
                if not _looks_like_raw_dataset(fp):
                    raise
                return pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels, force=True)
    except StoreUnavailableError:
        raise  # the store went away while reading: not a defect of this file
    except InvalidDicomError as exc:
        raise DicomReadError(
            uri, "not_dicom", "not a DICOM file (no 'DICM' prefix and no dataset at offset 0)"
        ) from exc
    except EOFError as exc:
        raise DicomReadError(
            uri, "truncated", f"file ends inside the header ({scrub(str(exc))})"
        ) from exc
    except OSError as exc:
        raise DicomReadError(uri, "read_error", f"cannot read the file: {exc.strerror}") from exc
    except (ValueError, TypeError, KeyError, IndexError, struct.error, NotImplementedError) as exc:
        raise DicomReadError(
            uri, "read_error", f"malformed header: {type(exc).__name__}: {scrub(str(exc))}"
        ) from exc


def _check_header_complete(ds: Dataset, uri: str) -> None:
    """Raise ``truncated`` when the last element read holds fewer bytes than it declares."""
    if not len(ds):
        raise DicomReadError(uri, "not_dicom", "no data elements after the file meta header")
    last = ds.get_item(next(reversed(ds.keys())))
    value, length = getattr(last, "value", None), getattr(last, "length", None)
    if isinstance(value, bytes) and length not in (None, 0xFFFFFFFF) and len(value) < length:
        raise DicomReadError(
            uri,
            "truncated",
            f"file ends inside element {last.tag}: {len(value)} of {length} bytes present",
        )


def read_header(path: str | os.PathLike[str]) -> Dataset:
    """Read the header only (``stop_before_pixels=True``).

    Files without the 128-byte preamble and ``DICM`` prefix are accepted when they start with
    a plain dataset (group 0008).

    Raises
    ------
    DicomReadError
        ``not_dicom``, ``truncated`` or ``read_error``, naming the file.
    """
    uri = _uri(path)
    if is_remote(uri):
        header = getattr(store_for_uri(uri), "header", None)
        if header is not None:  # DICOMweb: WADO-RS metadata, no pixel bytes moved
            return _remote_call(uri, header)
    with _open(path) as fp:
        ds = _dcmread(fp, uri, stop_before_pixels=True)
    _check_header_complete(ds, uri)
    return ds


# --------------------------------------------------------------------------- pixel hash


def _hash_stream(fp: BinaryIO, h: Any, n: int, uri: str) -> None:
    left = n
    while left:
        chunk = fp.read(min(_CHUNK, left))
        if not chunk:
            raise DicomReadError(
                uri, "truncated", f"file ends inside Pixel Data: {n - left} of {n} bytes present"
            )
        h.update(chunk)
        left -= len(chunk)


def _hash_encapsulated(fp: BinaryIO, h: Any, uri: str) -> None:
    """Hash the items of encapsulated Pixel Data up to, not including, the delimiter.

    This is exactly ``ds.PixelData`` for an encapsulated value: every item tag, item length and
    fragment, walked by the item lengths (so a delimiter-like byte run inside a fragment is
    data, not an end marker).
    """
    while True:
        head = fp.read(8)
        if len(head) < 8:
            if not head:
                return  # no Sequence Delimitation Item before EOF: tolerated, as pydicom does
            raise DicomReadError(uri, "truncated", "file ends inside an encapsulated item header")
        tag, length = struct.unpack("<II", head)
        if tag == _SEQ_DELIM:
            return
        if tag != _ITEM:
            raise DicomReadError(
                uri, "read_error", f"unexpected tag 0x{tag:08X} inside encapsulated Pixel Data"
            )
        h.update(head)
        _hash_stream(fp, h, length, uri)


def _hash_at(fp: BinaryIO, uri: str) -> str | None:
    """Hash the Pixel Data value whose element starts at the current position.

    Returns None at end of file (no pixel data). Raises ``LookupError`` when what follows is
    not a Pixel Data element header this parser understands (the caller falls back).
    """
    head = fp.read(8)
    if not head:
        return None
    order = _PIXEL_TAG_BYTES.get(head[:4])
    if order is None or len(head) < 8:
        raise LookupError("no pixel data element at the reader position")
    if head[4:6] in _LONG_VRS:  # explicit VR, 32-bit length after 2 reserved bytes
        more = fp.read(4)
        if len(more) < 4:
            raise DicomReadError(uri, "truncated", "file ends inside the Pixel Data header")
        (length,) = struct.unpack(order + "I", more)
    else:  # implicit VR: 32-bit length right after the tag
        (length,) = struct.unpack(order + "I", head[4:8])
    h = hashlib.sha256()
    if length == 0xFFFFFFFF:
        if order != "<":
            raise LookupError("encapsulated pixel data in big endian")
        _hash_encapsulated(fp, h, uri)
    else:
        _hash_stream(fp, h, length, uri)
    return h.hexdigest()


def _hash_full_read(path: str | os.PathLike[str], uri: str) -> str | None:
    """Fallback: full ``dcmread`` and ``sha256`` of the value (deflated syntaxes and oddities)."""
    with _open(path, whole=True) as fp:
        ds = _dcmread(fp, uri, stop_before_pixels=False)
    for tag in _PIXEL_TAGS:
        if tag in ds:
            value = ds.get_item(tag).value
            if isinstance(value, bytes):
                return hashlib.sha256(value).hexdigest()
    return None


def _read_and_hash(path: str | os.PathLike[str]) -> tuple[Dataset, str | None, int]:
    """Header, pixel hash and file size in bytes (every byte is read: ``whole``)."""
    uri = _uri(path)
    with _open(path, whole=True) as fp:
        size = fp.seek(0, os.SEEK_END)
        fp.seek(0)
        ds = _dcmread(fp, uri, stop_before_pixels=True)
        _check_header_complete(ds, uri)
        tsyntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        if tsyntax in _DEFLATED:
            return ds, _hash_full_read(path, uri), size
        try:
            return ds, _hash_at(fp, uri), size
        except LookupError:
            pass
    return ds, _hash_full_read(path, uri), size


def pixel_sha256(path: str | os.PathLike[str]) -> str | None:
    """sha256 (hex) of the stored Pixel Data bytes, without decoding them.

    The header is read with ``stop_before_pixels=True``, which leaves the file at the Pixel
    Data element; its header is parsed here (explicit or implicit VR, either byte order) and
    the value is hashed in 1 MiB chunks. The digest equals ``sha256(ds.PixelData)``:

    * defined length (native pixels): the ``length`` value bytes, as stored;
    * undefined length (encapsulated): every item (tag, length, fragment) up to, not
      including, the Sequence Delimitation Item.

    Deflated transfer syntaxes fall back to a full read. Float and Double Float Pixel Data
    are hashed the same way.

    Returns
    -------
    str or None
        64 hex digits, or None for a file without pixel data (SR, RT plan, ...).

    Raises
    ------
    DicomReadError
        The file is unreadable or ends inside the Pixel Data (``truncated``).
    """
    return _read_and_hash(path)[1]


# --------------------------------------------------------------------------- field extraction


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _short(text: str, n: int = 300) -> str:
    text = text.replace("\x00", "").strip()
    return text if len(text) <= n else text[: n - 1] + "…"


def scrub(text: str, n: int = 300) -> str:
    """An exception text safe for error rows and logs: quoted values (which could be patient
    data) are replaced by ``'…'``, NULs dropped, and the text cut to ``n`` characters."""
    return _short(_QUOTED.sub("'…'", str(text)), n)


def _value(ds: Any, keyword: str) -> Any:
    """Value by keyword from a Dataset or a :func:`_fast_values` dict; None when missing,
    empty or unparseable."""
    try:
        elem = ds.get(keyword)
        value = None if elem is None else elem
    except (ValueError, TypeError, KeyError, AttributeError, struct.error, OverflowError):
        return None
    if value is None or value == "" or (hasattr(value, "__len__") and len(value) == 0):
        return None
    return value


def _first(value: Any) -> Any:
    if isinstance(value, str | bytes) or not hasattr(value, "__getitem__"):
        return value
    return value[0] if len(value) else None


def _str(ds: Any, keyword: str, maxlen: int) -> str | None:
    value = _first(_value(ds, keyword))
    if value is None:
        return None
    text = str(value).replace("\x00", "").strip()
    return text[:maxlen] or None


def _int(ds: Any, keyword: str) -> int | None:
    value = _first(_value(ds, keyword))
    try:
        out = int(float(str(value).strip()))
    except (TypeError, ValueError, OverflowError):
        return None
    return out if -(2**31) <= out < 2**31 else None


def _float(ds: Any, keyword: str, index: int = 0) -> float | None:
    value = _value(ds, keyword)
    if value is None:
        return None
    if not isinstance(value, str | bytes) and hasattr(value, "__getitem__"):
        if len(value) <= index:
            return None
        value = value[index]
    elif index:
        return None
    try:
        out = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def parse_date(value: Any) -> dt.date | None:
    """DICOM DA (``YYYYMMDD``, also the old ``YYYY.MM.DD``) to a date; garbage gives None."""
    if value is None:
        return None
    digits = str(value).strip().replace(".", "").replace("-", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_DIV = {"D": 365.25, "W": 52.1775, "M": 12.0, "Y": 1.0, "": 1.0}


def parse_age(value: Any) -> int | None:
    """DICOM AS (``045Y``, ``018M``, ``003W``, ``010D``) to whole years; garbage gives None."""
    if value is None:
        return None
    m = _AGE_RE.match(str(value))
    if not m:
        return None
    years = int(int(m.group(1)) / _AGE_DIV[m.group(2).upper()])
    return years if 0 <= years <= 130 else None


def _uid(ds: Any, keyword: str, uri: str, *, required: bool) -> str | None:
    value = _str(ds, keyword, 1000)
    if value is None:
        if required:
            raise DicomReadError(uri, "missing_uid", f"{keyword} is missing or empty")
        return None
    if not _UID_RE.match(value):
        if required:
            raise DicomReadError(
                uri, "invalid_uid", f"{keyword} is not a valid UID (digits and dots, ≤ 64 chars)"
            )
        return None
    return value


_KEYWORD_TAGS: dict[str, int] = dict(pydicom.datadict.keyword_dict)


@functools.lru_cache(maxsize=8192)
def _tag_info(tag: int) -> tuple[str, str | None]:
    """(keyword, dictionary VR) of a tag; ``""`` keyword for private or unknown tags."""
    if (tag >> 16) % 2 == 1:
        return "", None
    keyword = keyword_for_tag(tag) or ""
    try:
        vr: str | None = dictionary_VR(tag)
    except KeyError:
        vr = None
    return keyword, vr


def _jsonable(value: Any) -> Any:
    """A JSON value for a converted element value, or ``_SKIP``."""
    if isinstance(value, bytes | bytearray):
        return _SKIP
    if isinstance(value, str):
        text = value.replace("\x00", "").strip()
        return text[:_MAX_JSON_STR]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple) or hasattr(value, "__iter__"):
        items = list(value)
        if len(items) > 64:
            return _SKIP
        out = [_jsonable(v) for v in items]
        return _SKIP if any(v is _SKIP for v in out) else out
    if value is None:
        return None
    return _jsonable(str(value))


_SKIP = object()


_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI"}
    | {"UR", "UT"}
)
_SINGLE_VALUED_TEXT = frozenset({"LT", "ST", "UT", "UR"})
_NUMERIC_VRS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_NUMERIC_VRS |= {"UV": "Q", "SV": "q"}


def _text_value(vr: str, text: str) -> Any:
    text = text.rstrip("\x00 ").lstrip(" ")
    if not text:
        return None
    parts = [text] if vr in _SINGLE_VALUED_TEXT else [p.strip(" \x00") for p in text.split("\\")]
    if vr == "IS":
        try:
            parts = [int(p) if p else None for p in parts]  # type: ignore[misc]
        except ValueError:
            pass
    elif vr == "DS":
        try:
            parts = [float(p) if p else None for p in parts]  # type: ignore[misc]
        except ValueError:
            pass
    return parts[0] if len(parts) == 1 else parts


def _fast_values(ds: Dataset) -> dict[str, Any]:
    """Top-level text and numeric values by keyword, converted straight from the raw bytes.

    pydicom's own element conversion is the slowest part of a header read; this does the
    cheap cases (ASCII text VRs, little/big-endian binary numbers) directly and leaves the
    rest (non-ASCII text, ambiguous VRs, sequences, bulk binary) to pydicom or out. Values are
    ``str``, ``int``, ``float`` or lists of them; empty values are left out.
    """
    little = ds.original_encoding[1] is not False
    out: dict[str, Any] = {}
    for tag in ds.keys():
        keyword, dict_vr = _tag_info(int(tag))
        if not keyword:
            continue
        raw = ds.get_item(tag)
        vr = getattr(raw, "VR", None) or dict_vr
        if vr == "UN" and dict_vr is not None:
            vr = dict_vr  # a known tag sent as UN, read with its dictionary VR as pydicom does
        if vr is None or vr in BINARY_VRS or " or " in vr:
            continue
        value: Any = getattr(raw, "value", None)
        if isinstance(value, bytes):
            if vr in _TEXT_VRS:
                try:
                    value = _text_value(vr, value.decode("ascii"))
                except UnicodeDecodeError:
                    value = _converted(ds, tag)
            elif vr in _NUMERIC_VRS:
                fmt = _NUMERIC_VRS[vr]
                size = struct.calcsize(fmt)
                n = len(value) // size
                if n == 0:
                    continue
                nums = struct.unpack(("<" if little else ">") + fmt * n, value[: n * size])
                value = nums[0] if n == 1 else list(nums)
            else:
                value = _converted(ds, tag)  # AT, ambiguous "US or SS", ...
        elif value is not None and not isinstance(raw, tuple):
            value = raw.value  # already a converted DataElement
        else:
            value = _converted(ds, tag)
        if value is None or value == "" or value == []:
            continue
        out[keyword] = value
    return out


def _converted(ds: Dataset, tag: Any) -> Any:
    try:
        value = ds[tag].value
    except (ValueError, TypeError, KeyError, AttributeError, struct.error, OverflowError):
        return None
    jv = _jsonable(value)
    return None if jv is _SKIP else jv


def header_json(ds: Dataset | dict[str, Any]) -> dict[str, Any]:
    """The header as a small JSON object without PHI.

    Keeps top-level elements only, keyed by keyword, that are not PHI (:func:`is_phi`), not
    binary or sequences (:data:`BINARY_VRS`), and whose value converts to JSON. Strings are cut
    to 256 characters, multi-values to 64 items; non-finite numbers become strings (PostgreSQL
    JSON rejects NaN). The Transfer Syntax UID from the file meta is added.

    Parameters
    ----------
    ds : a dataset, or the values of one as made by the private ``_fast_values``.
    """
    values = _fast_values(ds) if isinstance(ds, Dataset) else ds
    out: dict[str, Any] = {}
    for keyword, value in values.items():
        if keyword in PHI_KEYWORDS:
            continue
        _, vr = _tag_info(_KEYWORD_TAGS.get(keyword, 0))
        if vr == "PN":
            continue
        jv = _jsonable(value)
        if jv is not _SKIP and jv != "" and jv != []:
            out[keyword] = jv
    if isinstance(ds, Dataset):
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "TransferSyntaxUID" in meta:
            out["TransferSyntaxUID"] = str(meta.TransferSyntaxUID)
    return out


def _with_tsyntax(header: dict[str, Any], tsyntax: str | None) -> dict[str, Any]:
    if tsyntax:
        header["TransferSyntaxUID"] = tsyntax
    return header


def _spacing(ds: Any) -> tuple[float | None, float | None]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        row, col = _float(ds, keyword, 0), _float(ds, keyword, 1)
        if row is not None and col is not None and row > 0 and col > 0:
            return row, col
    return None, None


def _sex(ds: Any) -> str | None:
    value = (_str(ds, "PatientSex", 16) or "").upper()
    return value[0] if value[:1] in ("M", "F", "O") else None


def index_record(path: str | os.PathLike[str], *, salt: str) -> dict[str, Any]:
    """Everything ingest stores for one file, from a header-only read plus the pixel hash.

    Runs in worker processes, so it returns plain data; the PatientID never leaves this
    function except as :func:`patient_key`.

    Returns
    -------
    dict
        ``{"size": bytes, "study": {...}, "series": {...}, "image": {...}}`` with the file
        size and the column values of
        :class:`~quality.db.schema.Study`, :class:`~quality.db.schema.Series` and
        :class:`~quality.db.schema.Image` (without ids, uri, size and mtime). Strings are cut
        to their column lengths. ``series.description`` is always None: SeriesDescription is
        free text, PHI under the Basic profile.

    Raises
    ------
    DicomReadError
        ``not_dicom``, ``truncated``, ``read_error``, ``missing_uid`` or ``invalid_uid``.
    """
    uri = _uri(path)
    dataset, sha, size = _read_and_hash(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _fast_values(dataset)
        sop_uid = _uid(ds, "SOPInstanceUID", uri, required=True)
        study_uid = _uid(ds, "StudyInstanceUID", uri, required=True)
        series_uid = _uid(ds, "SeriesInstanceUID", uri, required=True)
        modality = _str(ds, "Modality", 16)
        body_part = _str(ds, "BodyPartExamined", 64)
        spacing_row, spacing_col = _spacing(ds)
        meta = getattr(dataset, "file_meta", None)
        tsyntax = _str(meta, "TransferSyntaxUID", 64) if meta is not None else None
        rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
        n_frames = _int(ds, "NumberOfFrames")
        return {
            "size": size,
            "study": {
                "study_uid": study_uid,
                "patient_key": patient_key(_str(ds, "PatientID", 1000), salt),
                "modality": modality,
                "body_part": body_part,
                "study_date": parse_date(_first(_value(ds, "StudyDate"))),
                "patient_age_years": parse_age(_first(_value(ds, "PatientAge"))),
                "patient_sex": _sex(ds),
            },
            "series": {
                "series_uid": series_uid,
                "modality": modality,
                "series_number": _int(ds, "SeriesNumber"),
                "description": None,
                "manufacturer": _str(ds, "Manufacturer", 128),
                "model": _str(ds, "ManufacturerModelName", 128),
                "kvp": _float(ds, "KVP"),
                "body_part": body_part,
            },
            "image": {
                "sop_uid": sop_uid,
                "pixel_sha256": sha,
                "sop_class_uid": _uid(ds, "SOPClassUID", uri, required=False),
                "transfer_syntax": tsyntax,
                "instance_number": _int(ds, "InstanceNumber"),
                "rows": rows if rows is None or rows >= 0 else None,
                "cols": cols if cols is None or cols >= 0 else None,
                "n_frames": n_frames if n_frames is not None and n_frames > 0 else 1,
                "bits_stored": _int(ds, "BitsStored"),
                "photometric": _str(ds, "PhotometricInterpretation", 16),
                "spacing_row": spacing_row,
                "spacing_col": spacing_col,
                "header": _with_tsyntax(header_json(ds), tsyntax),
            },
        }


# --------------------------------------------------------------------------- header viewer


def _display_value(elem: Any) -> str:
    if elem.VR == "SQ":
        return f"<sequence of {len(elem.value)} item(s)>"
    value = elem.value
    if isinstance(value, bytes | bytearray):
        if len(value) > 32:
            return f"<{len(value)} bytes>"
        return value.hex(" ")
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return _short("\\".join(str(v) for v in value), 200)
    return _short(str(value), 200)


def _header_rows(ds: Dataset, reveal: bool = False) -> Iterator[dict[str, str]]:
    for elem in ds:
        tag = int(elem.tag)
        if tag in _PIXEL_TAGS:
            continue
        keyword = elem.keyword or ""
        vr = str(elem.VR)
        if vr in BINARY_VRS - {"SQ"} and elem.value is not None and len(elem.value) > 1024:
            continue
        masked = not reveal and is_phi(keyword, vr=vr, tag=tag)
        value = MASK if masked else _display_value(elem)
        yield {
            "tag": f"({tag >> 16:04X},{tag & 0xFFFF:04X})",
            "keyword": keyword,
            "vr": vr,
            "value": value,
        }


def masked_header(path: str | os.PathLike[str], *, reveal: bool = False) -> list[dict[str, str]]:
    """Header rows for the viewer: file meta then top-level elements, PHI masked.

    Each row has ``tag`` (``"(0010,0010)"``), ``keyword``, ``vr`` and ``value``. PHI values
    (:func:`is_phi`) read :data:`MASK`; sequences show their item count; Pixel Data and binary
    values over 1 KiB are left out; long text is cut to 200 characters.

    ``reveal=True`` shows the PHI values too. This module does not know who asks: callers
    check the role and audit the reveal (:func:`quality.ui.trail.revealed_header`).

    Raises
    ------
    DicomReadError
        The file cannot be read as DICOM.
    """
    ds = read_header(path)
    uri = _uri(path)
    rows: list[dict[str, str]] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = getattr(ds, "file_meta", None)
            if meta is not None:
                rows.extend(_header_rows(meta, reveal))
            rows.extend(_header_rows(ds, reveal))
    except (ValueError, TypeError, KeyError, struct.error, OverflowError) as exc:
        raise DicomReadError(uri, "read_error", f"malformed header: {scrub(str(exc))}") from exc
    return rows


# --------------------------------------------------------------------------- pixels


@dataclass
class DecodedImage:
    """A decoded image, after the Modality LUT.

    Attributes
    ----------
    frames : float32 array, shape (n_frames, H, W): stored values after RescaleSlope/Intercept
        or the Modality LUT Sequence (Hounsfield units for CT). Colour images (RGB, YBR_*,
        PALETTE COLOR) are converted to RGB and then to luminance
        ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601), without a Modality LUT.
    photometric : PhotometricInterpretation as stored (``MONOCHROME1``, ``RGB``, ...).
    bits_stored : BitsStored.
    window_center, window_width : first WindowCenter/WindowWidth of the header, or None.
    has_voi_lut : whether a VOI LUT Sequence is present (monochrome only).
    pixel_spacing : (row, column) spacing in mm from PixelSpacing or ImagerPixelSpacing.
    modality : Modality, or None.
    voi_lut_function : VOILUTFunction (``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``).
    uri : the file it came from.
    """

    frames: NDArray[np.float32]
    photometric: str
    bits_stored: int
    window_center: float | None = None
    window_width: float | None = None
    has_voi_lut: bool = False
    pixel_spacing: tuple[float, float] | None = None
    modality: str | None = None
    voi_lut_function: str = "LINEAR"
    uri: str = ""
    _ds: Dataset | None = field(default=None, repr=False, compare=False)

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return int(self.frames.shape[0])

    @property
    def is_color(self) -> bool:
        """Whether the stored image is colour (frames then hold luminance)."""
        return not self.photometric.startswith("MONOCHROME")


_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def load_pixels(path: str | os.PathLike[str]) -> DecodedImage:
    """Read and decode a DICOM image (any transfer syntax pydicom + pylibjpeg can decode).

    Parameters
    ----------
    path : a local file path (what ingest stores in ``images.uri``).

    Returns
    -------
    DecodedImage
        ``frames`` of shape (n_frames, H, W), float32, after the Modality LUT; see
        :class:`DecodedImage` for colour images.

    Raises
    ------
    DicomReadError
        ``not_dicom``/``truncated``/``read_error`` for unreadable files, ``no_pixels`` when
        there is no Pixel Data, ``decode_error`` when the pixels cannot be decoded.
    """
    uri = _uri(path)
    with _open(path, whole=True) as fp:
        ds = _dcmread(fp, uri, stop_before_pixels=False)
    if not any(t in ds for t in _PIXEL_TAGS):
        raise DicomReadError(uri, "no_pixels", "the file has no Pixel Data (SR, RT plan, ...)")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2")
    photometric = photometric.strip().upper()
    try:
        arr = _decode_or_raise(ds, photometric, uri)
    except DicomReadError as exc:
        native = (
            getattr(store_for_uri(uri), "native_pixels", None)
            if exc.kind == "decode_error" and is_remote(uri)
            else None
        )
        if native is None:
            raise
        # The server decodes what this client cannot (DICOMweb frames as explicit VR little
        # endian application/octet-stream); photometric may change (YBR_* → RGB).
        ds = _with_native_pixels(ds, _remote_call(uri, native))
        photometric = str(ds.get("PhotometricInterpretation", photometric)).strip().upper()
        arr = _decode_or_raise(ds, photometric, uri)
    row, col = _spacing(ds)
    monochrome = photometric.startswith("MONOCHROME")
    return DecodedImage(
        frames=arr,
        photometric=photometric,
        bits_stored=_int(ds, "BitsStored") or int(arr.dtype.itemsize * 8),
        window_center=_float(ds, "WindowCenter") if monochrome else None,
        window_width=_float(ds, "WindowWidth") if monochrome else None,
        has_voi_lut=monochrome and bool(ds.get("VOILUTSequence")),
        pixel_spacing=(row, col) if row is not None and col is not None else None,
        modality=_str(ds, "Modality", 16),
        voi_lut_function=(_str(ds, "VOILUTFunction", 16) or "LINEAR").upper(),
        uri=uri,
        _ds=ds,
    )


def _decode_or_raise(ds: Dataset, photometric: str, uri: str) -> NDArray[np.float32]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _decode(ds, photometric)
    except DicomReadError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError, NotImplementedError,
            struct.error, OverflowError, MemoryError) as exc:  # fmt: skip
        raise DicomReadError(
            uri,
            "decode_error",
            f"cannot decode the pixels: {type(exc).__name__}: {scrub(str(exc))}",
        ) from exc


def _with_native_pixels(ds: Dataset, native: bytes) -> Dataset:
    """``ds``, changed in place: Pixel Data replaced by server-decoded native frames (explicit VR
    little endian)."""
    from pydicom.uid import ExplicitVRLittleEndian

    # ``ds`` was read by the caller for this decode only: changed in place (a deepcopy of a
    # FileDataset also touches its closed file handle).
    for tag in _PIXEL_TAGS:
        if tag in ds:
            del ds[tag]
    if len(native) % 2:
        native += b"\x00"
    ds.PixelData = native
    ds["PixelData"].VR = "OW" if int(ds.get("BitsAllocated", 8) or 8) > 8 else "OB"
    if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
        ds.PhotometricInterpretation = "RGB"  # servers decode YCbCr codestreams to RGB
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        ds.PlanarConfiguration = 0
    if getattr(ds, "file_meta", None) is None:
        from pydicom.dataset import FileMetaDataset

        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _decode(ds: Dataset, photometric: str) -> NDArray[np.float32]:
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    arr = ds.pixel_array  # YBR_* are converted to RGB by the decoder (as_rgb default)
    samples = _int(ds, "SamplesPerPixel") or 1
    n_frames = _int(ds, "NumberOfFrames") or 1
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        samples = 3
    if samples == 3:
        rgb = np.asarray(arr, dtype=np.float32)
        if rgb.ndim == 3:
            rgb = rgb[None]
        return np.ascontiguousarray(rgb @ _LUMA, dtype=np.float32)
    if photometric.startswith("MONOCHROME"):
        arr = apply_modality_lut(arr, ds)
    out = np.asarray(arr, dtype=np.float32)
    if out.ndim == 2:
        out = out[None]
    if out.ndim != 3 or (n_frames > 1 and out.shape[0] != n_frames):
        raise ValueError(f"unexpected decoded shape {out.shape} for {n_frames} frame(s)")
    return np.ascontiguousarray(out)


def _linear_window(x: NDArray[np.float32], center: float, width: float) -> NDArray[np.float64]:
    """PS3.3 C.11.2.1.2.1 (LINEAR) to [0, 1]."""
    c, w = float(center), float(width)
    if w <= 1.0:
        return (x > c - 0.5).astype(np.float64)
    y = (x.astype(np.float64) - (c - 0.5)) / (w - 1.0) + 0.5
    return np.clip(y, 0.0, 1.0)


def _linear_exact_window(
    x: NDArray[np.float32], center: float, width: float
) -> NDArray[np.float64]:
    """PS3.3 C.11.2.1.3.2 (LINEAR_EXACT) to [0, 1]."""
    y = (x.astype(np.float64) - center) / width + 0.5
    return np.clip(y, 0.0, 1.0)


def _sigmoid_window(x: NDArray[np.float32], center: float, width: float) -> NDArray[np.float64]:
    """PS3.3 C.11.2.1.3.1 (SIGMOID) to [0, 1]."""
    return 1.0 / (1.0 + np.exp(-4.0 * (x.astype(np.float64) - center) / width))


_WINDOW_FUNCS = {
    "LINEAR": _linear_window,
    "LINEAR_EXACT": _linear_exact_window,
    "SIGMOID": _sigmoid_window,
}


def _auto_window(x: NDArray[np.float32]) -> NDArray[np.float64]:
    lo, hi = np.percentile(x, [0.5, 99.5])
    if not hi > lo:
        return np.zeros(x.shape, dtype=np.float64)
    return np.clip((x.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)


def _voi_lut(img: DecodedImage, x: NDArray[np.float32]) -> NDArray[np.float64]:
    from pydicom.pixels import apply_voi

    ds = img._ds
    if ds is None:
        raise ValueError("the DecodedImage carries no dataset, so its VOI LUT cannot be applied")
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    n_entries, first_map = int(descriptor[0]) or 2**16, int(descriptor[1])
    # The LUT's nominal output range is 0 .. 2**bits - 1, but many LUTs use only part of it:
    # scaling between the smallest and the largest entry keeps the whole grey scale in use.
    lut = apply_voi(np.arange(first_map, first_map + n_entries, dtype=np.int64), ds, index=0)
    lo, hi = float(np.min(lut)), float(np.max(lut))
    mapped = np.asarray(apply_voi(np.rint(x).astype(np.int64), ds, index=0), dtype=np.float64)
    if not hi > lo:
        return np.zeros(x.shape, dtype=np.float64)
    return np.clip((mapped - lo) / (hi - lo), 0.0, 1.0)


def to_display(
    img: DecodedImage,
    frame: int = 0,
    *,
    center: float | None = None,
    width: float | None = None,
) -> NDArray[np.uint8]:
    """One frame as 8-bit grey for display, high values white.

    Which VOI transform applies, first match wins:

    1. a manual ``center``/``width`` (either one; the other comes from the header window,
       else from the automatic window): the LINEAR function of DICOM PS3.3 C.11.2.1.2.1,
       ``y = ((x - (c - 0.5)) / (w - 1) + 0.5)`` clipped to [0, 1], then times 255;
    2. the VOI LUT Sequence, when present (first LUT; output scaled by its largest entry);
    3. the header WindowCenter/WindowWidth (first values), with the header's VOILUTFunction
       (LINEAR, LINEAR_EXACT or SIGMOID);
    4. an automatic window from the 0.5th to the 99.5th percentile of the frame (a constant
       frame maps to 0).

    MONOCHROME1 is then inverted (``255 - y``), so that the result always follows the
    MONOCHROME2 convention. Colour images are shown as their luminance.

    Parameters
    ----------
    img : from :func:`load_pixels`.
    frame : frame index, ``0 <= frame < img.n_frames``.
    center, width : manual window in modality units (``width >= 1``).

    Returns
    -------
    NDArray[np.uint8]
        Shape (H, W).

    Raises
    ------
    ValueError
        ``frame`` out of range, or ``width < 1``.
    """
    if not 0 <= frame < img.n_frames:
        raise ValueError(f"frame must be in [0, {img.n_frames}), not {frame}")
    if width is not None and not width >= 1:
        raise ValueError(f"window width must be >= 1, not {width}")
    x = img.frames[frame]
    if center is not None or width is not None:
        if img.window_center is not None and img.window_width is not None:
            c0, w0 = img.window_center, img.window_width
        else:
            lo, hi = (float(v) for v in np.percentile(x, [0.5, 99.5]))
            c0, w0 = (lo + hi) / 2.0, max(hi - lo, 1.0)
        y = _linear_window(x, c0 if center is None else center, w0 if width is None else width)
    elif img.has_voi_lut:
        y = _voi_lut(img, x)
    elif img.window_center is not None and img.window_width is not None and img.window_width > 0:
        func = _WINDOW_FUNCS.get(img.voi_lut_function, _linear_window)
        y = func(x, img.window_center, img.window_width)
    else:
        y = _auto_window(x)
    out = np.rint(y * 255.0).astype(np.uint8)
    if img.photometric == "MONOCHROME1":
        out = 255 - out
    return out


# --------------------------------------------------------------------------- slice order


def _as_vector(value: Any, n: int) -> NDArray[np.float64] | None:
    """``value`` as ``n`` finite floats, or None (missing, wrong length, not numeric)."""
    if value is None or isinstance(value, str | bytes):
        return None
    try:
        vec = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if vec.shape != (n,) or not np.isfinite(vec).all():
        return None
    return vec


def slice_order(
    positions: Sequence[Any],
    orientations: Sequence[Any],
    instance_numbers: Sequence[Any],
) -> tuple[NDArray[np.intp], NDArray[np.float64] | None]:
    """The display order of the slices of one series.

    When every slice has an ImagePositionPatient (IPP) and the first slice with an
    ImageOrientationPatient (IOP) gives a valid normal, slices are sorted by their position
    along that normal,

    ``d_i = IPP_i · n``, ``n = r × c``

    with ``r`` and ``c`` the row and column direction cosines of the IOP (DICOM PS3.3
    C.7.6.2.1.1, Image Position and Image Orientation; the usual way of ordering a volume,
    as in ITK's ``GDCMSeriesFileNames``). The direction along the normal follows the
    instance numbers: when the slice first along ``n`` has a higher InstanceNumber than the
    last, the order runs against ``n``. Ties, and series where any position is missing,
    fall back to the InstanceNumber (missing numbers last), then to the input order: the
    sort is stable.

    Parameters
    ----------
    positions : per slice, the IPP ``[x, y, z]`` in mm, or None.
    orientations : per slice, the IOP ``[rx, ry, rz, cx, cy, cz]``, or None.
    instance_numbers : per slice, the InstanceNumber, or None.

    Returns
    -------
    (order, distance)
        ``order`` of shape (n,): indices into the inputs in display order; ``distance`` of
        shape (n,): each input slice's position along the normal in mm, or None when the
        geometry was not usable and the order comes from the instance numbers.

    Raises
    ------
    ValueError
        The three sequences differ in length.
    """
    n = len(positions)
    if len(orientations) != n or len(instance_numbers) != n:
        raise ValueError(
            "positions, orientations and instance_numbers must have one entry per slice, got "
            f"{n}, {len(orientations)} and {len(instance_numbers)}"
        )
    numbers = np.full(n, np.inf)
    for i, num in enumerate(instance_numbers):
        try:
            value = float(num)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            numbers[i] = value
    by_number = np.lexsort((np.arange(n), numbers))
    ipp = [_as_vector(p, 3) for p in positions]
    iop = next((v for v in (_as_vector(o, 6) for o in orientations) if v is not None), None)
    if n == 0 or iop is None or any(p is None for p in ipp):
        return by_number.astype(np.intp), None
    normal = np.cross(iop[:3], iop[3:])
    norm = float(np.linalg.norm(normal))
    if not norm > 1e-6:
        return by_number.astype(np.intp), None
    distance = np.stack([p for p in ipp if p is not None]) @ (normal / norm)
    order = np.lexsort((np.arange(n), numbers, distance))
    first, last = numbers[order[0]], numbers[order[-1]]
    if math.isfinite(first) and math.isfinite(last) and first > last:
        # Scanners number head-first or feet-first: run along the normal in the direction
        # the numbers run, so that slice 1 stays near instance 1.
        order = np.lexsort((np.arange(n), numbers, -distance))
    return order.astype(np.intp), distance
