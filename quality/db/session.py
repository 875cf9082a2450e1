"""Engines, sessions and migrations for the annotation DB.

Only entry points (the CLI, the app's cached resources, test fixtures) create engines;
library functions take a :class:`~sqlalchemy.orm.Session`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from quality.errors import DatabaseUnavailableError

__all__ = [
    "MIGRATIONS_DIR",
    "db_is_empty",
    "make_engine",
    "make_sessionmaker",
    "safe_url",
    "session_scope",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def safe_url(url: str | Engine) -> str:
    """The URL with its password hidden, for messages and logs."""
    if isinstance(url, Engine):
        url = url.url  # type: ignore[assignment]
    return make_url(str(url) if not hasattr(url, "render_as_string") else url).render_as_string(
        hide_password=True
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Foreign keys are off by default in SQLite; WAL lets the app read while ingest writes.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for ``url``; SQLite gets foreign keys, WAL and a busy timeout.

    A relative SQLite path gets its parent folder created, so that a fresh clone works.
    """
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        # A "file:..." URI (``?uri=true``, e.g. ``mode=ro`` for a read-only engine) names an
        # existing file: nothing to create.
        if u.database and u.database != ":memory:" and not u.database.startswith("file:"):
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"timeout": 30})
        engine = create_engine(u, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(u, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error.

    Connection failures become :class:`DatabaseUnavailableError` naming the (password-free) URL.
    """
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except (OperationalError, DBAPIError) as exc:
        session.rollback()
        if isinstance(exc, OperationalError) or exc.connection_invalidated:
            raise DatabaseUnavailableError(safe_url(engine), str(exc.orig).strip()) from exc
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the Alembic migrations up to ``revision`` on ``engine``."""
    from alembic import command

    cfg = _alembic_config(engine)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except OperationalError as exc:
        raise DatabaseUnavailableError(safe_url(engine), str(exc.orig).strip()) from exc


def db_is_empty(engine: Engine) -> bool:
    """True when the DB has no schema yet (no ``images`` table)."""
    try:
        return not inspect(engine).has_table("images")
    except OperationalError as exc:
        raise DatabaseUnavailableError(safe_url(engine), str(exc.orig).strip()) from exc
