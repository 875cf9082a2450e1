"""Audit hooks of the app and CLI (quality.ui.trail), and the read-only DB engine.

- verdicts write their ``verdict`` audit row in the verdict's own transaction;
- downloads, custom rules runs, PHI reveals and ``quality review-export`` write theirs;
- only admins may reveal PHI header fields (checked in the helper, not only the widget);
- data scientists see doctors under pseudonyms on the Agreement page;
- with ``QUALITY_DB_URL_READONLY`` set, pages read through it and writes still land on the
  read-write URL (SQLite ``mode=ro`` and a SELECT-only PostgreSQL role).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import copy_demo_db
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest
from test_app_pages import _ramp, populated_url, write_dicom  # noqa: F401 (a fixture)
from test_app_spot_check import _start
from test_review import seed_review_db
from typer.testing import CliRunner

from quality import audit, phi
from quality import review as rv
from quality.agreement.summary import build_agreement_summary
from quality.cli import app
from quality.db.schema import Annotator, LabelingTask, Review
from quality.db.session import make_engine, upgrade
from quality.errors import AuditInputError, ReviewInputError
from quality.ui import data

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
TIMEOUT = 90


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("QUALITY_DB_URL_READONLY", raising=False)
    data.clear_caches()
    yield
    data.clear_caches()


def _audit_rows(url: str, action: str | None = None) -> list[dict]:
    engine = make_engine(url)
    with Session(engine) as s:
        df = audit.list_audit(s, action=action)
    engine.dispose()
    return df.to_dict("records")


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _all_text(at: AppTest) -> str:
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "text", "metric"):
        for el in getattr(at, kind):
            parts.append(str(getattr(el, "value", "")) + str(getattr(el, "label", "")))
    for kind in ("error", "warning", "info", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    for df in at.dataframe:
        parts.append(df.value.to_csv())
    for chart in at.get("plotly_chart"):
        parts.append(chart.proto.spec)
    return "\n".join(parts)


# --------------------------------------------------------------------------- verdicts


def test_verdict_and_its_audit_row_share_one_transaction(session: Session) -> None:
    db = seed_review_db(session)
    uid = rv.ensure_reviewer(session, "dr-audit")
    session.commit()
    pid = next(iter(db["preds"]))  # type: ignore[call-overload]
    rv.submit_verdict(session, pid, uid, "agree", actor="dr-audit", review_session_id=7)
    rows = audit.list_audit(session, action="verdict").to_dict("records")
    assert len(rows) == 1
    assert rows[0]["username"] == "dr-audit" and rows[0]["target"] == f"prediction:{pid}"
    assert rows[0]["details"] == {"verdict": "agree", "session": 7}
    # Without an actor (library callers, scripts) nothing goes to the log.
    rv.submit_verdict(session, pid, uid, "unsure")
    assert len(audit.list_audit(session, action="verdict")) == 1
    # A re-submission: one review row, one more audit row (each submission is an event).
    rv.submit_verdict(session, pid, uid, "disagree", "nodule", actor="dr-audit")
    assert len(audit.list_audit(session, action="verdict")) == 2
    assert len(session.scalars(select(Review).where(Review.prediction_id == pid)).all()) == 1


def test_no_audit_row_means_no_verdict(session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    db = seed_review_db(session)
    uid = rv.ensure_reviewer(session, "dr-fail")
    session.commit()
    pid = list(db["preds"])[1]  # type: ignore[call-overload]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AuditInputError("details", "refused for the test")

    monkeypatch.setattr(rv.audit, "record", refuse)
    with pytest.raises(AuditInputError):
        rv.submit_verdict(session, pid, uid, "agree", actor="dr-fail")
    monkeypatch.undo()
    assert rv.get_review(session, pid, uid) is None
    assert audit.list_audit(session, action="verdict").empty
    # Validation fails before anything is written: no verdict, no audit row either.
    with pytest.raises(ReviewInputError):
        rv.submit_verdict(session, pid, uid, "maybe", actor="dr-fail")
    assert audit.list_audit(session, action="verdict").empty


# --------------------------------------------------------------------------- trail in the app


def _script_record() -> None:
    import streamlit as st

    from quality.ui import trail, widgets

    ok = trail.record("export", "direct.csv", {"what": "test", "rows": 1})

    class Fake:
        def download_button(self, *args: object, **kwargs: object) -> bool:
            st.session_state["captured"] = kwargs
            return False

    widgets.download_button(
        "⬇️ x", "a,b\n1,2\n3,4\n", "table.csv", what="a table", key="k", container=Fake()
    )
    kw = st.session_state["captured"]
    kw["on_click"](*kw["args"])
    st.write(f"ok={ok} actor={trail.actor()}")


def test_record_and_download_write_export_rows(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(make_engine(url))
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_function(_script_record, default_timeout=TIMEOUT)
    at.session_state["role"] = "data scientist"
    at.run()
    _ok(at)
    assert "ok=True actor=demo:data scientist" in at.markdown[0].value
    rows = {r["target"]: r for r in _audit_rows(url, "export")}
    assert rows["direct.csv"]["username"] == "demo:data scientist"
    assert rows["table.csv"]["details"] == {"what": "a table", "rows": 2}


def test_a_failed_audit_write_never_breaks_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUALITY_DB_URL", "postgresql+psycopg://nobody:pw@127.0.0.1:1/x")
    at = AppTest.from_function(_script_record, default_timeout=TIMEOUT).run()
    _ok(at)
    assert "ok=False" in at.markdown[0].value


def _script_reveal() -> None:
    import streamlit as st

    from quality.errors import PermissionDeniedError
    from quality.ui import trail

    path = st.session_state["path"]
    try:
        rows = trail.reveal_header(path, "1.2.3.4")
        trail.reveal_header(path, "1.2.3.4")  # a rerun: no second audit row
        name = next(r["value"] for r in rows if r["keyword"] == "PatientName")
        st.write(f"revealed {name}")
    except PermissionDeniedError as exc:
        st.write(f"refused: {exc}")


def test_only_admins_reveal_and_each_reveal_is_audited(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(make_engine(url))
    path = tmp_path / "x.dcm"
    write_dicom(path, _ramp(), modality="CR")
    monkeypatch.setenv("QUALITY_DB_URL", url)
    for role in ("clinician", "data scientist", "labeling manager"):
        at = AppTest.from_function(_script_reveal, default_timeout=TIMEOUT)
        at.session_state["role"], at.session_state["path"] = role, str(path)
        at.run()
        _ok(at)
        assert at.markdown[0].value.startswith("refused") and "Doe" not in at.markdown[0].value
    assert not _audit_rows(url, "reveal_phi")
    at = AppTest.from_function(_script_reveal, default_timeout=TIMEOUT)
    at.session_state["role"], at.session_state["path"] = "admin", str(path)
    at.run()
    _ok(at)
    assert at.markdown[0].value == "revealed Doe^Jane"
    rows = _audit_rows(url, "reveal_phi")
    assert len(rows) == 1 and rows[0]["target"] == "1.2.3.4"
    assert rows[0]["username"] == "demo:admin"
    assert {"PatientName", "PatientID"} <= set(rows[0]["details"]["keywords"])
    assert "Doe" not in json.dumps(rows, default=str) and "SECRET-ID" not in json.dumps(
        rows, default=str
    )


def test_browser_reveal_toggle_is_for_admins(
    monkeypatch: pytest.MonkeyPatch,
    populated_url: str,  # noqa: F811 (the fixture imported above)
) -> None:
    monkeypatch.setenv("QUALITY_DB_URL", populated_url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["role"] = "clinician"
    at.run()
    at.switch_page("pages/browser.py").run()
    at.sidebar.selectbox[0].set_value("clinician").run()  # switch_page resends the picker
    _ok(at)
    assert at.title[0].value.endswith("Browser")
    assert not [t for t in at.toggle if str(t.key).endswith("_reveal")]
    header = at.dataframe[-1].value
    assert "Doe^Jane" not in header.to_csv()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["role"] = "admin"
    at.run()
    at.switch_page("pages/browser.py").run()
    _ok(at)
    assert "Doe^Jane" not in at.dataframe[-1].value.to_csv()
    at.toggle(key="browser_header_reveal").set_value(True).run()
    _ok(at)
    assert "Doe^Jane" in at.dataframe[-1].value.to_csv()
    rows = _audit_rows(populated_url, "reveal_phi")
    assert len(rows) == 1 and rows[0]["target"].startswith("1.2.")


# --------------------------------------------------------------------------- rules, CLI export


def test_pasted_rules_run_is_audited_by_hash(
    monkeypatch: pytest.MonkeyPatch, tiny_demo: Path, tmp_path: Path
) -> None:
    url = copy_demo_db(tiny_demo, tmp_path)
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["role"] = "admin"
    at.run()
    at.switch_page("pages/data_tests.py").run()
    _ok(at)
    rules = "rules:\n  - column: body_part\n    in: [CHEST]\n"
    at.radio(key="dt_rules_source").set_value("Paste rules").run()
    at.text_area(key="dt_rules_text").input(rules).run()
    at.button(key="dt_run").click().run()
    _ok(at)
    rows = _audit_rows(url, "rules_change")
    assert len(rows) == 1 and rows[0]["target"] == "pasted rules"
    details = rows[0]["details"]
    assert details["sha256"] == hashlib.sha256(rules.encode()).hexdigest()
    assert details["bytes"] == len(rules.encode()) and details["run_id"] >= 1
    assert "CHEST" not in json.dumps(details)
    # The shipped rules file is not a change: no new row.
    at.radio(key="dt_rules_source").set_value("Built-in checks only").run()
    at.button(key="dt_run").click().run()
    assert len(_audit_rows(url, "rules_change")) == 1


def test_review_export_cli_is_audited(session: Session, db_url: str, tmp_path: Path) -> None:
    seed_review_db(session)
    out = tmp_path / "verdicts.csv"
    res = CliRunner().invoke(app, ["review-export", "--db", db_url, "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = audit.list_audit(session, action="export").to_dict("records")
    assert len(rows) == 1 and rows[0]["target"] == "verdicts.csv"
    assert rows[0]["username"].startswith("cli:")
    assert rows[0]["details"] == {"what": "verdicts", "rows": 0, "format": "csv"}


# --------------------------------------------------------------------------- pseudonyms


def test_pseudonymised_agreement_keeps_the_statistics(tiny_demo: Path) -> None:
    engine = make_engine(f"sqlite:///{tiny_demo / 'demo.db'}")
    with Session(engine) as s:
        task = s.scalars(select(LabelingTask).where(LabelingTask.kind == "classification")).one()
        summary = build_agreement_summary(s, task.id, n_resamples=50)
        codes = set(s.scalars(select(Annotator.code)))
    engine.dispose()
    masked = phi.pseudonymise_agreement(summary, "salt")
    assert not set(masked.pairwise_kappa.index) & codes
    assert list(masked.pairwise_kappa.index) == [
        phi.pseudonym(c, "salt") for c in summary.pairwise_kappa.index
    ]
    assert (masked.pairwise_kappa.to_numpy() == summary.pairwise_kappa.to_numpy()).sum() == (
        summary.pairwise_kappa.notna().sum().sum()
    )
    for labels in masked.worst_items["labels"]:
        assert not set(labels) & codes
    assert masked.alpha == summary.alpha


@pytest.mark.parametrize(("role", "real"), [("data scientist", False), ("labeling manager", True)])
def test_agreement_page_pseudonymises_for_data_scientists(
    monkeypatch: pytest.MonkeyPatch, tiny_demo: Path, tmp_path: Path, role: str, real: bool
) -> None:
    url = copy_demo_db(tiny_demo, tmp_path)
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["role"] = role
    at.run()
    at.switch_page("pages/agreement.py").run()
    at.sidebar.selectbox[0].set_value(role).run()  # switch_page resends the picker's default
    _ok(at)
    assert at.title[0].value.endswith("Agreement") and at.session_state["role"] == role
    shown = _all_text(at)
    engine = make_engine(url)
    with Session(engine) as s:
        codes = set(s.scalars(select(Annotator.code)))
    engine.dispose()
    found = {c for c in codes if f'"{c}"' in shown or f"{c}:" in shown}
    if real:
        assert found and "Doctor-" not in shown
    else:
        assert not found, found
        assert "Doctor-" in shown and "pseudonyms" in shown


# --------------------------------------------------------------------------- read-only engine


def _spot_check_with_readonly(monkeypatch: pytest.MonkeyPatch, url: str, ro_url: str) -> None:
    """The spot-check journey with reads on ``ro_url``: verdicts land through ``url``."""
    monkeypatch.setenv("QUALITY_DB_URL_READONLY", ro_url)
    at = _start(monkeypatch, url)  # adds a reviewer and draws a sample: two writes
    at.button(key="spot_verdict_agree").click().run()
    _ok(at)
    assert not at.error, [e.value for e in at.error]
    engine = make_engine(url)
    with Session(engine) as s:
        assert len(s.scalars(select(Review)).all()) == 1
        rows = audit.list_audit(s, action="verdict").to_dict("records")
    engine.dispose()
    assert len(rows) == 1 and rows[0]["username"] == "demo:clinician"


def test_readonly_sqlite_url_for_reads(
    monkeypatch: pytest.MonkeyPatch, tiny_demo: Path, tmp_path: Path
) -> None:
    url = copy_demo_db(tiny_demo, tmp_path)
    ro_url = f"sqlite:///file:{make_url(url).database}?mode=ro&uri=true"
    # Reads really go through the read-only URL: with a broken main URL, Overview renders.
    monkeypatch.setenv("QUALITY_DB_URL", "postgresql+psycopg://nobody:pw@127.0.0.1:1/x")
    monkeypatch.setenv("QUALITY_DB_URL_READONLY", ro_url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["role"] = "admin"
    at.run()
    _ok(at)
    assert at.title[0].value.endswith("Overview") and not at.error
    assert at.metric and not (ROOT / "file:").exists()
    data.clear_caches()
    _spot_check_with_readonly(monkeypatch, url, ro_url)


def test_readonly_postgres_role_for_reads(
    monkeypatch: pytest.MonkeyPatch, pg_url: str, tmp_path: Path
) -> None:
    engine = make_engine(pg_url)
    upgrade(engine)
    with Session(engine) as s:
        seed_review_db(s)
    role = f"ro_{make_url(pg_url).database}"
    with engine.connect() as c:
        c.execute(text(f'CREATE ROLE "{role}" LOGIN'))  # a test-made identifier
        c.execute(text(f'GRANT USAGE ON SCHEMA public TO "{role}"'))
        c.execute(text(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"'))
        c.commit()
    engine.dispose()
    ro_url = make_url(pg_url).set(username=role).render_as_string(hide_password=False)
    ro = make_engine(ro_url)
    with ro.connect() as c, pytest.raises(Exception, match="permission denied"):
        c.execute(text("INSERT INTO sources (name) VALUES ('x')"))
    ro.dispose()
    try:
        _spot_check_with_readonly(monkeypatch, pg_url, ro_url)
    finally:
        data.clear_caches()  # drop the engines before the database is dropped
        admin = make_engine(pg_url)
        with admin.connect() as c:
            c.execute(text(f'DROP OWNED BY "{role}"'))
            c.commit()
        admin.dispose()
