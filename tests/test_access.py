"""Access control in the app (AppTest, ``QUALITY_DEMO_MODE=0``, on a copy of the tiny demo):

- the role × page matrix: every role × every page of ``nav.PAGES``, opened as a signed-in
  user of that role (one AppTest per pair): allowed renders without an exception or a
  refusal; refused shows the refusal and no dataframe, chart or metric;
- sign-in through the form: a wrong password, an unknown user (same message), a disabled
  user, a session whose user is disabled afterwards (signed out on its next run), sign-out;
- without sign-in only the sign-in page renders, also under a page's URL;
- demo mode keeps the role picker under a plain warning;
- an OIDC provider in the secrets file turns the form into "Sign in with ..." buttons.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from conftest import copy_demo_db
from sqlalchemy import update
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

import quality.config
from quality import audit, auth
from quality.db.schema import User
from quality.db.session import make_engine, upgrade
from quality.ui import auth as ui_auth
from quality.ui import data, nav

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
TIMEOUT = 60
PASSWORD = "a long enough password"
ROLE_USER = {role: role.replace(" ", "_") for role in auth.ROLES}
MATRIX = [(role, spec.key) for role in auth.ROLES for spec in nav.PAGES]
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture(autouse=True)
def _app_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("QUALITY_DEMO_MODE", "0")
    # Small argon2 parameters: sign-ins in these tests would otherwise cost ~0.3 s each.
    monkeypatch.setattr(auth, "_HASHER", CHEAP)
    monkeypatch.setattr(ui_auth, "FAILED_SIGN_IN_DELAY_S", 0.0)
    data.clear_caches()
    yield
    data.clear_caches()


def _add_users(url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as s:
        for role, name in ROLE_USER.items():
            auth.add_user(s, name, role, None)
            auth.set_password(s, name, PASSWORD)  # the hash: whatever _HASHER is now
        s.commit()
    engine.dispose()


@pytest.fixture(scope="module")
def shared_url(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A copy of the tiny demo with one user per role (read-only for the matrix)."""
    url = copy_demo_db(tiny_demo, tmp_path_factory.mktemp("access"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(auth, "_HASHER", CHEAP)
        _add_users(url)
    return url


@pytest.fixture
def own_url(tiny_demo: Path, tmp_path: Path) -> str:
    """A private copy, for tests that disable users or count audit rows."""
    url = copy_demo_db(tiny_demo, tmp_path)
    _add_users(url)
    return url


def _signed_in(monkeypatch: pytest.MonkeyPatch, url: str, role: str, page: str) -> AppTest:
    """One run of ``page`` by a session signed in as the user of ``role``, as the router
    would run it after ``st.switch_page`` or a click in the menu."""
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    with _session(url) as s:
        user = auth.active_user(s, ROLE_USER[role])
    assert user is not None
    at.session_state[nav.USER_KEY] = {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "method": "password",
    }
    at.switch_page(page)
    return at.run()


@contextmanager
def _session(url: str) -> Iterator[Session]:
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            yield s
    finally:
        engine.dispose()


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in (at.error, at.info, at.warning, at.success) for e in kind]
    return "\n".join(str(p) for p in parts)


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _renders_data(at: AppTest) -> bool:
    main = at.main
    return bool(
        main.dataframe
        or main.metric
        or main.get("plotly_chart")
        or main.get("arrow_vega_lite_chart")
        or main.get("imgs")
    )


def _sign_in_form(at: AppTest, username: str, password: str) -> AppTest:
    at.text_input(key="sign_in_username").input(username)
    at.text_input(key="sign_in_password").input(password)
    return at.button[0].click().run()


# --------------------------------------------------------------------------- role matrix


def test_matrix_covers_every_page_and_role() -> None:
    assert len(MATRIX) == len(auth.ROLES) * len(nav.PAGES)
    assert nav.ROLE_PAGES["admin"] == {p.key for p in nav.PAGES}
    assert nav.ROLE_PAGES["clinician"] == {"overview", "spot_check", "browser"}
    assert "doctors" not in nav.ROLE_PAGES["data scientist"]
    assert all("overview" in pages for pages in nav.ROLE_PAGES.values())
    assert {r for r, pages in nav.ROLE_PAGES.items() if "audit" in pages} == {"admin"}


@pytest.mark.parametrize(("role", "key"), MATRIX, ids=[f"{r}-{k}" for r, k in MATRIX])
def test_role_page_matrix(
    monkeypatch: pytest.MonkeyPatch, shared_url: str, role: str, key: str
) -> None:
    spec = next(p for p in nav.PAGES if p.key == key)
    at = _signed_in(monkeypatch, shared_url, role, spec.path)
    _ok(at)
    refusal = f"The **{role}** role cannot open this page."
    if key in nav.ROLE_PAGES[role]:
        assert refusal not in _texts(at)
        assert at.title and at.title[0].value.endswith(spec.title), [t.value for t in at.title]
    else:
        assert [e.value for e in at.error] == [refusal]
        assert not _renders_data(at), f"{role} saw data on {key}"
        assert not at.title  # stopped before the page drew anything
    assert at.session_state[nav.USER_KEY]["role"] == role


# --------------------------------------------------------------------------- sign-in


def test_without_sign_in_only_the_sign_in_page(
    monkeypatch: pytest.MonkeyPatch, shared_url: str
) -> None:
    monkeypatch.setenv("QUALITY_DB_URL", shared_url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _ok(at)
    assert [t.value for t in at.title] == ["🔐 Sign in"]
    assert [t.label for t in at.text_input] == ["User name", "Password"]
    assert not _renders_data(at) and not at.sidebar.selectbox  # no pickers, no data
    # A deep link to a page (its script run first) asks for the sign-in too, and shows
    # nothing else.
    deep = AppTest.from_file(APP, default_timeout=TIMEOUT)
    deep.switch_page("pages/doctors.py")
    deep.run()
    _ok(deep)
    assert [t.value for t in deep.title] == ["🔐 Sign in"]
    assert not _renders_data(deep)


def test_wrong_password_and_unknown_user(monkeypatch: pytest.MonkeyPatch, own_url: str) -> None:
    monkeypatch.setenv("QUALITY_DB_URL", own_url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _sign_in_form(at, "clinician", "not the password")
    _ok(at)
    assert [e.value for e in at.error] == ["wrong username or password"]
    assert nav.USER_KEY not in at.session_state
    _sign_in_form(at, "nobody", PASSWORD)
    assert [e.value for e in at.error] == ["wrong username or password"]
    assert [t.value for t in at.title] == ["🔐 Sign in"]
    _sign_in_form(at, "clinician", PASSWORD)
    _ok(at)
    assert at.title[0].value.endswith("Overview")
    assert at.session_state[nav.USER_KEY]["role"] == "clinician"
    # The session holds the least it needs, never the password or its hash.
    assert at.session_state[nav.USER_KEY] == {
        "id": at.session_state[nav.USER_KEY]["id"],
        "username": "clinician",
        "role": "clinician",
        "method": "password",
    }
    with _session(own_url) as s:
        rows = audit.list_audit(s)
    assert list(rows["action"])[:3] == ["login", "login_failed", "login_failed"]
    assert PASSWORD not in rows.to_string() and "not the password" not in rows.to_string()


def test_disabled_user_cannot_sign_in(monkeypatch: pytest.MonkeyPatch, own_url: str) -> None:
    with _session(own_url) as s:
        auth.set_active(s, "clinician", False)
        s.commit()
    monkeypatch.setenv("QUALITY_DB_URL", own_url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _sign_in_form(at, "clinician", PASSWORD)
    _ok(at)
    assert [e.value for e in at.error] == ["this account is disabled"]
    assert [t.value for t in at.title] == ["🔐 Sign in"]


def test_session_ends_when_user_is_disabled(monkeypatch: pytest.MonkeyPatch, own_url: str) -> None:
    monkeypatch.setenv("QUALITY_DB_URL", own_url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _sign_in_form(at, "labeling_manager", PASSWORD)
    at.switch_page("pages/doctors.py").run()
    _ok(at)
    assert at.title[0].value.endswith("Doctors")
    with _session(own_url) as s:
        auth.set_active(s, "labeling_manager", False)
        s.commit()
    # The next interaction: the page is gone, the sign-in page says why.
    at.run()
    _ok(at)
    assert [t.value for t in at.title] == ["🔐 Sign in"]
    assert "account is disabled" in _texts(at)
    assert nav.USER_KEY not in at.session_state
    assert not _renders_data(at)
    with _session(own_url) as s:
        last = audit.list_audit(s, limit=1).iloc[0]
    assert (last["username"], last["action"]) == ("labeling_manager", "logout")


def test_role_change_applies_on_next_run(monkeypatch: pytest.MonkeyPatch, own_url: str) -> None:
    at = _signed_in(monkeypatch, own_url, "admin", "pages/doctors.py")
    assert at.title[0].value.endswith("Doctors")
    with _session(own_url) as s:
        s.execute(update(User).where(User.username == "admin").values(role="clinician"))
        s.commit()
    at.run()
    _ok(at)
    assert "The **clinician** role cannot open this page." in _texts(at)
    assert not _renders_data(at)


def test_sign_out(monkeypatch: pytest.MonkeyPatch, own_url: str) -> None:
    monkeypatch.setenv("QUALITY_DB_URL", own_url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _sign_in_form(at, "admin", PASSWORD)
    assert "Signed in as **admin**" in at.sidebar.markdown[0].value
    # AppTest runs the page alone from the second run on, which gives the router's sidebar
    # widgets other ids than on the first (a browser always runs app.py): settle first.
    at.run()
    at.sidebar.button(key="auth_sign_out").click().run()
    _ok(at)
    assert [t.value for t in at.title] == ["🔐 Sign in"]
    assert "signed out" in _texts(at)
    with _session(own_url) as s:
        assert list(audit.list_audit(s, username="admin")["action"]) == ["logout", "login"]


def test_admin_audit_page(monkeypatch: pytest.MonkeyPatch, own_url: str) -> None:
    monkeypatch.setenv("QUALITY_DB_URL", own_url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _sign_in_form(at, "nobody", "whatever it is")
    _sign_in_form(at, "admin", PASSWORD)
    at.switch_page("pages/audit.py").run()
    _ok(at)
    log, users = at.main.dataframe
    assert list(log.value["action"])[:2] == ["login", "login_failed"]
    assert "whatever it is" not in log.value.to_string()
    assert set(users.value["username"]) == set(ROLE_USER.values())
    assert not any("hash" in c for c in users.value.columns)
    at.selectbox(key="audit_action").set_value("login_failed").run()
    _ok(at)
    assert set(at.main.dataframe[0].value["action"]) == {"login_failed"}


# --------------------------------------------------------------------------- modes


def test_demo_mode_says_so_and_keeps_the_picker(
    monkeypatch: pytest.MonkeyPatch, shared_url: str
) -> None:
    monkeypatch.setenv("QUALITY_DEMO_MODE", "1")
    monkeypatch.setenv("QUALITY_DB_URL", shared_url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _ok(at)
    assert at.title[0].value.endswith("Overview")  # no sign-in
    assert at.sidebar.selectbox[0].label.startswith("Demo mode")
    assert list(at.sidebar.selectbox[0].options) == list(auth.ROLES)
    warnings = [w.value for w in at.sidebar.warning]
    assert warnings == ["Demo mode: authentication is off, anyone can pick any role."]


def test_oidc_config_shows_provider_buttons(
    monkeypatch: pytest.MonkeyPatch, shared_url: str, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(
        '[auth]\nredirect_uri = "http://localhost:8501/oauth2callback"\n'
        'cookie_secret = "0123456789abcdef0123456789abcdef"\n'
        '[auth.okta]\nclient_id = "id"\nclient_secret = "no-such-secret"\n'
        'server_metadata_url = "https://example.invalid/.well-known/openid-configuration"\n'
    )
    monkeypatch.setattr(quality.config, "SECRETS_PATH", secrets)
    monkeypatch.setenv("QUALITY_DB_URL", shared_url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    _ok(at)
    assert [b.label for b in at.button] == ["Sign in with okta"]
    assert not at.text_input  # no password form
    assert "no-such-secret" not in str(at)


def test_signed_in_reviewer_cannot_review_as_someone_else(
    monkeypatch: pytest.MonkeyPatch, shared_url: str
) -> None:
    """Outside demo mode the spot-check's reviewer is the signed-in user: no picker, no
    field to type another person's name."""
    at = _signed_in(monkeypatch, shared_url, "clinician", "pages/spot_check.py")
    _ok(at)
    captions = " ".join(c.value for c in at.caption)
    assert f"Reviewing as **{ROLE_USER['clinician']}**" in captions
    assert not [s for s in at.selectbox if s.key == "spot_reviewer"]
    assert not [t for t in at.text_input if t.key == "spot_new_reviewer"]
