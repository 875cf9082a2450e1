"""Sections of the Drift page, their plotly charts and cached builders.

The feature frame (:func:`quality.drift.feature_frame`) and the drift report
(:func:`quality.drift.build_drift_report`) are read through :func:`quality.db.aggregates.get`
(the default view is computed ahead by the writers) and cached with
:func:`quality.ui.data.result_cache` for the shared :data:`~quality.ui.data.QUERY_TTL_S`,
keyed by the DB URL, the dataset and the settings, so moving a date picker re-tests the
windows without re-reading the DB.

Each section says plainly when it has nothing to show; bad settings (an empty reference
period, a dataset without dated images) become a warning through :func:`drift_guard`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from sqlalchemy.orm import Session

from quality.db import aggregates
from quality.drift import (
    ALL_SCOPE,
    DriftReport,
    build_drift_report,
    default_settings,
    drift_columns,
    feature_values,
)
from quality.errors import DatabaseUnavailableError, EmptyDatabaseError, QualityError
from quality.ui import charts, data, widgets

__all__ = [
    "BY_OPTIONS",
    "WINDOW_OPTIONS",
    "Settings",
    "alerts_table",
    "controls",
    "downloads",
    "drift_guard",
    "features",
    "headline",
    "heatmap_chart",
    "heatmap_section",
    "histogram_chart",
    "histogram_section",
    "missing_section",
    "report",
    "tests_section",
    "timeline_chart",
    "timeline_section",
]

WINDOW_OPTIONS = ("7D", "14D", "28D", "1D")
BY_OPTIONS = ("source", "manufacturer", "modality", "(none)")
_MARGIN = {"l": 10, "r": 10, "t": 30, "b": 10}
_NONE = "(none)"


@dataclass(frozen=True)
class Settings:
    """What the controls picked (hashable: it keys the cache)."""

    reference: tuple[dt.date, dt.date]
    current: tuple[dt.date, dt.date]
    window: str
    by: str | None
    alpha: float


# --------------------------------------------------------------------------- cached builders


@data.result_cache(ttl=data.QUERY_TTL_S, show_spinner="Reading the features…")
def _features(url: str, dataset_id: int | None) -> pd.DataFrame:
    # feature_frame, or the frame computed ahead by the last writer.
    return data.run_query(url, aggregates.get, "drift_features", dataset_id)


@data.result_cache(ttl=data.QUERY_TTL_S, show_spinner="Testing every window…")
def _report(url: str, dataset_id: int | None, settings: Settings) -> DriftReport:
    def build(session: Session) -> DriftReport:
        # The report computed ahead (default settings), else built on the cached frame.
        return aggregates.get(
            session,
            "drift_report",
            dataset_id,
            settings.reference,
            settings.current,
            settings.window,
            settings.by,
            settings.alpha,
            build=lambda: build_drift_report(
                session,
                dataset_id,
                reference=settings.reference,
                current=settings.current,
                window=settings.window,
                by=settings.by,
                alpha=settings.alpha,
                features=_features(url, dataset_id),
            ),
        )

    return data.run_query(url, build)


def features(dataset_id: int | None) -> pd.DataFrame:
    """:func:`quality.drift.feature_frame` of the dataset (cached)."""
    return _features(data.db_url(), dataset_id)


def report(dataset_id: int | None, settings: Settings) -> DriftReport:
    """:func:`quality.drift.build_drift_report` (cached)."""
    return _report(data.db_url(), dataset_id, settings)


@contextlib.contextmanager
def drift_guard() -> Iterator[None]:
    """DB trouble stops the page with the standard message; bad input (no dated images, an
    empty period) becomes a warning and stops the page."""
    try:
        yield
    except EmptyDatabaseError as exc:
        data.show_empty(exc)
    except DatabaseUnavailableError as exc:
        data.show_unavailable(exc)
    except (QualityError, ValueError) as exc:
        st.warning(f"Drift cannot be computed: {exc}", icon="⚠️")
        st.stop()


# --------------------------------------------------------------------------- controls


def _pair(value: object, fallback: tuple[dt.date, dt.date]) -> tuple[dt.date, dt.date]:
    """A date_input range as (start, end); a half-picked range keeps its start."""
    if isinstance(value, tuple | list):
        if len(value) == 2:
            return value[0], value[1]
        if len(value) == 1:
            return value[0], value[0]
    return fallback


def controls(frame: pd.DataFrame, dataset_id: int | None) -> Settings:
    """Reference and current date pickers, window, subgroup and FDR level.

    Stops the page with an info message when no image has a study date.
    """
    if frame.empty:
        st.info("This dataset has no images yet: there is nothing to monitor.", icon="🌊")
        st.stop()
    dates = frame["study_date"].dropna()
    if dates.empty:
        st.info("No image in this scope has a study date: there is nothing to monitor.", icon="🌊")
        st.stop()
    # The same defaults as the report computed ahead (quality.db.aggregates).
    defaults = default_settings(frame)
    assert defaults is not None  # dated images exist (checked above)
    (first, ref_end), (cur_start, last) = defaults[0], defaults[1]
    suffix = "all" if dataset_id is None else str(dataset_id)
    left, mid, right = st.columns([2, 2, 3])
    with left:
        ref = st.date_input(
            "Reference period",
            value=(first, ref_end),
            min_value=first,
            max_value=last,
            key=f"drift_reference_{suffix}",
            help="What the data should look like (default: the first four weeks).",
        )
    with mid:
        cur = st.date_input(
            "Current period",
            value=(cur_start, last),
            min_value=first,
            max_value=last,
            key=f"drift_current_{suffix}",
            help="Cut into windows, each compared with the reference.",
        )
    with right:
        a, b, c = st.columns(3)
        window = a.selectbox("Window", WINDOW_OPTIONS, key="drift_window")
        by = b.selectbox("Subgroups", BY_OPTIONS, key="drift_by")
        alpha = c.selectbox(
            "FDR α", (0.05, 0.01, 0.1), key="drift_alpha", help="Benjamini-Hochberg level."
        )
    return Settings(
        reference=_pair(ref, (first, ref_end)),
        current=_pair(cur, (cur_start, last)),
        window=str(window),
        by=None if by == _NONE else str(by),
        alpha=float(alpha),
    )


# --------------------------------------------------------------------------- headline


def headline(rep: DriftReport) -> None:
    """Counts: images, windows, drift alerts, missing-input alerts, scopes."""
    tl = rep.result.timeline
    cols = st.columns(5)
    cols[0].metric("Images", f"{len(rep.features):,}", border=True)
    cols[1].metric("Windows", f"{rep.result.n_windows} × {rep.result.window_days} d", border=True)
    cols[2].metric(
        "Drift alerts",
        int(tl["drift_alert"].sum()),
        help="(window, scope) pairs with at least one drifted feature",
        border=True,
    )
    cols[3].metric(
        "Missing-input alerts",
        int(tl["missing_alert"].sum()),
        help="(window, scope) pairs with a rise in missing or empty inputs, or a volume drop",
        border=True,
    )
    cols[4].metric("Scopes", len(rep.result.scopes), border=True)
    r = rep.result
    st.caption(
        f"Reference {r.reference[0]} – {r.reference[1]} · current {r.current[0]} – "
        f"{r.current[1]} · study dates · Benjamini-Hochberg at α = {rep.alpha:g}"
        + (f" · {rep.n_undated} images without a study date left out" if rep.n_undated else "")
    )


# --------------------------------------------------------------------------- charts


@charts.memo_figure
def timeline_chart(rep: DriftReport) -> go.Figure:
    """Drifted features per window and scope, with markers on the alerts."""
    tl = rep.result.timeline
    fig = go.Figure()
    for scope, group in tl.groupby("scope", sort=False):
        fig.add_trace(
            go.Scatter(
                x=pd.to_datetime(group["window_start"]),
                y=group["n_drifted"],
                mode="lines+markers",
                name=str(scope),
                line={"width": 3 if scope == ALL_SCOPE else 1.5},
                customdata=group[["window_end", "n_current", "status"]].astype(str),
                hovertemplate=(
                    f"{scope}<br>%{{x|%Y-%m-%d}} – %{{customdata[0]}}<br>"
                    "%{y} drifted features · %{customdata[1]} images · %{customdata[2]}"
                    "<extra></extra>"
                ),
            )
        )
    for flag, name, symbol, colour in (
        ("drift_alert", "drift alert", "x", "#d62728"),
        ("missing_alert", "missing-input alert", "triangle-down", "#ff7f0e"),
    ):
        hits = tl.loc[tl[flag]]
        fig.add_trace(
            go.Scatter(
                x=pd.to_datetime(hits["window_start"]),
                y=hits["n_drifted"],
                mode="markers",
                name=name,
                marker={"symbol": symbol, "size": 14, "color": colour, "line": {"width": 2}},
                text=hits["scope"],
                hovertemplate=f"{name}: %{{text}}<br>%{{x|%Y-%m-%d}}<extra></extra>",
            )
        )
    fig.update_layout(
        height=340,
        margin=_MARGIN,
        yaxis_title="drifted features",
        xaxis_title="window start",
        legend={"orientation": "h", "y": 1.15, "x": 0},
    )
    return fig


@charts.memo_figure
def heatmap_chart(rep: DriftReport) -> go.Figure:
    """Scopes × windows; colour: drifted features; text: also the missing-input alerts."""
    tl = rep.result.timeline.copy()
    tl["window"] = tl["window_start"].astype(str)
    z = tl.pivot(index="scope", columns="window", values="n_drifted")
    miss = tl.pivot(index="scope", columns="window", values="missing_alert")
    status = tl.pivot(index="scope", columns="window", values="status")
    order = [s for s in rep.result.scopes if s in z.index]
    z, miss, status = z.loc[order], miss.loc[order], status.loc[order]
    text = z.astype(int).astype(str) + miss.map(lambda m: " ⚠" if m else "")
    text = text.where(status == "tested", status.map(lambda s: "–" if s != "tested" else ""))
    fig = go.Figure(
        go.Heatmap(
            z=z.to_numpy(dtype=float),
            x=list(z.columns),
            y=list(z.index),
            text=text.to_numpy(),
            texttemplate="%{text}",
            colorscale="Reds",
            zmin=0,
            colorbar={"title": "drifted"},
            hovertemplate="%{y} · window %{x}<br>%{z} drifted features<extra></extra>",
        )
    )
    fig.update_layout(height=80 + 40 * len(order), margin=_MARGIN, yaxis={"autorange": "reversed"})
    return fig


@charts.memo_figure
def histogram_chart(values: pd.DataFrame, feature: str) -> go.Figure:
    """Reference vs current: overlaid histograms (numeric) or grouped share bars."""
    fig = go.Figure()
    colours = {"reference": "#4c78a8", "current": "#e45756"}
    numeric = pd.api.types.is_numeric_dtype(values["value"]) and not pd.api.types.is_bool_dtype(
        values["value"]
    )
    for period in ("reference", "current"):
        sub = values.loc[values["period"] == period, "value"]
        if numeric:
            fig.add_trace(
                go.Histogram(
                    x=sub,
                    name=f"{period} (n = {len(sub)})",
                    histnorm="probability",
                    opacity=0.6,
                    marker_color=colours[period],
                )
            )
        else:
            shares = sub.astype(str).value_counts(normalize=True).sort_index()
            fig.add_trace(
                go.Bar(
                    x=list(shares.index),
                    y=shares.to_numpy(),
                    name=f"{period} (n = {len(sub)})",
                    marker_color=colours[period],
                )
            )
    fig.update_layout(
        barmode="overlay" if numeric else "group",
        height=320,
        margin=_MARGIN,
        xaxis_title=feature,
        yaxis_title="share",
        legend={"orientation": "h", "y": 1.15, "x": 0},
    )
    return fig


# --------------------------------------------------------------------------- sections


def timeline_section(rep: DriftReport) -> None:
    """The timeline chart."""
    st.plotly_chart(timeline_chart(rep), key="drift_timeline", config={"displayModeBar": False})


def heatmap_section(rep: DriftReport) -> None:
    """The per-scope heatmap ("–": not tested; "⚠": missing-input alert)."""
    st.plotly_chart(heatmap_chart(rep), key="drift_heatmap", config={"displayModeBar": False})
    st.caption("Number of drifted features; ⚠ a missing-input alert; – too few images to test.")


def histogram_section(rep: DriftReport) -> pd.DataFrame:
    """Pick a feature and a scope; its reference and current distributions and its test.

    Returns
    -------
    DataFrame
        The values shown (for the downloads).
    """
    columns = drift_columns(rep.features)
    if not columns:
        st.info("No feature to compare.", icon="📊")
        return pd.DataFrame()
    drifted = rep.result.pooled
    first = columns[0]
    if not drifted.empty and drifted["drifted"].any():
        first = str(drifted.loc[drifted["drifted"], "column"].iloc[0])
    if st.session_state.get("drift_feature") not in columns:
        st.session_state["drift_feature"] = first
    left, right = st.columns(2)
    feature = left.selectbox("Feature", columns, key="drift_feature")
    scopes = rep.result.scopes
    if st.session_state.get("drift_scope") not in scopes:
        st.session_state["drift_scope"] = scopes[0]
    scope = right.selectbox("Scope", scopes, key="drift_scope")
    values = feature_values(rep, str(feature), str(scope))
    if values.empty:
        st.info(f"**{feature}** has no values in {scope}.", icon="📊")
        return values
    st.plotly_chart(
        histogram_chart(values, str(feature)),
        key="drift_histogram",
        config={"displayModeBar": False},
    )
    row = drifted.loc[(drifted["scope"] == scope) & (drifted["column"] == feature)]
    if not row.empty:
        r = row.iloc[0]
        p = "" if pd.isna(r["p_adjusted"]) else f", adjusted p {r['p_adjusted']:.3g}"
        verdict = "drifted" if r["drifted"] else "no drift"
        st.caption(
            f"Whole current period vs reference: **{r['test']}** statistic "
            f"{r['statistic']:.3g}{p} → {verdict} (the alerts come from the windows)."
        )
    return values


def missing_section(rep: DriftReport) -> pd.DataFrame:
    """The missing-input checks that alerted (all windows and scopes)."""
    checks = rep.result.missing
    hits = checks.loc[checks["alert"]] if not checks.empty else checks
    if hits.empty:
        st.success("No rise in missing or empty inputs, and no drop in volume.", icon="✅")
        return hits
    shown = hits[
        ["scope", "window_start", "window_end", "check", "x_current", "n_current",
         "current_share", "reference_share", "p_adjusted"]
    ]  # fmt: skip
    st.dataframe(
        shown,
        hide_index=True,
        key="drift_missing_table",
        column_config={
            "current_share": st.column_config.NumberColumn("current", format="%.2f"),
            "reference_share": st.column_config.NumberColumn("reference", format="%.2f"),
            "p_adjusted": st.column_config.NumberColumn("adjusted p", format="%.2g"),
        },
    )
    st.caption(
        "One-sided Fisher exact test of each share against the reference (volume: a binomial "
        "test of images per day), Benjamini-Hochberg per window and scope, and a minimum rise."
    )
    return hits


def tests_section(rep: DriftReport) -> None:
    """Which test each feature gets and why (the automatic choice table)."""
    st.dataframe(rep.choice, hide_index=True, key="drift_choice_table")
    st.caption(
        "Numeric features with more than 5 values get KS, fewer get chi-square (3–5) or the "
        "z-test (2); categorical features chi-square or z; above 1000 rows, normalised "
        "Wasserstein or Jensen-Shannon. `quality drift --test COLUMN=TEST` overrides."
    )


def alerts_table(rep: DriftReport) -> None:
    """Every alert, one row per drifted feature or alerting check."""
    alerts = rep.result.alerts
    if alerts.empty:
        st.success("No alert in the current period.", icon="✅")
        return
    st.dataframe(alerts, hide_index=True, key="drift_alerts_table")


def downloads(rep: DriftReport, values: pd.DataFrame | None = None) -> None:
    """One CSV download per table."""
    r = rep.result
    tables = {
        "Alerts": r.alerts,
        "Timeline": r.timeline,
        "Window tests": r.tests,
        "Missing-input checks": r.missing,
        "Test choice": rep.choice,
        "Histogram values": values,
    }
    shown = {k: v for k, v in tables.items() if v is not None and not v.empty}
    if not shown:
        return
    stem = f"drift-{rep.dataset or 'all-images'}"
    cols = st.columns(len(shown))
    for col, (label, frame) in zip(cols, shown.items(), strict=True):
        slug = label.lower().replace(" ", "-")
        widgets.download_button(
            f"⬇️ {label}",
            lambda frame=frame: frame.to_csv(index=False),
            file_name=f"{stem}-{slug}.csv",
            what=f"drift: {label}",
            mime="text/csv",
            key=f"drift_dl_{slug}",
            rows=len(frame),
            container=col,
            width="stretch",
        )
