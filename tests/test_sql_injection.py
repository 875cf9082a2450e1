"""SQL injection: no SQL is built by formatting, and hostile text in every text input of the
app changes nothing but the intended write, on SQLite and on PostgreSQL.

(a) A static scan of ``quality/``: ``text(...)``, ``exec_driver_sql(...)`` and
``.execute(...)`` never take a formatted string, and no f-string, ``%`` or ``.format`` builds
a statement. The few formatted statements that exist are listed in :data:`ALLOWED` with the
reason they are safe (identifiers from constants, never user input).

(b) AppTest: classic injection strings typed into the spot-check reviewer name and comment,
the data-tests reference and pasted rules, the dataset-card fields and snapshot note: no
exception, a plain message where the input is refused, and the row count of every table
unchanged except the intended write (a reviewer, a card field), stored verbatim.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

from quality.card import build_card
from quality.db.schema import Base, DatasetVersion, User
from quality.db.session import make_engine, upgrade
from quality.demo import build_demo
from quality.ui import data

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
TIMEOUT = 90

# --------------------------------------------------------------------------- (a) static scan

_SQL = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|WITH|PRAGMA|GRANT|REVOKE|TRUNCATE)\b",
    re.IGNORECASE,
)
ALLOWED: dict[tuple[str, str], str] = {
    # (file, start of the formatted string, quotes left out) → why it is safe
    ("quality/db/migrations/versions/0004_auth_audit_append_only.py", "\\nCREATE OR REPLACE"): (
        "the trigger function's text; only the module constant MESSAGE is formatted in"
    ),
    ("quality/db/migrations/versions/0004_auth_audit_append_only.py", "CREATE TRIGGER {name}"): (
        "trigger names and events from the module constant _SQLITE_TRIGGERS"
    ),
    ("quality/db/migrations/versions/0004_auth_audit_append_only.py", "DROP TRIGGER IF EXI"): (
        "trigger names from the module constant _SQLITE_TRIGGERS"
    ),
    ("quality/db/migrations/versions/0005_page_speed.py", "CREATE TRIGGER note_"): (
        "table names from the module constant TRACKED, events from a literal tuple"
    ),
    ("quality/db/migrations/versions/0005_page_speed.py", "DROP TRIGGER IF EXISTS note_"): (
        "table names from the module constant TRACKED, events from a literal tuple"
    ),  # The large demo's bulk loader: identifiers from the SQLAlchemy models (table and column
    # names) or from the PostgreSQL catalogue (constraint and index names and definitions of
    # those tables, read back and restored verbatim); every value is bound or COPYed.
    (
        "quality/demo/large.py",
        "INSERT INTO {table} (",
    ): "table and column names from the ORM models",
    (
        "quality/demo/large.py",
        "ALTER TABLE {table} DROP CONSTRAINT",
    ): "names from pg_constraint of model tables",
    ("quality/demo/large.py", "DROP INDEX "): "index names from pg_indexes of model tables",
    (
        "quality/demo/large.py",
        "definition",
    ): "an index definition from pg_indexes, restored as it was",
    (
        "quality/demo/large.py",
        "ALTER TABLE {table} ADD CONSTRAINT",
    ): "pg_get_constraintdef of the dropped one",
    (
        "quality/demo/large.py",
        "SELECT setval(pg_get_serial_sequence(",
    ): "table names from the ORM models",
    (
        "quality/demo/large.py",
        "INSERT INTO image_quality (image_id, ",
    ): "column names from the ORM model",
}


def _sqlalchemy_text_names(tree: ast.Module) -> set[str]:
    """Local names bound to ``sqlalchemy.text`` (``from sqlalchemy import text as t``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            names |= {a.asname or a.name for a in node.names if a.name == "text"}
    return names


def _formatted(node: ast.AST) -> bool:
    """An f-string with fields, ``"..." % x``, ``"...".format(...)`` or a ``+`` of strings."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return isinstance(node.left, ast.Constant | ast.JoinedStr | ast.BinOp)
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
    )


def _literal_prefix(node: ast.AST) -> str:
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant))
    if isinstance(node, ast.BinOp):
        return _literal_prefix(node.left)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return _literal_prefix(node.func.value)
    return ""


def _findings() -> list[tuple[str, str, int]]:
    found = []
    for path in sorted((ROOT / "quality").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        text_names = _sqlalchemy_text_names(tree)
        for node in ast.walk(tree):
            hit = None
            if isinstance(node, ast.Call) and node.args:
                f = node.func
                is_text = (isinstance(f, ast.Name) and f.id in text_names) or (
                    isinstance(f, ast.Attribute)
                    and f.attr == "text"
                    and isinstance(f.value, ast.Name)
                    and f.value.id in ("sa", "sqlalchemy")
                )
                is_exec = isinstance(f, ast.Attribute) and f.attr in ("execute", "exec_driver_sql")
                arg = node.args[0]
                if is_text and not isinstance(arg, ast.Constant):
                    hit = arg
                elif is_exec and (_formatted(arg) or (
                    f.attr == "exec_driver_sql" and not isinstance(arg, ast.Constant)
                )):  # fmt: skip
                    hit = arg
            elif _formatted(node) and _SQL.match(_literal_prefix(node)):
                hit = node
            if hit is not None:
                found.append((rel, ast.unparse(hit)[:40], node.lineno))
    return found


def test_static_scan_finds_formatting_in_a_sample(tmp_path: Path) -> None:
    # The detector itself: it must flag each of these and nothing in the safe lines.
    bad = [
        'text(f"SELECT * FROM t WHERE a = {x}")',
        'text("SELECT * FROM t WHERE a = %s" % x)',
        'text("SELECT {}".format(x))',
        "conn.exec_driver_sql(q)",
        'session.execute(f"DELETE FROM t WHERE id = {i}")',
        'q = f"UPDATE t SET a = {v}"',
    ]
    safe = ['text("SELECT 1")', "session.execute(select(t).where(t.c.a == x))", 'f"hi {x}"']
    for snippet, flagged in [(b, True) for b in bad] + [(s, False) for s in safe]:
        tree = ast.parse("from sqlalchemy import text\n" + snippet)
        names = _sqlalchemy_text_names(tree)
        hits = 0
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.args:
                f = node.func
                if (
                    isinstance(f, ast.Name)
                    and f.id in names
                    and not isinstance(node.args[0], ast.Constant)
                ):
                    hits += 1
                elif isinstance(f, ast.Attribute) and f.attr in ("execute", "exec_driver_sql"):
                    arg = node.args[0]
                    hits += _formatted(arg) or (
                        f.attr == "exec_driver_sql" and not isinstance(arg, ast.Constant)
                    )
            elif _formatted(node) and _SQL.match(_literal_prefix(node)):
                hits += 1
        assert bool(hits) is flagged, snippet


def _bare(code: str) -> str:
    """``f"SQL..."`` → ``SQL...`` (ast.unparse picks either quote)."""
    return code.removeprefix("f").lstrip("'\"")


def test_no_sql_is_built_by_formatting() -> None:
    found = _findings()
    unexplained = [
        f"{rel}:{line}: {code}"
        for rel, code, line in found
        if not any(rel == f and _bare(code).startswith(p) for f, p in ALLOWED)
    ]
    assert not unexplained, "SQL built by string formatting:\n" + "\n".join(unexplained)
    stale = [
        k for k in ALLOWED if not any(r == k[0] and _bare(c).startswith(k[1]) for r, c, _ in found)
    ]
    assert not stale, f"allow-list entries that match nothing any more: {stale}"


# --------------------------------------------------------------------------- (b) the app

ATTACKS = [
    "'; DROP TABLE images; --",
    '" OR 1=1 --',
    "%' OR '1'='1",
    "\x00",
    "x" * 10_000,
    "Ωmega 🩻 名前 \u202e evil",
]


@pytest.fixture
def demo_db(db_url: str, tmp_path: Path) -> Iterator[str]:
    """The tiny demo on a fresh DB of each kind (SQLite, PostgreSQL)."""
    engine = make_engine(db_url)
    upgrade(engine)
    with Session(engine) as session:
        build_demo(session, tmp_path / "demo", seed=0, size="tiny", salt="s", workers=1)
    engine.dispose()
    yield db_url


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    data.clear_caches()
    yield
    data.clear_caches()


def _counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    with Session(engine) as s:
        out = {
            t.name: int(s.scalar(select(func.count()).select_from(t)) or 0)
            for t in Base.metadata.sorted_tables
        }
    engine.dispose()
    return out


def _page(monkeypatch: pytest.MonkeyPatch, url: str, page: str, role: str) -> AppTest:
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["role"] = role
    at.run()
    at.switch_page(page).run()
    at.sidebar.selectbox[0].set_value(role).run()  # switch_page resends the picker's default
    _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _messages(at: AppTest) -> str:
    return "\n".join(str(e.value) for k in ("error", "warning", "info", "success")
                     for e in getattr(at, k))  # fmt: skip


def _changed(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {t: after[t] - before[t] for t in before if after[t] != before[t]}


def test_injection_strings_change_nothing(monkeypatch: pytest.MonkeyPatch, demo_db: str) -> None:
    url = demo_db
    # Spot-check: the reviewer name is the one free-text write (a users row, verbatim).
    at = _page(monkeypatch, url, "pages/spot_check.py", "clinician")
    for attack in ATTACKS:
        before = _counts(url)
        at.selectbox(key="spot_reviewer").set_value("➕ New reviewer…").run()
        at.text_input(key="spot_new_reviewer").input(attack)
        at.button(key="spot_add_reviewer").click().run()
        _ok(at)
        diff = _changed(before, _counts(url))
        valid = len(attack.strip()) <= 64 and "\x00" not in attack
        if valid:
            assert diff == {"users": 1}, (attack[:20], diff)
            engine = make_engine(url)
            with Session(engine) as s:
                assert s.scalar(select(func.count(User.id)).where(User.username == attack.strip()))
            engine.dispose()
        else:
            assert diff == {}, (attack[:20], diff)
            assert "Reviewer not added" in _messages(at), attack[:20]
    # Data tests: the reference is parsed, never formatted into SQL; pasted rules are YAML.
    at = _page(monkeypatch, url, "pages/data_tests.py", "admin")
    at.radio(key="dt_rules_source").set_value("Built-in checks only").run()
    for attack in ATTACKS:
        before = _counts(url)
        at.text_input(key="dt_reference").input(attack)
        at.button(key="dt_run").click().run()
        _ok(at)
        assert _changed(before, _counts(url)) == {}, attack[:20]
        assert "cannot run" in _messages(at) or "reference" in _messages(at).lower(), attack[:20]
    at.text_input(key="dt_reference").input("").run()
    at.radio(key="dt_rules_source").set_value("Paste rules").run()
    for attack in ATTACKS:
        before = _counts(url)
        at.text_area(key="dt_rules_text").input(attack).run()
        _ok(at)
        if not at.button(key="dt_run").disabled:
            at.button(key="dt_run").click().run()
            _ok(at)
        assert _changed(before, _counts(url)) == {}, attack[:20]
    # Dataset card: the owner's fields are stored verbatim (or refused plainly); a snapshot
    # note on an unchanged working set writes nothing.
    at = _page(monkeypatch, url, "pages/dataset_card.py", "admin")
    field = next(t for t in at.text_area if str(t.key).startswith("card_field_"))
    dataset_id, name = str(field.key).removeprefix("card_field_").split("_", 1)
    for attack in ATTACKS:
        before = _counts(url)
        at.text_area(key=str(field.key)).input(attack)
        at.button(key="card_save").click().run()
        _ok(at)
        assert _changed(before, _counts(url)) == {}, attack[:20]
        engine = make_engine(url)
        with Session(engine) as s:
            stored = build_card(s, int(dataset_id)).fields.get(name, "")
        engine.dispose()
        if "Saved the card" in _messages(at):
            assert stored == attack.strip(), attack[:20]
        else:
            assert "Not saved" in _messages(at), attack[:20]
        before = _counts(url)
        at.text_input(key="card_snapshot_note").input(attack)
        at.button(key="card_snapshot").click().run()
        _ok(at)
        diff = _changed(before, _counts(url))
        if diff:  # the card text is part of the working set: a new version is the write
            assert set(diff) == {"dataset_versions", "dataset_items", "version_labels"}, diff
            assert diff["dataset_versions"] == 1 and "Created" in _messages(at)
            engine = make_engine(url)
            with Session(engine) as s:
                note = s.scalar(
                    select(DatasetVersion.note).order_by(DatasetVersion.id.desc()).limit(1)
                )
            engine.dispose()
            assert note == attack.strip(), attack[:20]
        else:
            assert "Unchanged" in _messages(at) or "No snapshot" in _messages(at), attack[:20]
