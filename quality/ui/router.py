"""The router: page config, sign-in, role-dependent menu, sidebar pickers, then the page.

``app.py`` calls :func:`run`. Outside demo mode nobody gets past the sign-in page
(:func:`quality.ui.auth.session_role`) before ``st.navigation`` builds the menu, and the
signed-in user is re-validated on every run.

Every page starts with :func:`page_guard`, which also covers a Streamlit quirk: while a
``pages/`` folder sits next to the entry point, a server process runs in legacy multipage
mode until some session has called ``st.navigation``. A visitor whose first request is a
deep link (``/browser``) on a fresh server then gets the page script alone, without the
router, its sign-in, role filter and sidebar. The guard notices that the router did not run
in this script run, runs it (which switches the process to ``st.navigation`` and renders
the requested page through it), and stops the bare run.
"""

from __future__ import annotations

import streamlit as st

from quality.ui import auth, nav, sidebar

__all__ = ["ROUTED_KEY", "page_guard", "run"]

ROUTED_KEY = "_routed_by_app"
"""Session-state flag the router sets right before it runs a page; the page's guard pops it."""


def run() -> None:
    """Set up the page, sign-in (or the demo role picker), the menu for the session's role
    and the sidebar; run the chosen page."""
    st.set_page_config(page_title="Quality Workbench", page_icon="🩻", layout="wide")
    role = auth.session_role()
    page = st.navigation(nav.navigation(role))
    sidebar.dataset_picker()
    st.session_state[ROUTED_KEY] = True
    page.run()


def page_guard(key: str) -> str:
    """First call of every page: route through :func:`run` if needed, then check the role.

    Parameters
    ----------
    key : the page's :attr:`~quality.ui.nav.PageSpec.key`.

    Returns
    -------
    str
        The session's role, when it may see the page (otherwise the page stops with a
        refusal, before it reads any data; outside demo mode, nobody signed in gets the
        sign-in page).
    """
    if not st.session_state.pop(ROUTED_KEY, False):
        run()
        st.stop()
    return nav.check_role(key)
