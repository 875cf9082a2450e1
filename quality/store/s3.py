"""An S3-compatible bucket (AWS S3, MinIO, Ceph, moto) as an image store, through s3fs.

``s3://bucket`` or ``s3://bucket/prefix``: every object below the prefix is an entry, its
URI ``s3://bucket/<full key>`` (what ingest writes to ``images.uri``), its key relative to the
prefix (``<source>/<study>/<series>/<file>.dcm``, as for folders).

Endpoint and credentials come from the settings (``QUALITY_S3_ENDPOINT_URL``,
``QUALITY_S3_KEY``, ``QUALITY_S3_SECRET``, ``QUALITY_S3_REGION`` or the ``[quality]`` table of
``.streamlit/secrets.toml``), never from the URI: URIs end up in the DB.

Design notes
------------
* **Listing** pages through ``ListObjectsV2`` itself (``MaxKeys`` = ``page_size``, 1000, the S3
  maximum, by default). s3fs paginates too, but its page size is fixed by the server and
  ``find`` also caches listings; one request per page through ``fs.call_s3`` keeps the page
  size settable (tests use small pages) and each page retried on its own.
* **Reads** are ranged GETs of :data:`BLOCK_SIZE` (256 KiB) with s3fs's ``readahead`` cache:
  a header-only read (``dcmread(stop_before_pixels=True)``) fetches the first block or two,
  not the whole object; sequential reads (the pixel hash) fetch block after block. 256 KiB
  holds the header of nearly every image (headers are a few KiB, big private blocks rarely
  exceed 100 KiB) while keeping the number of requests for a 10 MiB object at about 40.
  Each read is pinned to the object's ETag (``If-Match``), so an object replaced while it is
  read fails cleanly instead of mixing versions.
* **Retries** are done here, not by botocore or s3fs (both are set to one attempt): the
  settings ``store_retries`` (attempts), ``store_backoff_s`` (first delay, doubled per
  attempt, with jitter) and ``store_timeout_s`` (connect and read timeout of one request)
  bound the time a dead server takes to be reported to about
  ``retries × timeout + backoff × 2^retries`` seconds, instead of the minutes that botocore's
  and s3fs's retries multiplied would give.
* **Errors**: a missing object or access denied is a :class:`~quality.errors.StoreError` (a
  defect of that file); connection failures, timeouts, throttling and 5xx answers that
  persist after the retries are a :class:`~quality.errors.StoreUnavailableError` naming the
  endpoint. The file objects returned by :meth:`S3Store.open` map their ``read``/``seek``
  errors the same way.
* **Threads**: ingest reads from up to 16 threads. s3fs runs every request on its own event
  loop thread (calls from other threads are thread-safe); the connection pool is sized for
  that. A file object is used by one thread at a time.
"""

from __future__ import annotations

import io
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from quality.config import get_settings
from quality.errors import StoreError, StoreUnavailableError
from quality.store import StoreEntry

__all__ = ["BLOCK_SIZE", "PAGE_SIZE", "S3Store"]

log = logging.getLogger(__name__)

BLOCK_SIZE = 256 * 1024
"""Bytes per ranged GET when reading an object (see the module notes)."""

PAGE_SIZE = 1000
"""Keys per ``ListObjectsV2`` page: the S3 maximum."""

_POOL_CONNECTIONS = 32  # ingest runs up to 16 reader threads; leave room for the viewer
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,62}$")
_CRED_HINT = (
    "put credentials in QUALITY_S3_KEY / QUALITY_S3_SECRET (or s3_key / s3_secret in the "
    "[quality] table of .streamlit/secrets.toml), never in the URI"
)

_MISSING_CODES = {"NoSuchKey", "NotFound", "404"}
_DENIED_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AccountProblem",
    "403",
    "401",
}
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "ServiceUnavailable",
    "InternalError",
    "503",
    "500",
    "502",
    "504",
    "429",
}

T = TypeVar("T")


# --------------------------------------------------------------------------- error mapping


class _Failure:
    """What went wrong in one S3 call: ``kind`` is missing, no_bucket, denied, changed,
    transient or other; ``reason`` is a one-line, credential-free description."""

    __slots__ = ("kind", "reason")

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes/contexts (s3fs wraps botocore errors in OSError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 10:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _one_line(text: str, n: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _transient_types() -> tuple[type[BaseException], ...]:
    import asyncio
    import socket

    from botocore import exceptions as bexc

    types: list[type[BaseException]] = [
        ConnectionError,
        TimeoutError,
        socket.timeout,
        asyncio.TimeoutError,
        bexc.HTTPClientError,  # EndpointConnectionError, ConnectTimeout, ReadTimeout, ...
        bexc.ResponseStreamingError,
        bexc.IncompleteReadError,
    ]
    try:
        types.append(bexc.ResponseParserError)  # throttling answers with invalid XML
    except AttributeError:  # older botocore
        pass
    try:
        import aiohttp

        types.append(aiohttp.ClientError)  # disconnects and payload errors mid-body
    except ImportError:  # s3fs always brings aiohttp; be defensive anyway
        pass
    try:
        from fsspec.exceptions import FSTimeoutError

        types.append(FSTimeoutError)
    except ImportError:
        pass
    return tuple(types)


def _classify(exc: BaseException) -> _Failure:
    """Map an exception of s3fs/botocore/aiohttp to a :class:`_Failure`."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, ClientError):
            err = e.response.get("Error", {}) if isinstance(e.response, dict) else {}
            code = str(err.get("Code", ""))
            meta = e.response.get("ResponseMetadata", {}) if isinstance(e.response, dict) else {}
            status = int(meta.get("HTTPStatusCode") or 0)
            message = _one_line(err.get("Message") or code or str(e))
            what = f"{code or 'HTTP ' + str(status)}: {message}"
            if code == "NoSuchBucket":
                return _Failure("no_bucket", what)
            if code in _MISSING_CODES or status == 404:
                return _Failure("missing", what)
            if code in _DENIED_CODES or status in (401, 403):
                return _Failure("denied", what)
            if code == "PreconditionFailed" or status == 412:
                return _Failure("changed", what)
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                return _Failure("transient", what)
            return _Failure("other", what)
    for e in chain:
        if isinstance(e, NoCredentialsError | PartialCredentialsError):
            return _Failure("denied", f"no usable S3 credentials: {_CRED_HINT}")
    for e in chain:
        if type(e).__name__ == "FileExpired":  # fsspec: the ETag changed while reading
            return _Failure("changed", "the object changed while it was read")
    transient = _transient_types()
    for e in chain:
        if isinstance(e, transient):
            return _Failure("transient", _one_line(f"{type(e).__name__}: {e}"))
    for e in chain:
        if isinstance(e, FileNotFoundError):
            return _Failure("missing", _one_line(str(e)))
        if isinstance(e, PermissionError):
            return _Failure("denied", _one_line(str(e)))
    return _Failure("other", _one_line(f"{type(exc).__name__}: {exc}"))


def _redact_uri(uri: str) -> str:
    """``uri`` with any ``user:password@`` part of its authority replaced by ``***@``."""
    text = str(uri)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}{sep}{authority}{slash}{path}"


# --------------------------------------------------------------------------- the store


# botocore's DEBUG records print signed requests (the Authorization header names the access
# key id) and the canonical request. Those loggers stay at INFO unless someone configured them
# explicitly, so a root logger turned to DEBUG never writes credentials to a log.
_SIGNING_LOGGERS = (
    "botocore.auth",
    "botocore.endpoint",
    "botocore.hooks",
    "botocore.httpsession",
    "botocore.parsers",
    "botocore.retryhandler",
    "aiobotocore.endpoint",
    "s3fs",
)


def _quiet_signing_logs() -> None:
    for name in _SIGNING_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)


class S3Store:
    """Objects below ``s3://bucket/prefix`` of an S3-compatible server.

    Parameters
    ----------
    root : ``s3://bucket`` or ``s3://bucket/prefix`` (a trailing ``/`` is ignored).
    endpoint_url : the server, e.g. ``http://127.0.0.1:9000``; None for AWS. Default: the
        ``s3_endpoint_url`` setting.
    key, secret : access key id and secret; default: the ``s3_key`` / ``s3_secret``
        settings, else botocore's credential chain (environment, ``~/.aws``, instance role).
    region : region name; default: the ``s3_region`` setting.
    retries : attempts per request before the store counts as unavailable (default:
        ``store_retries``).
    backoff_s : delay before the second attempt, doubled per attempt, with jitter (default:
        ``store_backoff_s``).
    timeout_s : connect and read timeout of one request (default: ``store_timeout_s``).
    page_size : keys per listing request (1 to 1000).
    block_size : bytes per ranged GET.

    Raises
    ------
    StoreError
        A malformed root, or credentials embedded in it.
    """

    def __init__(
        self,
        root: str,
        *,
        endpoint_url: str | None = None,
        key: str | None = None,
        secret: str | None = None,
        region: str | None = None,
        retries: int | None = None,
        backoff_s: float | None = None,
        timeout_s: float | None = None,
        page_size: int = PAGE_SIZE,
        block_size: int = BLOCK_SIZE,
    ) -> None:
        self.bucket, self._prefix = _parse_root(root)
        self.root = f"s3://{self.bucket}/{self._prefix}" if self._prefix else f"s3://{self.bucket}"
        settings = get_settings()
        self.endpoint_url = endpoint_url if endpoint_url is not None else settings.s3_endpoint_url
        if self.endpoint_url and "@" in self.endpoint_url.partition("://")[2].partition("/")[0]:
            raise StoreError(
                _redact_uri(self.endpoint_url),
                f"credentials in the endpoint URL are not allowed: {_CRED_HINT}",
            )
        self._key = key if key is not None else settings.s3_key
        self._secret = secret if secret is not None else settings.s3_secret
        self.region = region if region is not None else settings.s3_region
        self.retries = max(1, int(retries if retries is not None else settings.store_retries))
        self.backoff_s = max(
            0.0, float(backoff_s if backoff_s is not None else settings.store_backoff_s)
        )
        self.timeout_s = max(
            0.1, float(timeout_s if timeout_s is not None else settings.store_timeout_s)
        )
        if not 1 <= page_size <= PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {PAGE_SIZE}, not {page_size}")
        if block_size < 1024:
            raise ValueError(f"block_size must be at least 1024 bytes, not {block_size}")
        self.page_size = page_size
        self.block_size = block_size
        _quiet_signing_logs()
        self._fs = self._make_fs()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"S3Store({self.root!r}, endpoint={self.endpoint!r})"

    @property
    def endpoint(self) -> str:
        """The server, for messages: the endpoint URL or ``AWS S3``."""
        return self.endpoint_url or "AWS S3 (default endpoint)"

    def _make_fs(self) -> Any:
        import s3fs

        config: dict[str, Any] = {
            "connect_timeout": self.timeout_s,
            "read_timeout": self.timeout_s,
            # One attempt per call: retries and back-off are ours (see _call), so the total
            # time spent on a dead server is bounded by the settings.
            "retries": {"total_max_attempts": 1},
            "max_pool_connections": _POOL_CONNECTIONS,
        }
        if self.endpoint_url:
            # Self-hosted servers (MinIO, Ceph, moto) rarely serve virtual-hosted buckets.
            config["s3"] = {"addressing_style": "path"}
        client: dict[str, Any] = {}
        if self.region:
            client["region_name"] = self.region
        fs = s3fs.S3FileSystem(
            key=self._key,
            secret=self._secret,
            endpoint_url=self.endpoint_url,
            client_kwargs=client,
            config_kwargs=config,
            default_block_size=self.block_size,
            default_cache_type="readahead",
            skip_instance_cache=True,  # each store owns its settings and credentials
            use_listings_cache=False,  # a rerun must see the bucket as it is now
        )
        fs.retries = 1  # s3fs's own retry loop: one attempt (ours wraps it)
        return fs

    # ------------------------------------------------------------------ retries

    def _call(self, uri: str, fn: Callable[[], T]) -> T:
        """``fn()`` with retries and back-off; errors mapped to StoreError types.

        Raises
        ------
        StoreError
            Missing object, access denied, or another non-transient failure.
        StoreUnavailableError
            Still failing (connection, timeout, throttling, 5xx) after ``retries`` attempts.
        """
        delay = self.backoff_s
        for attempt in range(1, self.retries + 1):
            try:
                return fn()
            except StoreError:
                raise
            except Exception as exc:  # s3fs/botocore/aiohttp raise many types: map them all
                failure = _classify(exc)
                reason = self._redact(failure.reason)
                if failure.kind != "transient":
                    raise self._store_error(uri, failure.kind, reason) from exc
                if attempt == self.retries:
                    raise StoreUnavailableError(
                        _redact_uri(uri),
                        f"S3 endpoint {self.endpoint} did not answer properly after "
                        f"{self.retries} attempt(s) ({reason})",
                    ) from exc
                log.debug("S3 attempt %d failed (%s), retrying", attempt, reason)
                time.sleep(delay * (0.5 + random.random() / 2))
                delay *= 2
        raise AssertionError("unreachable")  # the loop returns or raises

    def _store_error(self, uri: str, kind: str, reason: str) -> StoreError:
        safe = _redact_uri(uri)
        if kind == "missing":
            return StoreError(safe, f"object not found in {self.root}")
        if kind == "no_bucket":
            return StoreError(safe, f"bucket {self.bucket!r} not found at {self.endpoint}")
        if kind == "denied":
            return StoreError(safe, f"access denied by {self.endpoint} ({reason})")
        if kind == "changed":
            return StoreError(safe, f"the object changed while it was read ({reason})")
        return StoreError(safe, f"S3 request failed ({reason})")

    def _redact(self, text: str) -> str:
        """Belt and braces: no message may carry the key or the secret."""
        for value in (self._secret, self._key):
            if value and len(value) >= 4:  # shorter ones would mangle words, not hide much
                text = text.replace(value, "***")
        return text

    # ------------------------------------------------------------------ listing

    def list(self) -> Iterator[StoreEntry]:
        """Every object below the prefix, sorted by key.

        Folder markers (keys ending in ``/``) and hidden objects (a key segment starting with
        ``.``) are skipped, as hidden files are for folders.

        Raises
        ------
        StoreError
            The bucket does not exist or listing is denied.
        StoreUnavailableError
            The server cannot be reached (after retries).
        """
        head = f"{self._prefix}/" if self._prefix else ""
        entries: list[StoreEntry] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": head,
                "MaxKeys": self.page_size,
            }
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(
                self.root, lambda kw=kwargs: self._fs.call_s3("list_objects_v2", **kw)
            )
            for obj in page.get("Contents", []) or []:
                full = str(obj["Key"])
                rel = full[len(head) :]
                if not full.startswith(head) or not rel or rel.endswith("/"):
                    continue  # a folder marker (or the prefix itself)
                if any(part.startswith(".") for part in rel.split("/")):
                    continue
                modified = obj.get("LastModified")
                entries.append(
                    StoreEntry(
                        uri=f"s3://{self.bucket}/{full}",
                        size=int(obj["Size"]) if obj.get("Size") is not None else None,
                        mtime=modified.timestamp() if modified is not None else None,
                        key=rel,
                    )
                )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated"):
                break
            if not token:
                raise StoreError(self.root, "truncated listing without a continuation token")
        entries.sort(key=lambda e: e.key)
        yield from entries

    # ------------------------------------------------------------------ entries

    def _object_key(self, uri: str) -> str:
        """The object key of an entry URI of this store.

        Raises
        ------
        StoreError
            Not ``s3://``, another bucket, outside the prefix, or an unsafe key (``..``,
            ``.`` or empty segments, a leading ``/``).
        """
        if not isinstance(uri, str) or not uri[:5].lower() == "s3://":
            raise StoreError(_redact_uri(str(uri)), f"not an s3:// URI of the store {self.root}")
        bucket, sep, key = uri[5:].partition("/")
        if "@" in bucket:
            raise StoreError(
                _redact_uri(uri), f"credentials in the URI are not allowed: {_CRED_HINT}"
            )
        if bucket != self.bucket:
            raise StoreError(uri, f"outside the store root {self.root} (another bucket)")
        if not sep or not key:
            raise StoreError(uri, "an S3 entry URI names an object: s3://bucket/key")
        parts = key.split("/")
        if any(part in ("", ".", "..") for part in parts) or "\x00" in key:
            raise StoreError(
                uri, f"unsafe object key (empty, '.' or '..' segments) in the store {self.root}"
            )
        if "?versionId=" in key:
            raise StoreError(uri, "object versions are not supported")
        if self._prefix and not key.startswith(self._prefix + "/"):
            raise StoreError(uri, f"outside the store root {self.root}")
        return key

    def local_path(self, uri: str) -> Path | None:
        """None: S3 objects have no local path. Validates ``uri`` first.

        Raises
        ------
        StoreError
            ``uri`` is not an entry of this store (see :meth:`open`).
        """
        self._object_key(uri)
        return None

    def _client(self) -> Any:
        """This thread's botocore S3 client (same endpoint, credentials and timeouts as the
        s3fs filesystem; botocore clients are not shared between threads)."""
        client = getattr(self._local, "client", None)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=self.timeout_s,
                read_timeout=self.timeout_s,
                retries={"total_max_attempts": 1},  # ours: see _call
                s3={"addressing_style": "path"} if self.endpoint_url else None,
            )
            client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint_url,
                aws_access_key_id=self._key,
                aws_secret_access_key=self._secret,
                region_name=self.region,
                config=config,
            )
            self._local.client = client
        return client

    def read_bytes(self, uri: str) -> bytes:
        """The whole object in one GET (no HEAD first), for readers that need every byte
        (ingest hashes the Pixel Data). Same errors as :meth:`open`.

        A plain botocore ``get_object`` on a per-thread client: s3fs's synchronous calls go
        through its event-loop thread, which measured 2.5-3x slower per small object
        (``bench/stores.py``); s3fs stays in charge of listing and ranged reads.
        """
        key = self._object_key(uri)
        return self._call(
            uri,
            lambda: self._client().get_object(Bucket=self.bucket, Key=key)["Body"].read(),
        )

    def open(self, uri: str) -> BinaryIO:
        """Open an object for reading: seekable, with ranged GETs of ``block_size`` bytes.

        Raises
        ------
        StoreError
            The URI is outside this store or unsafe, the object does not exist, or access is
            denied.
        StoreUnavailableError
            The server cannot be reached (after retries).
        """
        key = self._object_key(uri)
        path = f"{self.bucket}/{key}"

        def _open() -> Any:
            return self._fs.open(path, "rb", block_size=self.block_size, cache_type="readahead")

        handle = self._call(uri, _open)
        if handle.details.get("type", "file") != "file":
            handle.close()
            raise StoreError(uri, f"object not found in {self.root} (a folder prefix)")
        return _S3Reader(handle, self, uri)  # type: ignore[return-value]


class _S3Reader(io.RawIOBase):
    """A read-only, seekable view of an s3fs file whose errors are StoreError types.

    ``read`` and ``seek`` go through :meth:`S3Store._call`: a transient failure is retried (the
    s3fs file's position and cache are unchanged when a fetch fails), a persistent one is a
    :class:`StoreUnavailableError`.
    """

    def __init__(self, handle: Any, store: S3Store, uri: str) -> None:
        super().__init__()
        self._f = handle
        self._store = store
        self.name = uri
        self.size = int(handle.size)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        n = -1 if size is None else size
        return self._store._call(self.name, lambda: self._f.read(n))

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        return int(self._store._call(self.name, lambda: self._f.seek(offset, whence)))

    def tell(self) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        return int(self._f.tell())

    def close(self) -> None:
        if not self.closed:
            try:
                self._f.close()
            finally:
                super().close()


def _parse_root(root: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of a store root; the prefix without leading/trailing ``/``.

    Raises
    ------
    StoreError
        Not ``s3://``, credentials embedded, a bad bucket name, or ``.``/``..`` segments.
    """
    text = str(root).strip()
    if text[:5].lower() != "s3://":
        raise StoreError(_redact_uri(text), "an S3 store URI starts with s3://")
    bucket, _, prefix = text[5:].partition("/")
    if "@" in bucket:
        raise StoreError(_redact_uri(text), f"credentials in the URI are not allowed: {_CRED_HINT}")
    if not _BUCKET.match(bucket):
        raise StoreError(text, "an S3 store URI is s3://bucket or s3://bucket/prefix")
    if "?" in prefix or "#" in prefix:
        raise StoreError(text, "an S3 store URI has no query or fragment")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise StoreError(text, "'.' and '..' are not allowed in an S3 prefix")
    return bucket, "/".join(parts)
