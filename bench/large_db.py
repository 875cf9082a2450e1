"""The large demo (``quality demo --size large``) on a persistent throwaway PostgreSQL cluster.

Usage::

    .venv/bin/python bench/large_db.py [--json] [--scale 1.0] [--seed 0] [--rebuild]
    .venv/bin/python bench/large_db.py --stop

Starts (or reuses) a PostgreSQL cluster made with the machine's ``initdb``/``pg_ctl``
(``/usr/lib/postgresql/*/bin``, or ``QUALITY_PG_BINDIR``) under ``--pg-dir`` (default
``/tmp/quality-large-pg``: ``data/``, ``port``, ``log``), listening on loopback only, on a
free port that is kept in ``<pg-dir>/port`` so that later runs find it again. Then builds the
large demo into the database ``quality_large`` with its files in ``--out`` (default
``/tmp/quality-large-data``) unless a finished build is already there, and prints the URL.

A build counts as finished when ``<out>/large_build.json`` names this database, seed and
scale and the database exists; anything else (no marker, a failed or interrupted build) is
dropped and rebuilt. The cluster keeps running afterwards (``--stop`` stops it).

The cluster is for benchmarks and tests only: it runs with ``fsync=off``,
``synchronous_commit=off`` and ``full_page_writes=off`` (a crash may lose it; rebuild),
with ``shared_buffers=1GB`` and ``maintenance_work_mem=512MB``, trust authentication on
127.0.0.1 and the superuser ``quality``. As root, ``initdb`` and the server run as the
``postgres`` (else ``nobody``) system user, as in ``tests/conftest.py``.

:func:`ensure_large_db` is what ``bench/pages.py`` and ``bench/load.py`` import.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text

__all__ = ["DB_NAME", "OUT_DIR", "PG_DIR", "LargePg", "ensure_large_db"]

PG_DIR = Path("/tmp/quality-large-pg")
OUT_DIR = Path("/tmp/quality-large-data")
DB_NAME = "quality_large"
USER = "quality"
MARKER = "large_build.json"
SALT = "quality-large-bench"
_SERVER_OPTS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
    "-c shared_buffers=1GB -c maintenance_work_mem=512MB -c max_wal_size=8GB "
    "-c checkpoint_timeout=30min -c effective_cache_size=4GB"
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bindir() -> Path:
    env = os.environ.get("QUALITY_PG_BINDIR")
    if env and Path(env, "initdb").exists():
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    which = shutil.which("initdb")
    if which:
        return Path(which).parent
    raise SystemExit("PostgreSQL binaries (initdb, pg_ctl) not found; set QUALITY_PG_BINDIR")


class LargePg:
    """A PostgreSQL cluster in ``root`` that survives this process.

    Parameters
    ----------
    root : folder of the cluster: ``data/`` (PGDATA), ``port`` (the port it listens on),
        ``log`` (server log); also the Unix-socket directory.
    """

    def __init__(self, root: Path = PG_DIR) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.port_file = self.root / "port"
        self.log = self.root / "log"
        self.bindir = _bindir()
        self._run_as: list[str] = []
        self._owner: str | None = None
        if os.geteuid() == 0:
            # initdb refuses to run as root: the server runs as an unprivileged system user.
            for candidate in ("postgres", "nobody"):
                if subprocess.run(["id", candidate], capture_output=True).returncode == 0:
                    self._run_as = ["runuser", "-u", candidate, "--"]
                    self._owner = candidate
                    break

    def _cmd(self, *args: str) -> list[str]:
        return [*self._run_as, *args]

    @property
    def port(self) -> int:
        return int(self.port_file.read_text().strip())

    def url(self, dbname: str) -> str:
        """SQLAlchemy URL of database ``dbname`` in this cluster."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{dbname}"

    def running(self) -> bool:
        """Whether the server of ``data/`` is up."""
        if not (self.data / "PG_VERSION").exists():
            return False
        res = subprocess.run(
            self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"),
            capture_output=True,
        )
        return res.returncode == 0

    def ensure(self) -> None:
        """Create the cluster if missing and start it if stopped."""
        if self.running():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if self._owner:
            shutil.chown(self.root, user=self._owner)
        if not (self.data / "PG_VERSION").exists():
            if self.data.exists():
                shutil.rmtree(self.data)
            subprocess.run(
                self._cmd(
                    str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER,
                    "-A", "trust", "-E", "UTF8", "--no-sync",
                ),
                check=True, capture_output=True,
            )  # fmt: skip
        port = self.port if self.port_file.exists() else _free_port()
        for attempt in range(2):
            self.port_file.write_text(f"{port}\n")
            opts = f"-h 127.0.0.1 -p {port} -k {self.root} {_SERVER_OPTS}"
            res = subprocess.run(
                self._cmd(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts,
                    "-l", str(self.log), "-w", "-t", "60", "start",
                ),
                capture_output=True,
            )  # fmt: skip
            if res.returncode == 0:
                break
            if attempt == 1:
                tail = self.log.read_text()[-2000:] if self.log.exists() else ""
                raise SystemExit(f"PostgreSQL did not start: {res.stderr.decode()}\n{tail}")
            port = _free_port()  # the stored port may be taken by now
        self._wait()

    def _wait(self) -> None:
        engine = create_engine(self.url("postgres"))
        deadline = time.monotonic() + 30
        try:
            while True:
                try:
                    with engine.connect() as c:
                        c.execute(text("select 1"))
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        finally:
            engine.dispose()

    def _admin(self, sql: str) -> list[Any]:
        engine = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as c:
                res = c.execute(text(sql))
                return list(res) if res.returns_rows else []
        finally:
            engine.dispose()

    def has_database(self, name: str) -> bool:
        return bool(self._admin(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"))

    def recreate_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._admin(f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        if self.running():
            subprocess.run(
                self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"),
                capture_output=True,
            )


def _stderr_progress() -> Any:
    last: dict[str, float] = {}

    def update(done: int, total: int, label: str) -> None:
        now = time.monotonic()
        if done >= total or now - last.get(label, 0.0) > 5.0:
            last[label] = now
            print(f"  {label}: {done}/{total}", file=sys.stderr, flush=True)

    return update


def ensure_large_db(
    *,
    pg_dir: Path = PG_DIR,
    out: Path = OUT_DIR,
    dbname: str = DB_NAME,
    seed: int = 0,
    scale: float = 1.0,
    rebuild: bool = False,
    quiet: bool = True,
) -> str:
    """URL of the large demo DB, building it first when it is not there (or ``rebuild``).

    Parameters
    ----------
    pg_dir : the cluster's folder (see :class:`LargePg`).
    out : the demo's file folder (DICOM files, hard links of the clones, truth file).
    dbname : database name in the cluster.
    seed, scale : passed to :func:`quality.demo.large.build_large`.
    rebuild : drop and rebuild even when a finished build is there.
    quiet : no progress lines on stderr.

    Returns
    -------
    str : the SQLAlchemy URL (``postgresql+psycopg://...``).
    """
    info = _ensure(pg_dir=pg_dir, out=out, dbname=dbname, seed=seed, scale=scale,
                   rebuild=rebuild, quiet=quiet)  # fmt: skip
    return str(info["url"])


def _ensure(
    *, pg_dir: Path, out: Path, dbname: str, seed: int, scale: float, rebuild: bool, quiet: bool
) -> dict[str, Any]:
    from sqlalchemy.orm import Session

    from quality.db.session import make_engine, upgrade
    from quality.demo.large import build_large

    pg = LargePg(pg_dir)
    pg.ensure()
    url = pg.url(dbname)
    marker = Path(out) / MARKER
    want = {"db": dbname, "seed": seed, "scale": scale}
    if not rebuild and marker.exists() and pg.has_database(dbname):
        done = json.loads(marker.read_text())
        if {k: done.get(k) for k in want} == want:
            return {**done, "url": url, "built": False}
    marker.unlink(missing_ok=True)
    pg.recreate_database(dbname)
    engine = make_engine(url)
    try:
        upgrade(engine)
        with Session(engine) as session:
            summary = build_large(
                session,
                Path(out),
                seed=seed,
                salt=SALT,
                scale=scale,
                progress=None if quiet else _stderr_progress(),
            )
    finally:
        engine.dispose()
    record = {**want, **summary.as_dict()}
    marker.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return {**record, "url": url, "built": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-dir", type=Path, default=PG_DIR)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--db-name", default=DB_NAME)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rebuild", action="store_true", help="drop and rebuild the DB")
    parser.add_argument("--stop", action="store_true", help="stop the cluster and exit")
    parser.add_argument("--json", action="store_true", help="print a JSON document")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.stop:
        LargePg(args.pg_dir).stop()
        return 0
    info = _ensure(pg_dir=args.pg_dir, out=args.out, dbname=args.db_name, seed=args.seed,
                   scale=args.scale, rebuild=args.rebuild, quiet=args.quiet)  # fmt: skip
    if args.json:
        sys.stdout.write(json.dumps(info, indent=2, default=str) + "\n")
    else:
        print(info["url"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
