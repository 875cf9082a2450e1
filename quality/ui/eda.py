"""Sections of the EDA page, their plotly figures and the cached profile builder.

The profile (:func:`quality.eda.profile`) is :func:`st.cache_data` with the shared
:data:`~quality.ui.data.QUERY_TTL_S`, keyed by the DB URL and the dataset id; every section
below only draws from it. Each table of the page has its own CSV download button, and the
whole profile downloads as JSON (:meth:`quality.eda.EdaProfile.as_dict`).

DB trouble goes through :func:`profile_guard`: the standard messages of
:mod:`quality.ui.data`, and a warning (then a stop) for a profile that cannot be built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from quality import eda
from quality.db import aggregates
from quality.errors import DatabaseUnavailableError, EmptyDatabaseError, QualityError
from quality.ui import charts, data, widgets

__all__ = [
    "balance_chart",
    "class_balance_section",
    "coverage_chart",
    "coverage_section",
    "distribution_chart",
    "distributions_section",
    "download_csv",
    "facts_section",
    "headline",
    "json_download",
    "load_profile",
    "missing_heatmap",
    "missing_section",
    "nothing_to_show",
    "profile_guard",
]

_MARGIN = {"l": 10, "r": 10, "t": 30, "b": 10}
_FACT_ICONS = {
    "source_exclusive": "🏥",
    "missing": "🕳️",
    "class_rarity": "⚖️",
    "coverage": "👥",
}
_Y_MODES = {"Images": "n_images", "Share of the source": "share"}


# --------------------------------------------------------------------------- builder


@data.result_cache(ttl=data.QUERY_TTL_S, show_spinner="Profiling the data…")
def _profile(url: str, dataset_id: int | None) -> eda.EdaProfile:
    # eda.profile, or its result computed ahead by the last writer.
    return data.run_query(url, aggregates.get, "eda_profile", dataset_id)


def load_profile(dataset_id: int | None) -> eda.EdaProfile:
    """:func:`quality.eda.profile` of the dataset (None: every image), cached."""
    return _profile(data.db_url(), dataset_id)


@contextlib.contextmanager
def profile_guard() -> Iterator[None]:
    """DB trouble stops the page with the standard message; a profile that cannot be built
    (a :class:`~quality.errors.QualityError` or ``ValueError``) becomes a warning and a stop."""
    try:
        yield
    except EmptyDatabaseError as exc:
        data.show_empty(exc)
    except DatabaseUnavailableError as exc:
        data.show_unavailable(exc)
    except (QualityError, ValueError) as exc:
        st.warning(f"The profile cannot be built: {exc}", icon="⚠️")
        st.stop()


def nothing_to_show(dataset_id: int | None) -> None:
    """Say that the scope holds no image, then stop the page."""
    scope = (
        "This dataset has no images yet (no version, or an empty newest version)"
        if dataset_id is not None
        else "The DB holds no images yet"
    )
    st.info(
        f"{scope} — add some with `quality ingest FOLDER`, or pick another dataset in the sidebar.",
        icon="📈",
    )
    st.stop()


# --------------------------------------------------------------------------- figures


@charts.memo_figure
def distribution_chart(df: pd.DataFrame, title: str, y: str = "n_images") -> go.Figure:
    """Bars of one distribution, coloured by source.

    Parameters
    ----------
    df : a frame of :func:`quality.eda.distribution` (``source, value, n_images, share``).
    title : the axis title of the values.
    y : ``n_images`` (stacked counts) or ``share`` (side by side, share of each source).
    """
    order = list(dict.fromkeys(df["value"]))
    fig = px.bar(
        df,
        x="value",
        y=y,
        color="source",
        category_orders={"value": order, "source": sorted(df["source"].unique())},
        labels={"value": title, "n_images": "Images", "share": "Share of the source"},
        hover_data={"n_images": True, "share": ":.1%"},
    )
    fig.update_layout(
        barmode="stack" if y == "n_images" else "group",
        height=300,
        margin=_MARGIN,
        legend_title_text="Source",
    )
    fig.update_xaxes(type="category")
    if y == "share":
        fig.update_yaxes(tickformat=".0%")
    return fig


@charts.memo_figure
def balance_chart(df: pd.DataFrame, by: str) -> go.Figure:
    """100 % stacked bars of the classes per ``by`` (``source`` or ``split``).

    Parameters
    ----------
    df : rows of :func:`quality.eda.class_balance` for one task.
    by : the column to put on the x axis.
    """
    counts = df.groupby([by, "label"], as_index=False)["n_images"].sum()
    counts["share"] = counts["n_images"] / counts.groupby(by)["n_images"].transform("sum")
    fig = px.bar(
        counts,
        x=by,
        y="share",
        color="label",
        category_orders={"label": sorted(counts["label"].unique())},
        labels={by: by.capitalize(), "share": "Share of the images", "label": "Class"},
        hover_data={"n_images": True, "share": ":.1%"},
    )
    fig.update_layout(barmode="stack", height=320, margin=_MARGIN)
    fig.update_yaxes(tickformat=".0%", range=[0, 1])
    return fig


@charts.memo_figure
def coverage_chart(df: pd.DataFrame) -> go.Figure:
    """Images per number of readers, coloured by source, one panel per split.

    Parameters
    ----------
    df : rows of :func:`quality.eda.annotation_coverage` for one task.
    """
    fig = px.bar(
        df,
        x="readers",
        y="n_images",
        color="source",
        facet_col="split",
        category_orders={
            "readers": list(eda.COVERAGE_BUCKETS),
            "split": sorted(df["split"].unique()),
            "source": sorted(df["source"].unique()),
        },
        labels={"readers": "Readers (doctors)", "n_images": "Images", "source": "Source"},
    )
    fig.update_layout(barmode="stack", height=320, margin=_MARGIN)
    fig.update_xaxes(type="category")
    return fig


@charts.memo_figure
def missing_heatmap(missing: pd.DataFrame, by: str) -> go.Figure:
    """Heatmap of the share missing: fields down, ``by`` (source or week) across.

    Parameters
    ----------
    missing : the frame of :func:`quality.eda.missing_by_source` or
        :func:`quality.eda.missing_by_week`.
    by : ``source`` or ``week``.
    """
    matrix = eda.missing_matrix(missing, by)
    fig = px.imshow(
        matrix,
        zmin=0,
        zmax=1,
        color_continuous_scale="Reds",
        aspect="auto",
        text_auto=".0%",
        labels={"x": by.capitalize(), "y": "Field", "color": "Missing"},
    )
    fig.update_layout(
        height=max(260, 26 * len(matrix) + 80),
        margin=_MARGIN,
        coloraxis_colorbar={"tickformat": ".0%"},
    )
    fig.update_xaxes(type="category", side="top")
    return fig


# --------------------------------------------------------------------------- sections


def download_csv(frame: pd.DataFrame, label: str, *, key: str) -> None:
    """A CSV download button for one table (``eda-<key>.csv``)."""
    widgets.download_button(
        f"⬇️ {label} (CSV)",
        lambda: frame.to_csv(index=False),
        file_name=f"eda-{key.replace('_', '-')}.csv",
        what=f"eda: {label}",
        mime="text/csv",
        key=f"eda_dl_{key}",
        rows=len(frame),
    )


def headline(profile: eda.EdaProfile) -> None:
    """Counts: images, sources, vendors, weeks of study dates, notable facts."""
    dists = profile.distributions

    def n_values(name: str) -> int:
        df = dists.get(name)
        return 0 if df is None else int(df.loc[df["value"] != eda.MISSING, "value"].nunique())

    weeks = dists.get("study_week")
    known = [] if weeks is None else sorted(set(weeks["value"]) - {eda.MISSING})
    cols = st.columns(5)
    cols[0].metric("Images", f"{profile.n_images:,}", border=True)
    cols[1].metric("Sources", f"{len(profile.sources):,}", border=True)
    cols[2].metric("Vendors", f"{n_values('vendor'):,}", help="manufacturer · model", border=True)
    cols[3].metric(
        "Weeks",
        f"{len(known):,}",
        help=f"ISO weeks with a study, {known[0]} … {known[-1]}" if known else None,
        border=True,
    )
    cols[4].metric("Notable facts", f"{len(profile.facts):,}", border=True)


def facts_section(profile: eda.EdaProfile) -> None:
    """The automatically detected notable facts, one line each, and their table."""
    if not profile.facts:
        st.success("Nothing stands out: no rule of the automatic profile fired.", icon="✅")
        return
    lines = [f"- {_FACT_ICONS.get(f.rule, '•')} {f.message}" for f in profile.facts]
    st.markdown("\n".join(lines))
    st.caption(
        "Rules: a value one source has almost alone; missing fields; a class at least "
        f"{eda.RARITY_RATIO:g}× rarer or more common at a source or in a split; images with "
        "fewer than 2 readers (see `quality.eda`)."
    )
    table = pd.DataFrame([dataclasses.asdict(f) for f in profile.facts])
    download_csv(table, "Notable facts", key="facts")


def distributions_section(profile: eda.EdaProfile) -> None:
    """One bar chart per distribution (coloured by source), two per row, with downloads."""
    mode = st.radio(
        "Bars show",
        list(_Y_MODES),
        horizontal=True,
        key="eda_y_mode",
        help="Counts stack the sources; shares put them side by side, each out of its images.",
    )
    y = _Y_MODES[str(mode)]
    items = [(k, v) for k, v in eda.DISTRIBUTIONS.items() if k in profile.distributions]
    for start in range(0, len(items), 2):
        cols = st.columns(2)
        for col, (name, title) in zip(cols, items[start : start + 2], strict=False):
            df = profile.distributions[name]
            with col:
                st.markdown(f"**{title}**")
                if df.empty:
                    st.info("No values.", icon="📊")
                    continue
                st.plotly_chart(
                    distribution_chart(df, title, y),
                    key=f"eda_dist_{name}",
                    config={"displayModeBar": False},
                )
                download_csv(df, title.split(" (")[0], key=f"dist_{name}")


def _task_picker(tasks: list[str], key: str) -> str:
    if len(tasks) == 1:
        st.caption(f"Task **{tasks[0]}**")
        return tasks[0]
    return str(st.selectbox("Task", tasks, key=key))


def class_balance_section(profile: eda.EdaProfile) -> None:
    """Class shares per source and per split for one classification task, and the table."""
    balance = profile.class_balance
    if balance.empty:
        st.info(
            "No labelled image in a classification task of this scope — class balance needs "
            "doctors' labels or gold reference labels.",
            icon="⚖️",
        )
        return
    task = _task_picker(sorted(balance["task"].unique()), "eda_balance_task")
    rows = balance[balance["task"] == task]
    n_gold = int(rows["n_gold"].sum())
    n = int(rows["n_images"].sum())
    st.caption(
        f"{n:,} labelled images: {n_gold:,} by their gold label, {n - n_gold:,} by the "
        f"doctors' majority (`{eda.TIE}`: the most-voted labels tie)."
    )
    left, right = st.columns(2)
    with left:
        st.markdown("**Per source**")
        st.plotly_chart(
            balance_chart(rows, "source"),
            key="eda_balance_source",
            config={"displayModeBar": False},
        )
    with right:
        st.markdown("**Per split**")
        st.plotly_chart(
            balance_chart(rows, "split"),
            key="eda_balance_split",
            config={"displayModeBar": False},
        )
    download_csv(balance, "Class balance", key="class_balance")


def coverage_section(profile: eda.EdaProfile) -> None:
    """Images per number of readers for one task, per split and source, and the table."""
    coverage = profile.coverage
    if coverage.empty:
        st.info("No labeling task covers the images of this scope.", icon="👥")
        return
    task = _task_picker(sorted(coverage["task"].unique()), "eda_coverage_task")
    rows = coverage[coverage["task"] == task]
    st.plotly_chart(coverage_chart(rows), key="eda_coverage", config={"displayModeBar": False})
    download_csv(coverage, "Annotation coverage", key="coverage")


def missing_section(profile: eda.EdaProfile) -> None:
    """Heatmaps of the share missing per field and source, and per field and week."""
    st.caption(
        "Share of the images without each field. `predictions <model> <version>`: no "
        "prediction of that version with a label or a score."
    )
    tab_source, tab_week = st.tabs(["Per source", "Per week"])
    with tab_source:
        st.plotly_chart(
            missing_heatmap(profile.missing_by_source, "source"),
            key="eda_missing_source",
            config={"displayModeBar": False},
        )
        download_csv(profile.missing_by_source, "Missing values per source", key="missing_source")
    with tab_week:
        st.plotly_chart(
            missing_heatmap(profile.missing_by_week, "week"),
            key="eda_missing_week",
            config={"displayModeBar": False},
        )
        download_csv(profile.missing_by_week, "Missing values per week", key="missing_week")


def json_download(profile: eda.EdaProfile) -> None:
    """The whole profile as one JSON document."""
    widgets.download_button(
        "⬇️ Whole profile (JSON)",
        lambda: json.dumps(profile.as_dict(), indent=1),
        file_name="eda-profile.json",
        what="eda profile",
        mime="application/json",
        key="eda_dl_json",
    )
