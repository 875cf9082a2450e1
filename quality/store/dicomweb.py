"""A PACS over DICOMweb (QIDO-RS, WADO-RS) as an image store.

Store URI: ``dicomweb+http://host:port/dicom-web`` or ``dicomweb+https://...``, optionally with
``?source=NAME``. Entry URIs (what ingest writes to ``images.uri``) are
``<root>/studies/<uid>/series/<uid>/instances/<uid>``, ``<root>`` being the store URI without its
query and trailing slash.

Sources
-------
A folder store names the source of a file after its first folder; a PACS has no folders, so
every instance of one DICOMweb store belongs to one source: the ``source`` query parameter of
the store URI (``dicomweb+http://pacs:8042/dicom-web?source=east_imaging``; letters, digits,
``.``, ``_`` and ``-``, at most 128), by default ``pacs-<host>-<port>`` (for example
``pacs-127.0.0.1-8042``). InstitutionName and StationName are PHI and are never used. Entry
keys read ``<source>/<study uid>/<series uid>/<sop uid>``.

Credentials
-----------
From the settings only (never in the URI, which ends up in the DB): ``dicomweb_token`` is
sent as ``Authorization: Bearer``; otherwise ``dicomweb_user``/``dicomweb_password`` as HTTP
basic auth (``QUALITY_DICOMWEB_*`` or the ``[quality]`` table of ``.streamlit/secrets.toml``).
A URI with ``user:password@`` is refused with a message saying where credentials go.

Design notes
------------
* **Listing** is QIDO-RS: studies, then the series of each study, then the instances of each
  series, each paged with ``limit``/``offset`` (``page_size``). A page shorter than asked is
  not taken as the end (a server may cap its pages below ``limit``): paging stops at an empty
  page, or once as many answers arrived as the parent announced (``NumberOfStudyRelatedSeries``
  of a study, ``NumberOfSeriesRelatedInstances`` of a series).

  Some servers cap the *total* number of answers of one query instead, so that paging never
  gets past the cap. Orthanc does this with ``LimitFindResults``/``LimitFindInstances``: it
  looks up at most ``limit + 1`` resources and only then applies ``offset``. Below the study
  level the announced counts reveal it, and the listing falls back to WADO-RS metadata of the
  study or series (a retrieve, not a query, so not capped). At the study level nothing
  announces a total, so every study query is checked by splitting it: the studies are
  queried again in two (or three) StudyDate ranges around the median date, on a single day
  by StudyTime ranges. A part that answers fewer studies than the whole cannot have been cut
  by the cap (the whole was at most the cap), so it is complete; a part as large as the whole
  is split again. On a server without a cap this costs two extra queries. Limits: studies
  without a StudyDate beyond a server's cap, and more studies than the cap with the same date
  and time (to the second), cannot be found (a warning is logged).
* **Reading** (:meth:`DicomWebStore.open`) is WADO-RS *retrieve instance* with
  ``Accept: multipart/related; type="application/dicom"; transfer-syntax=*``: the instance
  as stored, without transcoding, so ingest hashes the same Pixel Data bytes and builds the
  same header JSON as from a folder. Neither alternative can: frames lose the item structure
  of encapsulated Pixel Data (the hash is of the stored value, items included), and the
  metadata JSON loses the stored formatting of numbers (DS/IS strings) and the file meta.
  The bytes moved are those of metadata plus frames anyway. The instance is held in memory.
* **Capabilities**: :meth:`~DicomWebStore.header` (WADO-RS metadata of the whole series, one
  request, kept in a small LRU), :meth:`~DicomWebStore.native_pixels` (WADO-RS frames as
  ``application/octet-stream`` in explicit VR little endian, for syntaxes this client cannot
  decode; Orthanc answers 400 to frames without an explicit media type) and
  :meth:`~DicomWebStore.thumbnail` (server-rendered PNG, ``/rendered?viewport=w,h``).
* **Client**: dicomweb-client's :class:`~dicomweb_client.DICOMwebClient`, on our own
  ``requests`` session, for QIDO-RS, series/study metadata and frames (it builds the
  standard URLs, query parameters and ``Accept`` headers and decodes multipart answers).
  Plain ``requests`` on the same session for two calls where it gets in the way: retrieve
  instance (it re-encodes the answer into a pydicom Dataset, losing the stored bytes, and
  rejects ``transfer-syntax=*``) and rendered (it percent-encodes the comma of
  ``viewport=w,h``, which Orthanc then refuses). Its own retrying is switched off.
* **Retries and errors**: one ``requests`` session per thread (ingest reads from up to 16
  threads), with ``urllib3`` retries on connection errors and on 429/500/502/503/504 for
  GETs: ``store_retries`` attempts in all, back-off ``store_backoff_s`` doubled per attempt,
  ``store_timeout_s`` per request. What still fails is a
  :class:`~quality.errors.StoreUnavailableError` naming the server (connection refused,
  timeouts, 5xx); 404 is a :class:`~quality.errors.StoreError` (instance not found), as are
  401/403 (credentials refused: which settings to check) and other refusals. No error text
  carries credentials or patient data.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import requests
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from quality.config import get_settings
from quality.errors import StoreError, StoreUnavailableError
from quality.store import StoreEntry

__all__ = ["PAGE_SIZE", "DicomWebStore"]

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
"""QIDO-RS answers asked per page (``limit``) by default."""

_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
_INSTANCE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_RETRY_STATUS = (429, 500, 502, 503, 504)
_SERIES_CACHE = 32  # series metadata kept (one entry holds every instance of a series)
_LIST_THREADS = 8  # studies listed at once

# DICOM JSON attribute tags
_STUDY_UID = "0020000D"
_SERIES_UID = "0020000E"
_SOP_UID = "00080018"
_STUDY_DATE = "00080020"
_STUDY_TIME = "00080030"
_N_STUDY_SERIES = "00201206"  # NumberOfStudyRelatedSeries
_N_SERIES_INSTANCES = "00201209"  # NumberOfSeriesRelatedInstances
_N_STUDY_INSTANCES = "00201208"  # NumberOfStudyRelatedInstances
_TSYNTAX = "00020010"  # TransferSyntaxUID (file meta; rarely in metadata)
_AVAILABLE_TSYNTAX = "00083002"  # AvailableTransferSyntaxUID

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ENTRY_RE = re.compile(r"^/studies/([^/]*)/series/([^/]*)/instances/([^/]*)$")
_BOUNDARY_RE = re.compile(r'boundary="?([^";,\s]+)"?', re.IGNORECASE)
_CREDENTIAL_HELP = (
    "set the settings dicomweb_user and dicomweb_password (basic auth) or dicomweb_token "
    "(bearer), e.g. QUALITY_DICOMWEB_USER, QUALITY_DICOMWEB_PASSWORD, QUALITY_DICOMWEB_TOKEN "
    "or the [quality] table of .streamlit/secrets.toml"
)

T = TypeVar("T")


def _valid_uid(uid: str) -> bool:
    """Digits and dots, no empty component, at most 64 characters."""
    return len(uid) <= 64 and _UID_RE.match(uid) is not None


def _first_value(item: dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON object, or None."""
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def _uid_of(item: dict[str, Any], tag: str) -> str | None:
    value = _first_value(item, tag)
    return str(value).strip() if value is not None else None


def _count_of(item: dict[str, Any], tag: str) -> int | None:
    value = _first_value(item, tag)
    try:
        return int(str(value).strip()) if value is not None else None
    except ValueError:
        return None


def _date_of(item: dict[str, Any]) -> dt.date | None:
    value = str(_first_value(item, _STUDY_DATE) or "").strip().replace(".", "")
    try:
        return dt.datetime.strptime(value, "%Y%m%d").date() if len(value) == 8 else None
    except ValueError:
        return None


def _seconds_of(item: dict[str, Any]) -> int | None:
    """StudyTime as seconds since midnight (fraction dropped), or None."""
    text = str(_first_value(item, _STUDY_TIME) or "").strip().split(".")[0].replace(":", "")
    if not text.isdigit() or len(text) not in (2, 4, 6):
        return None
    text = text.ljust(6, "0")
    h, m, s = int(text[:2]), int(text[2:4]), int(text[4:6])
    return h * 3600 + m * 60 + s if h < 24 and m < 60 and s < 61 else None


def _tm(seconds: int, *, end: bool = False) -> str:
    """A DICOM TM for a range bound; ``end`` includes every fraction of that second."""
    h, rest = divmod(min(seconds, 86399), 3600)
    text = f"{h:02d}{rest // 60:02d}{rest % 60:02d}"
    return text + ".999999" if end else text


def _without_bulk_data(item: Any) -> Any:
    """A DICOM JSON object without the elements whose value is only a BulkDataURI."""
    if isinstance(item, list):
        return [_without_bulk_data(v) for v in item]
    if not isinstance(item, dict):
        return item
    out: dict[str, Any] = {}
    for tag, elem in item.items():
        if not isinstance(elem, dict):
            continue
        if "BulkDataURI" in elem:
            continue
        if elem.get("vr") == "SQ" and isinstance(elem.get("Value"), list):
            elem = dict(elem, Value=[_without_bulk_data(v) for v in elem["Value"]])
        out[tag] = elem
    return out


def _multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """The bodies of the parts of a ``multipart/related`` answer (RFC 2046)."""
    m = _BOUNDARY_RE.search(content_type)
    if m is None:
        raise ValueError("multipart answer without a boundary")
    delimiter = b"--" + m.group(1).encode("ascii")
    chunks = body.split(delimiter)
    parts: list[bytes] = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the close delimiter
        _head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise ValueError("multipart part without a header/body separator")
        if content.endswith(b"\r\n"):
            content = content[:-2]  # the CRLF belongs to the next delimiter
        parts.append(content)
    return parts


@dataclass(frozen=True)
class _Part:
    """A StudyDate range (inclusive, None = open), on a single day also a StudyTime range
    in seconds (inclusive, None = open)."""

    date_lo: dt.date | None = None
    date_hi: dt.date | None = None
    time_lo: int | None = None
    time_hi: int | None = None

    @property
    def one_day(self) -> bool:
        return self.date_lo is not None and self.date_lo == self.date_hi

    def filters(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.date_lo is not None or self.date_hi is not None:
            lo = f"{self.date_lo:%Y%m%d}" if self.date_lo else ""
            hi = f"{self.date_hi:%Y%m%d}" if self.date_hi else ""
            out["StudyDate"] = lo if self.one_day else f"{lo}-{hi}"
        if self.time_lo is not None or self.time_hi is not None:
            lo = _tm(self.time_lo) if self.time_lo is not None else ""
            hi = _tm(self.time_hi, end=True) if self.time_hi is not None else ""
            out["StudyTime"] = f"{lo}-{hi}"
        return out

    def _has(self, day: dt.date) -> bool:
        return (self.date_lo is None or self.date_lo <= day) and (
            self.date_hi is None or day <= self.date_hi
        )

    def split(self, answers: list[dict[str, Any]]) -> list[_Part]:
        """Smaller parts that together cover this one, around the median of ``answers``;
        empty when it cannot be split (one day and one second)."""
        if not self.one_day:
            dates = sorted({d for d in map(_date_of, answers) if d is not None and self._has(d)})
            if not dates:
                return []
            if len(dates) >= 2:
                mid = dates[(len(dates) - 1) // 2]
                return [
                    _Part(self.date_lo, mid),
                    _Part(mid + dt.timedelta(days=1), self.date_hi),
                ]
            day = dates[0]
            parts = [_Part(day, day)]
            if self.date_lo is None or self.date_lo < day:
                parts.append(_Part(self.date_lo, day - dt.timedelta(days=1)))
            if self.date_hi is None or self.date_hi > day:
                parts.append(_Part(day + dt.timedelta(days=1), self.date_hi))
            return parts
        lo = self.time_lo if self.time_lo is not None else 0
        hi = self.time_hi if self.time_hi is not None else 86399
        times = sorted({t for t in map(_seconds_of, answers) if t is not None and lo <= t <= hi})
        if not times or lo >= hi:
            return []
        day = self.date_lo
        if len(times) >= 2:
            mid = times[(len(times) - 1) // 2]
            return [_Part(day, day, self.time_lo, mid), _Part(day, day, mid + 1, self.time_hi)]
        t = times[0]
        parts = [_Part(day, day, t, t)]
        if t > lo:
            parts.append(_Part(day, day, self.time_lo, t - 1))
        if t < hi:
            parts.append(_Part(day, day, t + 1, self.time_hi))
        return parts


class _SeriesCache:
    """A small, thread-safe LRU of series metadata: ``(study, series)`` → ``{sop: json}``."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._items: OrderedDict[tuple[str, str], dict[str, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> dict[str, dict[str, Any]] | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, str], value: dict[str, dict[str, Any]]) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._maxsize:
                self._items.popitem(last=False)


class DicomWebStore:
    """The instances of a DICOMweb server (QIDO-RS / WADO-RS), see the module notes.

    Parameters
    ----------
    root : ``dicomweb+http(s)://host[:port]/path``, optionally ``?source=NAME``.
    user, password : HTTP basic auth; default: the settings ``dicomweb_user`` /
        ``dicomweb_password``.
    token : bearer token (used instead of basic auth); default: ``dicomweb_token``.
    page_size : QIDO-RS answers asked per request (``limit``).
    retries : attempts per request (at least 1); default: ``store_retries``.
    backoff_s : first back-off delay in seconds, doubled per attempt; default:
        ``store_backoff_s``.
    timeout_s : connect and read timeout of one request; default: ``store_timeout_s``.

    Attributes
    ----------
    root : the store URI without query and trailing slash (the prefix of every entry URI).
    source : the source name of every entry (``?source=``, else ``pacs-<host>-<port>``).

    Raises
    ------
    StoreError
        A malformed URI, credentials in it, an unknown query parameter or a bad source name.
    ValueError
        ``page_size``, ``retries``, ``backoff_s`` or ``timeout_s`` out of range.
    """

    def __init__(
        self,
        root: str,
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        page_size: int = PAGE_SIZE,
        retries: int | None = None,
        backoff_s: float | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self._parse_root(str(root).strip())
        settings = get_settings()
        self._user = user if user is not None else settings.dicomweb_user
        self._password = password if password is not None else settings.dicomweb_password
        self._token = token if token is not None else settings.dicomweb_token
        self.page_size = int(page_size)
        self.retries = int(retries if retries is not None else settings.store_retries)
        self.backoff_s = float(backoff_s if backoff_s is not None else settings.store_backoff_s)
        self.timeout_s = float(timeout_s if timeout_s is not None else settings.store_timeout_s)
        if self.page_size < 1:
            raise ValueError(f"page_size must be >= 1, not {self.page_size}")
        if self.retries < 1:
            raise ValueError(f"retries (attempts per request) must be >= 1, not {self.retries}")
        if self.backoff_s < 0:
            raise ValueError(f"backoff_s must be >= 0, not {self.backoff_s}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, not {self.timeout_s}")
        self._local = threading.local()
        # Weak: a thread's session goes with its thread (ingest makes new threads per run).
        self._sessions: weakref.WeakSet[requests.Session] = weakref.WeakSet()
        self._sessions_lock = threading.Lock()
        self._series_meta = _SeriesCache(_SERIES_CACHE)

    # ------------------------------------------------------------------ URIs

    def _parse_root(self, text: str) -> None:
        shown = re.sub(r"//[^/@]*@", "//***@", text)  # never echo credentials
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise StoreError(shown, f"malformed DICOMweb URI: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("dicomweb+http", "dicomweb+https"):
            raise StoreError(shown, "a DICOMweb store URI starts with dicomweb+http(s)://")
        if "@" in parts.netloc:
            raise StoreError(
                shown, f"credentials do not belong in the store URI (it is stored in the DB): "
                f"{_CREDENTIAL_HELP}",
            )  # fmt: skip
        host = (parts.hostname or "").lower()
        if not host:
            raise StoreError(shown, "the DICOMweb URI has no host")
        if parts.fragment:
            raise StoreError(shown, "a DICOMweb store URI has no #fragment")
        path = parts.path.rstrip("/")
        segments = path.split("/")
        if any(s in (".", "..") for s in segments):
            raise StoreError(shown, "the DICOMweb root path may not contain '.' or '..'")
        if "studies" in segments:
            raise StoreError(
                shown, "that is an instance or study URI: give the DICOMweb root (e.g. /dicom-web)"
            )
        source: str | None = None
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key != "source" or source is not None:
                raise StoreError(
                    shown, f"unknown or repeated query parameter {key!r}: only ?source=NAME"
                )
            if not _SOURCE_RE.match(value):
                raise StoreError(
                    shown,
                    "the source name must be 1 to 128 letters, digits, '.', '_' or '-', "
                    "starting with a letter or digit",
                )
            source = value
        netloc = host if ":" not in host else f"[{host}]"
        if port is not None:
            netloc += f":{port}"
        self.root = f"{scheme}://{netloc}{path}"
        self.http_base = f"{scheme.removeprefix('dicomweb+')}://{netloc}{path}"
        default_port = port if port is not None else (443 if scheme.endswith("https") else 80)
        self.server = netloc if port is not None else f"{netloc}:{default_port}"
        self.source = source or re.sub(r"[^A-Za-z0-9.-]", "-", f"pacs-{host}-{default_port}")

    def __repr__(self) -> str:
        return f"DicomWebStore({self.root!r}, source={self.source!r})"

    def _entry_uri(self, study: str, series: str, sop: str) -> str:
        return f"{self.root}/studies/{study}/series/{series}/instances/{sop}"

    def _parse_entry(self, uri: str) -> tuple[str, str, str]:
        """``(study, series, sop)`` of an entry URI of this store.

        Raises
        ------
        StoreError
            Not under this root, not ``/studies/<uid>/series/<uid>/instances/<uid>``, ``..``,
            a query or fragment, or a UID that is not digits and dots (at most 64).
        """
        text = str(uri)
        if not text.startswith(self.root + "/"):
            raise StoreError(text, f"not an instance of the DICOMweb store {self.root}")
        rest = text[len(self.root) :]
        if "?" in rest or "#" in rest or "%" in rest or "\\" in rest:
            raise StoreError(text, "a DICOMweb image URI has no query, fragment or escapes")
        if ".." in rest.split("/"):
            raise StoreError(text, f"path escapes the store root {self.root}")
        m = _ENTRY_RE.match(rest)
        if m is None:
            raise StoreError(
                text,
                "a DICOMweb image URI is <root>/studies/<uid>/series/<uid>/instances/<uid>",
            )
        uids = (m.group(1), m.group(2), m.group(3))
        for what, uid in zip(("study", "series", "SOP instance"), uids, strict=True):
            if not _valid_uid(uid):
                raise StoreError(
                    text, f"the {what} UID is not a valid UID (digits and dots, at most 64)"
                )
        return uids

    def local_path(self, uri: str) -> Path | None:
        """None: instances live on the server."""
        return None

    # ------------------------------------------------------------------ HTTP

    def _session(self) -> requests.Session:
        """This thread's session (requests sessions are not thread-safe)."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            retry = Retry(
                total=self.retries - 1,
                backoff_factor=self.backoff_s / 2,  # urllib3 waits factor × 2^n from retry 2 on
                status_forcelist=_RETRY_STATUS,
                allowed_methods=frozenset({"GET"}),
                raise_on_status=False,  # the last answer is mapped below, with its status
            )
            adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=4)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            if self._token:
                session.headers["Authorization"] = f"Bearer {self._token}"
            elif self._user:
                session.auth = (self._user, self._password or "")
            self._local.session = session
            with self._sessions_lock:
                self._sessions.add(session)
        return session

    def _client(self) -> Any:
        """This thread's dicomweb-client, on this thread's session."""
        client = getattr(self._local, "client", None)
        if client is None:
            from dicomweb_client import DICOMwebClient

            client = DICOMwebClient(
                self.http_base, session=self._session(), timeout=(self.timeout_s, self.timeout_s)
            )
            client.set_http_retry_params(retry=False)  # the session's adapter retries
            self._local.client = client
        return client

    def close(self) -> None:
        """Close the HTTP sessions of every thread (the store stays usable)."""
        with self._sessions_lock:
            sessions = list(self._sessions)
            self._sessions.clear()
        for session in sessions:
            session.close()
        self._local = threading.local()

    def _unavailable(self, reason: str) -> StoreUnavailableError:
        return StoreUnavailableError(
            self.root,
            f"the DICOMweb server {self.server} {reason} "
            f"(after {self.retries} attempt{'s' if self.retries != 1 else ''})",
        )

    def _http_error(self, uri: str, status: int, what: str) -> StoreError:
        if status >= 500:
            return self._unavailable(f"keeps failing (HTTP {status})")
        if status in (401, 403):
            sent = (
                "refused the credentials" if (self._token or self._user) else "asks for credentials"
            )
            extra = (
                " (or refuses this client: Orthanc's RemoteAccessAllowed)" if status == 403 else ""
            )
            return StoreError(
                uri, f"the DICOMweb server {self.server} {sent} (HTTP {status}){extra}: "
                f"{_CREDENTIAL_HELP}",
            )  # fmt: skip
        if status == 404:
            if uri == self.root:
                return StoreError(uri, "no DICOMweb service answers at this root (HTTP 404)")
            return StoreError(uri, f"{what} not found on the server (HTTP 404)")
        return StoreError(
            uri, f"the DICOMweb server refused the request for {what} (HTTP {status})"
        )

    def _call(self, uri: str, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` with ``requests`` errors mapped to StoreError / StoreUnavailableError."""
        try:
            return fn()
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            raise self._http_error(uri, status, what) from None
        except requests.Timeout:
            raise self._unavailable(f"did not answer within {self.timeout_s:g} s") from None
        except (requests.ConnectionError, requests.exceptions.RetryError) as exc:
            text = str(exc).lower()
            reason = "refused the connection" if "refused" in text else "cannot be reached"
            raise self._unavailable(reason) from None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError):
            raise self._unavailable("broke off an answer") from None
        except requests.exceptions.InvalidJSONError as exc:
            raise StoreError(uri, f"malformed answer for {what}: {type(exc).__name__}") from None
        except requests.RequestException as exc:
            raise StoreError(uri, f"request for {what} failed: {type(exc).__name__}") from None
        except ValueError as exc:  # malformed JSON / multipart, rejected UIDs
            raise StoreError(uri, f"malformed answer for {what}: {type(exc).__name__}") from None

    def _get(self, url: str, accept: str) -> requests.Response:
        r = self._session().get(
            url, headers={"Accept": accept}, timeout=(self.timeout_s, self.timeout_s)
        )
        r.raise_for_status()
        return r

    # ------------------------------------------------------------------ listing

    def _page_all(
        self,
        search: Callable[[int, int], list[dict[str, Any]]],
        key: str,
        expected: int | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Every answer of one QIDO-RS query by UID, page by page (see the module notes)."""
        found: dict[str, dict[str, Any]] = {}
        offset = 0
        while expected is None or len(found) < expected:
            page = search(offset, self.page_size)
            if not page:
                break
            new = 0
            for item in page:
                uid = _uid_of(item, key)
                if uid is not None and uid not in found:
                    found[uid] = item
                    new += 1
            if not new:
                break  # a server that ignores offset would repeat itself forever
            offset += len(page)
        return found

    def _studies(self) -> dict[str, dict[str, Any]]:
        """Every study, checked against a cap on the answers of one query."""

        def query(part: _Part) -> dict[str, dict[str, Any]]:
            filters = part.filters()

            def search(offset: int, limit: int) -> list[dict[str, Any]]:
                return self._client().search_for_studies(
                    offset=offset,
                    limit=limit,
                    fields=[_STUDY_DATE, _STUDY_TIME, _N_STUDY_SERIES, _N_STUDY_INSTANCES],
                    search_filters=filters or None,
                )

            return self._call(self.root, "study list", lambda: self._page_all(search, _STUDY_UID))

        found = query(_Part())
        todo = [(_Part(), list(found.values()))] if len(found) >= 2 else []
        while todo:
            part, answers = todo.pop()
            subs = part.split(answers)
            if not subs:
                log.warning(
                    "DICOMweb %s: %d studies cannot be split further by StudyDate/StudyTime "
                    "(the same date and second, or none); if the server caps the answers of "
                    "one query (Orthanc: LimitFindResults), studies beyond its cap are missing",
                    self.root,
                    len(answers),
                )
                continue
            for sub in subs:
                got = query(sub)
                found.update(got)
                if len(got) >= len(answers) and len(got) >= 2:
                    todo.append((sub, list(got.values())))  # as large as the whole: maybe cut
        return found

    def _from_metadata(self, items: list[dict[str, Any]]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for item in items:
            se, sop = _uid_of(item, _SERIES_UID), _uid_of(item, _SOP_UID)
            if se is not None and sop is not None:
                out.setdefault(se, set()).add(sop)
        return out

    def _study_instances(self, study: str, study_item: dict[str, Any]) -> dict[str, set[str]]:
        """``{series uid: {sop uids}}`` of one study."""
        client = self._client
        n_series = _count_of(study_item, _N_STUDY_SERIES)
        series = self._call(
            self.root,
            "series list",
            lambda: self._page_all(
                lambda o, n: client().search_for_series(
                    study, offset=o, limit=n, fields=[_N_SERIES_INSTANCES]
                ),
                _SERIES_UID,
                n_series,
            ),
        )
        if n_series is not None and len(series) < n_series:
            log.info(
                "DICOMweb %s: the server answered %d of %d series of a study (a cap on query "
                "answers); listing them from the study metadata",
                self.root, len(series), n_series,
            )  # fmt: skip
            meta = self._call(
                self.root, "study metadata", lambda: client().retrieve_study_metadata(study)
            )
            return self._from_metadata(meta)
        out: dict[str, set[str]] = {}
        for se, item in series.items():
            n_inst = _count_of(item, _N_SERIES_INSTANCES)

            def instances(se: str = se, n_inst: int | None = n_inst) -> dict[str, Any]:
                return self._page_all(
                    lambda o, n: client().search_for_instances(study, se, offset=o, limit=n),
                    _SOP_UID,
                    n_inst,
                )

            sops = self._call(self.root, "instance list", instances)
            if n_inst is not None and len(sops) < n_inst:
                log.info(
                    "DICOMweb %s: the server answered %d of %d instances of a series (a cap on "
                    "query answers); listing them from the series metadata",
                    self.root, len(sops), n_inst,
                )  # fmt: skip
                out[se] = set(self._series_metadata(study, se))
            else:
                out[se] = set(sops)
        return out

    def _all_instances(self) -> dict[str, dict[str, set[str]]]:
        """``{study: {series: {sops}}}`` from instance-level QIDO-RS at the root, a page of
        ``page_size`` instances per request (far fewer requests than study by study). A cap
        on query answers may cut it short: :meth:`list` checks each study's count."""
        client = self._client

        def search(offset: int, limit: int) -> list[dict[str, Any]]:
            return client().search_for_instances(
                offset=offset, limit=limit, fields=[_STUDY_UID, _SERIES_UID]
            )

        found = self._call(self.root, "instance list", lambda: self._page_all(search, _SOP_UID))
        out: dict[str, dict[str, set[str]]] = {}
        for sop, item in found.items():
            st, se = _uid_of(item, _STUDY_UID), _uid_of(item, _SERIES_UID)
            if st is not None and se is not None:
                out.setdefault(st, {}).setdefault(se, set()).add(sop)
        return out

    def _listed(
        self, uid: str, item: dict[str, Any], fast: dict[str, dict[str, set[str]]]
    ) -> dict[str, set[str]]:
        """One study's instances: from the root-level listing when its count matches the
        study's NumberOfStudyRelatedInstances, else study by study (series, instances)."""
        got = fast.get(uid)
        expected = _count_of(item, _N_STUDY_INSTANCES)
        if got is not None and expected is not None:
            if sum(len(v) for v in got.values()) == expected:
                return got
        return self._study_instances(uid, item)

    def list(self) -> Iterator[StoreEntry]:
        """Every instance, sorted by study, series and SOP instance UID.

        Studies come from QIDO-RS (checked against a server cap on answers); their instances
        from one instance-level query at the root, paged, accepted per study when the count
        matches the study's NumberOfStudyRelatedInstances, else listed study by study.

        ``size`` and ``mtime`` are None: QIDO-RS does not tell (ingest learns the size when it
        reads the instance, and an instance never changes under its URI).

        Raises
        ------
        StoreError
            The server refused the query (credentials, no DICOMweb service at this root).
        StoreUnavailableError
            The server cannot be reached.
        """
        studies = self._studies()
        fast = self._all_instances()
        valid = [uid for uid in sorted(studies) if _valid_uid(uid)]
        skipped = len(studies) - len(valid)
        # The studies are independent and each costs 1 + n_series round trips of a few ms:
        # a few threads overlap them (results still come in UID order).
        pool = ThreadPoolExecutor(
            max_workers=max(1, min(_LIST_THREADS, len(valid))), thread_name_prefix="qido"
        )
        try:
            listed = pool.map(lambda uid: self._listed(uid, studies[uid], fast), valid)
            for study, by_series in zip(valid, listed, strict=True):
                for se, sops in sorted(by_series.items()):
                    for sop in sorted(sops):
                        if not (_valid_uid(se) and _valid_uid(sop)):
                            skipped += 1
                            continue
                        yield StoreEntry(
                            uri=self._entry_uri(study, se, sop),
                            size=None,
                            mtime=None,
                            key=f"{self.source}/{study}/{se}/{sop}",
                        )
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if skipped:
            log.warning(
                "DICOMweb %s: %d studies or instances skipped: their UIDs are not digits and "
                "dots (at most 64)",
                self.root, skipped,
            )  # fmt: skip

    # ------------------------------------------------------------------ reading

    def open(self, uri: str) -> BinaryIO:
        """The instance as stored (WADO-RS retrieve instance, ``transfer-syntax=*``).

        Raises
        ------
        StoreError
            The URI is not an instance URI of this store, or the server has no such instance.
        StoreUnavailableError
            The server cannot be reached.
        """
        study, series, sop = self._parse_entry(uri)
        url = f"{self.http_base}/studies/{study}/series/{series}/instances/{sop}"

        def fetch() -> bytes:
            r = self._get(url, _INSTANCE_ACCEPT)
            ctype = r.headers.get("Content-Type", "")
            if ctype.lower().startswith("multipart/"):
                parts = _multipart_parts(r.content, ctype)
                if len(parts) != 1:
                    raise ValueError(f"{len(parts)} parts for one instance")
                return parts[0]
            return r.content  # some servers send the single part bare

        return io.BytesIO(self._call(uri, "instance", fetch))

    def _series_metadata(self, study: str, series: str) -> dict[str, dict[str, Any]]:
        """``{sop uid: DICOM JSON}`` of a series (one WADO-RS request, cached)."""
        key = (study, series)
        cached = self._series_meta.get(key)
        if cached is not None:
            return cached
        items = self._call(
            f"{self.root}/studies/{study}/series/{series}",
            "series metadata",
            lambda: self._client().retrieve_series_metadata(study, series),
        )
        meta = {sop: item for item in items if (sop := _uid_of(item, _SOP_UID)) is not None}
        self._series_meta.put(key, meta)
        return meta

    def _metadata(self, uri: str) -> dict[str, Any]:
        study, series, sop = self._parse_entry(uri)
        item = self._series_metadata(study, series).get(sop)
        if item is None:
            raise StoreError(uri, "instance not found on the server (not in its series metadata)")
        return item

    def header(self, uri: str) -> Dataset:
        """The header from WADO-RS metadata (bulk data left out), PHI included as stored.

        The metadata of the whole series is fetched once and kept in a small LRU. The file
        meta holds the transfer syntax only when the server's metadata tells it (Orthanc's
        does not).

        Raises
        ------
        StoreError
            Not an instance URI of this store, not on the server, or malformed metadata.
        StoreUnavailableError
            The server cannot be reached.
        """
        item = self._metadata(uri)
        tsyntax = _uid_of(item, _TSYNTAX) or _uid_of(item, _AVAILABLE_TSYNTAX)
        body = {k: v for k, v in _without_bulk_data(item).items() if not k.startswith("0002")}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # odd values are kept as the server sent them
                ds = Dataset.from_json(body)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StoreError(
                uri, f"the server's metadata cannot be read: {type(exc).__name__}"
            ) from None
        ds.file_meta = FileMetaDataset()
        if tsyntax and _valid_uid(tsyntax):
            ds.file_meta.TransferSyntaxUID = tsyntax
        return ds

    def native_pixels(self, uri: str) -> bytes:
        """Every frame decoded by the server to explicit VR little endian, concatenated.

        WADO-RS frames ``/frames/1,...,n`` with ``Accept: multipart/related;
        type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1``; the number of
        frames comes from the (cached) metadata.

        Raises
        ------
        StoreError
            Not an instance URI of this store, not on the server, or the server cannot decode
            it (it refuses the transfer syntax).
        StoreUnavailableError
            The server cannot be reached.
        """
        study, series, sop = self._parse_entry(uri)
        n_frames = max(1, _count_of(self._metadata(uri), "00280008") or 1)
        frames = self._call(
            uri,
            "frames",
            lambda: self._client().retrieve_instance_frames(
                study,
                series,
                sop,
                frame_numbers=list(range(1, n_frames + 1)),
                media_types=(("application/octet-stream", _EXPLICIT_VR_LE),),
            ),
        )
        if len(frames) != n_frames:
            raise StoreError(uri, f"the server sent {len(frames)} of {n_frames} frames")
        return b"".join(frames)

    def thumbnail(
        self, uri: str, max_side: int
    ) -> tuple[NDArray[np.uint8], tuple[int, int]] | None:
        """A grey thumbnail rendered by the server (WADO-RS ``/rendered``, PNG).

        Parameters
        ----------
        uri : an instance URI of this store.
        max_side : the longest side in pixels; images are not enlarged.

        Returns
        -------
        (pixels, (rows, cols)) or None
            uint8 pixels of shape (h, w) and the original size from the metadata; None when
            the server cannot render the instance (a 4xx answer other than 401/403/404, or an
            answer that is not an image), so the caller decodes it itself.

        Raises
        ------
        StoreError
            Not an instance URI of this store, not on the server, or credentials refused.
        StoreUnavailableError
            The server cannot be reached.
        ValueError
            ``max_side`` below 1.
        """
        if max_side < 1:
            raise ValueError(f"max_side must be >= 1, not {max_side}")
        study, series, sop = self._parse_entry(uri)
        item = self._metadata(uri)
        rows, cols = _count_of(item, "00280010") or 0, _count_of(item, "00280011") or 0
        if rows <= 0 or cols <= 0:
            return None
        scale = min(1.0, max_side / max(rows, cols))
        width, height = max(1, round(cols * scale)), max(1, round(rows * scale))
        path = f"{self.http_base}/studies/{study}/series/{series}/instances/{sop}"
        if (_count_of(item, "00280008") or 1) > 1:
            path += "/frames/1"
        # The comma stays literal: Orthanc does not decode %2C in viewport.
        url = f"{path}/rendered?viewport={width},{height}"

        def fetch() -> bytes | None:
            try:
                return self._get(url, "image/png").content
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                if 400 <= status < 500 and status not in (401, 403, 404):
                    return None
                raise

        data = self._call(uri, "rendered image", fetch)
        if data is None:
            return None
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as im:
                pixels = np.asarray(im.convert("L"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError):
            return None
        return np.ascontiguousarray(pixels), (rows, cols)
