"""Sign-in for the app: the sign-in page, the signed-in user's sidebar box, sign-out.

:func:`session_role` is the router's first step (:func:`quality.ui.router.run`), before
``st.navigation`` builds the menu:

- **demo mode** (``QUALITY_DEMO_MODE=1``): no sign-in; the sidebar's role picker, under a
  plain warning that authentication is off;
- otherwise, nobody signed in: the sign-in page alone, then a stop. It is a password form
  (:func:`quality.auth.authenticate`), or, when ``.streamlit/secrets.toml`` configures an
  OIDC provider (``[auth]``, Streamlit's ``st.login``), one "Sign in with ..." button per
  provider; the provider's e-mail is then looked up in ``users``
  (:func:`quality.auth.user_from_oidc`);
- signed in: the user is **re-validated on every run** (:func:`quality.auth.active_user`, one
  indexed lookup, not cached), so a role change applies at once and a disabled account's
  open session ends at its next interaction, with a message.

The session keeps ``id``, ``username``, ``role`` and the sign-in method (``password`` or
``oidc``) under :data:`quality.ui.nav.USER_KEY`; never a password or a hash. Sign-ins, failed
sign-ins and sign-outs are written to the audit log on the read-write DB (``db_url``, not
``db_url_readonly``).

A password sign-in lasts as long as the browser tab's Streamlit session: a reload or a
typed URL starts a new session and asks again (Streamlit cannot set cookies). OIDC sign-ins
survive reloads (Streamlit keeps them in a signed cookie).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from streamlit.errors import StreamlitAPIException

from quality import audit
from quality import auth as core
from quality.config import oidc_provider_label, oidc_providers, read_auth_section
from quality.db.session import session_scope
from quality.errors import AuthError, DatabaseUnavailableError
from quality.ui import data, nav, sidebar

__all__ = [
    "FAILED_SIGN_IN_DELAY_S",
    "audit_actor",
    "current_user",
    "session_role",
    "sign_out",
]

FAILED_SIGN_IN_DELAY_S = 1.0
"""Pause after a failed sign-in: slows password guessing without locking anyone out."""
_FLASH_KEY = "_auth_flash"
_FORM_KEY = "sign_in"


@contextmanager
def _session() -> Iterator[Session]:
    """A committing session on the read-write DB; DB trouble shows a message and stops."""
    try:
        # Sign-ins write audit rows: always the read-write URL.
        with session_scope(data.get_engine(data.write_url())) as session:
            yield session
    except DatabaseUnavailableError as exc:
        data.show_unavailable(exc)
    except SQLAlchemyError as exc:
        # The class only: a driver message can quote SQL parameters.
        st.error(
            f"Cannot check the sign-in: the database refused it ({type(exc).__name__}). "
            "Its schema may be older than the app: run `quality db upgrade`.",
            icon="🚫",
        )
        st.stop()


def _to_state(user: core.AuthUser, method: str) -> dict[str, Any]:
    # The least the session needs; the display name is read again with every re-validation.
    return {"id": user.id, "username": user.username, "role": user.role, "method": method}


def current_user() -> core.AuthUser | None:
    """The signed-in user of this session (as re-validated this run; ``display_name`` is
    not kept in the session and reads None), or None (nobody, or demo mode)."""
    stored = st.session_state.get(nav.USER_KEY)
    if not isinstance(stored, dict) or nav.demo_mode():
        return None
    return core.AuthUser(
        id=int(stored["id"]),
        username=str(stored["username"]),
        role=str(stored["role"]),
        display_name=None,
    )


def audit_actor() -> str:
    """Who to name in an audit row written from the app: the signed-in user name, or in
    demo mode ``demo:<picked role>`` (nobody is known there)."""
    user = current_user()
    if user is not None:
        return user.username
    return f"demo:{nav.current_role() or 'unknown'}"


def _flash(text: str) -> None:
    st.session_state[_FLASH_KEY] = text


def _end_session(username: str, reason: str) -> None:
    st.session_state.pop(nav.USER_KEY, None)
    with _session() as session:
        audit.record(session, username, "logout", details={"reason": reason})


def _oidc_logged_in() -> bool:
    try:
        return bool(st.user.is_logged_in)
    except (AttributeError, KeyError, StreamlitAPIException):
        return False


def _revalidate() -> core.AuthUser | None:
    """The session's user as the DB has it now; signs the session out when that user is
    gone, disabled or (OIDC) no longer signed in with the provider."""
    stored = st.session_state.get(nav.USER_KEY)
    if not isinstance(stored, dict):
        return None
    username, method = str(stored.get("username", "")), str(stored.get("method", "password"))
    if method == "oidc" and not _oidc_logged_in():
        _end_session(username, "identity provider session ended")
        _flash("Your sign-in with the identity provider has ended. Sign in again.")
        return None
    with _session() as session:
        user = core.active_user(session, username)
    if user is None:
        _end_session(username, "account disabled or removed")
        _flash("You were signed out: your account is disabled or no longer exists.")
        return None
    st.session_state[nav.USER_KEY] = _to_state(user, method)
    return user


def sign_out() -> None:
    """Sign the session out (audit ``logout``); an OIDC session also leaves the provider."""
    stored = st.session_state.get(nav.USER_KEY)
    if not isinstance(stored, dict):
        return
    _end_session(str(stored.get("username", "")), "signed out")
    _flash("You are signed out.")
    if stored.get("method") == "oidc":
        st.logout()
    st.rerun()


def _escape(text: str) -> str:
    # Names are shown in Markdown: keep them literal.
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!|<>~$:" else c for c in text)


def _user_box(user: core.AuthUser) -> None:
    name = _escape(user.display_name or user.username)
    st.sidebar.markdown(f"👤 Signed in as **{name}**  \n{_escape(user.role)}")
    if st.sidebar.button("Sign out", key="auth_sign_out", icon="🚪"):
        sign_out()


# --------------------------------------------------------------------------- sign-in page


def _authenticate(username: str, password: str) -> tuple[core.AuthUser | None, str | None]:
    with _session() as session:
        try:
            return core.authenticate(session, username, password), None
        except AuthError as exc:
            # Returning (not raising) commits the session: the login_failed row stays.
            return None, str(exc)


def _password_form() -> None:
    with st.form(_FORM_KEY, clear_on_submit=True):
        username = st.text_input(
            "User name", key="sign_in_username", max_chars=64, autocomplete="username"
        )
        password = st.text_input(
            "Password",
            type="password",
            key="sign_in_password",
            max_chars=core.MAX_PASSWORD_CHARS,
            autocomplete="current-password",
        )
        submitted = st.form_submit_button("Sign in", type="primary", icon="🔑")
    if not submitted:
        return
    user, error = _authenticate(username, password)
    del password
    if user is None:
        time.sleep(FAILED_SIGN_IN_DELAY_S)
        st.error(error or core.WRONG_CREDENTIALS, icon="⛔")
        return
    st.session_state[nav.USER_KEY] = _to_state(user, "password")
    st.rerun()


def _oidc_sign_in(auth_section: dict[str, Any], providers: tuple[str, ...]) -> None:
    if _oidc_logged_in():
        provider = str(st.session_state.get("_auth_provider", providers[0]))
        with _session() as session:
            try:
                user, error = core.user_from_oidc(session, st.user, provider=provider), None
            except AuthError as exc:
                user, error = None, str(exc)
        if user is not None:
            st.session_state[nav.USER_KEY] = _to_state(user, "oidc")
            st.rerun()
        st.error(f"Signed in with the identity provider, but refused here: {error}.", icon="⛔")
        st.caption("Ask an admin to add your e-mail address with `quality users add`.")
        if st.button("Sign out of the identity provider", key="auth_oidc_logout", icon="🚪"):
            st.logout()
        return
    for provider in providers:
        label = oidc_provider_label(auth_section, provider)
        if st.button(f"Sign in with {label}", key=f"auth_login_{provider}", type="primary"):
            st.session_state["_auth_provider"] = provider
            try:
                st.login(provider)
            except StreamlitAPIException as exc:
                st.error(f"Cannot start the sign-in with {label}: {exc}", icon="🚫")


def _sign_in_body() -> None:
    _, middle, _ = st.columns([1, 2, 1])
    with middle:
        st.title("🔐 Sign in")
        st.caption(
            "The workbench shows patients' images and doctors' performance: sign in to continue."
        )
        flash = st.session_state.pop(_FLASH_KEY, None)
        if flash:
            st.warning(flash, icon="🔒")
        auth_section = read_auth_section()
        providers = oidc_providers(auth_section)
        if providers:
            _oidc_sign_in(auth_section, providers)
        else:
            _password_form()


def _sign_in_page() -> NoReturn:
    """The sign-in page alone, under every page's URL, then stop.

    A page is known by the hash of its URL path, so each page's URL gets the sign-in form
    (hidden from the menu), the default one under the landing page's path: a deep link such
    as ``/doctors`` asks for a sign-in and then, on the rerun, opens that page (or its
    refusal) through the real menu, and a sign-in at ``/`` lands on the landing page.
    """
    landing, *others = nav.PAGES
    pages = [st.Page(_sign_in_body, title="Sign in", icon="🔐", url_path=landing.key, default=True)]
    pages += [
        st.Page(_sign_in_body, title="Sign in", url_path=spec.key, visibility="hidden")
        for spec in others
    ]
    st.navigation(pages, position="hidden").run()
    st.stop()


def session_role() -> str:
    """The role of this session, for the menu; the sign-in page (and a stop) when nobody is
    signed in outside demo mode.

    Demo mode draws the role picker; otherwise the signed-in user is re-validated and shown
    in the sidebar with a sign-out button.
    """
    if nav.demo_mode():
        return sidebar.role_picker()
    user = _revalidate()
    if user is None:
        _sign_in_page()
    _user_box(user)
    return user.role
