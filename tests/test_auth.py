"""Users, password hashes and sign-in (``quality.auth``), OIDC detection and mapping, and the
``quality users`` CLI; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from quality import audit, auth
from quality.cli import app as cli_app
from quality.config import oidc_provider_label, oidc_providers, read_auth_section
from quality.db.schema import User
from quality.db.session import make_engine, upgrade
from quality.errors import AuthError, AuthInputError

PASSWORD = "correct horse battery"  # 21 characters
ROOT = Path(__file__).resolve().parent.parent
PRODUCTION_HASHER = auth._HASHER
runner = CliRunner()


@pytest.fixture(autouse=True)
def _cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Argon2id with small parameters: the production ones cost ~0.1-0.5 s a hash, which
    dozens of tests cannot afford (Django's test settings do the same). The subprocess CLI
    test and test_production_parameters use the real ones."""
    monkeypatch.setattr(
        auth, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    )
    auth._dummy_hash.cache_clear()
    yield
    auth._dummy_hash.cache_clear()


def _actions(session: Session) -> list[tuple[str | None, str, str | None]]:
    rows = audit.list_audit(session)
    return [
        (u, a, d.get("reason"))
        for u, a, d in zip(rows["username"], rows["action"], rows["details"], strict=True)
    ][::-1]


# --------------------------------------------------------------------------- hashing


def test_production_parameters() -> None:
    # OWASP's minimum for argon2id: 19 MiB, 2 iterations, 1 lane; we use argon2-cffi's
    # RFC 9106 low-memory profile (64 MiB, 3 iterations, 4 lanes).
    assert PRODUCTION_HASHER.type.name == "ID"
    assert PRODUCTION_HASHER.memory_cost >= 19 * 1024 and PRODUCTION_HASHER.time_cost >= 2
    made = PRODUCTION_HASHER.hash(PASSWORD)
    assert made.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert auth.verify_password(made, PASSWORD)


def test_weaker_hash_is_upgraded_at_sign_in(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth.add_user(session, "ada", "admin", PASSWORD)  # cheap parameters (fixture)
    monkeypatch.setattr(
        auth, "_HASHER", PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    )
    auth.authenticate(session, "ada", PASSWORD)
    stored = session.scalar(select(User.password_hash).where(User.username == "ada"))
    assert stored is not None and "m=2048,t=2,p=1" in stored
    assert auth.authenticate(session, "ada", PASSWORD).username == "ada"


def test_hash_round_trip_is_argon2id_and_salted() -> None:
    first, second = auth.hash_password(PASSWORD), auth.hash_password(PASSWORD)
    assert first.startswith("$argon2id$")
    assert first != second  # a fresh salt each time
    assert PASSWORD not in first
    assert auth.verify_password(first, PASSWORD)
    assert not auth.verify_password(first, PASSWORD + "!")
    assert not auth.verify_password("not a hash", PASSWORD)


# --------------------------------------------------------------------------- management


def test_add_user_and_list_without_hash(session: Session) -> None:
    user = auth.add_user(session, " ada ", "admin", PASSWORD, display_name="Ada L.")
    auth.add_user(session, "oidc@example.org", "clinician", None)
    session.commit()
    assert user == auth.AuthUser(id=user.id, username="ada", role="admin", display_name="Ada L.")
    users = auth.list_users(session)
    assert list(users["username"]) == ["ada", "oidc@example.org"]
    assert not any("hash" in c for c in users.columns)
    assert {"id", "username", "display_name", "role", "is_active", "created_at"} <= set(users)
    assert list(users["has_password"]) == [True, False]
    assert PASSWORD not in users.to_string()
    stored = session.scalar(select(User.password_hash).where(User.username == "ada"))
    assert stored is not None and stored not in users.to_string()


BAD_USERS = [
    ("ada", "admin", PASSWORD, "username"),  # duplicate
    ("bob", "nurse", PASSWORD, "role"),
    ("bob", "data_scientist", PASSWORD, "role"),  # the old default spelling
    ("bob", "clinician", "nine char", "password"),
    ("", "clinician", PASSWORD, "username"),
    ("x" * 65, "clinician", PASSWORD, "username"),
    ("tab\tname", "clinician", PASSWORD, "username"),
]


def test_add_user_refuses_bad_input(session: Session) -> None:
    # One database for every case (a fresh PostgreSQL database costs about a second).
    auth.add_user(session, "ada", "admin", PASSWORD)
    for username, role, password, field in BAD_USERS:
        with pytest.raises(AuthInputError) as info:
            auth.add_user(session, username, role, password)
        assert info.value.field == field, (username, role)
        assert password not in str(info.value)
    assert list(auth.list_users(session)["username"]) == ["ada"]
    with pytest.raises(AuthInputError) as info:
        auth.add_user(session, "cy", "clinician", PASSWORD, display_name="d" * 129)
    assert info.value.field == "display_name"


def test_ten_characters_is_enough(session: Session) -> None:
    auth.add_user(session, "ten", "clinician", "0123456789")
    assert auth.authenticate(session, "ten", "0123456789").username == "ten"


def test_user_change_audited_with_actor(session: Session) -> None:
    auth.add_user(session, "ada", "admin", PASSWORD, actor="cli:ops")
    auth.set_password(session, "ada", "another long one", actor="cli:ops")
    auth.set_active(session, "ada", False, actor="cli:ops")
    auth.add_user(session, "bob", "clinician", PASSWORD)  # no actor, no row
    session.commit()
    rows = audit.list_audit(session)
    assert list(rows["action"]) == ["user_change"] * 3
    assert set(rows["username"]) == {"cli:ops"}
    assert [d["change"] for d in rows["details"]][::-1] == ["add", "passwd", "disable"]
    assert PASSWORD not in rows.to_string() and "another long one" not in rows.to_string()


# --------------------------------------------------------------------------- sign-in


def test_authenticate_ok_and_audited(session: Session) -> None:
    made = auth.add_user(session, "ada", "data scientist", PASSWORD)
    user = auth.authenticate(session, "ada", PASSWORD)
    assert user == made
    assert _actions(session) == [("ada", "login", None)]


def test_wrong_password_and_unknown_user_read_the_same(session: Session) -> None:
    auth.add_user(session, "ada", "admin", PASSWORD)
    auth.add_user(session, "reviewer", "clinician", None)  # demo-mode reviewer: no password
    messages = []
    for name, password in (("ada", "wrong password!"), ("nobody", PASSWORD), ("reviewer", "")):
        with pytest.raises(AuthError) as info:
            auth.authenticate(session, name, password)
        messages.append(str(info.value))
    assert set(messages) == {"wrong username or password"}
    # The failures are audited; an unknown name is not written (it may be a password).
    assert _actions(session) == [
        ("ada", "login_failed", "wrong_password"),
        (None, "login_failed", "unknown_user"),
        ("reviewer", "login_failed", "no_password"),
    ]
    logged = audit.list_audit(session).to_string()
    assert "wrong password!" not in logged and PASSWORD not in logged and "nobody" not in logged


def test_disabled_user_cannot_sign_in(session: Session) -> None:
    auth.add_user(session, "ada", "admin", PASSWORD)
    auth.set_active(session, "ada", False)
    with pytest.raises(AuthError, match=r"^this account is disabled$"):
        auth.authenticate(session, "ada", PASSWORD)
    # Without the right password, a disabled account looks like any wrong sign-in.
    with pytest.raises(AuthError, match=r"^wrong username or password$"):
        auth.authenticate(session, "ada", "not the password")
    auth.set_active(session, "ada", True)
    assert auth.authenticate(session, "ada", PASSWORD).role == "admin"


def test_set_password(session: Session) -> None:
    auth.add_user(session, "ada", "admin", PASSWORD)
    auth.set_password(session, "ada", "a brand new password")
    with pytest.raises(AuthError):
        auth.authenticate(session, "ada", PASSWORD)
    assert auth.authenticate(session, "ada", "a brand new password").username == "ada"
    with pytest.raises(AuthInputError) as info:
        auth.set_password(session, "ada", "short")
    assert info.value.field == "password"
    with pytest.raises(AuthInputError) as info:
        auth.set_password(session, "nobody", "long enough password")
    assert info.value.field == "username"


def test_active_user_follows_the_db(session: Session) -> None:
    auth.add_user(session, "ada", "clinician", PASSWORD)
    assert auth.active_user(session, "ada") == auth.AuthUser(
        id=auth.active_user(session, "ada").id,  # type: ignore[union-attr]
        username="ada",
        role="clinician",
        display_name=None,
    )
    auth.set_active(session, "ada", False)
    assert auth.active_user(session, "ada") is None
    assert auth.active_user(session, "nobody") is None
    assert auth.active_user(session, "") is None
    with pytest.raises(AuthInputError):
        auth.set_active(session, "nobody", False)


def test_old_role_spelling_cannot_sign_in(session: Session) -> None:
    # users.role had the default "data_scientist" before issue 9; such a row gets no access.
    session.add(
        User(username="old", role="data_scientist", password_hash=auth.hash_password(PASSWORD))
    )
    session.flush()
    with pytest.raises(AuthError, match="no valid role"):
        auth.authenticate(session, "old", PASSWORD)
    assert auth.active_user(session, "old") is None


# --------------------------------------------------------------------------- OIDC


SHARED = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "s" * 32}
PROVIDER = {
    "client_id": "id",
    "client_secret": "secret",
    "server_metadata_url": "https://accounts.example.org/.well-known/openid-configuration",
}


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({}, ()),
        (None, ()),
        (SHARED, ()),
        (SHARED | PROVIDER, ("default",)),
        (PROVIDER, ()),  # no redirect_uri / cookie_secret: st.login would refuse
        (SHARED | {"google": PROVIDER, "okta": PROVIDER}, ("google", "okta")),
        (SHARED | {"google": PROVIDER, "half": {"client_id": "x"}}, ("google",)),
        (SHARED | {"my_idp": PROVIDER}, ()),  # st.login refuses underscores
        (SHARED | PROVIDER | {"google": PROVIDER}, ("default", "google")),
    ],
)
def test_oidc_detection(section: dict[str, Any] | None, expected: tuple[str, ...]) -> None:
    assert oidc_providers(section) == expected


def test_oidc_detection_from_secrets_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets.toml"
    assert read_auth_section(path) == {}
    path.write_text(
        '[quality]\ndb_url = "sqlite://"\n\n[auth]\n'
        'redirect_uri = "http://localhost:8501/oauth2callback"\ncookie_secret = "xyz"\n\n'
        '[auth.microsoft]\nclient_id = "a"\nclient_secret = "b"\n'
        'server_metadata_url = "https://login.microsoftonline.com/x/v2.0/.well-known/openid-configuration"\n'
    )
    section = read_auth_section(path)
    assert oidc_providers(section) == ("microsoft",)
    assert oidc_provider_label(section, "microsoft") == "microsoft"
    assert oidc_provider_label(SHARED | PROVIDER, "default") == "accounts.example.org"
    path.write_text("[auth\nbroken")
    assert read_auth_section(path) == {}


class FakeUser:
    """The shape of ``st.user``: attribute access and ``get``."""

    def __init__(self, **claims: Any) -> None:
        self._claims = claims

    def __getattr__(self, key: str) -> Any:
        try:
            return self._claims[key]
        except KeyError as exc:
            raise AttributeError(key) from exc

    def get(self, key: str, default: Any = None) -> Any:
        return self._claims.get(key, default)


def test_oidc_mapping(session: Session) -> None:
    made = auth.add_user(session, "Dr.Who@Example.org", "labeling manager", None)
    auth.add_user(session, "gone@example.org", "clinician", None)
    auth.set_active(session, "gone@example.org", False)
    ok = auth.user_from_oidc(
        session, FakeUser(is_logged_in=True, email="dr.who@example.org", email_verified=True),
        provider="google",
    )  # fmt: skip
    assert ok == made
    # A plain mapping of claims works too.
    assert auth.user_from_oidc(session, {"is_logged_in": True, "email": "DR.WHO@example.org"})
    refusals = {
        "unknown": FakeUser(is_logged_in=True, email="stranger@example.org"),
        "disabled": FakeUser(is_logged_in=True, email="gone@example.org"),
        "unverified": FakeUser(is_logged_in=True, email="dr.who@example.org", email_verified=False),
        "no email": FakeUser(is_logged_in=True),
        "signed out": FakeUser(is_logged_in=False),
    }
    messages = {}
    for name, identity in refusals.items():
        with pytest.raises(AuthError) as info:
            auth.user_from_oidc(session, identity)
        messages[name] = str(info.value)
    assert "has no account here" in messages["unknown"]
    assert messages["disabled"] == "this account is disabled"
    assert "not verified" in messages["unverified"]
    assert "e-mail" in messages["no email"]
    rows = audit.list_audit(session)
    assert list(rows["action"]).count("login") == 2
    assert set(rows[rows["action"] == "login"]["username"]) == {"Dr.Who@Example.org"}
    assert {d.get("method") for d in rows["details"]} == {"oidc"}


# --------------------------------------------------------------------------- CLI


def _cli(*args: str, db: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUALITY_")}
    return subprocess.run(
        [sys.executable, "-m", "quality.cli", *args, "--db", db],
        input=stdin, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip


def test_cli_users_journey(tmp_path: Path) -> None:
    """The real command line in a subprocess: real stdin, stdout and stderr."""
    db = f"sqlite:///{tmp_path / 'users.db'}"
    eng = make_engine(db)
    upgrade(eng)
    secret, secret2 = "cli password one", "cli password two"
    runs = [
        _cli("users", "add", "ada", "--role", "admin", "--password-stdin", db=db,
             stdin=secret + "\n"),
        _cli("users", "passwd", "ada", "--password-stdin", db=db, stdin=secret2 + "\r\n"),
        _cli("users", "list", "--json", db=db),
    ]  # fmt: skip
    assert [r.returncode for r in runs] == [0, 0, 0], [r.stderr for r in runs]
    listed = json.loads(runs[2].stdout)["users"]
    assert [(u["username"], u["role"], u["is_active"]) for u in listed] == [("ada", "admin", True)]
    assert not any("hash" in key for key in listed[0])
    # The password is never echoed, printed or logged; nor is its hash.
    for run in runs:
        for stream in (run.stdout, run.stderr):
            assert secret not in stream and secret2 not in stream and "$argon2" not in stream
    with Session(eng) as s:
        assert auth.authenticate(s, "ada", secret2).role == "admin"  # "\r\n" stripped
        rows = audit.list_audit(s, action="user_change")
        assert [d["change"] for d in rows["details"]] == ["passwd", "add"]
        assert all(u.startswith("cli:") for u in rows["username"])
        assert secret not in rows.to_string() and secret2 not in rows.to_string()
    eng.dispose()


def test_cli_users_in_process(engine: Any, db_url: str) -> None:
    """Every subcommand and refusal, on both backends (in-process: fast)."""

    def cli(*args: str, stdin: str = "") -> Any:
        return runner.invoke(cli_app, [*args, "--db", db_url], input=stdin)

    ok = [
        cli("users", "add", "dr@example.org", "--role", "labeling-manager", "--no-password",
            "--display-name", "Dr Example", "--json"),
        cli("users", "add", "bo", "--role", "data_scientist", "--password-stdin",
            stdin="0123456789\n"),
        cli("users", "disable", "bo"),
        cli("users", "enable", "bo"),
        cli("users", "list", "--json"),
        cli("users", "list"),
    ]  # fmt: skip
    assert [r.exit_code for r in ok] == [0] * 6, [r.output for r in ok]
    assert json.loads(ok[0].stdout)["role"] == "labeling manager"
    listed = json.loads(ok[4].stdout)["users"]
    assert [(u["username"], u["role"], u["is_active"]) for u in listed] == [
        ("bo", "data scientist", True),
        ("dr@example.org", "labeling manager", True),
    ]
    assert "username" in ok[5].stdout and "bo" in ok[5].stdout
    refused = {
        "duplicate": cli("users", "add", "bo", "--role", "admin", "--password-stdin",
                         stdin="0123456789\n"),
        "bad role": cli("users", "add", "cy", "--role", "nurse", "--password-stdin",
                        stdin="0123456789\n"),
        "short": cli("users", "add", "cy", "--role", "clinician", "--password-stdin",
                     stdin="123456789\n"),
        "empty stdin": cli("users", "add", "cy", "--role", "clinician", "--password-stdin"),
        "unknown disable": cli("users", "disable", "nobody"),
        "unknown enable": cli("users", "enable", "nobody"),
        "unknown passwd": cli("users", "passwd", "nobody", "--password-stdin",
                              stdin="0123456789\n"),
        "password argument": cli("users", "add", "cy", "--role", "admin", "--password",
                                 "0123456789"),
    }  # fmt: skip
    for name, res in refused.items():
        assert res.exit_code == 2, (name, res.output)
        assert "0123456789" not in res.stdout, name
    assert "already exists" in refused["duplicate"].stderr
    assert "nurse" in refused["bad role"].stderr
    assert "10 characters" in refused["short"].stderr
    assert "nobody" in refused["unknown disable"].stderr
    with Session(engine) as s:
        assert list(auth.list_users(s)["username"]) == ["bo", "dr@example.org"]
        assert len(audit.list_audit(s, action="user_change")) == 4
