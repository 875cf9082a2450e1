"""The audit log: who did what, and when.

Which function for which job
----------------------------
- :func:`record`: append one row (an INSERT, flushed; the caller commits). Every sign-in,
  failed sign-in, sign-out, PHI reveal, verdict, rules change, export and user change
  writes one.
- :func:`list_audit`: read the log back, newest first, filtered by user, action and time
  (the admin page and its CSV download).
- :func:`audit_usernames`: the names that occur in the log (the admin page's filter).

What a row may hold
-------------------
``username`` is who acted (a user name, ``cli:<os user>`` for the command line, or None
when nobody is known, e.g. a failed sign-in with an unknown name). ``target`` names what
was acted on (a user name, a pseudonymous study key, a rules file, an export's kind) and
``details`` carries small facts (counts, a role, a verdict). **Neither may ever hold PHI
(patient names, IDs, birth dates, header values) or secrets (passwords, hashes, tokens,
keys, DB URLs with passwords)**: the log is shown to admins and exported as CSV.
:func:`record` refuses ``details`` keys that name a secret as a guard against slips, but
the rule is the caller's to keep.

The log is append-only from the app: this module has no update or delete, and migration
0004 adds triggers that make the database refuse UPDATE and DELETE on ``audit_log``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import pandas as pd
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from quality.db.schema import AuditLog
from quality.errors import AuditInputError

__all__ = ["ACTIONS", "AUDIT_COLUMNS", "MAX_LIMIT", "audit_usernames", "list_audit", "record"]

ACTIONS: tuple[str, ...] = (
    "login",
    "login_failed",
    "logout",
    "reveal_phi",
    "verdict",
    "rules_change",
    "export",
    "user_change",
)
AUDIT_COLUMNS = ["id", "at", "username", "action", "target", "details"]
MAX_LIMIT = 100_000
"""Most rows one :func:`list_audit` call returns."""

_USERNAME_CHARS = 64  # users.username / audit_log.username
_TARGET_CHARS = 256  # audit_log.target
# Substrings of details keys that would hold a secret: a guard against slips, not a filter.
_SECRET_KEYS = ("password", "passwd", "secret", "token", "hash", "api_key", "credential")


def _clip(value: str | None, n: int) -> str | None:
    if value is None:
        return None
    text = str(value)
    # PostgreSQL refuses an over-long VARCHAR; an audit row must not fail for a long name.
    return text if len(text) <= n else text[: n - 1] + "…"


def _check_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    if details is None:
        return {}
    if not isinstance(details, Mapping):
        raise AuditInputError("details", f"must be a dict, not {type(details).__name__}")
    clean = {str(k): v for k, v in details.items()}
    bad = sorted(k for k in clean if any(s in k.lower() for s in _SECRET_KEYS))
    if bad:
        raise AuditInputError(
            "details", f"keys {bad} look like secrets; the audit log never holds secrets"
        )
    try:
        json.dumps(clean)
    except (TypeError, ValueError) as exc:
        raise AuditInputError("details", f"must be JSON-serialisable: {exc}") from exc
    return clean


def record(
    session: Session,
    username: str | None,
    action: str,
    target: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Append one row to the audit log (INSERT only; flushed, the caller commits).

    The time is the database's clock (``audit_log.at`` defaults to ``now()``), not the
    caller's.

    Parameters
    ----------
    session : an open session; the row is part of its transaction.
    username : who acted (None when unknown); clipped to 64 characters.
    action : one of :data:`ACTIONS`.
    target : what was acted on; clipped to 256 characters. Never PHI or a secret.
    details : small JSON-serialisable facts. Never PHI or a secret.

    Raises
    ------
    AuditInputError
        (a ``ValueError``) for an unknown action, or details that are not a JSON-able dict
        or have a key that names a secret (``password``, ``token``, ...).
    """
    if action not in ACTIONS:
        raise AuditInputError(
            "action", f"unknown audit action {action!r}; valid actions: {', '.join(ACTIONS)}"
        )
    clean = _check_details(details)
    session.execute(
        insert(AuditLog).values(
            username=_clip(username, _USERNAME_CHARS),
            action=action,
            target=_clip(target, _TARGET_CHARS),
            details=clean,
        )
    )
    session.flush()


def _utc(value: dt.date | dt.datetime, *, end: bool) -> dt.datetime:
    """A filter bound as an aware UTC datetime; a date covers its whole (UTC) day."""
    if not isinstance(value, dt.datetime):
        day = value + dt.timedelta(days=1) if end else value
        return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _bound(session: Session, value: dt.datetime) -> dt.datetime:
    # SQLite stores naive UTC text (CURRENT_TIMESTAMP); an aware value would compare as text
    # with a "+00:00" suffix. PostgreSQL compares timestamptz properly.
    if session.get_bind().dialect.name == "sqlite":
        return value.replace(tzinfo=None)
    return value


def list_audit(
    session: Session,
    *,
    username: str | None = None,
    action: str | None = None,
    since: dt.date | dt.datetime | None = None,
    until: dt.date | dt.datetime | None = None,
    limit: int = 1000,
) -> pd.DataFrame:
    """The audit log, newest first.

    Parameters
    ----------
    username, action : exact matches (bound parameters, never formatted into SQL).
    since : rows at or after this time; a date means from the start of that day (UTC).
    until : rows before this time; a date means up to the end of that day (UTC), inclusive.
    limit : at most this many rows (1 to :data:`MAX_LIMIT`).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`AUDIT_COLUMNS`; ``at`` as UTC timestamps, ``details`` as dicts.

    Raises
    ------
    AuditInputError
        For an unknown action, a limit out of range, or ``since`` after ``until``.
    """
    if action is not None and action not in ACTIONS:
        raise AuditInputError(
            "action", f"unknown audit action {action!r}; valid actions: {', '.join(ACTIONS)}"
        )
    if not 1 <= int(limit) <= MAX_LIMIT:
        raise AuditInputError("limit", f"must be between 1 and {MAX_LIMIT}, not {limit}")
    lo = _utc(since, end=False) if since is not None else None
    # A datetime "until" is exclusive, as is the start of the day after a date "until".
    hi = _utc(until, end=True) if until is not None else None
    if lo is not None and hi is not None and lo > hi:
        raise AuditInputError("since", "the start of the range is after its end")
    stmt = select(
        AuditLog.id,
        AuditLog.at,
        AuditLog.username,
        AuditLog.action,
        AuditLog.target,
        AuditLog.details,
    )
    if username is not None:
        stmt = stmt.where(AuditLog.username == username)
    if action is not None:
        stmt = stmt.where(AuditLog.action == action)
    if lo is not None:
        stmt = stmt.where(AuditLog.at >= _bound(session, lo))
    if hi is not None:
        stmt = stmt.where(AuditLog.at < _bound(session, hi))
    # The id breaks ties: SQLite's clock has whole seconds.
    stmt = stmt.order_by(AuditLog.at.desc(), AuditLog.id.desc()).limit(int(limit))
    rows = session.execute(stmt).all()
    frame = pd.DataFrame(
        {
            "id": pd.Series([int(r.id) for r in rows], dtype="int64"),
            "at": pd.to_datetime(pd.Series([r.at for r in rows], dtype=object), utc=True),
            # object, not str: None ("nobody known") stays None instead of NaN.
            "username": pd.Series([r.username for r in rows], dtype=object),
            "action": pd.Series([r.action for r in rows], dtype=object),
            "target": pd.Series([r.target for r in rows], dtype=object),
            "details": pd.Series(
                [d if isinstance(d, dict) else {} for d in (r.details for r in rows)], dtype=object
            ),
        },
        columns=AUDIT_COLUMNS,
    )
    return frame


def audit_usernames(session: Session) -> list[str]:
    """The distinct user names in the audit log, sorted (None left out)."""
    stmt = (
        select(AuditLog.username)
        .where(AuditLog.username.is_not(None))
        .distinct()
        .order_by(AuditLog.username)
    )
    return [str(u) for u in session.scalars(stmt)]
