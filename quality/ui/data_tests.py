"""Sections of the Data tests page, and their cached builders.

Stored runs (:func:`quality.checks.check_history`, :func:`quality.checks.check_run_results`)
and the rules suggestion are :func:`st.cache_data` with the shared
:data:`~quality.ui.data.QUERY_TTL_S`, keyed by the DB URL; a new run clears them. Running
the checks is never cached: it writes a ``check_runs`` row.

A bad rules file (uploaded or pasted) is shown with its line and field, and the run button
stays off until it is fixed; nothing here shows a traceback.
"""

from __future__ import annotations

import hashlib
import html
import os
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from quality import checks
from quality.config import get_settings
from quality.db import aggregates
from quality.errors import DatabaseUnavailableError, EmptyDatabaseError, QualityError, RulesError
from quality.rules import RuleSet, load_rules, parse_rules
from quality.store import ImageStore, open_store
from quality.ui import charts, data, trail, widgets

__all__ = [
    "RulesChoice",
    "dataset_scope",
    "history_chart",
    "history_section",
    "results_section",
    "rules_picker",
    "run_section",
    "show_rules_error",
    "suggestion_download",
]

_SHIPPED = "Shipped rules file"
_UPLOAD = "Upload a rules file"
_PASTE = "Paste rules"
_NONE = "Built-in checks only"
_STATUS_ICON = {"passed": "✅", "failed": "❌", "not_run": "⏭️"}
_EXAMPLE = """rules:
  - name: kVp in range for CR
    column: kvp
    between: [40, 150]
    where: {modality: CR}
  - column: body_part
    in: [CHEST]
"""


# --------------------------------------------------------------------------- cached builders


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _scope(url: str, dataset_id: int) -> checks.Scope:
    return data.run_query(url, checks.resolve_scope, dataset_id)


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _history(url: str, dataset_id: int) -> pd.DataFrame:
    return data.run_query(url, checks.check_history, dataset_id)


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _results(url: str, run_id: int) -> pd.DataFrame:
    return data.run_query(url, checks.check_run_results, run_id)


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner="Profiling the version…")
def _suggestion(url: str, dataset_id: int, version_id: int) -> str:
    # checks.suggest_rules, or its result computed ahead by the last writer.
    return data.run_query(url, aggregates.get, "rules_suggestion", dataset_id, version_id)


def _clear_run_caches() -> None:
    # A stored run changes more than this page's history: the dataset card's status and
    # the Overview's. Drop every cached result, as the card's own writers do.
    data.clear_results()


# --------------------------------------------------------------------------- scope and rules


def dataset_scope(dataset_id: int | None) -> checks.Scope:
    """The picked dataset's newest version; says what to do and stops when there is none."""
    if dataset_id is None:
        st.info("Data tests run on a dataset version: pick a dataset in the sidebar.", icon="✅")
        st.stop()
    try:
        return _scope(data.db_url(), dataset_id)
    except (DatabaseUnavailableError, EmptyDatabaseError):
        raise
    except (QualityError, ValueError) as exc:
        st.info(f"Nothing to test yet: {exc}", icon="✅")
        st.stop()


@dataclass(frozen=True)
class RulesChoice:
    """The rules the user picked: ``ruleset`` (None: built-ins only); ``ok`` is False when a
    rules file was given but cannot be used (the error is already on the page)."""

    ruleset: RuleSet | None
    ok: bool = True
    label: str = _NONE
    sha256: str | None = None
    n_bytes: int = 0

    @property
    def custom(self) -> bool:
        """Rules given on the page (uploaded or pasted), not a file shipped with the app."""
        return self.sha256 is not None


def show_rules_error(exc: RulesError) -> None:
    """The rules-file error, with file, line and field, as the page shows it."""
    where = f"line {exc.line}" if exc.line is not None else "the file"
    field = f", field `{exc.field}`" if exc.field else ""
    st.error(
        f"The rules file **{html.escape(exc.path)}** cannot be used — {where}{field}: "
        f"{exc.message}",
        icon="📝",
    )


def _digest(text: str) -> dict[str, Any]:
    raw = text.encode("utf-8")
    return {"sha256": hashlib.sha256(raw).hexdigest(), "n_bytes": len(raw)}


def rules_picker(scope: checks.Scope) -> RulesChoice:
    """Shipped rules file (when there is one for the dataset), an upload, pasted text, or
    built-ins only. Parses the rules at once, so a bad file is reported before a run."""
    shipped = checks.shipped_rules(scope.dataset)
    options = ([_SHIPPED] if shipped else []) + [_UPLOAD, _PASTE, _NONE]
    choice = st.radio("Rules", options, key="dt_rules_source", horizontal=True)
    try:
        if choice == _SHIPPED and shipped is not None:
            st.caption(f"`rules/{shipped.name}`, written by the data team for this dataset.")
            return RulesChoice(load_rules(shipped), label=f"rules/{shipped.name}")
        if choice == _UPLOAD:
            upload = st.file_uploader(
                "Rules file (YAML)", type=["yaml", "yml"], key="dt_rules_upload"
            )
            if upload is None:
                return RulesChoice(None, ok=False, label="(no file yet)")
            text = upload.getvalue().decode("utf-8", errors="replace")
            return RulesChoice(parse_rules(text, upload.name), label=upload.name, **_digest(text))
        if choice == _PASTE:
            text = st.text_area(
                "Rules (YAML)", key="dt_rules_text", height=220, placeholder=_EXAMPLE
            )
            if not text.strip():
                st.caption("Paste rules above, e.g. the placeholder, to run them.")
                return RulesChoice(None, ok=False, label="(nothing pasted)")
            return RulesChoice(
                parse_rules(text, "pasted rules"), label="pasted rules", **_digest(text)
            )
    except RulesError as exc:
        show_rules_error(exc)
        return RulesChoice(None, ok=False, label=exc.path)
    return RulesChoice(None)


# --------------------------------------------------------------------------- run


def _store() -> tuple[ImageStore | None, str]:
    """The configured store, or None and why not."""
    root = get_settings().store
    try:
        store = open_store(root)
    except QualityError as exc:
        return (
            None,
            f"Image store not available ({exc}): the file and near-duplicate checks are not run.",
        )
    return store, f"Image store `{store.root}`: files are checked and pixels compared."


def _embeddings_dir() -> str | None:
    from quality.ui.image_quality import embeddings_dir

    return embeddings_dir()


def run_section(scope: checks.Scope, rules: RulesChoice) -> checks.CheckReport | None:
    """Reference field, store note and the run button; runs, stores and summarises."""
    left, right = st.columns([2, 3])
    with left:
        reference = st.text_input(
            "Reference for distribution checks (optional)",
            key="dt_reference",
            placeholder="a version (v1) or dates 2024-01-01..2024-01-31",
        )
    store, note = _store()
    with right:
        st.caption(note)
        st.caption(
            f"Checks dataset **{html.escape(scope.dataset)}**, version "
            f"**{html.escape(scope.version)}** · rules: {html.escape(rules.label)}"
        )
    clicked = st.button(
        "▶️ Run the data tests",
        key="dt_run",
        type="primary",
        disabled=not rules.ok,
        help=None if rules.ok else "Fix or give the rules file first (or pick built-ins only).",
    )
    if not clicked:
        return None
    try:
        with st.spinner("Running the data tests…"):
            # Saving the run writes check_runs: the read-write DB.
            report = data.run_query(
                data.write_url(),
                checks.run_checks,
                scope.dataset_id,
                version=scope.version_id,
                rules=rules.ruleset,
                reference=reference.strip() or None,
                store=store,
                embeddings_dir=_embeddings_dir(),
                save=True,
                workers=min(4, os.cpu_count() or 1),
            )
    except RulesError as exc:
        show_rules_error(exc)
        return None
    except (DatabaseUnavailableError, EmptyDatabaseError):
        raise
    except (QualityError, ValueError) as exc:
        st.error(f"The data tests cannot run: {exc}", icon="🚫")
        return None
    _clear_run_caches()
    if rules.custom:
        # Rules from the page change what "passing" means: who ran which rules is audited
        # (label, hash and size; the text itself stays out of the log).
        trail.record(
            "rules_change",
            rules.label,
            {
                "sha256": rules.sha256,
                "bytes": rules.n_bytes,
                "dataset": scope.dataset,
                "version": scope.version,
                "run_id": report.run_id,
            },
        )
    st.session_state["dt_run_pick"] = report.run_id
    n_err = sum(o.status == "failed" and o.severity == "error" for o in report.outcomes)
    n_warn = sum(o.status == "failed" and o.severity == "warning" for o in report.outcomes)
    if report.passed:
        st.success(
            f"Run {report.run_id} passed ({len(report.outcomes)} checks, {n_warn} warnings).",
            icon="✅",
        )
    else:
        st.warning(
            f"Run {report.run_id} failed: {n_err} error checks and {n_warn} warnings failed "
            f"out of {len(report.outcomes)} checks. The failing rows are below.",
            icon="❌",
        )
    return report


# --------------------------------------------------------------------------- history


@charts.memo_figure
def history_chart(history: pd.DataFrame) -> go.Figure:
    """Stacked bars per run: checks failed (errors, warnings), passed and not run; the
    verdict above each bar."""
    x = [f"run {r}" for r in history["run_id"]]
    passed = history["n_checks"] - history["n_failed"] - history["n_not_run"]
    fig = go.Figure()
    for name, values, color in (
        ("failed (error)", history["n_failed_errors"], "#d62728"),
        ("failed (warning)", history["n_failed_warnings"], "#ff9f1c"),
        ("passed", passed, "#2ca02c"),
        ("not run", history["n_not_run"], "#b0b0b0"),
    ):
        fig.add_bar(name=name, x=x, y=values, marker_color=color)
    fig.add_scatter(
        x=x,
        y=history["n_checks"] + 0.5,
        mode="text",
        text=["PASS" if p else "FAIL" for p in history["passed"]],
        textposition="top center",
        showlegend=False,
        hovertext=[str(t) for t in history["started_at"]],
    )
    fig.update_layout(
        barmode="stack",
        height=300,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        yaxis_title="checks",
        legend={"orientation": "h", "y": 1.15},
    )
    return fig


def history_section(scope: checks.Scope) -> pd.DataFrame:
    """The pass/fail history of the dataset's runs (chart and table)."""
    history = _history(data.db_url(), scope.dataset_id)
    if history.empty:
        st.info("No runs yet for this dataset: press **Run the data tests**.", icon="🕒")
        return history
    st.plotly_chart(history_chart(history), key="dt_history", config={"displayModeBar": False})
    with st.expander(f"Run history ({len(history)} {'run' if len(history) == 1 else 'runs'})"):
        st.dataframe(history, hide_index=True, key="dt_history_table")
        _download(history, "Run history", f"data-tests-{scope.dataset}-history", "dt_dl_history")
    return history


def _download(frame: pd.DataFrame, label: str, stem: str, key: str) -> None:
    widgets.download_button(
        f"⬇️ {label} (CSV)",
        lambda: frame.to_csv(index=False),
        file_name=f"{stem}.csv",
        what=f"data tests: {label}",
        mime="text/csv",
        key=key,
        rows=len(frame),
    )


def _run_label(history: pd.DataFrame, run_id: int) -> str:
    row = history.loc[history["run_id"] == run_id].iloc[0]
    when = pd.Timestamp(row["started_at"]).strftime("%Y-%m-%d %H:%M UTC")
    verdict = "passed" if row["passed"] else "failed"
    newest = " (newest)" if run_id == history["run_id"].iloc[-1] else ""
    return f"run {run_id} · {when} · {verdict}{newest}"


def results_section(scope: checks.Scope, history: pd.DataFrame) -> pd.DataFrame | None:
    """A run picker (newest first), that run's results table, and one expander per failed
    check with its failing rows."""
    if history.empty:
        return None
    run_ids = [int(r) for r in reversed(history["run_id"].tolist())]
    if st.session_state.get("dt_run_pick") not in run_ids:
        st.session_state["dt_run_pick"] = run_ids[0]
    run_id = st.selectbox(
        "Run", run_ids, key="dt_run_pick", format_func=lambda r: _run_label(history, r)
    )
    results = _results(data.db_url(), int(run_id))
    table = results.drop(columns=["failing"]).assign(
        status=lambda f: f["status"].map(lambda s: f"{_STATUS_ICON.get(s, '')} {s}")
    )
    st.dataframe(
        table,
        hide_index=True,
        key="dt_results",
        column_config={"line": st.column_config.NumberColumn("line", format="%d")},
    )
    _download(
        results.drop(columns=["failing"]),
        "Results",
        f"data-tests-{scope.dataset}-run-{run_id}",
        "dt_dl_results",
    )
    failed = results.loc[results["status"] == "failed"]
    if failed.empty:
        st.caption("No check failed in this run.")
    for k, rec in enumerate(failed.to_dict("records")):
        rows = pd.DataFrame(rec["failing"])
        line = f" · line {int(rec['line'])}" if pd.notna(rec["line"]) else ""
        title = (
            f"{'❌' if rec['severity'] == 'error' else '⚠️'} {rec['check_name']}{line} — "
            f"{int(rec['n_failed']):,} failed"
        )
        with st.expander(title):
            st.markdown(html.escape(str(rec["message"])))
            if rows.empty:
                st.caption("No row-level detail for this check.")
                continue
            if len(rows) < int(rec["n_failed"]):
                st.caption(f"The first {len(rows):,} failing rows are kept.")
            st.dataframe(rows, hide_index=True, key=f"dt_failing_{k}")
            slug = "".join(c if c.isalnum() else "-" for c in str(rec["check_name"]))
            _download(rows, "Failing rows", f"data-tests-run-{run_id}-{slug}", f"dt_dl_failing_{k}")
    return results


def suggestion_download(scope: checks.Scope) -> None:
    """Download rules derived from the version (Deequ-style suggestion)."""
    text = _suggestion(data.db_url(), scope.dataset_id, scope.version_id)
    n_rules = sum(1 for line in text.splitlines() if line.startswith("  - "))
    st.caption(
        f"{n_rules} rules derived from version **{html.escape(scope.version)}**: not-null for "
        "complete columns, value lists, observed ranges, shares per source, readers per image. "
        "Review them, then upload or paste them above."
    )
    widgets.download_button(
        "⬇️ Suggested rules (YAML)",
        text,
        file_name=f"{scope.dataset}-suggested-rules.yaml",
        what="suggested rules",
        mime="application/yaml",
        key="dt_dl_suggested",
    )
