"""The audit log (``quality.audit``): record and read back, refusals, and append-only in the
database itself; on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, delete, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from quality import audit
from quality.db.schema import AuditLog
from quality.db.session import make_engine, upgrade
from quality.errors import AuditInputError


def _seed(session: Session) -> None:
    audit.record(session, "ada", "login", details={"method": "password"})
    audit.record(session, "bob", "verdict", target="prediction 7", details={"verdict": "agree"})
    audit.record(session, "ada", "export", target="reviews", details={"rows": 12})
    audit.record(session, None, "login_failed", details={"reason": "unknown_user"})
    session.commit()


def test_record_and_list_newest_first(session: Session) -> None:
    _seed(session)
    rows = audit.list_audit(session)
    assert list(rows.columns) == audit.AUDIT_COLUMNS
    assert list(rows["action"]) == ["login_failed", "export", "verdict", "login"]
    assert rows["at"].dt.tz is not None
    now = dt.datetime.now(dt.UTC)
    assert ((now - rows["at"]) < dt.timedelta(minutes=5)).all()
    assert rows.iloc[2]["target"] == "prediction 7"
    assert rows.iloc[2]["details"] == {"verdict": "agree"}
    assert rows.iloc[0]["username"] is None


def test_filters(session: Session) -> None:
    _seed(session)
    assert list(audit.list_audit(session, username="ada")["action"]) == ["export", "login"]
    assert list(audit.list_audit(session, action="verdict")["username"]) == ["bob"]
    assert len(audit.list_audit(session, limit=2)) == 2
    today = dt.datetime.now(dt.UTC).date()
    assert len(audit.list_audit(session, since=today, until=today)) == 4
    assert audit.list_audit(session, until=today - dt.timedelta(days=1)).empty
    assert audit.list_audit(session, since=today + dt.timedelta(days=1)).empty
    hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    assert len(audit.list_audit(session, since=hour_ago)) == 4
    assert audit.list_audit(session, until=hour_ago).empty
    assert audit.audit_usernames(session) == ["ada", "bob"]
    # A filter value is a bound parameter: an injection string matches nothing, breaks nothing.
    assert audit.list_audit(session, username="ada' OR '1'='1").empty
    assert len(audit.list_audit(session)) == 4


def test_record_refuses(session: Session) -> None:
    cases = [
        ({"action": "delete_everything"}, "action"),
        ({"details": {"password": "x"}}, "details"),
        ({"details": {"api_token": "x"}}, "details"),
        ({"details": {"when": dt.datetime(2020, 1, 1)}}, "details"),
        ({"details": ["not", "a", "dict"]}, "details"),
    ]
    for kwargs, field in cases:
        with pytest.raises(AuditInputError) as info:
            audit.record(session, "ada", **({"action": "login"} | kwargs))
        assert info.value.field == field, kwargs
        assert isinstance(info.value, ValueError)
    assert audit.list_audit(session).empty


def test_list_refuses_bad_filters(session: Session) -> None:
    with pytest.raises(AuditInputError, match="action"):
        audit.list_audit(session, action="nope")
    with pytest.raises(AuditInputError, match="limit"):
        audit.list_audit(session, limit=0)
    with pytest.raises(AuditInputError, match="since"):
        audit.list_audit(session, since=dt.date(2025, 2, 1), until=dt.date(2025, 1, 1))


def test_long_values_are_clipped_not_refused(session: Session) -> None:
    audit.record(session, "u" * 100, "export", target="t" * 1000)
    session.commit()
    row = audit.list_audit(session).iloc[0]
    assert len(row["username"]) == 64 and len(row["target"]) == 256


def test_append_only_in_the_database(session: Session) -> None:
    _seed(session)
    statements = [
        update(AuditLog).values(action="logout"),
        update(AuditLog).values(details={}),
        delete(AuditLog),
        delete(AuditLog).where(AuditLog.username == "ada"),
    ]
    for statement in statements:
        with pytest.raises(DBAPIError, match="append-only"):
            session.execute(statement)
            session.flush()
        session.rollback()
    rows = audit.list_audit(session)
    assert len(rows) == 4 and "verdict" in set(rows["action"])


def test_append_only_raw_sql_and_truncate(engine: Engine) -> None:
    with Session(engine) as s:
        _seed(s)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as c:
        c.execute(text("UPDATE audit_log SET username = 'mallory'"))
    if engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as c:
            c.execute(text("TRUNCATE audit_log"))
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM audit_log")).scalar_one() == 4
        assert (
            c.execute(
                text("SELECT count(*) FROM audit_log WHERE username = 'mallory'")
            ).scalar_one()
            == 0
        )


def test_downgrade_drops_the_triggers(db_url: str) -> None:
    eng = make_engine(db_url)
    try:
        upgrade(eng)
        from alembic import command

        from quality.db.session import _alembic_config

        cfg = _alembic_config(eng)
        with eng.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0003")
        with eng.begin() as c:
            c.execute(
                text(
                    "INSERT INTO audit_log (username, action, details) VALUES ('a', 'login', '{}')"
                )
            )
            c.execute(text("DELETE FROM audit_log"))  # allowed again at 0003
        upgrade(eng)  # and back up: the triggers return
        with pytest.raises(DBAPIError, match="append-only"), eng.begin() as c:
            c.execute(
                text(
                    "INSERT INTO audit_log (username, action, details) VALUES ('a', 'login', '{}')"
                )
            )
            c.execute(text("DELETE FROM audit_log"))
    finally:
        eng.dispose()
