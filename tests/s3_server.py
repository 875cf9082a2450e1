"""A moto S3 server on loopback, as a separate process: for the S3 store tests and the benchmark.

moto keeps its state in memory, so a restarted (or killed and restarted) server is empty:
upload again after :meth:`MotoServer.restart`. The server's log goes to a file in a temp dir
(a pipe nobody reads would fill up and block the server); its tail is in the error raised
when the server does not come up.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from netutil import free_port

__all__ = ["MotoServer", "moto_available"]

_REGION = "us-east-1"
# Fake credentials: moto accepts any. They are distinctive so tests can grep for leaks.
_KEY = "AKIAQWBTESTKEY0000001"
_SECRET = "quality-moto-fake-secret-3b9f1c"
_START_TIMEOUT_S = 30.0


def moto_available() -> str | None:
    """None when moto's standalone server can start here, else the reason it cannot."""
    for module in ("moto.server", "flask", "werkzeug", "boto3"):
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError) as exc:
            return f"{module} cannot be imported: {exc}"
        if found is None:
            return f"{module} is not installed (pip install 'moto[server]')"
    return None


class MotoServer:
    """``python -m moto.server`` bound to 127.0.0.1 on a free (or given) port.

    Parameters
    ----------
    port : the TCP port; a free loopback port when None (kept across :meth:`restart`).
    server_env : extra environment variables of the server process, e.g.
        ``{"INITIAL_NO_AUTH_ACTION_COUNT": "0"}`` to make moto check credentials.
    """

    def __init__(
        self, *, port: int | None = None, server_env: dict[str, str] | None = None
    ) -> None:
        self.port = port if port is not None else free_port()
        self._server_env = dict(server_env or {})
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._tmp = Path(tempfile.mkdtemp(prefix="quality-moto-"))
        self._log_path = self._tmp / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"MotoServer({self.endpoint_url!r})"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> MotoServer:
        """Start the server and wait until it answers.

        Raises
        ------
        RuntimeError
            The process exited or did not answer in time; the message ends with the tail of
            its log.
        """
        if self._proc is not None and self._proc.poll() is None:
            return self
        env = dict(os.environ)
        # The server must not pick up real AWS settings of whoever runs the tests.
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE"):
            env.pop(name, None)
        env.update(self._server_env)
        log = self._log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        finally:
            log.close()  # the child holds its own descriptor
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError(
                    f"moto server exited with code {code} on {self.endpoint_url}:\n"
                    + self._log_tail()
                )
            if self._answers():
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(
            f"moto server did not answer on {self.endpoint_url} within {_START_TIMEOUT_S:.0f} s:"
            "\n" + self._log_tail()
        )

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _log_tail(self, n: int = 2000) -> str:
        try:
            return self._log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        """Terminate the server and wait for it to exit (SIGKILL after 10 s)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the server (a crash, for fault tests) and wait for it to exit."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL)  # also ends a paused (SIGSTOPped) server
        proc.wait()

    def pause(self) -> None:
        """SIGSTOP the server: connections are accepted by the kernel but never answered
        (a hung server, for timeout tests). Its state is kept; :meth:`resume` continues."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a server stopped by :meth:`pause`."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop (if running) and start again on the same port. moto starts empty."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        """Stop the server and remove its temp dir."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ clients

    def env(self) -> dict[str, str]:
        """``QUALITY_S3_*`` settings for this server (fake credentials)."""
        return {
            "QUALITY_S3_ENDPOINT_URL": self.endpoint_url,
            "QUALITY_S3_KEY": _KEY,
            "QUALITY_S3_SECRET": _SECRET,
            "QUALITY_S3_REGION": _REGION,
        }

    def client(self) -> object:
        """A boto3 S3 client for this server (for uploads and test set-up)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=_KEY,
            aws_secret_access_key=_SECRET,
            region_name=_REGION,
            config=Config(retries={"total_max_attempts": 2}, max_pool_connections=16),
        )

    def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` unless it exists."""
        client = self.client()
        try:
            client.head_bucket(Bucket=bucket)  # type: ignore[attr-defined]
        except Exception:  # botocore ClientError 404: create it
            client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]

    def upload_folder(self, folder: Path, bucket: str, prefix: str = "") -> int:
        """Upload every file below ``folder`` to ``bucket`` under ``prefix``.

        Keys are ``<prefix>/<path relative to folder>`` (``/``-separated); the bucket is
        created if needed.

        Returns
        -------
        int
            The number of files uploaded.
        """
        from concurrent.futures import ThreadPoolExecutor

        self.ensure_bucket(bucket)
        client = self.client()
        head = prefix.strip("/")
        files = sorted(p for p in Path(folder).rglob("*") if p.is_file())

        def put(path: Path) -> None:
            rel = path.relative_to(folder).as_posix()
            key = f"{head}/{rel}" if head else rel
            client.upload_file(str(path), bucket, key)  # type: ignore[attr-defined]

        # boto3 clients are thread-safe; a few uploads in flight keep set-up short.
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(put, files))
        return len(files)
