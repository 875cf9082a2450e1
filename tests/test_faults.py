"""Faults as tests: PostgreSQL restarts during a review session; scoring is killed mid-run.

1. **PostgreSQL restart during a spot-check** (:func:`test_pg_restart_during_review`). A
   private throwaway cluster (never the shared session ``pg_cluster``, which other tests use
   at the same time) holds the tiny demo. A clinician records two verdicts on the
   Spot-check page (Streamlit AppTest); the server stops (``pg_ctl stop -m fast``); the third
   verdict, pressed during the outage, gives a plain message and no traceback, and what was
   entered stays in the session (draft and widgets); a read-only page says the DB cannot be
   reached. The server starts again on the same port; "Save again" stores the third verdict
   once. Then a restart with no request in between: the cached engine's dead pooled
   connections are replaced (``pool_pre_ping``) and the fourth verdict is saved at the first
   try. The DB holds one review per (prediction, reviewer), each with its audit row.
   :func:`test_connection_cut_mid_verdict_then_retry` cuts the connection during the
   verdict's INSERT instead: "unreachable", nothing stored, and a retry stores it once.
2. **SIGKILL of ``quality score``** (:func:`test_score_killed_then_rerun`), on SQLite and on
   PostgreSQL: the real CLI in a subprocess, one image per commit; killed once the first
   rows are committed; a rerun completes, adds only the missing rows, and the rows equal
   those of an uninterrupted run on another copy of the same demo.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import streamlit as st
from conftest import DEMO_SALT, PgCluster, _pg_bindir, service_missing
from sqlalchemy import event, func, select, text
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

from quality import review as rv
from quality.db.queries import newest_version_id
from quality.db.schema import (
    AuditLog,
    Dataset,
    DatasetItem,
    Image,
    ImageQuality,
    Prediction,
    Review,
    User,
)
from quality.db.session import make_engine, upgrade
from quality.demo import build_demo
from quality.errors import DatabaseUnavailableError
from quality.imaging import metrics as qm
from quality.ui import data

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PAGE = "pages/spot_check.py"
TIMEOUT = 90
REVIEWER = "dr-fault"
DATASET = "chest-xray-demo"
QUALITY_CLI = Path(sys.executable).with_name("quality")


# --------------------------------------------------------------------------- helpers


def _load_demo(url: str, out: Path) -> None:
    """The tiny demo (seed 0) into the empty DB at ``url``, its files under ``out``."""
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as session:
        build_demo(session, out, seed=0, size="tiny", salt=DEMO_SALT, workers=1)
    engine.dispose()


def _pg_ctl(cluster: PgCluster, *args: str) -> None:
    subprocess.run(
        cluster._cmd(str(cluster.bindir / "pg_ctl"), "-D", str(cluster.data), *args),
        check=True,
        capture_output=True,
    )


def _pg_stop(cluster: PgCluster) -> None:
    """Stop the server the way an operator restarting it would (fast: clients cut off)."""
    _pg_ctl(cluster, "-m", "fast", "-w", "stop")


def _pg_start(cluster: PgCluster) -> None:
    """Start the stopped server again, same data folder, same port (PgCluster.start's options)."""
    opts = (
        f"-h 127.0.0.1 -p {cluster.port} -k {cluster.tmp} -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    _pg_ctl(cluster, "-o", opts, "-l", str(cluster.tmp / "log"), "-w", "-t", "60", "start")


@pytest.fixture
def private_pg() -> Iterator[PgCluster]:
    """A PostgreSQL cluster of this test alone: it is stopped and started mid-test."""
    bindir = _pg_bindir()
    if bindir is None:
        service_missing("PostgreSQL (initdb/pg_ctl under /usr/lib/postgresql/*/bin)")
    assert bindir is not None
    cluster = PgCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def _fresh_caches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    data.clear_caches()
    yield
    data.clear_caches()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in (at.error, at.info, at.warning, at.success) for e in kind]
    return "\n".join(str(p) for p in parts)


def _widget(at: AppTest, kind: str, field: str) -> Any:
    """The current study's widget ``spot_<field>_<session>_<prediction>``."""
    found = [w for w in getattr(at, kind) if str(w.key).startswith(f"spot_{field}_")]
    assert len(found) == 1, [w.key for w in getattr(at, kind)]
    return found[0]


def _current_prediction(at: AppTest) -> int:
    return int(str(_widget(at, "selectbox", "label").key).rsplit("_", 1)[1])


def _open_app(role: str = "clinician") -> AppTest:
    """The app as a new browser tab: the role's landing page (the Overview)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["role"] = role
    at.run()
    return at


def _open_spot_check() -> AppTest:
    at = _open_app()
    _ok(at)
    at.switch_page(PAGE).run()
    # AppTest's switch_page run resends the role picker's first option: pick the role again.
    at.sidebar.selectbox[0].set_value("clinician").run()
    _ok(at)
    assert at.title[0].value.endswith("Spot-check")
    return at


def _reviews(url: str) -> tuple[list[tuple[int, int, str, str | None, str | None]], list[str]]:
    """(prediction, reviewer, verdict, corrected label, comment) of every review, and the
    targets of the ``verdict`` audit rows, read on a fresh engine."""
    engine = make_engine(url)
    with Session(engine) as s:
        rows = [
            (r.prediction_id, r.reviewer_id, r.verdict, r.corrected_label, r.comment)
            for r in s.scalars(select(Review).order_by(Review.prediction_id))
        ]
        audited = list(
            s.scalars(
                select(AuditLog.target).where(AuditLog.action == "verdict").order_by(AuditLog.id)
            )
        )
    engine.dispose()
    return rows, audited


# --------------------------------------------------------------------------- 1: PG restart


def test_pg_restart_during_review(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    private_pg: PgCluster,
    _fresh_caches: None,
) -> None:
    url = private_pg.new_database()
    _load_demo(url, tmp_path / "demo")
    monkeypatch.setenv("QUALITY_DB_URL", url)

    # A clinician adds their name and draws 5 studies.
    at = _open_spot_check()
    at.text_input(key="spot_new_reviewer").input(REVIEWER)
    at.button(key="spot_add_reviewer").click().run()
    _ok(at)
    at.number_input(key="spot_size").set_value(5)
    at.number_input(key="spot_seed").set_value(3)
    at.button(key="spot_draw").click().run()
    _ok(at)
    session_id = int(at.selectbox(key="spot_session").value)
    engine = make_engine(url)
    with Session(engine) as s:
        items = [int(i) for i in rv.session_items(s, session_id)["prediction_id"]]
        reviewer = int(s.scalar(select(User.id).where(User.username == REVIEWER)) or 0)
    engine.dispose()
    assert len(items) == 5 and reviewer > 0

    # Two verdicts while the server is up.
    assert _current_prediction(at) == items[0]
    at.button(key="spot_verdict_agree").click().run()
    _ok(at)
    assert _current_prediction(at) == items[1]
    at.button(key="spot_verdict_unsure").click().run()
    _ok(at)
    assert _current_prediction(at) == items[2]
    assert "Saved “unsure” on study 2" in _texts(at)
    cached_engine = data.get_engine(url)

    # The server stops. The clinician fills in study 3 and presses "disagree".
    label = _widget(at, "selectbox", "label")
    corrected = next(c for c in label.options if c != "(no correction)")
    label.select(corrected)
    _widget(at, "text_area", "comment").input("faint opacity, left base")
    at.run()  # the widget values reach the session, as they do on the next interaction
    _ok(at)
    label_key = str(_widget(at, "selectbox", "label").key)
    comment_key = str(_widget(at, "text_area", "comment").key)
    _pg_stop(private_pg)
    # The cached reads have expired (their 60 s TTL): every read now goes to the server.
    st.cache_data.clear()
    at.button(key="spot_verdict_disagree").click().run()
    _ok(at)
    shown = _texts(at)
    assert "Cannot reach the database" in shown
    assert "“disagree” on study 3 was not saved" in shown
    assert "Your verdict was kept" in shown and "Save again" in shown
    assert "password" not in shown.lower()
    # Nothing typed is lost: the draft holds verdict, label and comment; so do the widgets.
    draft = at.session_state["spot_drafts"][f"{session_id}:{items[2]}:{reviewer}"]
    assert draft["verdict"] == "disagree"
    assert draft["corrected_label"] == corrected
    assert draft["comment"] == "faint opacity, left base"
    assert at.session_state[label_key] == corrected
    assert at.session_state[comment_key] == "faint opacity, left base"
    # A read-only page in another tab: the plain message, no traceback.
    other = _open_app()
    _ok(other)
    assert other.title[0].value.endswith("Overview")
    assert "Cannot reach the database" in _texts(other)
    assert not other.metric
    # The clinician presses again while the server is still down: still kept, nothing stored.
    at.run()
    _ok(at)
    assert "Cannot reach the database" in _texts(at)

    # The server is back (same port). The next run shows study 3 as it was left, with the
    # pending verdict; "Save again" stores it.
    _pg_start(private_pg)
    at.run()
    _ok(at)
    assert _current_prediction(at) == items[2]
    assert _widget(at, "selectbox", "label").value == corrected
    assert _widget(at, "text_area", "comment").value == "faint opacity, left base"
    assert "Not saved yet" in _texts(at) and "“disagree”" in _texts(at)
    at.button(key="spot_retry").click().run()
    _ok(at)
    assert "Saved “disagree” on study 3" in _texts(at)
    assert _current_prediction(at) == items[3]
    assert f"{session_id}:{items[2]}:{reviewer}" not in at.session_state["spot_drafts"]
    assert not [b for b in at.button if b.key == "spot_retry"]
    rows, audited = _reviews(url)
    assert rows == sorted(
        [
            (items[0], reviewer, "agree", None, None),
            (items[1], reviewer, "unsure", None, None),
            (items[2], reviewer, "disagree", corrected, "faint opacity, left base"),
        ]
    )
    assert audited == [f"prediction:{p}" for p in items[:3]]
    other.run()
    _ok(other)
    assert not other.error
    assert {m.label: m.value for m in other.metric}["Studies"] != "0"

    # A restart with no request in between: the engine's pooled connections are dead, the
    # pre-ping replaces them, and the fourth verdict is saved at the first press.
    _pg_stop(private_pg)
    _pg_start(private_pg)
    at.button(key="spot_verdict_agree").click().run()
    _ok(at)
    assert "Saved “agree” on study 4" in _texts(at)
    assert "Cannot reach" not in _texts(at)
    assert data.get_engine(url) is cached_engine  # the same cached engine, never reset
    rows, audited = _reviews(url)
    assert [(p, v) for p, _, v, _, _ in rows] == sorted(
        [(items[0], "agree"), (items[1], "unsure"), (items[2], "disagree"), (items[3], "agree")]
    )
    assert len({(p, r) for p, r, *_ in rows}) == len(rows) == 4
    assert audited == [f"prediction:{p}" for p in items[:4]]
    cached_engine.dispose()


def test_connection_cut_mid_verdict_then_retry(pg_url: str, tmp_path: Path) -> None:
    """The server ends the connection while the verdict's INSERT is on its way: the writer
    says the DB is unreachable (so the page keeps the entry), nothing is stored, and the same
    call again stores one review and one audit row."""
    _load_demo(pg_url, tmp_path / "demo")
    engine = make_engine(pg_url)
    killer = make_engine(pg_url)
    with Session(engine) as s:
        pid = int(s.scalar(select(Prediction.id).order_by(Prediction.id).limit(1)) or 0)
        reviewer = rv.ensure_reviewer(s, "dr-cut")
        s.commit()
    cuts: list[int] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _cut(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if not cuts and statement.lstrip().upper().startswith("INSERT INTO REVIEWS"):
            backend = int(conn.connection.dbapi_connection.info.backend_pid)
            with killer.connect() as k:  # waits (up to 10 s) until that backend is gone
                k.execute(text("SELECT pg_terminate_backend(:p, 10000)"), {"p": backend})
            cuts.append(backend)

    args = (pid, reviewer, "disagree", None, None, "cut mid-write")
    with Session(engine) as s, pytest.raises(DatabaseUnavailableError, match="not reachable"):
        rv.submit_verdict(s, *args, actor="dr-cut", review_session_id=None)
    assert len(cuts) == 1
    with Session(engine) as s:  # the pool hands out a live connection again
        assert s.scalar(select(func.count()).select_from(Review)) == 0
        verdict = rv.submit_verdict(s, *args, actor="dr-cut", review_session_id=None)
    assert (verdict.prediction_id, verdict.verdict) == (pid, "disagree")
    engine.dispose()
    killer.dispose()
    rows, audited = _reviews(pg_url)
    assert rows == [(pid, reviewer, "disagree", None, "cut mid-write")]
    assert audited == [f"prediction:{pid}"]


# --------------------------------------------------------------------------- 2: kill scoring


@pytest.fixture(params=["sqlite", "postgresql"])
def two_demo_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two DBs of one kind, each holding the tiny demo (seed 0): one to kill, one clean."""
    if request.param == "sqlite":
        urls = [f"sqlite:///{tmp_path / f'{n}.db'}" for n in ("killed", "clean")]
        cluster = None
    else:
        cluster = request.getfixturevalue("pg_cluster")
        if cluster is None:
            service_missing("PostgreSQL (initdb/pg_ctl under /usr/lib/postgresql/*/bin)")
        urls = [cluster.new_database(), cluster.new_database()]
    for url, name in zip(urls, ("killed", "clean"), strict=True):
        _load_demo(url, tmp_path / f"demo-{name}")
    yield urls[0], urls[1]
    if cluster is not None:
        for url in urls:
            cluster.drop_database(url)


def _score_cmd(url: str, emb_dir: Path) -> list[str]:
    return [
        str(QUALITY_CLI), "score", "--dataset", DATASET, "--db", url, "--device", "cpu",
        "--chunk-size", "1", "--batch-size", "1", "--embeddings-dir", str(emb_dir), "--json",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    # One torch thread in every run: the same arithmetic in the killed, resumed and clean runs.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _n_rows(engine: Any) -> int:
    with Session(engine) as s:
        return int(s.scalar(select(func.count()).select_from(ImageQuality)) or 0)


def _n_images(url: str) -> int:
    engine = make_engine(url)
    with Session(engine) as s:
        ds = s.scalar(select(Dataset.id).where(Dataset.name == DATASET))
        vid = newest_version_id(s, int(ds or 0))
        n = s.scalar(
            select(func.count()).select_from(DatasetItem).where(DatasetItem.version_id == vid)
        )
    engine.dispose()
    return int(n or 0)


_VALUE_COLS = [*(c for c in qm.METRIC_COLUMNS if c != "is_blank"), "quality_score", "ood_score"]


def _scores(url: str, emb_dir: Path) -> pd.DataFrame:
    """Every image_quality row keyed by SOP UID (ids may differ between two DBs), with the
    embedding read back through ``embedding_ref``."""
    engine = make_engine(url)
    cols = [c for c in ImageQuality.__table__.columns if c.name not in ("id", "image_id")]
    with Session(engine) as s:
        df = pd.DataFrame(
            s.execute(
                select(Image.sop_uid, *cols)
                .join(Image, Image.id == ImageQuality.image_id)
                .order_by(Image.sop_uid)
            ).all(),
            columns=["sop_uid", *(c.name for c in cols)],
        )
    engine.dispose()
    embeddings = []
    for ref in df["embedding_ref"]:
        if ref is None or pd.isna(ref):  # an unreadable file's row has no embedding
            embeddings.append(None)
            continue
        rel, _, row = str(ref).rpartition("#")
        with np.load(emb_dir / rel) as npz:
            embeddings.append(np.asarray(npz["embedding"][int(row)]))
    return df.assign(embedding=embeddings).set_index("sop_uid")


def test_score_killed_then_rerun(two_demo_urls: tuple[str, str], tmp_path: Path) -> None:
    killed_url, clean_url = two_demo_urls
    n = _n_images(killed_url)
    assert n == _n_images(clean_url) > 2
    emb_killed, emb_clean = tmp_path / "emb-killed", tmp_path / "emb-clean"

    # Run, wait for the first committed rows, SIGKILL.
    engine = make_engine(killed_url)
    proc = subprocess.Popen(
        _score_cmd(killed_url, emb_killed),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300  # a guard against a hang, not a timing assertion
        while _n_rows(engine) == 0:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no image_quality row was ever committed"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    committed = _n_rows(engine)
    engine.dispose()
    assert 0 < committed < n  # killed mid-run: some chunks committed, not all

    # The rerun completes and adds only what is missing.
    rerun = subprocess.run(
        _score_cmd(killed_url, emb_killed), env=_env(), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["skipped_existing"] == committed
    assert summary["scored"] == n - committed

    # An uninterrupted run on the other copy.
    clean = subprocess.run(
        _score_cmd(clean_url, emb_clean), env=_env(), capture_output=True, text=True
    )
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["scored"] == n

    got, want = _scores(killed_url, emb_killed), _scores(clean_url, emb_clean)
    assert len(got) == len(want) == n
    assert got.index.is_unique and list(got.index) == list(want.index)
    assert (got["scorer_version"] == want["scorer_version"]).all()
    assert list(got["defect_type"]) == list(want["defect_type"])
    assert list(got["is_ood"]) == list(want["is_ood"])
    assert list(got["is_blank"]) == list(want["is_blank"])
    for col in _VALUE_COLS:
        a = got[col].astype(float).to_numpy()
        b = want[col].astype(float).to_numpy()
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=col)
    for sop, a, b in zip(got.index, got["embedding"], want["embedding"], strict=True):
        assert (a is None) == (b is None), sop
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=sop)
