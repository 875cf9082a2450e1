"""Page registry, and which role sees which page.

The role of a session is the signed-in user's (:mod:`quality.ui.auth` keeps the user under
:data:`USER_KEY`, re-validated on every run), or in demo mode the one picked in the sidebar
(``st.session_state["role"]``). The menu (:func:`navigation`) and the pages themselves
(:func:`check_role`, through :func:`quality.ui.router.page_guard`) both consult
:data:`ROLE_PAGES`, so a page opened by URL or by ``st.switch_page`` still refuses a role that
may not see it, before it reads any data.

:data:`ROLE_PAGES` follows issue 9's table, with two additions: ``overview`` for every role
(it shows counts only, and ``st.navigation`` needs a landing page) and the labeling
worklist for labeling managers (deciding what the doctors label next is their job).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from quality.auth import ROLES
from quality.config import get_settings

__all__ = [
    "DEFAULT_ROLE",
    "PAGES",
    "ROLES",
    "ROLE_KEY",
    "ROLE_PAGES",
    "USER_KEY",
    "PageSpec",
    "allowed_pages",
    "check_role",
    "current_role",
    "demo_mode",
    "navigation",
]

_APP_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROLE = "admin"
"""The demo picker's first choice (demo mode only)."""
ROLE_KEY = "role"
"""Session-state key of the role picked in demo mode (ignored outside demo mode)."""
USER_KEY = "auth_user"
"""Session-state key of the signed-in user: a dict with ``id``, ``username``, ``role`` and
``method`` (``password`` or ``oidc``); never a password or hash."""


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
    PageSpec("audit", "pages/audit.py", "Audit", "🛡️", "Admin"),
)

ROLE_PAGES: dict[str, frozenset[str]] = {
    "admin": frozenset(p.key for p in PAGES),
    "labeling manager": frozenset(
        {"overview", "doctors", "agreement", "dataset_card", "eda", "data_tests", "worklist"}
    ),
    "data scientist": frozenset(
        {
            "overview",
            "eda",
            "image_quality",
            "drift",
            "dataset_card",
            "data_tests",
            "models",
            "agreement",
        }
    ),
    "clinician": frozenset({"overview", "spot_check", "browser"}),
}


def demo_mode() -> bool:
    """True when authentication is off (``QUALITY_DEMO_MODE``): anyone picks any role."""
    return bool(get_settings().demo_mode)


def current_role() -> str | None:
    """The role of this session: the signed-in user's, or in demo mode the picked one
    (default admin). None outside demo mode while nobody is signed in."""
    if demo_mode():
        role = st.session_state.get(ROLE_KEY, DEFAULT_ROLE)
        return role if role in ROLE_PAGES else DEFAULT_ROLE
    user = st.session_state.get(USER_KEY)
    role = user.get("role") if isinstance(user, dict) else None
    return role if role in ROLE_PAGES else None


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
    """``st.navigation`` input for ``role``: its pages grouped by section, then every other
    page hidden from the menu.

    The hidden pages keep their URLs, so a page opened by URL or ``st.switch_page`` runs
    and shows :func:`check_role`'s refusal, instead of a silent fall-back to the landing
    page.
    """
    allowed = allowed_pages(role)
    sections: dict[str, list[st.Page]] = {}
    for spec in allowed:
        # Absolute paths: the router may run from a page script, not only from app.py.
        page = st.Page(_APP_ROOT / spec.path, title=spec.title, icon=spec.icon, url_path=spec.key)
        sections.setdefault(spec.section, []).append(page)
    # In a shown section: a section of hidden pages alone could still draw its header.
    first = next(iter(sections))
    for spec in PAGES:
        if spec not in allowed:
            sections[first].append(
                st.Page(
                    _APP_ROOT / spec.path,
                    title=spec.title,
                    icon=spec.icon,
                    url_path=spec.key,
                    visibility="hidden",
                )
            )
    return sections


def check_role(key: str) -> str:
    """Stop the page with a refusal when the current role may not see page ``key``.

    Called before the page reads any data. Outside demo mode, nobody signed in is refused
    too (the router shows the sign-in page before any page runs; this covers a page run
    without it).

    Returns
    -------
    str
        The current role, when allowed.
    """
    role = current_role()
    if role is None:
        st.error("Sign in to open this page.", icon="🔐")
        st.stop()
    if key not in ROLE_PAGES[role]:
        st.error(f"The **{role}** role cannot open this page.", icon="⛔")
        st.stop()
    return role
