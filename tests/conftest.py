"""Shared fixtures: databases on SQLite and on a throwaway PostgreSQL cluster.

The PostgreSQL cluster is started once per test session with the machine's ``initdb`` and
``pg_ctl`` (``/usr/lib/postgresql/*/bin``) on a free loopback port, in a temp dir, and is torn
down at the end. Each test gets its own fresh database in it. Without PostgreSQL binaries
the PostgreSQL variants are skipped, unless ``QUALITY_REQUIRE_SERVICES=1``, which turns the
skip into a failure (CI sets it).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netutil import free_port
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from quality.db.session import make_engine, upgrade

REQUIRE_SERVICES = os.environ.get("QUALITY_REQUIRE_SERVICES") == "1"
DB_KINDS = ["sqlite", "postgresql"]


@pytest.fixture(autouse=True)
def _demo_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages run in demo mode (role picker, no sign-in) unless a test says otherwise.

    Access-control tests set ``QUALITY_DEMO_MODE=0`` themselves with ``monkeypatch``.
    """
    monkeypatch.setenv("QUALITY_DEMO_MODE", "1")


@pytest.fixture(scope="session", autouse=True)
def _thumb_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Thumbnails of the tests go to a session temp folder, not the user's ~/.cache."""
    old = os.environ.get("QUALITY_THUMB_CACHE_DIR")
    os.environ["QUALITY_THUMB_CACHE_DIR"] = str(tmp_path_factory.mktemp("thumbs"))
    yield
    if old is None:
        os.environ.pop("QUALITY_THUMB_CACHE_DIR", None)
    else:
        os.environ["QUALITY_THUMB_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _restore_main_module() -> Iterator[None]:
    """AppTest replaces ``sys.modules["__main__"]`` for good; a later spawn/forkserver pool
    would then re-run the app script in its workers. Put the real one back after each test."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


def service_missing(what: str) -> None:
    """Skip for a missing service, or fail when services are required (CI)."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required (QUALITY_REQUIRE_SERVICES=1) but not available")
    pytest.skip(f"{what} not available")


def _pg_bindir() -> Path | None:
    env = os.environ.get("QUALITY_PG_BINDIR")
    if env and Path(env, "initdb").exists():
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    which = shutil.which("initdb")
    return Path(which).parent if which else None


class PgCluster:
    """A throwaway PostgreSQL cluster on loopback, owned by the test session."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.tmp = Path(tempfile.mkdtemp(prefix="quality-pg-"))
        self.data = self.tmp / "data"
        self.port = free_port()
        self.user = "quality"
        self._counter = itertools.count()
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            # initdb refuses to run as root: run the server as an unprivileged system user.
            for candidate in ("postgres", "nobody"):
                if subprocess.run(["id", candidate], capture_output=True).returncode == 0:
                    self._run_as = ["runuser", "-u", candidate, "--"]
                    shutil.chown(self.tmp, user=candidate)
                    break

    def _cmd(self, *args: str) -> list[str]:
        return [*self._run_as, *args]

    def start(self) -> None:
        subprocess.run(
            self._cmd(
                str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user,
                "-A", "trust", "-E", "UTF8", "--no-sync",
            ),
            check=True, capture_output=True,
        )  # fmt: skip
        opts = (
            f"-h 127.0.0.1 -p {self.port} -k {self.tmp} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            self._cmd(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts,
                "-l", str(self.tmp / "log"), "-w", "-t", "60", "start",
            ),
            check=True, capture_output=True,
        )  # fmt: skip
        self.admin = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        deadline = time.monotonic() + 30
        while True:
            try:
                with self.admin.connect() as c:
                    c.execute(text("select 1"))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        name = f"t{os.getpid()}_{next(self._counter)}"
        with self.admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self.admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def stop(self) -> None:
        self.admin.dispose()
        subprocess.run(
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"),
            capture_output=True,
        )
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster | None]:
    bindir = _pg_bindir()
    if bindir is None:
        yield None
        return
    cluster = PgCluster(bindir)
    try:
        cluster.start()
    except (subprocess.CalledProcessError, OSError) as exc:
        log = cluster.tmp / "log"
        detail = log.read_text()[-2000:] if log.exists() else getattr(exc, "stderr", b"")
        cluster.stop()
        pytest.fail(f"PostgreSQL cluster failed to start: {exc}\n{detail!r}")
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster | None) -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database."""
    if pg_cluster is None:
        service_missing("PostgreSQL (initdb/pg_ctl under /usr/lib/postgresql/*/bin)")
    assert pg_cluster is not None
    url = pg_cluster.new_database()
    yield url
    pg_cluster.drop_database(url)


@pytest.fixture(params=DB_KINDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a fresh, empty database: once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated (``upgrade head``) engine on a fresh database, on each DB kind."""
    eng = make_engine(db_url)
    upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as s:
        yield s


# --------------------------------------------------------------------------- demo data


DEMO_SALT = "test-salt"


def _build_demo(out: Path, size: str, workers: int) -> Path:
    from quality.demo import build_demo

    engine = make_engine(f"sqlite:///{out / 'demo.db'}")
    upgrade(engine)
    with Session(engine) as session:
        build_demo(session, out, seed=0, size=size, salt=DEMO_SALT, workers=workers)
    engine.dispose()  # checkpoints the WAL, so the .db file alone is the whole DB
    return out


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo (DICOM files, SQLite DB, truth file), built once per test session.

    Tests that write to the DB take their own copy with :func:`copy_demo_db`.
    """
    return _build_demo(tmp_path_factory.mktemp("tiny_demo"), "tiny", 1)


@pytest.fixture(scope="session")
def small_demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small demo (seed 0, ~380 files), built once per test session; read-only users
    open ``demo.db`` in place, writers take a copy with :func:`copy_demo_db`."""
    return _build_demo(tmp_path_factory.mktemp("small_demo"), "small", 2)


def copy_demo_db(demo_dir: Path, dest: Path) -> str:
    """Copy the demo DB (its image URIs stay valid) and return the copy's URL."""
    target = dest / "demo.db"
    shutil.copyfile(demo_dir / "demo.db", target)
    return f"sqlite:///{target}"
