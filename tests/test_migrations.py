"""The initial migration runs up on SQLite and PostgreSQL and matches the ORM models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from quality.db.schema import Base
from quality.db.session import db_is_empty, make_engine, upgrade


def test_upgrade_creates_every_table(engine):
    names = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= names
    assert "alembic_version" in names
    assert not db_is_empty(engine)


def test_upgrade_is_idempotent(engine):
    upgrade(engine)
    with engine.connect() as c:
        assert c.execute(text("select count(*) from alembic_version")).scalar_one() == 1


def test_migration_matches_models(engine):
    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
    assert diff == []


def test_every_foreign_key_is_indexed(engine):
    insp = inspect(engine)
    for table in Base.metadata.tables:
        indexed = {ix["column_names"][0] for ix in insp.get_indexes(table)}
        indexed |= {u["column_names"][0] for u in insp.get_unique_constraints(table)}
        for fk in insp.get_foreign_keys(table):
            assert fk["constrained_columns"][0] in indexed, (table, fk["constrained_columns"])


def test_fresh_database_is_empty(db_url):
    eng = make_engine(db_url)
    try:
        assert db_is_empty(eng)
    finally:
        eng.dispose()


def test_sqlite_pragmas(tmp_path):
    eng = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with eng.connect() as c:
        assert c.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
        assert c.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
    eng.dispose()
