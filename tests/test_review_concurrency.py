"""Concurrent verdicts (``quality.review.submit_verdict``) on SQLite and PostgreSQL.

Twenty reviewers, each a thread with its own :class:`Session` on the shared engine, submit
overlapping verdicts on the same predictions for several rounds, each in its own shuffled
order. Afterwards there must be exactly one row per (prediction, reviewer), holding the
value that reviewer submitted last: nothing duplicated, nothing lost. SQLite serialises
the writers on its lock; a lock held longer than the busy timeout is retried, and a lock
that never clears fails plainly with a domain error.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session
from test_review import CLASSES, seed_review_db

from quality import review as rv
from quality.db.schema import Review
from quality.db.session import make_engine, upgrade
from quality.errors import ReviewWriteError

N_REVIEWERS = 20
N_PREDICTIONS = 8
N_ROUNDS = 4


def _value(rnd: int, reviewer: int, pred: int) -> dict[str, object]:
    """What reviewer ``reviewer`` submits for prediction ``pred`` in round ``rnd``."""
    verdict = rv.VERDICTS[(rnd + reviewer + pred) % 3]
    label = CLASSES[(rnd + pred) % 3] if verdict == "disagree" else None
    return {"verdict": verdict, "corrected_label": label, "comment": f"r{rnd} u{reviewer} p{pred}"}


def _run_threads(n: int, work: Callable[[int], None]) -> None:
    """Run ``work(k)`` for k in 0..n-1 on n threads at once; re-raise the first failure."""
    barrier = threading.Barrier(n)

    def start(k: int) -> None:
        barrier.wait()  # every thread starts writing at the same moment
        work(k)

    with ThreadPoolExecutor(max_workers=n) as pool:
        for fut in [pool.submit(start, k) for k in range(n)]:
            fut.result()


def _setup(engine: Engine) -> tuple[list[int], list[int]]:
    with Session(engine) as s:
        db = seed_review_db(s)
        users = [rv.ensure_reviewer(s, f"reviewer-{k:02d}") for k in range(N_REVIEWERS)]
        s.commit()
    preds = list(db["preds"].values())[:N_PREDICTIONS]  # type: ignore[union-attr]
    return preds, users


def test_twenty_reviewers_overlapping_verdicts(engine: Engine) -> None:
    preds, users = _setup(engine)

    def reviewer(k: int) -> None:
        order = list(range(N_PREDICTIONS))
        rng = random.Random(k)
        with Session(engine) as s:
            for rnd in range(N_ROUNDS):
                rng.shuffle(order)
                for j in order:
                    rv.submit_verdict(s, preds[j], users[k], **_value(rnd, k, j))  # type: ignore[arg-type]

    _run_threads(N_REVIEWERS, reviewer)

    with Session(engine) as s:
        rows = s.execute(
            select(
                Review.prediction_id,
                Review.reviewer_id,
                Review.verdict,
                Review.corrected_label,
                Review.comment,
                Review.created_at,
                Review.updated_at,
            )
        ).all()
        n_keys = s.scalar(
            select(func.count()).select_from(
                select(Review.prediction_id, Review.reviewer_id).distinct().subquery()
            )
        )
    assert len(rows) == N_REVIEWERS * N_PREDICTIONS == n_keys
    got = {(r.prediction_id, r.reviewer_id): r for r in rows}
    for k, uid in enumerate(users):
        for j, pid in enumerate(preds):
            row = got[(pid, uid)]
            last = _value(N_ROUNDS - 1, k, j)
            assert (row.verdict, row.corrected_label, row.comment) == (
                last["verdict"], last["corrected_label"], last["comment"],
            ), (k, j)  # fmt: skip
            assert row.updated_at >= row.created_at


def test_racing_on_one_row_leaves_one_row(engine: Engine) -> None:
    """Twenty threads submit for the *same* (prediction, reviewer) at once: one row, holding
    one of the submitted values; every submission returned the same review id."""
    preds, users = _setup(engine)
    ids: list[int] = []
    lock = threading.Lock()

    def submit(k: int) -> None:
        with Session(engine) as s:
            v = rv.submit_verdict(s, preds[0], users[0], "unsure", comment=f"from thread {k}")
        with lock:
            ids.append(v.review_id)

    _run_threads(N_REVIEWERS, submit)
    with Session(engine) as s:
        rows = s.scalars(select(Review)).all()
    assert len(rows) == 1
    assert rows[0].comment in {f"from thread {k}" for k in range(N_REVIEWERS)}
    assert set(ids) == {rows[0].id}


# --------------------------------------------------------------------------- SQLite locks


@pytest.fixture
def short_timeout_engine(tmp_path: Path) -> tuple[Engine, Path]:
    """A SQLite engine whose busy timeout is 20 ms (set after make_engine's 30 s), so a held
    lock surfaces as "database is locked" and exercises the retry."""
    path = tmp_path / "locks.db"
    engine = make_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _short_busy(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.execute("PRAGMA busy_timeout=20")

    upgrade(engine)
    return engine, path


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("BEGIN IMMEDIATE")  # the write lock, as a long writer would hold it
    return con


def test_sqlite_write_waits_for_a_held_lock(short_timeout_engine: tuple[Engine, Path]) -> None:
    engine, path = short_timeout_engine
    preds, users = _setup(engine)
    holder = _hold_write_lock(path)
    release = threading.Timer(0.4, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        with Session(engine) as s:
            v = rv.submit_verdict(s, preds[0], users[0], "agree")
    finally:
        release.join()
        holder.close()
    assert v.verdict == "agree"
    with Session(engine) as s:
        assert s.scalar(select(func.count(Review.id))) == 1
    engine.dispose()


def test_sqlite_lock_that_never_clears_fails_plainly(
    short_timeout_engine: tuple[Engine, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, path = short_timeout_engine
    preds, users = _setup(engine)
    monkeypatch.setattr(rv, "_WRITE_ATTEMPTS", 3)
    monkeypatch.setattr(rv, "_BACKOFF_S", 0.01)
    holder = _hold_write_lock(path)
    try:
        with Session(engine) as s, pytest.raises(ReviewWriteError, match="locked") as info:
            rv.submit_verdict(s, preds[0], users[0], "agree", comment="keep me")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert f"prediction {preds[0]}" in str(info.value)
    with Session(engine) as s:
        assert s.scalar(select(func.count(Review.id))) == 0
    engine.dispose()
