"""The admin's Audit page: the audit log with filters and a CSV download, and the users.

Reads go straight to the read-write DB (``db_url``), uncached: an audit log must show the
row written a second ago. Downloading the CSV is itself audited (``export``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pandas as pd
import streamlit as st
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from quality import audit
from quality import auth as core
from quality.errors import QualityError
from quality.ui import auth as ui_auth
from quality.ui import data

__all__ = ["ANYONE", "DEFAULT_DAYS", "audit_filters", "audit_log_section", "users_section"]

ANYONE = "(anyone)"
EVERY_ACTION = "(every action)"
DEFAULT_DAYS = 30
T = TypeVar("T")


@contextmanager
def _guard() -> Iterator[None]:
    """DB trouble becomes a message; the rest of the page still renders."""
    try:
        with data.db_guard():
            yield
    except QualityError as exc:
        st.error(str(exc), icon="🚫")
        st.stop()
    except SQLAlchemyError as exc:
        st.error(
            f"Cannot read the audit log ({type(exc).__name__}): the database schema may be "
            "older than the app; run `quality db upgrade`.",
            icon="🚫",
        )
        st.stop()


def _read(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    # The read-write URL: rows written a moment ago must show (a replica may lag).
    return data.run_query(data.write_url(), fn, *args, **kwargs)


def _write(fn: Callable[[Session], None]) -> None:
    data.run_write(fn)


def audit_filters() -> dict[str, Any]:
    """User, action and date-range pickers; returns :func:`quality.audit.list_audit`'s
    keyword arguments."""
    with _guard():
        names = _read(audit.audit_usernames)
    cols = st.columns([2, 2, 3, 1])
    user = cols[0].selectbox("User", [ANYONE, *names], key="audit_user")
    action = cols[1].selectbox("Action", [EVERY_ACTION, *audit.ACTIONS], key="audit_action")
    today = dt.datetime.now(dt.UTC).date()
    picked = cols[2].date_input(
        "Dates (UTC)",
        value=(today - dt.timedelta(days=DEFAULT_DAYS), today),
        max_value=today,
        key="audit_dates",
    )
    limit = cols[3].number_input(
        "Rows", min_value=10, max_value=audit.MAX_LIMIT, value=1000, step=100, key="audit_limit"
    )
    days = list(picked) if isinstance(picked, list | tuple) else [picked]
    return {
        "username": None if user == ANYONE else user,
        "action": None if action == EVERY_ACTION else action,
        # While a range is being picked, only its first day is set.
        "since": days[0] if days else None,
        "until": days[-1] if days else None,
        "limit": int(limit),
    }


def _for_display(frame: pd.DataFrame) -> pd.DataFrame:
    shown = frame.copy()
    shown["details"] = [json.dumps(d, sort_keys=True) if d else "" for d in shown["details"]]
    return shown


def _record_export(n_rows: int, filters: dict[str, Any]) -> None:
    """Download callback: the export of the audit log is audited too."""
    facts = {"rows": n_rows} | {
        k: str(v) for k, v in filters.items() if v is not None and k != "limit"
    }
    _write(lambda s: audit.record(s, ui_auth.audit_actor(), "export", "audit_log", details=facts))


def audit_log_section() -> None:
    """The audit log, newest first, under its filters, with a CSV download."""
    filters = audit_filters()
    with _guard():
        rows = _read(audit.list_audit, **filters)
    shown = _for_display(rows)
    st.caption(
        f"{len(shown):,} rows, newest first"
        + (f" (the newest {filters['limit']:,} only)" if len(shown) >= filters["limit"] else "")
        + ". The log is append-only: the database refuses changes and deletions."
    )
    if shown.empty:
        st.info("No audit rows match these filters.", icon="🗒️")
    else:
        st.dataframe(
            shown,
            hide_index=True,
            column_config={"at": st.column_config.DatetimeColumn("at (UTC)")},
        )
    st.download_button(
        "⬇️ Audit log (CSV)",
        shown.to_csv(index=False),
        file_name="audit_log.csv",
        mime="text/csv",
        key="audit_download",
        disabled=shown.empty,
        on_click=_record_export,
        args=(len(shown), filters),
    )


def users_section() -> None:
    """Every user with role and state; never a password hash."""
    with _guard():
        users = _read(core.list_users)
    if users.empty:
        st.info("No users yet: add one with `quality users add NAME --role ROLE`.", icon="👤")
        return
    st.dataframe(users, hide_index=True)
    st.caption(
        "Manage users with `quality users add|passwd|disable|enable|list`; every change is "
        "audited (`user_change`)."
    )
