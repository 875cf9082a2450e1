"""Load test: concurrent browser-free sessions of the workbench on PostgreSQL (issue 10).

Usage::

    .venv/bin/python bench/load.py [--db URL] [--sessions 20] [--minutes 5] [--json]
    .venv/bin/python bench/load.py --prepare          # only build the default DB, print its URL

What runs. ``--sessions`` sessions at once, for ``--minutes``, each signed in through the
real sign-in form (``QUALITY_DEMO_MODE=0``, argon2 password check, audit row) as its own
user, created for this run (names ``load<tag>-...``, so a run never mixes with an earlier one):

* **reviewers** (``--reviewers``, default 40 %; 8 of 20): clinicians on the Spot-check page.
  Each draws a random sample (``--sample-size`` studies) and gives verdicts one study at a
  time (agree / disagree with a corrected label / unsure, with a comment), now and then goes
  *Back* and changes a verdict (an upsert on the same row), or reads the Overview and comes
  back; a finished sample is followed by the next one. Reviewers 0 and 1 draw the same
  samples (same strategy, size and seed: the second one resumes the first one's session),
  so two reviewers give verdicts on the same predictions: the ``UNIQUE (prediction,
  reviewer)`` upsert path under concurrency.
* **readers** (the others): data scientists, labeling managers, admins and clinicians,
  cycling through the pages their role may open (Overview, Browser with a page turn and a
  study in the viewer, Doctors, Agreement, Dataset card, EDA, Image quality, Models, Data
  tests, Drift, Labeling worklist, Audit).

Think time between actions is uniform in ``--think`` (seeded per session).

Figures. Per action kind (page key, ``spot_check:verdict``, ``browser:study``, ...): count,
errors and p50 / p95 / max time of the script run (what one browser interaction costs the
server: the router, the sidebar and the whole page). An **error** is an exception element,
an ``st.error`` element, a Python exception from the run (a timeout included), or a verdict
click whose "Saved" message did not come. **Verdicts**: clicks, acknowledged saves, rows in
the DB at the end for this run's reviewers, **lost** (acknowledged, no row), **mismatched**
(a row that differs from the last acknowledged value), **duplicates** (more than one row per
prediction and reviewer), rows without an acknowledgement, and the ``verdict`` audit rows
(one per acknowledged save, written in the same transaction). Also the load average of the
machine (sampled every 5 s). Exit status 1 when there is an error or a lost, mismatched or
duplicated verdict.

Why AppTest in threads of one process. A Streamlit server is one process: every browser
tab's script runs in a thread of it, and they share ``st.cache_data``, ``st.cache_resource``
(the engine and its connection pool) and the GIL. :class:`streamlit.testing.v1.AppTest`
runs the real scripts (``app.py``, router, pages, callbacks) through a real
``ScriptRunner`` thread; one AppTest per session, each driven by its own thread, gives the
same sharing. Processes would give each session its own caches and engine (20x the cache
misses of one server, not what a deployment sees). HTTP/websocket against ``streamlit run``
would need a hand-made client for Streamlit's protobuf protocol (widget ids, reruns,
forms); AppTest's element tree is the robust way to read what a page shows.

AppTest is made for one test at a time, so :func:`apptest_threads` fixes five process-global
spots for the duration of a run (and restores them after):

1. every ``AppTest.run`` installs a fresh mock ``Runtime`` singleton and resets it to None
   when it ends, which breaks any other session's script still running (``Runtime hasn't
   been created``). One shared runtime (media files, cache storage, like a server's one
   Runtime) answers ``Runtime.instance()`` instead;
2. every run patches ``streamlit.config.get_option`` with ``unittest.mock.patch``;
   overlapping patch/restore pairs from several threads can leave a chain of wrappers
   behind. The patch is applied once while any run is in flight (a counter under a lock);
3. AppTest waits for its script thread by polling it every millisecond, which with 20
   sessions is most of the CPU of this harness; the wait becomes an event;
4. all AppTest runners use the session id ``"test session id"``; each session gets its own,
   so the media-file manager tracks its files per session as the server does;
5. every AppTest run compiles the page scripts again (a fresh ``ScriptCache``), where a
   server compiles each script once (one ``ScriptCache`` per runtime, under a lock). Many
   compiles at once in threads hit a CPython 3.11 bug (``SystemError: AST constructor
   recursion depth mismatch``, python/cpython#106905, thread-unsafe AST state, fixed in
   3.13); one shared cache, as in the server, compiles each page once.

The time spent parsing each run's messages into AppTest's element tree (the harness's own
work, which a server does not do) is summed and printed as ``harness tree parsing``.

What it does not measure: the browser (rendering, the websocket, the front end's image
loads) and Tornado; the time is the server-side script run. The machine's CPU is shared by
the harness (which parses each run's element tree, as a browser would render it) and the
"server".

The default DB is the large demo of ``bench/large_db.py`` (its persistent throwaway cluster,
built on first use). ``--small`` takes the small demo instead (``quality demo --size small``,
then ``quality score``), built once into a throwaway PostgreSQL cluster under
``/tmp/quality-load-pg`` (kept running for the next run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

__all__ = [
    "LoadConfig",
    "LoadResult",
    "apptest_threads",
    "default_db_url",
    "ensure_small_pg",
    "format_table",
    "run_load",
]

APP = str(ROOT / "app.py")
PG_ROOT = Path("/tmp/quality-load-pg")
DEMO_OUT = Path("/tmp/quality-load-data")
SMALL_DB = "quality_load_small"
DATASET = "chest-xray-demo"
VERDICTS = ("agree", "disagree", "unsure")
NO_CORRECTION = "(no correction)"
READER_ROLES = ("data scientist", "labeling manager", "data scientist", "labeling manager",
                "admin", "clinician")  # fmt: skip
"""Roles of the readers, in turn: 12 readers are 4 + 4 data scientists and labeling
managers, 2 admins and 2 clinicians (who browse)."""
EXPECTED_ERRORS: tuple[re.Pattern[str], ...] = ()
"""``st.error`` texts that are a normal part of a flow (none: every one is counted)."""


# --------------------------------------------------------------------------- the database


def _quality(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "quality.cli", *args], check=True, cwd=ROOT)


def ensure_small_pg(root: Path = PG_ROOT, out: Path = DEMO_OUT) -> str:
    """The small demo, scored, in database ``quality_load_small`` of a throwaway cluster
    under ``root`` (:class:`large_db.LargePg`: started if needed, kept running); built once
    (about two minutes).

    Returns
    -------
    str
        The database URL.
    """
    sys.path.insert(0, str(ROOT / "bench"))
    from large_db import LargePg  # type: ignore[import-not-found]

    pg = LargePg(root)
    pg.ensure()
    url = pg.url(SMALL_DB)
    if not pg.has_database(SMALL_DB) or _count_rows(url).get("image_quality", 0) == 0:
        # Build and score again from scratch: a half-built demo is not reused.
        pg.recreate_database(SMALL_DB)
        shutil.rmtree(out, ignore_errors=True)
        _quality("demo", "--size", "small", "--out", str(out), "--db", url, "--json")
        _quality("score", "--dataset", DATASET, "--db", url, "--embeddings-dir",
                 str(out / "embeddings"), "--json")  # fmt: skip
    return url


def default_db_url(small: bool = False) -> tuple[str, str]:
    """``(url, what)``: the large demo (``bench/large_db.py``, built when missing), or with
    ``small`` the small demo on the throwaway cluster (:func:`ensure_small_pg`)."""
    if small:
        return ensure_small_pg(), "small demo"
    sys.path.insert(0, str(ROOT / "bench"))
    from large_db import ensure_large_db  # type: ignore[import-not-found]

    return ensure_large_db(quiet=False), "large demo"


def _count_rows(url: str) -> dict[str, int]:
    """Row counts of the main tables (empty dict when the schema is not there yet)."""
    from quality.db.session import make_engine

    engine = make_engine(url)
    counts: dict[str, int] = {}
    try:
        with engine.connect() as c:
            for table in ("studies", "images", "annotations", "predictions", "image_quality",
                          "reviews", "users"):  # fmt: skip
                counts[table] = int(c.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
    except Exception:  # a missing table means "not built yet"
        return {}
    finally:
        engine.dispose()
    return counts


# --------------------------------------------------------------------------- AppTest in threads

_SESSION_NAME = threading.local()
_PARSE_LOCK = threading.Lock()
_PARSE_SECONDS = [0.0]  # AppTest's element-tree parsing, summed over all runs


def _wait_event() -> Callable[..., None]:
    """AppTest's wait for the script thread, on an event instead of a 1 ms poll."""
    from streamlit.runtime.scriptrunner import ScriptRunnerEvent

    def wait(runner: Any, timeout: float = 3) -> None:
        done = threading.Event()

        def on_event(sender: Any, event: Any = None, **kwargs: Any) -> None:
            if event == ScriptRunnerEvent.SHUTDOWN:
                done.set()

        runner.on_event.connect(on_event, weak=False)
        try:
            if runner.script_stopped() or done.wait(timeout):
                return
        finally:
            runner.on_event.disconnect(on_event)
        # The original's timeout path (stop the script so it does not run on, raise), with
        # the timeout that was really waited in the message.
        runner.request_stop()
        runner.join()
        raise RuntimeError(f"AppTest script run timed out after {timeout:g} s")

    return wait


@contextlib.contextmanager
def apptest_threads() -> Iterator[None]:
    """Make :class:`~streamlit.testing.v1.AppTest` safe to run from several threads at once
    (the four fixes of the module docstring); everything is restored on exit."""
    from unittest.mock import MagicMock

    from streamlit import config
    from streamlit.components.v2.component_manager import BidiComponentManager
    from streamlit.runtime import Runtime
    from streamlit.runtime.caching.storage.dummy_cache_storage import MemoryCacheStorageManager
    from streamlit.runtime.dataframe_source_manager import DataframeSourceManager
    from streamlit.runtime.media_file_manager import MediaFileManager
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
    from streamlit.runtime.scriptrunner.script_cache import ScriptCache
    from streamlit.testing.v1 import app_test, local_script_runner, util

    runtime = MagicMock(spec=Runtime)
    runtime.media_file_mgr = MediaFileManager(MemoryMediaFileStorage("/mock/media"))
    runtime.dataframe_source_mgr = DataframeSourceManager()
    runtime.cache_storage_manager = MemoryCacheStorageManager()
    registry = BidiComponentManager()
    registry.discover_and_register_components(start_file_watching=False)
    runtime.bidi_component_registry = registry

    lock = threading.Lock()
    state: dict[str, Any] = {"depth": 0}
    shared_scripts = ScriptCache()
    real_parse = local_script_runner.parse_tree_from_messages

    def parse(messages: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real_parse(messages)
        finally:
            with _PARSE_LOCK:
                _PARSE_SECONDS[0] += time.perf_counter() - t0

    real_get_option = config.get_option

    @contextlib.contextmanager
    def patch_config_once(overrides: dict[str, Any]) -> Iterator[None]:
        with lock:
            if state["depth"] == 0:
                config.get_option = util.build_mock_config_get_option(overrides)
            state["depth"] += 1
        try:
            yield
        finally:
            with lock:
                state["depth"] -= 1
                if state["depth"] == 0:
                    config.get_option = real_get_option

    runner_cls = local_script_runner.LocalScriptRunner
    real_init = runner_cls.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        name = getattr(_SESSION_NAME, "value", None)
        if name:
            self._session_id = name

    saved = {
        "instance": Runtime.__dict__["instance"],
        "exists": Runtime.__dict__["exists"],
        "patch": app_test.patch_config_options,
        "wait": local_script_runner.require_widgets_deltas,
    }
    _PARSE_SECONDS[0] = 0.0
    Runtime.instance = classmethod(lambda cls: runtime)  # type: ignore[method-assign,assignment]
    Runtime.exists = classmethod(lambda cls: True)  # type: ignore[method-assign,assignment]
    app_test.patch_config_options = patch_config_once  # type: ignore[assignment]
    local_script_runner.require_widgets_deltas = _wait_event()
    runner_cls.__init__ = init  # type: ignore[method-assign]
    app_test.ScriptCache = local_script_runner.ScriptCache = lambda: shared_scripts  # type: ignore[assignment,misc]
    local_script_runner.parse_tree_from_messages = parse
    try:
        yield
    finally:
        local_script_runner.parse_tree_from_messages = real_parse
        app_test.ScriptCache = local_script_runner.ScriptCache = ScriptCache  # type: ignore[misc]
        runner_cls.__init__ = real_init  # type: ignore[method-assign]
        local_script_runner.require_widgets_deltas = saved["wait"]
        app_test.patch_config_options = saved["patch"]
        Runtime.instance = saved["instance"]
        Runtime.exists = saved["exists"]
        Runtime._instance = None


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class LoadConfig:
    """One load run.

    Attributes
    ----------
    db_url : the (PostgreSQL) database; must hold a demo (predictions, a dataset).
    sessions : concurrent sessions in all.
    reviewers : how many of them are reviewers (at least 2 when ``sessions >= 2``: the
        pair that shares samples); the others read.
    seconds : how long sessions keep starting actions (an action under way finishes).
    max_actions : stop a session after this many actions (None: only the time bounds it).
    think : (min, max) seconds between two actions, uniform.
    sample_size : studies per spot-check sample.
    seed : seeds each session's choices (``seed``, session number).
    page_timeout : seconds one script run may take before it counts as an error.
    """

    db_url: str
    sessions: int = 20
    reviewers: int | None = None
    seconds: float = 300.0
    max_actions: int | None = None
    think: tuple[float, float] = (0.5, 2.0)
    sample_size: int = 20
    seed: int = 0
    page_timeout: float = 180.0

    @property
    def n_reviewers(self) -> int:
        if self.reviewers is not None:
            return min(self.reviewers, self.sessions)
        return min(self.sessions, max(2, round(0.4 * self.sessions)))


@dataclass
class SessionLog:
    """What one session did (filled by its own thread only)."""

    name: str
    role: str
    kind: str  # reviewer | reader
    user_id: int = 0
    samples: list[tuple[str, float, bool]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    verdict_clicks: int = 0
    acknowledged: int = 0
    ledger: dict[int, tuple[str, str | None, str]] = field(default_factory=dict)
    review_sessions: list[int] = field(default_factory=list)
    draws: int = 0

    @property
    def actions(self) -> int:
        return len(self.samples)


@dataclass
class LoadResult:
    """The figures of one run (:func:`run_load`); ``as_dict`` is the ``--json`` output."""

    config: dict[str, Any]
    db: dict[str, Any]
    duration_s: float
    sessions: list[dict[str, Any]]
    pages: dict[str, dict[str, float]]
    overall: dict[str, float]
    errors: int
    error_samples: list[str]
    verdicts: dict[str, Any]
    load: dict[str, Any]

    @property
    def ok(self) -> bool:
        v = self.verdicts
        return self.errors == 0 and v["lost"] == 0 and v["mismatched"] == 0 and v["duplicates"] == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# --------------------------------------------------------------------------- one session


class _Session:
    """One browser-free user: an AppTest signed in as ``username``."""

    def __init__(
        self, index: int, log: SessionLog, cfg: LoadConfig, password: str, stop_at: float
    ) -> None:
        from streamlit.testing.v1 import AppTest

        self.log, self.cfg, self.password, self.stop_at = log, cfg, password, stop_at
        self.index = index
        self.raised = False  # whether the last timed run raised (its elements are stale)
        self.done = False  # whether the last verdict finished the sample
        # Keyed by the session's number, not its (per-run) user name: same seed, same choices.
        self.rng = random.Random(f"{cfg.seed}:{index}")
        self.at = AppTest.from_file(APP, default_timeout=cfg.page_timeout)

    # ---- helpers

    def more(self) -> bool:
        if self.cfg.max_actions is not None and self.log.actions >= self.cfg.max_actions:
            return False
        return time.monotonic() < self.stop_at

    def think(self) -> None:
        time.sleep(self.rng.uniform(*self.cfg.think))

    def timed(self, kind: str, step: Callable[[], Any]) -> bool:
        """Run one script run, time it, and record what went wrong; True when clean."""
        t0 = time.perf_counter()
        self.raised = True
        try:
            step()
        except Exception as exc:  # every failure is a figure here
            self.log.samples.append((kind, time.perf_counter() - t0, False))
            self.log.errors.append(f"{kind}: {type(exc).__name__}: {str(exc)[:300]}")
            return False
        seconds = time.perf_counter() - t0
        self.raised = False
        problems = [f"exception: {e.value}" for e in self.at.exception]
        problems += [
            f"st.error: {e.value}"
            for e in self.at.error
            if not any(p.search(str(e.value)) for p in EXPECTED_ERRORS)
        ]
        self.log.samples.append((kind, seconds, not problems))
        self.log.errors.extend(f"{kind}: {p[:300]}" for p in problems)
        return not problems

    def texts(self, *kinds: str) -> str:
        return "\n".join(str(e.value) for k in kinds for e in getattr(self.at, k))

    def sign_in(self) -> bool:
        at = self.at
        if not self.timed("sign_in_page", at.run):
            return False

        def submit() -> None:
            at.text_input(key="sign_in_username").input(self.log.name)
            at.text_input(key="sign_in_password").input(self.password)
            at.button[0].click().run()

        if not self.timed("sign_in", submit):
            return False
        from quality.ui import nav

        user = at.session_state[nav.USER_KEY] if nav.USER_KEY in at.session_state else None
        if not user or user.get("username") != self.log.name:
            self.log.errors.append(f"sign_in: not signed in as {self.log.name}")
            return False
        self.log.user_id = int(user["id"])
        return True

    def open(self, spec_key: str, kind: str | None = None) -> bool:
        from quality.ui import nav

        spec = next(p for p in nav.PAGES if p.key == spec_key)
        ok = self.timed(kind or spec_key, lambda: self.at.switch_page(spec.path).run())
        if ok and not (self.at.title and self.at.title[0].value.endswith(spec.title)):
            titles = [t.value for t in self.at.title]
            self.log.errors.append(f"{kind or spec_key}: wrong page, titles {titles}")
            return False
        return ok

    # ---- reviewers

    def draw(self, pair: bool, round_: int) -> bool:
        """Draw (or resume) this round's sample; True when a session with items is open."""
        at = self.at
        group = 0 if pair else 1 + self.index
        seed = 7919 * group + round_

        def click() -> None:
            at.selectbox(key="spot_strategy").select("random")
            at.number_input(key="spot_size").set_value(self.cfg.sample_size)
            at.number_input(key="spot_seed").set_value(seed)
            at.button(key="spot_draw").click().run()

        if not self.timed("spot_check:draw", click):
            return False
        self.log.draws += 1
        said = "" if self.raised else self.texts("success", "info")
        if "Drew" not in said and "Resumed" not in said:
            self.log.errors.append(f"spot_check:draw: no sample drawn: {said[:300]}")
            return False
        self.log.review_sessions.append(int(at.selectbox(key="spot_session").value))
        return True

    def current_prediction(self) -> tuple[int, Any] | None:
        found = [w for w in self.at.selectbox if str(w.key).startswith("spot_label_")]
        if len(found) != 1:
            return None
        return int(str(found[0].key).rsplit("_", 1)[1]), found[0]

    def verdict(self, n: int) -> str:
        """Give the current study a verdict; returns the flash text."""
        at = self.at
        current = self.current_prediction()
        if current is None:
            self.log.errors.append("spot_check:verdict: no study on the page")
            self.raised = True  # the page is unusable: reload it
            return ""
        pid, label_box = current
        study = next((m.value for m in at.markdown if str(m.value).startswith("#### Study ")), "")
        position = study.removeprefix("#### Study ").split(" ", 1)[0]
        verdict = self.rng.choice(VERDICTS)
        model_label = str(at.metric[0].value) if at.metric else None
        label = NO_CORRECTION
        if verdict == "disagree" and self.rng.random() < 0.5:
            others = [o for o in label_box.options if o not in (NO_CORRECTION, model_label)]
            label = self.rng.choice(others) if others else NO_CORRECTION
        comment = f"{self.log.name} n{n}"

        def click() -> None:
            label_box.select(label)
            for box in at.checkbox:
                if str(box.key).startswith("spot_boxon_") and box.value:
                    box.uncheck()
            for area in at.text_area:
                if str(area.key).startswith("spot_comment_"):
                    area.input(comment)
            at.button(key=f"spot_verdict_{verdict}").click().run()

        self.log.verdict_clicks += 1
        self.timed("spot_check:verdict", click)
        # The flash of this run names the verdict and the study; a run that raised left
        # the previous run's elements in place, which prove nothing.
        said = "" if self.raised else self.texts("success")
        if f"Saved “{verdict}” on study {position}" in said:
            self.log.acknowledged += 1
            self.log.ledger[pid] = (verdict, None if label == NO_CORRECTION else label, comment)
        else:
            self.log.errors.append(
                f"spot_check:verdict: not acknowledged: {self.texts('error', 'warning')[:300]}"
            )
        return said

    def review(self, pair: bool) -> None:
        """Open the Spot-check page, draw a sample, give verdicts; the next sample when one
        is done. A failed run (counted as an error) is followed by a reload of the page."""
        round_, n, first = 0, 0, True
        need_draw = True
        self.open("spot_check")
        while self.more():
            if not first:
                self.think()
                if not self.more():
                    break
            first = False
            if self.raised:
                self.open("spot_check")
            elif need_draw:
                need_draw = not self.draw(pair, round_)
            else:
                self.step(n := n + 1)
                if self.done:
                    round_ += 1
                    need_draw = True

    def step(self, n: int) -> None:
        """One reviewer action: mostly a verdict, sometimes Back, sometimes the Overview."""
        self.done = False
        r = self.rng.random()
        back = next((b for b in self.at.button if b.key == "spot_back"), None)
        if r < 0.08 and back is not None and not back.disabled:
            self.timed("spot_check:back", lambda: back.click().run())
        elif r < 0.12:
            self.open("overview")
            if self.more():
                self.think()
                self.open("spot_check")
        else:
            self.done = "Every study is done" in self.verdict(n)

    # ---- readers

    def read(self) -> None:
        from quality.ui import nav

        pages = [k for k in sorted(nav.ROLE_PAGES[self.log.role]) if k != "spot_check"]
        last = None
        while self.more():
            self.think()
            if not self.more():
                break
            key = self.rng.choice([p for p in pages if p != last] or pages)
            last = key
            if not self.open(key) or key != "browser":
                continue
            self.browse()

    def browse(self) -> None:
        """On the Browser: maybe turn the page, then open a study in the viewer."""
        at = self.at
        page = next((w for w in at.number_input if w.key == "browser_page"), None)
        if page is not None and page.max is not None and page.max > 1 and self.more():
            self.think()
            target = self.rng.randint(1, int(page.max))
            self.timed("browser:page", lambda: page.set_value(target).run())
        study = next((w for w in at.selectbox if w.key == "browser_study"), None)
        if study is not None and study.options and self.more():
            self.think()
            choice = self.rng.choice(list(study.options))
            self.timed("browser:study", lambda: study.select(choice).run())

    def run(self, pair: bool) -> None:
        _SESSION_NAME.value = self.log.name
        # A failed sign-in is an error; the user tries once more, on a fresh page.
        if not self.sign_in():
            from streamlit.testing.v1 import AppTest

            self.at = AppTest.from_file(APP, default_timeout=self.cfg.page_timeout)
            if not self.more() or not self.sign_in():
                return
        if self.log.kind == "reviewer":
            self.review(pair)
        else:
            self.read()


# --------------------------------------------------------------------------- the run


def _make_users(url: str, tag: str, cfg: LoadConfig) -> tuple[list[SessionLog], str]:
    """This run's users (one per session) with one random password; their session logs."""
    from quality import auth
    from quality.db.session import make_engine, upgrade

    password = secrets.token_urlsafe(18)
    logs: list[SessionLog] = []
    for k in range(cfg.sessions):
        if k < cfg.n_reviewers:
            logs.append(SessionLog(f"load{tag}-rev-{k:02d}", "clinician", "reviewer"))
        else:
            j = k - cfg.n_reviewers
            role = READER_ROLES[j % len(READER_ROLES)]
            logs.append(SessionLog(f"load{tag}-{role.split()[0][:5]}-{j:02d}", role, "reader"))
    engine = make_engine(url)
    try:
        upgrade(engine)
        with Session(engine) as s:
            for log in logs:
                auth.add_user(s, log.name, log.role, password)
            s.commit()
    finally:
        engine.dispose()
    return logs, password


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def _stats(samples: list[tuple[str, float, bool]]) -> dict[str, float]:
    times = [t for _, t, _ in samples]
    return {
        "n": len(samples),
        "errors": sum(1 for *_, ok in samples if not ok),
        "p50_ms": round(1000 * statistics.median(times), 1),
        "p95_ms": round(1000 * _percentile(times, 95), 1),
        "max_ms": round(1000 * max(times), 1),
    }


def _check_verdicts(url: str, logs: list[SessionLog]) -> dict[str, Any]:
    """Compare what the reviewers were told was saved with what the DB holds."""
    from quality.db.schema import AuditLog, Review
    from quality.db.session import make_engine

    reviewers = [log for log in logs if log.kind == "reviewer" and log.user_id]
    ids = [log.user_id for log in reviewers]
    expected = {(pid, log.user_id): v for log in reviewers for pid, v in log.ledger.items()}
    engine = make_engine(url)
    try:
        with Session(engine) as s:
            rows = s.execute(
                select(
                    Review.prediction_id, Review.reviewer_id, Review.verdict,
                    Review.corrected_label, Review.comment,
                ).where(Review.reviewer_id.in_(ids))
            ).all() if ids else []  # fmt: skip
            n_audit = int(
                s.scalar(
                    select(func.count())
                    .select_from(AuditLog)
                    .where(AuditLog.action == "verdict")
                    .where(AuditLog.username.in_([log.name for log in reviewers]))
                )
                or 0
            )
    finally:
        engine.dispose()
    per_pair = Counter((r.prediction_id, r.reviewer_id) for r in rows)
    stored = {(r.prediction_id, r.reviewer_id): (r.verdict, r.corrected_label, r.comment)
              for r in rows}  # fmt: skip
    lost = sorted(p for p in expected if p not in stored)
    mismatched = sorted(p for p in expected if p in stored and stored[p] != expected[p])
    pair = list(reviewers[:2])
    shared_predictions = 0
    if len(pair) == 2:
        shared_predictions = len(set(pair[0].ledger) & set(pair[1].ledger))
    return {
        "clicks": sum(log.verdict_clicks for log in reviewers),
        "acknowledged": sum(log.acknowledged for log in reviewers),
        "distinct_pairs": len(expected),
        "stored": len(rows),
        "lost": len(lost),
        "mismatched": len(mismatched),
        "duplicates": sum(n - 1 for n in per_pair.values() if n > 1),
        "unacknowledged_rows": len(set(stored) - set(expected)),
        "audit_rows": n_audit,
        "shared_predictions": shared_predictions,
        "shared_sessions": (
            len(set(pair[0].review_sessions) & set(pair[1].review_sessions))
            if len(pair) == 2
            else 0
        ),
        "lost_examples": [list(p) for p in lost[:5]],
        "mismatched_examples": [list(p) for p in mismatched[:5]],
    }


def run_load(cfg: LoadConfig, *, db_what: str = "") -> LoadResult:
    """Run the sessions of ``cfg`` against ``cfg.db_url`` and collect the figures.

    Sets ``QUALITY_DB_URL`` and ``QUALITY_DEMO_MODE=0`` for the duration (and puts back the
    old values), changes into the repository root (the app reads ``.streamlit/`` there), and
    creates this run's users in the DB.
    """
    from quality.db.session import safe_url
    from quality.ui import data

    if cfg.sessions < 1:
        raise ValueError("sessions must be at least 1")
    tag = time.strftime("%m%d%H%M%S") + secrets.token_hex(2)
    env = {"QUALITY_DB_URL": cfg.db_url, "QUALITY_DEMO_MODE": "0"}
    old_env = {k: os.environ.get(k) for k in env}
    old_cwd = os.getcwd()
    old_main = sys.modules.get("__main__")
    os.environ.update(env)
    os.chdir(ROOT)
    loads: list[float] = []
    stop_sampling = threading.Event()

    def sample_load() -> None:
        while not stop_sampling.is_set():
            loads.append(os.getloadavg()[0])
            stop_sampling.wait(5)

    try:
        logs, password = _make_users(cfg.db_url, tag, cfg)
        sampler = threading.Thread(target=sample_load, daemon=True)
        sampler.start()
        with apptest_threads():
            data.clear_caches()  # a cold server: nothing cached yet
            t0 = time.monotonic()
            stop_at = t0 + cfg.seconds
            sessions = [_Session(k, log, cfg, password, stop_at) for k, log in enumerate(logs)]
            threads = []
            for k, sess in enumerate(sessions):
                target = _guarded(sess, pair=k < 2 and sess.log.kind == "reviewer")
                threads.append(threading.Thread(target=target, name=sess.log.name, daemon=True))
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            duration = time.monotonic() - t0
        stop_sampling.set()
        sampler.join()
        verdicts = _check_verdicts(cfg.db_url, logs)
    finally:
        stop_sampling.set()
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if old_main is not None:
            sys.modules["__main__"] = old_main

    samples = [s for log in logs for s in log.samples]
    by_kind: dict[str, list[tuple[str, float, bool]]] = defaultdict(list)
    for s in samples:
        by_kind[s[0]].append(s)
    errors = [e for log in logs for e in log.errors]
    distinct = list(dict.fromkeys(errors))
    counts = _count_rows(cfg.db_url)
    return LoadResult(
        config={**asdict(cfg), "db_url": safe_url(cfg.db_url), "n_reviewers": cfg.n_reviewers},
        db={"url": safe_url(cfg.db_url), "what": db_what, "rows": counts},
        duration_s=round(duration, 1),
        sessions=[
            {
                "name": log.name,
                "role": log.role,
                "kind": log.kind,
                "actions": log.actions,
                "errors": len(log.errors),
                "verdicts_acknowledged": log.acknowledged,
                "draws": log.draws,
            }
            for log in logs
        ],
        pages={k: _stats(v) for k, v in sorted(by_kind.items())},
        overall=_stats(samples) if samples else {"n": 0},
        errors=len(errors),
        error_samples=distinct[:20],
        verdicts=verdicts,
        load={
            "cpus": os.cpu_count(),
            "loadavg_1m_mean": round(statistics.mean(loads), 2) if loads else None,
            "loadavg_1m_max": round(max(loads), 2) if loads else None,
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            "harness_parse_s": round(_PARSE_SECONDS[0], 2),
        },
    )


def _guarded(sess: _Session, *, pair: bool) -> Callable[[], None]:
    def target() -> None:
        try:
            sess.run(pair)
        except Exception as exc:  # a crashed session is an error figure
            sess.log.errors.append(f"session crashed: {type(exc).__name__}: {str(exc)[:300]}")

    return target


# --------------------------------------------------------------------------- output


def format_table(result: LoadResult) -> str:
    """The figures as plain text."""
    cfg, v, ld = result.config, result.verdicts, result.load
    n_rev = cfg["n_reviewers"]
    rows = result.db["rows"]
    lines = [
        f"DB: {result.db['what'] or 'given'} {result.db['url']} "
        f"({rows.get('studies', 0):,} studies, {rows.get('images', 0):,} images, "
        f"{rows.get('predictions', 0):,} predictions, {rows.get('annotations', 0):,} annotations)",
        f"sessions: {cfg['sessions']} ({n_rev} reviewers, {cfg['sessions'] - n_rev} readers), "
        f"planned {cfg['seconds']:.0f} s, ran {result.duration_s:.1f} s, "
        f"think {cfg['think'][0]}-{cfg['think'][1]} s",
        f"machine: {ld['cpus']} CPUs, load average (1 min) mean {ld['loadavg_1m_mean']}, "
        f"max {ld['loadavg_1m_max']}; harness tree parsing {ld['harness_parse_s']} s in all",
        "",
        f"{'action':<22}{'n':>6}{'errors':>8}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}",
    ]
    for kind, st_ in [*result.pages.items(), ("ALL", result.overall)]:
        if not st_.get("n"):
            continue
        lines.append(
            f"{kind:<22}{st_['n']:>6}{st_['errors']:>8}{st_['p50_ms']:>10.0f}"
            f"{st_['p95_ms']:>10.0f}{st_['max_ms']:>10.0f}"
        )
    lines += [
        "",
        f"errors: {result.errors}",
        *[f"  {e}" for e in result.error_samples[:10]],
        f"verdicts: {v['clicks']} clicks, {v['acknowledged']} saved (acknowledged), "
        f"{v['distinct_pairs']} distinct (prediction, reviewer); in the DB {v['stored']} rows: "
        f"lost {v['lost']}, mismatched {v['mismatched']}, duplicates {v['duplicates']}, "
        f"unacknowledged {v['unacknowledged_rows']}; audit rows {v['audit_rows']}",
        f"shared pair: {v['shared_predictions']} predictions judged by both, "
        f"{v['shared_sessions']} review sessions in common",
        "per session: "
        + ", ".join(f"{s['name'].split('-', 1)[1]}={s['actions']}" for s in result.sessions),
        f"RESULT: {'ok' if result.ok else 'FAILED'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="database URL (default: the large demo, else the small one)")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--reviewers", type=int, default=None)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--max-actions", type=int, default=None)
    parser.add_argument("--think", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"))
    parser.add_argument("--sample-size", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--page-timeout", type=float, default=180.0)
    parser.add_argument("--prepare", action="store_true", help="only build the default DB")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--small", action="store_true", help="the small demo instead of the large one"
    )
    args = parser.parse_args(argv)
    from streamlit.logger import set_log_level

    # Importing the pages' modules outside a server, and building 20 AppTests in the main
    # thread, makes Streamlit warn about "raw mode"; nothing here depends on it.
    set_log_level("error")

    if args.db:
        url, what = args.db, ""
    else:
        url, what = default_db_url(small=args.small)
    if args.prepare:
        print(url)
        return 0
    if make_url(url).get_backend_name() != "postgresql":
        print("note: the load test is meant for PostgreSQL", file=sys.stderr)
    os.environ.setdefault("QUALITY_THUMB_CACHE_DIR", tempfile.mkdtemp(prefix="load-thumbs-"))
    cfg = LoadConfig(
        db_url=url,
        sessions=args.sessions,
        reviewers=args.reviewers,
        seconds=60.0 * args.minutes,
        max_actions=args.max_actions,
        think=(args.think[0], args.think[1]),
        sample_size=args.sample_size,
        seed=args.seed,
        page_timeout=args.page_timeout,
    )
    # Streamlit prints a script's uncaught exception to stdout; keep stdout for the figures.
    with contextlib.redirect_stdout(sys.stderr):
        result = run_load(cfg, db_what=what)
    print(json.dumps(result.as_dict(), indent=2) if args.json else format_table(result))
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
