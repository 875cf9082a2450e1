"""A throwaway Orthanc PACS (Debian's ``orthanc`` + ``orthanc-dicomweb`` + ``orthanc-gdcm``).

Used by the DICOMweb store tests and by ``bench/stores.py``: each :class:`OrthancServer`
writes its own configuration into a temp dir, listens on a free port and keeps its index and
files in the given storage folder, so a restart on the same folder keeps the data.

Network exposure: Orthanc 1.10 has no option to bind its HTTP server to one address (its
embedded CivetWeb server is given ``listening_ports = <HttpPort>`` only, so it listens on
all interfaces; ``HttpBindAddress`` does not exist in 1.10.1, checked in the binary's
strings). ``RemoteAccessAllowed`` is therefore kept false: Orthanc then answers every
request that does not come from the loopback interface with 403. The DICOM (C-STORE) server
is disabled altogether.

The GDCM plugin is not loaded unless asked for (``gdcm=True``): with Debian's Orthanc 1.10.1,
DICOMweb plugin 1.7 and GDCM plugin 1.5, repeated WADO-RS frame requests for a JPEG-LS or
JPEG 2000 instance (and a frame request after a ``/rendered`` of one) crash Orthanc with
SIGSEGV, while Orthanc's built-in DCMTK decoders serve RLE, JPEG, JPEG-LS and JPEG 2000
frames and renderings without it (checked with pydicom's ``MR_small_*`` test files).
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

import requests
from netutil import free_port

__all__ = ["ORTHANC_BIN", "PLUGIN_DIR", "OrthancServer", "orthanc_available"]

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
_DICOMWEB_PLUGIN = PLUGIN_DIR / "libOrthancDicomWeb.so"
_GDCM_PLUGIN = PLUGIN_DIR / "libOrthancGdcm.so"
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0


def orthanc_available() -> str | None:
    """None when Orthanc and its DICOMweb plugin are installed, else why not."""
    if not ORTHANC_BIN.is_file() or not os.access(ORTHANC_BIN, os.X_OK):
        return f"{ORTHANC_BIN} is missing (Debian package orthanc)"
    if not _DICOMWEB_PLUGIN.exists():
        return f"{_DICOMWEB_PLUGIN} is missing (Debian package orthanc-dicomweb)"
    return None


_running: weakref.WeakSet[OrthancServer] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """A script or test run that ends without stopping its servers does not leave them."""
    for server in list(_running):
        server.kill()
        shutil.rmtree(server._tmp, ignore_errors=True)


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL when the parent dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class OrthancServer:
    """One Orthanc process on loopback with the DICOMweb (and, if installed, GDCM) plugin.

    Parameters
    ----------
    storage_dir : where Orthanc keeps its SQLite index and DICOM files (created if missing).
    users : HTTP basic users (``{"name": "password"}``); enables authentication.
    limit_find_results : Orthanc's ``LimitFindResults`` and ``LimitFindInstances`` (0: no
        limit): the most answers of one find at the study/series and the instance level.
        Orthanc caps the *total* (it looks up ``limit + 1`` resources, then applies the
        offset), so paging does not get past it.
    gdcm : also load the GDCM plugin (see the module notes for why it is off by default).

    Attributes
    ----------
    http_port : the HTTP port (chosen at the first :meth:`start`, kept by :meth:`restart`).
    http_url : ``http://127.0.0.1:PORT``.
    dicomweb_root : the store URI of the DICOMweb API, ``dicomweb+http://127.0.0.1:PORT/dicom-web``.
    log_path : Orthanc's log file (in the temp dir).
    """

    def __init__(
        self,
        storage_dir: Path,
        *,
        users: dict[str, str] | None = None,
        limit_find_results: int = 0,
        gdcm: bool = False,
    ) -> None:
        self.storage_dir = Path(storage_dir)
        self.gdcm = gdcm
        self.users = dict(users or {})
        self.limit_find_results = int(limit_find_results)
        self.http_port = 0
        self._tmp = Path(tempfile.mkdtemp(prefix="quality-orthanc-"))
        self.log_path = self._tmp / "orthanc.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ addresses

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_root(self) -> str:
        """``dicomweb+http://127.0.0.1:PORT/dicom-web``."""
        return f"dicomweb+{self.http_url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        """The first registered user as a ``requests`` basic-auth pair, or None."""
        return next(iter(self.users.items()), None)

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ life cycle

    def _config(self) -> dict[str, object]:
        plugins = [str(_DICOMWEB_PLUGIN)]
        if self.gdcm and _GDCM_PLUGIN.exists():
            plugins.append(str(_GDCM_PLUGIN))
        config: dict[str, object] = {
            "Name": "quality-test-pacs",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "HttpPort": self.http_port,
            "HttpServerEnabled": True,
            # No bind-address option in 1.10: this makes Orthanc refuse non-loopback clients.
            "RemoteAccessAllowed": False,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),  # unused (server disabled), but never the default 4242
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "Plugins": plugins,
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                "Host": f"127.0.0.1:{self.http_port}",
                "Ssl": False,
            },
            "Gdcm": {"Enable": True, "Throttling": 2},
            "LimitFindResults": self.limit_find_results,
            "LimitFindInstances": self.limit_find_results,
            "SaveJobs": False,
            "StorageCompression": False,
            "StoreMD5ForAttachments": False,
            "HttpDescribeErrors": True,
            "ConcurrentJobs": 1,
        }
        return config

    def start(self) -> OrthancServer:
        """Start Orthanc and wait until ``/system`` answers.

        Orthanc is killed when this process exits without stopping it (``atexit``) and, on
        Linux, when this process dies of a signal (``PR_SET_PDEATHSIG``; it fires when the
        *thread* that started the server ends, so start servers from a long-lived thread).

        Raises
        ------
        RuntimeError
            Orthanc is not installed, exits early or does not answer within 60 s; the
            message carries the tail of its log.
        """
        reason = orthanc_available()
        if reason is not None:
            raise RuntimeError(reason)
        if self.running:
            return self
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        if not self.http_port:
            self.http_port = free_port()
        config_path = self._tmp / "orthanc.json"
        config_path.write_text(json.dumps(self._config(), indent=2))
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(ORTHANC_BIN), "--no-jobs", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self._tmp,
                preexec_fn=_die_with_parent,
            )
        _running.add(self)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError(f"Orthanc exited with status {code}:\n{self.log_tail()}")
            try:
                r = requests.get(f"{self.http_url}/system", auth=self.auth, timeout=2)
                if r.status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"Orthanc did not answer on {self.http_url} within {_START_TIMEOUT_S:.0f} s:"
                    f"\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def log_tail(self, n: int = 4000) -> str:
        """The last ``n`` characters of Orthanc's log."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def _wait(self, timeout: float) -> bool:
        assert self._proc is not None
        try:
            self._proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        """Stop gracefully (SIGTERM) and wait for the process to exit: Orthanc locks its
        storage, so a new process on the same folder must not start before."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            if not self._wait(_STOP_TIMEOUT_S):
                self._proc.kill()
                self._wait(_STOP_TIMEOUT_S)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL (a crash, for fault tests) and wait for the process to exit."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._wait(_STOP_TIMEOUT_S)
        self._proc = None

    def restart(self) -> None:
        """Stop (if running) and start again on the same port and storage: data persists."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the temp dir (config and log); the storage folder stays."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ data

    def upload_folder(self, folder: Path) -> tuple[int, int]:
        """POST every regular, non-hidden file below ``folder`` to ``/instances``.

        Hidden files and folders are skipped, as the folder store skips them.

        Returns
        -------
        (accepted, rejected)
            Files Orthanc stored (200) and files it refused as not DICOM or corrupt (400).

        Raises
        ------
        RuntimeError
            Any other answer (a server error, refused credentials).
        """
        accepted = rejected = 0
        with requests.Session() as http:
            http.auth = self.auth
            for path in sorted(Path(folder).rglob("*")):
                rel = path.relative_to(folder)
                if any(part.startswith(".") for part in rel.parts) or not path.is_file():
                    continue
                r = http.post(
                    f"{self.http_url}/instances",
                    data=path.read_bytes(),
                    headers={"Content-Type": "application/dicom"},
                    timeout=60,
                )
                if r.status_code == 200:
                    accepted += 1
                elif r.status_code == 400:
                    rejected += 1
                else:
                    raise RuntimeError(f"upload of {rel} answered {r.status_code}: {r.text[:300]}")
        return accepted, rejected
