"""Users, roles and password sign-in.

Which function for which job
----------------------------
- :func:`add_user`, :func:`set_password`, :func:`set_active`, :func:`list_users`: user
  management (``quality users ...``). With ``actor=`` they also write a ``user_change``
  audit row.
- :func:`authenticate`: check a user name and password at sign-in; writes ``login`` or
  ``login_failed`` to the audit log.
- :func:`active_user`: re-check on every page run that a signed-in user still exists and
  is active (a disabled account's open session ends at its next interaction).
- :func:`user_from_oidc`: map the identity of an OIDC sign-in (``st.user``) to a user.
- :func:`hash_password`, :func:`verify_password`: argon2id (argon2-cffi), the
  password-hashing winner recommended by OWASP.

Roles and pages are the app's business (:mod:`quality.ui.nav` holds which role sees which
page); this module only knows the :data:`ROLES`.

Secrets. A password is never stored, logged, put in an error message or written to the
audit log; a hash is never returned by :func:`list_users` or any other reader here.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from quality import audit
from quality.db.schema import User
from quality.errors import AuthError, AuthInputError

__all__ = [
    "DISABLED",
    "MAX_PASSWORD_CHARS",
    "MIN_PASSWORD_CHARS",
    "ROLES",
    "USER_COLUMNS",
    "WRONG_CREDENTIALS",
    "AuthUser",
    "active_user",
    "add_user",
    "authenticate",
    "hash_password",
    "list_users",
    "set_active",
    "set_password",
    "user_from_oidc",
    "verify_password",
]

ROLES: tuple[str, ...] = ("admin", "labeling manager", "data scientist", "clinician")
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024  # argon2 takes any length; a bound keeps a sign-in cheap
WRONG_CREDENTIALS = "wrong username or password"
DISABLED = "this account is disabled"
USER_COLUMNS = [
    "id",
    "username",
    "display_name",
    "role",
    "is_active",
    "has_password",
    "created_at",
    "password_changed_at",
    "disabled_at",
]

# argon2-cffi's defaults (argon2id, RFC 9106 "low memory" profile: t=3, m=64 MiB, p=4).
_HASHER = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against for unknown users, so that a wrong name costs as long as a wrong
    password (made on first use: importing this module stays cheap)."""
    return _HASHER.hash("not a password: timing equaliser for unknown users")


@dataclass(frozen=True)
class AuthUser:
    """A signed-in user: what the app keeps in its session (never the hash).

    Attributes
    ----------
    id : ``users.id``.
    username : the sign-in name (an e-mail address for OIDC accounts).
    role : one of :data:`ROLES`.
    display_name : name to show, or None.
    """

    id: int
    username: str
    role: str
    display_name: str | None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` (PHC string, ``$argon2id$v=19$...``), salted."""
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches ``password_hash``; False for a mismatch or a hash that
    is not a valid argon2 string (never raises for bad input)."""
    try:
        return bool(_HASHER.verify(password_hash, password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# --------------------------------------------------------------------------- validation


def _check_username(username: str) -> str:
    name = str(username or "").strip()
    if not name:
        raise AuthInputError("username", "enter a user name")
    if len(name) > 64:
        raise AuthInputError("username", "a user name has at most 64 characters")
    if not name.isprintable():
        raise AuthInputError("username", "a user name cannot hold tabs, line breaks or controls")
    return name


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise AuthInputError("role", f"unknown role {role!r}; valid roles: {', '.join(ROLES)}")
    return role


def _check_password(password: str) -> str:
    if not isinstance(password, str):
        raise AuthInputError("password", "must be a string")
    if len(password) < MIN_PASSWORD_CHARS:
        raise AuthInputError("password", f"must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AuthInputError("password", f"must have at most {MAX_PASSWORD_CHARS} characters")
    return password


def _user_id(session: Session, username: str) -> int:
    found = session.scalar(select(User.id).where(User.username == username))
    if found is None:
        raise AuthInputError("username", f"no user named {username!r}")
    return int(found)


# --------------------------------------------------------------------------- management


def add_user(
    session: Session,
    username: str,
    role: str,
    password: str | None,
    *,
    display_name: str | None = None,
    actor: str | None = None,
) -> AuthUser:
    """Create a user (flushed; the caller commits).

    Parameters
    ----------
    username : 1 to 64 printable characters, unique (an e-mail address for OIDC sign-in).
    role : one of :data:`ROLES`.
    password : at least :data:`MIN_PASSWORD_CHARS` characters; None makes an account that
        cannot sign in with a password (OIDC only).
    display_name : at most 128 characters.
    actor : who makes the change; when given, a ``user_change`` audit row is written.

    Raises
    ------
    AuthInputError
        Naming the field: a duplicate or invalid ``username``, an unknown ``role``, a short
        ``password``, a long ``display_name``.
    """
    name = _check_username(username)
    _check_role(role)
    pw_hash = hash_password(_check_password(password)) if password is not None else None
    if display_name is not None and len(display_name) > 128:
        raise AuthInputError("display_name", "a display name has at most 128 characters")
    if session.scalar(select(User.id).where(User.username == name)) is not None:
        raise AuthInputError("username", f"a user named {name!r} already exists")
    try:
        # No savepoint: pysqlite's SAVEPOINT outside BEGIN commits on release. A concurrent
        # insert of the same name fails here; the caller rolls the session back.
        new_id = session.scalar(
            insert(User)
            .values(
                username=name,
                display_name=display_name,
                role=role,
                password_hash=pw_hash,
                is_active=True,
                password_changed_at=_now() if pw_hash else None,
            )
            .returning(User.id)
        )
    except IntegrityError as exc:
        raise AuthInputError("username", f"a user named {name!r} already exists") from exc
    if actor is not None:
        audit.record(
            session,
            actor,
            "user_change",
            target=name,
            details={"change": "add", "role": role, "sign_in": "password" if pw_hash else "oidc"},
        )
    session.flush()
    return AuthUser(id=int(new_id), username=name, role=role, display_name=display_name)


def set_password(
    session: Session, username: str, password: str, *, actor: str | None = None
) -> None:
    """Set a new password for ``username`` (flushed; the caller commits).

    Raises
    ------
    AuthInputError
        An unknown ``username``, or a ``password`` that is too short or too long.
    """
    name = _check_username(username)
    pw_hash = hash_password(_check_password(password))
    user_id = _user_id(session, name)
    session.execute(
        update(User)
        .where(User.id == user_id)
        .values(password_hash=pw_hash, password_changed_at=_now())
    )
    if actor is not None:
        audit.record(session, actor, "user_change", target=name, details={"change": "passwd"})
    session.flush()


def set_active(session: Session, username: str, active: bool, *, actor: str | None = None) -> None:
    """Enable or disable ``username`` (flushed; the caller commits).

    A disabled user cannot sign in, and an open session of theirs ends at its next page
    run (:func:`active_user`). Nothing is deleted: reviews keep their reviewer.

    Raises
    ------
    AuthInputError
        An unknown ``username``.
    """
    name = _check_username(username)
    user_id = _user_id(session, name)
    session.execute(
        update(User)
        .where(User.id == user_id)
        .values(is_active=bool(active), disabled_at=None if active else _now())
    )
    if actor is not None:
        change = "enable" if active else "disable"
        audit.record(session, actor, "user_change", target=name, details={"change": change})
    session.flush()


def list_users(session: Session) -> pd.DataFrame:
    """Every user, by user name: columns :data:`USER_COLUMNS` (``has_password`` instead of
    the hash, which no reader returns)."""
    stmt = select(
        User.id,
        User.username,
        User.display_name,
        User.role,
        User.is_active,
        User.password_hash.is_not(None).label("has_password"),
        User.created_at,
        User.password_changed_at,
        User.disabled_at,
    ).order_by(User.username)
    rows = session.execute(stmt).all()
    frame = pd.DataFrame([tuple(r) for r in rows], columns=USER_COLUMNS)
    frame["is_active"] = frame["is_active"].astype(bool)
    frame["has_password"] = frame["has_password"].astype(bool)
    return frame


# --------------------------------------------------------------------------- sign-in


def _sign_in_row(session: Session, where: Any) -> Any:
    # Only the columns of the initial schema, so that sign-in works before `db upgrade`.
    stmt = select(
        User.id, User.username, User.role, User.display_name, User.password_hash, User.is_active
    ).where(where)
    return session.execute(stmt).all()


def _auth_user(row: Any) -> AuthUser:
    return AuthUser(
        id=int(row.id), username=row.username, role=row.role, display_name=row.display_name
    )


def authenticate(session: Session, username: str, password: str) -> AuthUser:
    """Check a sign-in; write ``login`` or ``login_failed`` to the audit log.

    An unknown user, a user without a password and a wrong password all give the same
    :data:`WRONG_CREDENTIALS` message, and all verify one argon2 hash (a dummy one for the
    unknown), so that neither the message nor the time tells which. Only after the right
    password does a disabled account get :data:`DISABLED`. A hash made with older
    parameters is upgraded on success.

    The audit rows never hold the password. A failed sign-in with an unknown name is
    recorded without the name (it may be a password typed in the wrong field).

    The rows are flushed, not committed: the caller commits, **also after an AuthError**,
    so that the ``login_failed`` row stays.

    Raises
    ------
    AuthError
        :data:`WRONG_CREDENTIALS`, :data:`DISABLED`, or an account whose role is not one
        of :data:`ROLES`.
    """
    name = str(username or "").strip()
    rows = _sign_in_row(session, User.username == name) if 0 < len(name) <= 64 else []
    row = rows[0] if rows else None
    stored = row.password_hash if row is not None and row.password_hash else _dummy_hash()
    ok = verify_password(stored, str(password or "")[:MAX_PASSWORD_CHARS])
    if row is None or not row.password_hash or not ok:
        reason = (
            "unknown_user"
            if row is None
            else "no_password"
            if not row.password_hash
            else "wrong_password"
        )
        audit.record(
            session,
            row.username if row is not None else None,
            "login_failed",
            details={"reason": reason, "method": "password"},
        )
        raise AuthError(WRONG_CREDENTIALS)
    if not row.is_active:
        audit.record(
            session,
            row.username,
            "login_failed",
            details={"reason": "disabled", "method": "password"},
        )
        raise AuthError(DISABLED)
    if row.role not in ROLES:
        audit.record(
            session,
            row.username,
            "login_failed",
            details={"reason": "bad_role", "method": "password"},
        )
        raise AuthError("this account has no valid role; ask an admin to set one")
    if _HASHER.check_needs_rehash(row.password_hash):
        session.execute(
            update(User).where(User.id == row.id).values(password_hash=hash_password(password))
        )
    audit.record(session, row.username, "login", details={"method": "password"})
    return _auth_user(row)


def active_user(session: Session, username: str) -> AuthUser | None:
    """The user ``username`` as now in the DB, or None when missing, disabled or without a
    valid role. Called on every page run, so that role changes apply at once and a disabled
    account's session ends."""
    name = str(username or "").strip()
    if not 0 < len(name) <= 64:
        return None
    rows = _sign_in_row(session, User.username == name)
    if not rows:
        return None
    row = rows[0]
    if not row.is_active or row.role not in ROLES:
        return None
    return _auth_user(row)


def _claim(identity: Any, key: str) -> Any:
    """A claim of ``st.user`` (attribute and mapping access both work), or None."""
    if isinstance(identity, Mapping):
        return identity.get(key)
    getter = getattr(identity, "get", None)
    if callable(getter):
        return getter(key)
    return getattr(identity, key, None)


def user_from_oidc(session: Session, identity: Any, *, provider: str = "default") -> AuthUser:
    """Map an OIDC identity (``st.user``, or any mapping of its claims) to a user.

    The identity's ``email`` is looked up as a user name (case-insensitively, as e-mail
    addresses are in practice); the user must exist, be active and have a valid role. An
    identity whose ``email_verified`` claim is present and false is refused: anyone may
    put any address on an unverified account. Writes ``login`` or ``login_failed``
    (flushed; the caller commits, also after an AuthError).

    Raises
    ------
    AuthError
        Not signed in, no e-mail, an unverified e-mail, no such user (or more than one
        matching), a disabled user, or an invalid role; the message says which, plainly.
    """
    details = {"method": "oidc", "provider": provider}
    if not _claim(identity, "is_logged_in"):
        raise AuthError("not signed in with the identity provider")
    email = str(_claim(identity, "email") or "").strip()
    if not email or len(email) > 64:
        audit.record(session, None, "login_failed", details=details | {"reason": "no_email"})
        raise AuthError("the identity provider did not give a usable e-mail address")
    if _claim(identity, "email_verified") is False:
        audit.record(session, None, "login_failed", details=details | {"reason": "unverified"})
        raise AuthError(f"the e-mail address {email} is not verified by the identity provider")
    rows = _sign_in_row(session, func.lower(User.username) == email.lower())
    if len(rows) != 1:
        reason = "unknown_user" if not rows else "ambiguous"
        audit.record(session, None, "login_failed", details=details | {"reason": reason})
        raise AuthError(
            f"{email} has no account here" if not rows else f"{email} matches several accounts"
        )
    row = rows[0]
    if not row.is_active:
        audit.record(
            session, row.username, "login_failed", details=details | {"reason": "disabled"}
        )
        raise AuthError(DISABLED)
    if row.role not in ROLES:
        audit.record(
            session, row.username, "login_failed", details=details | {"reason": "bad_role"}
        )
        raise AuthError("this account has no valid role; ask an admin to set one")
    audit.record(session, row.username, "login", details=details)
    return _auth_user(row)
