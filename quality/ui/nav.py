"""Page registry, and which role sees which page.

Until sign-in lands (issue 9), the role comes from the sidebar's demo-mode picker and lives in
``st.session_state["role"]``. The menu (:func:`navigation`) and the pages themselves
(:func:`check_role`, through :func:`quality.ui.router.page_guard`) both consult
:data:`ROLE_PAGES`, so a page opened by URL still refuses a role that may not see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

__all__ = [
    "DEFAULT_ROLE",
    "PAGES",
    "ROLES",
    "ROLE_KEY",
    "ROLE_PAGES",
    "PageSpec",
    "allowed_pages",
    "check_role",
    "current_role",
    "navigation",
]

_APP_ROOT = Path(__file__).resolve().parents[2]
ROLES: tuple[str, ...] = ("admin", "labeling manager", "data scientist", "clinician")
DEFAULT_ROLE = "admin"
ROLE_KEY = "role"


@dataclass(frozen=True)
class PageSpec:
    """One page of the app.

    Attributes
    ----------
    key : stable identifier (``overview``); also the URL path.
    path : script path, relative to ``app.py``.
    title : menu title.
    icon : an emoji (``:material/...:`` icons fetch fonts from the internet).
    section : menu section.
    """

    key: str
    path: str
    title: str
    icon: str
    section: str


PAGES: tuple[PageSpec, ...] = (
    PageSpec("overview", "pages/overview.py", "Overview", "📊", "Data products"),
    PageSpec("dataset_card", "pages/dataset_card.py", "Dataset card", "🪪", "Data products"),
    PageSpec("browser", "pages/browser.py", "Browser", "🔎", "Explore"),
    PageSpec("eda", "pages/eda.py", "EDA", "📈", "Explore"),
    PageSpec("image_quality", "pages/image_quality.py", "Image quality", "🩻", "Explore"),
    PageSpec("doctors", "pages/doctors.py", "Doctors", "🩺", "Labeling"),
    PageSpec("agreement", "pages/agreement.py", "Agreement", "🤝", "Labeling"),
    PageSpec("worklist", "pages/worklist.py", "Labeling worklist", "📝", "Labeling"),
    PageSpec("spot_check", "pages/spot_check.py", "Spot-check", "🔬", "Models"),
    PageSpec("models", "pages/models.py", "Models", "🤖", "Models"),
    PageSpec("data_tests", "pages/data_tests.py", "Data tests", "✅", "Monitoring"),
    PageSpec("drift", "pages/drift.py", "Drift", "🌊", "Monitoring"),
)

ROLE_PAGES: dict[str, frozenset[str]] = {
    "admin": frozenset(p.key for p in PAGES),
    "labeling manager": frozenset({"overview", "dataset_card", "doctors", "agreement", "worklist"}),
    "data scientist": frozenset(
        {
            "overview",
            "dataset_card",
            "browser",
            "eda",
            "image_quality",
            "agreement",
            "data_tests",
            "drift",
            "worklist",
            "spot_check",
            "models",
        }
    ),
    "clinician": frozenset({"browser", "spot_check"}),
}


def current_role() -> str:
    """The role of this session (demo mode: picked in the sidebar; default admin)."""
    role = st.session_state.get(ROLE_KEY, DEFAULT_ROLE)
    return role if role in ROLE_PAGES else DEFAULT_ROLE


def allowed_pages(role: str) -> list[PageSpec]:
    """The pages ``role`` may open, in menu order.

    Raises
    ------
    ValueError
        For an unknown role; the message lists the valid ones.
    """
    if role not in ROLE_PAGES:
        raise ValueError(f"unknown role {role!r}; valid roles: {', '.join(ROLES)}")
    return [p for p in PAGES if p.key in ROLE_PAGES[role]]


def navigation(role: str) -> dict[str, list[st.Page]]:
    """``st.navigation`` input for ``role``: pages grouped by section."""
    sections: dict[str, list[st.Page]] = {}
    for spec in allowed_pages(role):
        # Absolute paths: the router may run from a page script, not only from app.py.
        page = st.Page(_APP_ROOT / spec.path, title=spec.title, icon=spec.icon, url_path=spec.key)
        sections.setdefault(spec.section, []).append(page)
    return sections


def check_role(key: str) -> str:
    """Stop the page with a refusal when the current role may not see page ``key``.

    Returns
    -------
    str
        The current role, when allowed.
    """
    role = current_role()
    if key not in ROLE_PAGES[role]:
        st.error(f"The **{role}** role cannot open this page.", icon="⛔")
        st.stop()
    return role
