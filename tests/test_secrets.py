"""Secrets are never logged or shown.

A DB password, S3 keys, DICOMweb password and token and the PHI salt are set to distinctive
strings (in the environment, and in ``.streamlit/secrets.toml`` from a temporary working
folder). CLI commands on their success and failure paths, ``repr(get_settings())``, and the
app's pages (a working DB, and an unreachable one) must not show any of them: not on stdout
or stderr, not in a log record at DEBUG, not in an exception text, not in a page element.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from quality.cli import app
from quality.config import get_settings
from quality.ui import data

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
TIMEOUT = 60
PASSWORD = "Pw-5ecr3t-Qz81"
SECRETS = {
    "QUALITY_S3_KEY": "AKIA5ECRETKEYQZ81",
    "QUALITY_S3_SECRET": "s3-5ecr3t-Wx72",
    "QUALITY_DICOMWEB_PASSWORD": "dw-5ecr3t-Pa55",
    "QUALITY_DICOMWEB_TOKEN": "dw-t0ken-Bearer-99",
    "QUALITY_PHI_SALT": "salt-5ecr3t-Mm42",
}
NEEDLES = [PASSWORD, *SECRETS.values()]
UNREACHABLE = f"postgresql+psycopg://quality:{PASSWORD}@127.0.0.1:1/x"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _secrets_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("QUALITY_S3_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("QUALITY_DICOMWEB_USER", "dw-user")
    monkeypatch.setenv("QUALITY_STORE_RETRIES", "1")
    monkeypatch.setenv("QUALITY_STORE_TIMEOUT_S", "2")
    data.clear_caches()
    yield
    data.clear_caches()


def _assert_clean(text: str, where: str) -> None:
    leaked = [n for n in NEEDLES if n in text]
    assert not leaked, f"secret {leaked} in {where}"


def _invoke(args: list[str]) -> str:
    res = runner.invoke(app, args)
    text = res.output + (res.stderr if res.stderr_bytes else "")
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        text += f"\n{type(res.exception).__name__}: {res.exception}"
    return text


def _check_logs(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        # botocore's signing loggers are held at INFO by the S3 store, so even a root logger
        # forced to DEBUG records no signed request (which names the access key id).
        message = record.getMessage()
        _assert_clean(message, f"log record of {record.name}")
        if record.exc_info and record.exc_info[1] is not None:
            _assert_clean(str(record.exc_info[1]), f"exception logged by {record.name}")


def test_settings_repr_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUALITY_DB_URL", UNREACHABLE)
    monkeypatch.setenv("QUALITY_DB_URL_READONLY", UNREACHABLE)
    settings = get_settings()
    assert settings.s3_secret == SECRETS["QUALITY_S3_SECRET"]  # read from the environment
    assert PASSWORD in settings.db_url
    for text in (repr(settings), str(settings)):
        _assert_clean(text, "repr(get_settings())")


def test_secrets_toml_is_read_and_not_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in SECRETS:
        monkeypatch.delenv(key)
    monkeypatch.delenv("QUALITY_DB_URL", raising=False)
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(
        "[quality]\n"
        f'db_url = "{UNREACHABLE}"\n'
        f's3_secret = "{SECRETS["QUALITY_S3_SECRET"]}"\n'
        f'dicomweb_token = "{SECRETS["QUALITY_DICOMWEB_TOKEN"]}"\n'
    )
    monkeypatch.chdir(tmp_path)
    settings = get_settings()
    assert settings.db_url == UNREACHABLE
    assert settings.s3_secret == SECRETS["QUALITY_S3_SECRET"]
    assert settings.dicomweb_token == SECRETS["QUALITY_DICOMWEB_TOKEN"]
    _assert_clean(repr(settings), "repr(get_settings()) from secrets.toml")
    # A command that fails on that DB names it without the password.
    text = _invoke(["db", "upgrade"])
    assert "not reachable" in text and "***" in text
    _assert_clean(text, "db upgrade with secrets.toml")


def test_cli_failure_paths_show_no_secret(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    folder = tmp_path / "empty"
    folder.mkdir()
    commands = [
        ["db", "upgrade"],
        ["ingest", str(folder)],
        ["phi-audit", "ds"],
        ["card", "ds"],
        ["check", "ds"],
        ["eda", "ds"],
        ["drift", "all"],
        ["agreement", "--task", "1"],
        ["doctors", "--task", "1"],
        ["review-export"],
        ["users", "list"],
    ]
    for args in commands:
        for fmt in ([], ["--json"]):
            text = _invoke([*args, "--db", UNREACHABLE, *fmt])
            _assert_clean(text, f"quality {' '.join(args)}")
    # Remote stores that cannot be reached: the keys and tokens stay out of the messages.
    for store in ("s3://bucket/prefix", "dicomweb+http://127.0.0.1:1/dicom-web"):
        text = _invoke(["ingest", store, "--db", f"sqlite:///{tmp_path / 's.db'}"])
        _assert_clean(text, f"quality ingest {store}")
        text = _invoke(["phi-audit", "--store", store])
        _assert_clean(text, f"quality phi-audit --store {store}")
    _check_logs(caplog)


def test_cli_success_paths_with_a_password(
    pg_url: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # The throwaway cluster trusts loopback: a password in the URL is accepted and unused,
    # so the commands really connect with a URL that holds one.
    url = make_url(pg_url).set(password=PASSWORD).render_as_string(hide_password=False)
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.DEBUG)
    folder = tmp_path / "empty"
    folder.mkdir()
    for args in (
        ["db", "upgrade", "--json"],
        ["db", "upgrade"],
        ["ingest", str(folder), "--json"],
        ["phi-audit", "nope"],
        ["review-export", "--json"],
        ["users", "list", "--json"],
    ):
        text = _invoke([*args, "--db", url])
        _assert_clean(text, f"quality {' '.join(args)}")
    assert any(r.name.startswith("sqlalchemy") for r in caplog.records)
    _check_logs(caplog)


def _page_text(at: AppTest) -> str:
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "text", "code"):
        parts += [str(getattr(e, "value", "")) for e in getattr(at, kind)]
    for kind in ("error", "warning", "info", "success", "exception"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [str(m.value) + str(m.label) for m in at.metric]
    parts += [df.value.to_csv() for df in at.dataframe]
    return "\n".join(parts)


def test_pages_show_no_secret(
    monkeypatch: pytest.MonkeyPatch, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    runner.invoke(app, ["db", "upgrade", "--db", pg_url])
    working = make_url(pg_url).set(password=PASSWORD).render_as_string(hide_password=False)
    for url, page in ((working, None), (UNREACHABLE, None), (UNREACHABLE, "pages/browser.py")):
        monkeypatch.setenv("QUALITY_DB_URL", url)
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.session_state["role"] = "admin"
        at.run()
        if page:
            at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
        text = _page_text(at)
        if url == UNREACHABLE:
            assert "Cannot reach the database" in text and "***" in text
        _assert_clean(text, f"page {page or 'Overview'} on {make_url(url).host}")
        data.clear_caches()
    _check_logs(caplog)
