"""The app's audit trail: who is acting, and the one way pages write audit rows.

- :func:`actor`: the user name to put in an audit row (the signed-in user, or
  ``demo:<role>`` in demo mode, where nobody is known).
- :func:`record`: one :func:`quality.audit.record` row, in its own committed session on the
  **read-write** DB (:func:`quality.ui.data.write_engine`, never the read-only URL). An audit
  write that fails never breaks the page: it logs a warning naming the action and the
  error class only (no target, no details, no driver message: they could quote values).
- :func:`record_export`: the ``on_click`` of every download button
  (:func:`quality.ui.widgets.download_button`); :func:`export_recorder` the same row for a
  deferred download, written when its file is made.
- :func:`reveal_header`: the DICOM header with PHI shown, for admins only; the role is
  checked here, not only in the widget, and each image's reveal is recorded once per session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from quality import audit, dicom
from quality.db.session import session_scope
from quality.errors import PermissionDeniedError, QualityError
from quality.ui import data, nav

__all__ = [
    "REVEAL_ROLES",
    "actor",
    "export_recorder",
    "record",
    "record_export",
    "reveal_header",
]

_log = logging.getLogger(__name__)

REVEAL_ROLES: frozenset[str] = frozenset({"admin"})
"""Roles that may reveal PHI header fields."""

_REVEALED_KEY = "_phi_revealed"  # session state: targets whose reveal is already recorded


def actor() -> str:
    """Who acts in this session: the signed-in user name, or ``demo:<role>`` in demo mode
    (``demo:unknown`` when no role is known)."""
    from quality.ui import auth  # the sign-in module owns the session's user

    return auth.audit_actor()


def record(action: str, target: str | None = None, details: dict[str, Any] | None = None) -> bool:
    """Append one audit row as :func:`actor`, committed on the read-write DB.

    Parameters
    ----------
    action : one of :data:`quality.audit.ACTIONS`.
    target : what was acted on (a file name, ``prediction:<id>``, a SOP Instance UID). Never
        PHI, never a secret.
    details : small facts (counts, a hash, keywords). Never PHI, never a secret.

    Returns
    -------
    bool
        Whether the row was written. A failure is logged (action and error class only) and
        the page goes on.
    """
    return _write(data.write_engine, actor(), action, target, details)


def _write(
    engine: Callable[[], Engine], who: str, action: str, target: str | None,
    details: dict[str, Any] | None,
) -> bool:  # fmt: skip
    try:
        with session_scope(engine()) as session:
            audit.record(session, who, action, target, details)
    except (QualityError, SQLAlchemyError) as exc:
        _log.warning("audit row %r was not written: %s", action, type(exc).__name__)
        return False
    return True


def record_export(file_name: str, what: str, rows: int | None) -> None:
    """Download-button callback: an ``export`` row (target: the file name)."""
    record("export", file_name, {"what": what, "rows": rows})


def export_recorder(file_name: str, what: str, rows: int | None) -> Callable[[], bool]:
    """A writer of the ``export`` row of a deferred download, bound now to this session's
    actor and read-write engine.

    A deferred download's file is made off the script thread (no session state there), when
    the user clicks: the returned function writes the row then, as :func:`record` would.
    """
    who, details = actor(), {"what": what, "rows": rows}
    try:
        engine = data.write_engine()
    except QualityError as exc:
        error = exc  # an unusable DB URL: the write fails (and is logged) when the file is made

        def engine_of() -> Engine:
            raise error
    else:

        def engine_of() -> Engine:
            return engine

    return lambda: _write(engine_of, who, "export", file_name, details)


def reveal_header(uri: str, target: str) -> list[dict[str, str]]:
    """The header rows of ``uri`` with the PHI values shown, for :data:`REVEAL_ROLES` only.

    The first reveal of ``target`` in a session writes a ``reveal_phi`` row (target: the
    image's SOP Instance UID or URI; details: the keywords whose values were revealed, never
    the values); later reruns of the same page do not write again.

    Raises
    ------
    PermissionDeniedError
        The session's role may not reveal PHI (checked here, whatever the widget showed),
        or the audit row could not be written (no audit, no reveal).
    DicomReadError
        The file cannot be read.
    """
    role = nav.current_role()
    if role not in REVEAL_ROLES:
        raise PermissionDeniedError("reveal PHI header fields", role)
    rows = dicom.masked_header(uri, reveal=True)
    revealed: set[str] = st.session_state.setdefault(_REVEALED_KEY, set())
    if target not in revealed:
        masked = dicom.masked_header(uri)
        keywords = sorted({m["keyword"] or m["tag"] for m in masked if m["value"] == dicom.MASK})
        if not record("reveal_phi", target, {"keywords": keywords}):
            # Every reveal is audited: no audit row, no reveal.
            raise PermissionDeniedError(
                "reveal PHI header fields while the audit log cannot be written", role
            )
        revealed.add(target)
    return rows
