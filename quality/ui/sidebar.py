"""Sidebar widgets shared by every page: the demo-mode role picker and the dataset picker.

The signed-in user's box and the sign-out button live in :mod:`quality.ui.auth`.
"""

from __future__ import annotations

import streamlit as st

from quality.errors import QualityError
from quality.ui import data
from quality.ui.nav import DEFAULT_ROLE, ROLE_KEY, ROLES

__all__ = ["DATASET_KEY", "DEMO_WARNING", "current_dataset_id", "dataset_picker", "role_picker"]

DATASET_KEY = "dataset_id"
DEMO_WARNING = "Demo mode: authentication is off, anyone can pick any role."
_ALL = -1  # selectbox sentinel for "all images"; None would not round-trip through widgets


def role_picker() -> str:
    """Demo mode only: the role selector, under a plain warning that authentication is off.

    Stores the role in ``st.session_state`` under the plain key
    :data:`~quality.ui.nav.ROLE_KEY` (kept even on runs that do not draw the picker); the
    widget has its own key and is seeded from it.
    """
    widget_key = f"_{ROLE_KEY}_picker"
    if st.session_state.get(widget_key) not in ROLES:
        role = st.session_state.get(ROLE_KEY)
        st.session_state[widget_key] = role if role in ROLES else DEFAULT_ROLE
    role = st.sidebar.selectbox("Demo mode — no sign-in; pick a role", ROLES, key=widget_key)
    st.sidebar.warning(DEMO_WARNING, icon="⚠️")
    st.session_state[ROLE_KEY] = role
    return str(role)


def dataset_picker() -> int | None:
    """Pick the dataset the pages look at; stores its id (None: all images) in session state.

    The first dataset is chosen by default. A DB that cannot be read leaves the picker out;
    the page itself says what is wrong.
    """
    try:
        datasets = data.list_datasets()
    except QualityError:
        st.sidebar.caption("No datasets to pick: the database is not available.")
        st.session_state[DATASET_KEY] = None
        return None
    names = dict(zip(datasets["dataset_id"].astype(int), datasets["name"], strict=True))
    options = [*names, _ALL]
    widget_key = f"_{DATASET_KEY}_picker"
    if st.session_state.get(widget_key) not in options:
        st.session_state[widget_key] = options[0]
    choice = st.sidebar.selectbox(
        "Dataset",
        options,
        key=widget_key,
        format_func=lambda i: "All images" if i == _ALL else names[i],
        help="The data product the pages show (its newest version).",
    )
    st.session_state[DATASET_KEY] = None if choice == _ALL else int(choice)
    return st.session_state[DATASET_KEY]


def current_dataset_id() -> int | None:
    """The dataset picked in the sidebar (None: all images, or no picker ran)."""
    value = st.session_state.get(DATASET_KEY)
    return int(value) if value is not None else None
