"""Page speed: the first render and the cached re-render of every page, with AppTest.

Usage::

    .venv/bin/python bench/pages.py [--db URL] [--pages eda,drift] [--dataset NAME] [--json]
                                    [--profile PAGE]

The DB is ``--db``; else the large demo of ``bench/large_db.py`` (``ensure_large_db()``: its
persistent PostgreSQL cluster, built on the first use, about 2 min plus the refresh of the
materialised results). The issue's budget, at the large scale (10^5 studies, 2x10^5 images,
10^6 annotations, 4x10^5 predictions on PostgreSQL), is a first render of at most
:data:`FIRST_BUDGET_S` and a cached re-render of at most :data:`CACHED_BUDGET_S`.

For every page of :data:`quality.ui.nav.PAGES` (the admin role sees them all; the app runs
in demo mode with the role preset, so the role guard passes), in one process:

1. an :class:`~streamlit.testing.v1.AppTest` of ``app.py`` is made and its page switched to
   the page before the first run (the router runs once per script run, as in the app);
2. **first render**: every Streamlit cache is dropped first (``st.cache_data`` and
   ``st.cache_resource``: query results, report builders, the engine and its connection
   pool, decoded pixels) and the thumbnail disk cache is a fresh empty folder, so the run
   pays for the engine's first connection, every query, every builder and every thumbnail.
   What stays warm: the Python process (the page modules and their imports, torch among
   them, are imported before any timing, as in a server that has served each page once)
   and the DB server's own buffer cache;
3. **cached re-render**: ``run()`` again on the same AppTest (same session and widgets): what
   a user pays on every widget interaction that hits the caches;
4. element exceptions (``at.exception``) are counted after both runs; they must be 0.

It prints a table ``page, first s, cached s, exceptions, budget ok`` (figures, not asserts).
``--profile PAGE`` prints the top of a cProfile of that page's first render, sorted by
cumulative time, to find the slow step.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import json
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

APP = str(ROOT / "app.py")
FIRST_BUDGET_S = 3.0
"""Budget of a page's first render (cold caches) at the large scale."""
CACHED_BUDGET_S = 0.5
"""Budget of a page's cached re-render."""
RUN_TIMEOUT_S = 900.0
_UI_MODULES = (
    "audit",
    "card",
    "data_tests",
    "doctors",
    "drift",
    "eda",
    "image_quality",
    "models",
    "spot_check",
    "viewer",
    "worklist",
)
_COMPONENTS: list[Any] = []  # the component registry of the warm-up AppTest


@dataclass
class PageTiming:
    """One page's figures."""

    page: str
    first_s: float
    cached_s: float
    exceptions: int
    messages: list[str]

    @property
    def ok(self) -> bool:
        """Within both budgets, without an element exception."""
        return (
            self.first_s <= FIRST_BUDGET_S
            and self.cached_s <= CACHED_BUDGET_S
            and self.exceptions == 0
        )


def resolve_url(arg: str | None) -> str:
    """``--db``, else :func:`bench.large_db.ensure_large_db`."""
    if arg:
        return arg
    sys.path.insert(0, str(ROOT / "bench"))
    from large_db import ensure_large_db  # type: ignore[import-not-found]

    return str(ensure_large_db(quiet=False))


def _cold_caches(thumb_root: Path) -> None:
    """Drop every Streamlit cache and point the thumbnails at an empty disk cache."""
    import streamlit as st

    from quality.store.thumbcache import ThumbCache
    from quality.ui import thumbs

    st.cache_data.clear()
    st.cache_resource.clear()
    folder = Path(tempfile.mkdtemp(dir=thumb_root))
    thumbs.clear_caches(disk=ThumbCache(folder, 256 * 2**20))


def _messages(at: Any) -> list[str]:
    """What the page said in exceptions, errors and warnings (first line of each)."""
    out = []
    for kind in ("exception", "error", "warning"):
        for el in getattr(at, kind):
            text = str(getattr(el, "message", None) or getattr(el, "value", "")).strip()
            if text.startswith("Demo mode"):
                continue
            out.append(f"{kind}: {text.splitlines()[0][:160] if text else ''}")
    return out


def time_page(
    path: str, key: str, dataset: str | None, thumb_root: Path, *, profile: bool = False
) -> PageTiming:
    """First render (cold caches) and cached re-render of one page."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
    # A server scans the installed packages for components once, at start-up; AppTest does
    # it on each instance's first run (about 1 s): share the warm-up's scan.
    if _COMPONENTS:
        at._bidi_component_manager = _COMPONENTS[0]
    at.session_state["role"] = "admin"
    if dataset is not None:
        at.session_state["_dataset_id_picker"] = _dataset_option(dataset)
    at.switch_page(path)
    _cold_caches(thumb_root)
    first = _timed_run(at, f"{key}, first render" if profile else None)
    n_exc = len(at.exception)
    cached = _timed_run(at, f"{key}, cached re-render" if profile else None)
    n_exc = max(n_exc, len(at.exception))
    if not _COMPONENTS and getattr(at, "_bidi_component_manager", None) is not None:
        _COMPONENTS.append(at._bidi_component_manager)
    title = at.title[0].value if len(at.title) else "(no title)"
    msgs = [f"title: {title}", *_messages(at)]
    return PageTiming(key, round(first, 3), round(cached, 3), n_exc, msgs)


def _timed_run(at: Any, profile_title: str | None) -> float:
    """Seconds of one ``at.run()``; with a title, the cProfile top of the threads it started
    (AppTest runs the script in a thread of its own) goes to stderr."""
    if not profile_title:
        t0 = time.perf_counter()
        at.run()
        return time.perf_counter() - t0
    profiles: list[cProfile.Profile] = []
    original = threading.Thread.run

    def profiled(self: threading.Thread) -> None:
        prof = cProfile.Profile()
        profiles.append(prof)
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()

    threading.Thread.run = profiled  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        at.run()
        seconds = time.perf_counter() - t0
    finally:
        threading.Thread.run = original  # type: ignore[method-assign]
    buf = io.StringIO()
    if profiles:
        pstats.Stats(*profiles, stream=buf).sort_stats("cumulative").print_stats(70)
    print(f"===== {profile_title}: {seconds:.2f} s", buf.getvalue(), file=sys.stderr)
    return seconds


def _dataset_option(name: str) -> int:
    """The sidebar picker's option for a dataset name (``all``: every image)."""
    if name == "all":
        return -1
    from quality.db import queries
    from quality.db.session import make_engine, session_scope

    engine = make_engine(os.environ["QUALITY_DB_URL"])
    try:
        with session_scope(engine) as s:
            return queries.resolve_dataset(s, name)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="DB URL (default: the large demo's)")
    parser.add_argument("--pages", help="comma-separated page keys (default: every page)")
    parser.add_argument("--dataset", help="dataset name for the sidebar (default: the first)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--profile", help="cProfile this page's first render (to stderr)")
    args = parser.parse_args(argv)

    url = resolve_url(args.db)
    os.environ["QUALITY_DB_URL"] = url
    os.environ["QUALITY_DEMO_MODE"] = "1"
    os.chdir(ROOT)
    # AppTest's bare-mode chatter ("missing ScriptRunContext") would bury the table.
    import streamlit.logger

    streamlit.logger.set_log_level("error")
    thumb_root = Path(tempfile.mkdtemp(prefix="bench-pages-thumbs-"))
    os.environ["QUALITY_THUMB_CACHE_DIR"] = str(thumb_root / "settings")

    from quality.db.session import safe_url
    from quality.ui.nav import PAGES

    wanted = set(args.pages.split(",")) if args.pages else None
    if wanted is not None:
        unknown = wanted - {p.key for p in PAGES}
        if unknown:
            parser.error(f"unknown pages {sorted(unknown)}; known: {[p.key for p in PAGES]}")
    # Imports and Streamlit's first-run set-up outside the timings: a running server has them
    # after its first visits (torch alone, imported by the Doctors and Image quality pages,
    # takes 2 s or more on the first visit after a server start).
    for name in _UI_MODULES:
        importlib.import_module(f"quality.ui.{name}")
    time_page("pages/overview.py", "warm-up", args.dataset, thumb_root)
    results = []
    try:
        for spec in PAGES:
            if wanted is not None and spec.key not in wanted:
                continue
            results.append(
                time_page(
                    spec.path,
                    spec.key,
                    args.dataset,
                    thumb_root,
                    profile=spec.key == args.profile,
                )
            )
            if not args.json:
                r = results[-1]
                print(f"  {r.page}: first {r.first_s:.2f} s, cached {r.cached_s:.2f} s", flush=True)
    finally:
        shutil.rmtree(thumb_root, ignore_errors=True)

    if args.json:
        doc = {
            "db": safe_url(url),
            "first_budget_s": FIRST_BUDGET_S,
            "cached_budget_s": CACHED_BUDGET_S,
            "pages": [{**asdict(r), "ok": r.ok} for r in results],
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"\nDB: {safe_url(url)}")
    print(f"budget: first render <= {FIRST_BUDGET_S} s, cached re-render <= {CACHED_BUDGET_S} s")
    print(f"{'page':<15}{'first s':>9}{'cached s':>10}{'exc':>5}  ok")
    for r in results:
        print(
            f"{r.page:<15}{r.first_s:>9.2f}{r.cached_s:>10.2f}{r.exceptions:>5}  "
            f"{'yes' if r.ok else 'NO'}"
        )
    for r in results:
        notes = [m for m in r.messages if not m.startswith("title:")]
        if notes:
            print(f"{r.page}: " + " | ".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
