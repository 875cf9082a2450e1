"""Plotly figures for the pages (pure: DataFrames in, figures out).

Building a plotly figure validates every property and takes 20 to 200 ms, on every rerun of
a page. The builders here (and those of the page modules) are wrapped in
:func:`memo_figure`: a figure is built once per distinct input and then shared, so callers
hand it to ``st.plotly_chart`` and never change it.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

P = ParamSpec("P")
R = TypeVar("R")

FIGURE_TTL_S = 600
"""How long a built figure is kept (its inputs key it, so it is never stale)."""
BOX_POINTS_MAX = 5000
"""Above this many values, :func:`metric_distribution_chart` draws boxes from statistics
computed here instead of sending every value (and a point per image) to the browser."""


_TOKENS: dict[int, str] = {}
_TOKENS_LOCK = threading.Lock()


def identity_token(obj: Any) -> str:
    """A key unique to this object for as long as it lives (then forgotten).

    The big results of the pages are shared objects (:func:`quality.ui.data.result_cache`):
    one object, one content. Hashing them by content costs a deep copy of every frame
    (Streamlit hashes a dataclass through ``dataclasses.asdict``), 0.3 s for a drift report
    of 2·10^5 images on every rerun; their identity is enough.
    """
    key = id(obj)
    with _TOKENS_LOCK:
        token = _TOKENS.get(key)
        if token is None:
            token = uuid.uuid4().hex
            _TOKENS[key] = token
            weakref.finalize(obj, _TOKENS.pop, key, None)
    return token


_BY_IDENTITY = dict.fromkeys(
    (
        "quality.agreement.summary.AgreementSummary",
        "quality.card.DatasetCard",
        "quality.doctors.DoctorReport",
        "quality.drift.DriftReport",
        "quality.eda.EdaProfile",
        "quality.imaging.report.ImageQualityReport",
        "quality.models.ModelComparison",
        "quality.models.Worklist",
    ),
    identity_token,
)


def memo_figure(fn: Callable[P, R]) -> Callable[P, R]:
    """Keep what ``fn`` builds (a figure, or a table derived from a result), keyed by its
    arguments: frames and values by content, the pages' big results by identity
    (:func:`identity_token`). Shared and read-only."""
    return st.cache_resource(  # type: ignore[return-value]
        ttl=FIGURE_TTL_S, max_entries=512, show_spinner=False, hash_funcs=_BY_IDENTITY
    )(fn)


__all__ = [
    "BOX_POINTS_MAX",
    "FIGURE_TTL_S",
    "FLAG_OK",
    "bias_chart",
    "compare_chart",
    "confusion_chart",
    "defect_counts_chart",
    "embedding_map_chart",
    "flag_label",
    "identity_token",
    "images_by_source_chart",
    "ingest_errors_chart",
    "kappa_heatmap",
    "kappa_ranking_chart",
    "memo_figure",
    "metric_distribution_chart",
    "per_class_agreement_chart",
    "recall_chart",
    "speed_chart",
    "weekly_trend_chart",
]


@memo_figure
def images_by_source_chart(df: pd.DataFrame) -> go.Figure:
    """Stacked bars of images per source, one colour per modality.

    Parameters
    ----------
    df : columns ``source, modality, n_images`` (:func:`quality.db.queries.images_by_source`).
    """
    fig = px.bar(
        df,
        x="source",
        y="n_images",
        color="modality",
        labels={"source": "Source", "n_images": "Images", "modality": "Modality"},
    )
    fig.update_layout(barmode="stack", height=320, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


@memo_figure
def ingest_errors_chart(df: pd.DataFrame) -> go.Figure:
    """Horizontal bars of ingest errors per kind.

    Parameters
    ----------
    df : columns ``kind, count`` (:func:`quality.db.queries.ingest_error_summary`).
    """
    fig = px.bar(
        df.sort_values("count"),
        x="count",
        y="kind",
        orientation="h",
        labels={"count": "Files", "kind": "Error kind"},
    )
    fig.update_layout(
        height=max(160, 40 * len(df) + 60), margin={"l": 10, "r": 10, "t": 10, "b": 10}
    )
    return fig


# --------------------------------------------------------------------------- labeling

_MARGIN = {"l": 10, "r": 10, "t": 30, "b": 10}
FLAG_OK = "no flag"
"""Legend entry of the ranking chart for doctors without a flag."""
_FLAG_COLORS = {
    FLAG_OK: "#2e9e5b",
    "low agreement": "#d62728",
    "too fast": "#ff7f0e",
    "bias": "#9467bd",
    "exam": "#8c564b",
}
_OTHER_FLAG_COLOR = "#7f7f7f"


def _err(df: pd.DataFrame, col: str) -> dict[str, object]:
    """Asymmetric error bars from ``<col>_low`` / ``<col>_high`` (none when absent)."""
    low, high = f"{col}_low", f"{col}_high"
    if low not in df or high not in df:
        return {}
    return {
        "type": "data",
        "symmetric": False,
        "array": (df[high] - df[col]).clip(lower=0).tolist(),
        "arrayminus": (df[col] - df[low]).clip(lower=0).tolist(),
        "thickness": 1.2,
        "width": 3,
    }


def _floor(df: pd.DataFrame, col: str) -> float:
    """Lower end of a 0..1 axis: 0, or below it when ``col`` holds a negative value."""
    if col not in df or not df[col].notna().any():
        return 0.0
    return min(0.0, float(df[col].min()) - 0.05)


def flag_label(flags: object) -> str:
    """The headline of a ``flags`` string (``low agreement; bias: over-calls normal``): its
    first flag without the detail after a colon; :data:`FLAG_OK` when empty or missing."""
    if flags is None or (isinstance(flags, float) and pd.isna(flags)) or not str(flags).strip():
        return FLAG_OK
    return str(flags).split(";", 1)[0].split(":", 1)[0].strip()


@memo_figure
def kappa_ranking_chart(team: pd.DataFrame, metric: str = "kappa") -> go.Figure:
    """Doctors ranked by ``metric`` (bars with their CI as error bars), coloured by flag.

    Parameters
    ----------
    team : the report's team table: ``code``, ``metric``, ``<metric>_low``, ``<metric>_high``,
        ``flags`` (one row per annotator, any order).
    metric : the column to rank by.
    """
    df = team.sort_values(metric, ascending=False, na_position="last").copy()
    flags = df["flags"] if "flags" in df else pd.Series("", index=df.index)
    df["flag"] = flags.map(flag_label)
    df["all_flags"] = flags.fillna("").map(lambda f: str(f) or FLAG_OK)
    low, high = f"{metric}_low", f"{metric}_high"
    hover = "%{x}: %{y:.2f}"
    cols = ["all_flags"]
    if low in df and high in df:
        hover += " [%{customdata[1]:.2f}–%{customdata[2]:.2f}]"
        cols += [low, high]
    fig = go.Figure()
    for flag, part in df.groupby("flag", sort=False):
        fig.add_bar(
            x=part["code"],
            y=part[metric],
            name=str(flag),
            marker_color=_FLAG_COLORS.get(str(flag), _OTHER_FLAG_COLOR),
            error_y=_err(part, metric),
            customdata=part[cols].to_numpy(),
            hovertemplate=hover + "<br>%{customdata[0]}<extra></extra>",
        )
    fig.update_xaxes(categoryorder="array", categoryarray=list(df["code"]), title=None)
    fig.update_yaxes(title=f"{metric} (95% CI)", range=[_floor(df, f"{metric}_low"), 1.05])
    fig.update_layout(
        height=340, margin=_MARGIN, legend={"orientation": "h", "y": 1.12, "x": 0}, bargap=0.25
    )
    return fig


@memo_figure
def weekly_trend_chart(weekly: pd.DataFrame, *, overall: float | None = None) -> go.Figure:
    """One doctor's weekly kappa with its CI band (and the doctor's overall kappa, dashed).

    Marker size grows with the week's number of labels: a week of two labels swings widely
    and should not catch the eye like a week of forty.

    Parameters
    ----------
    weekly : ``week, n, kappa, kappa_low, kappa_high`` of one doctor.
    overall : the doctor's kappa over the whole task.
    """
    df = weekly.sort_values("week").copy()
    df["week"] = pd.to_datetime(df["week"])
    fig = go.Figure()
    if {"kappa_low", "kappa_high"} <= set(df.columns):
        # Two traces and fill="tonexty": NaN weeks leave a gap instead of a broken polygon.
        fig.add_scatter(
            x=df["week"], y=df["kappa_low"], mode="lines", line={"width": 0},
            hoverinfo="skip", showlegend=False,
        )  # fmt: skip
        fig.add_scatter(
            x=df["week"], y=df["kappa_high"], mode="lines", line={"width": 0},
            fill="tonexty", fillcolor="rgba(31, 119, 180, 0.18)", hoverinfo="skip",
            name="95% CI",
        )  # fmt: skip
    n = df["n"] if "n" in df else pd.Series(1, index=df.index)
    fig.add_scatter(
        x=df["week"],
        y=df["kappa"],
        mode="lines+markers",
        line={"color": "#1f77b4"},
        marker={"size": (4 + 2 * n.clip(lower=1) ** 0.5).clip(upper=18).tolist()},
        customdata=n.to_numpy()[:, None],
        hovertemplate="week of %{x|%Y-%m-%d}: κ %{y:.2f} (%{customdata[0]} labels)<extra></extra>",
        name="weekly κ",
    )
    if overall is not None and not pd.isna(overall):
        fig.add_hline(y=overall, line_dash="dash", line_color="gray",
                      annotation_text=f"overall {overall:.2f}", annotation_position="bottom right")  # fmt: skip
    fig.update_yaxes(title="Cohen's κ vs consensus", range=[_floor(df, "kappa_low"), 1.05])
    fig.update_xaxes(title=None)
    fig.update_layout(height=320, margin=_MARGIN, legend={"orientation": "h", "y": 1.12, "x": 0})
    return fig


@memo_figure
def confusion_chart(matrix: pd.DataFrame) -> go.Figure:
    """A doctor's confusion matrix: rows the consensus label, columns the doctor's label."""
    fig = px.imshow(
        matrix,
        text_auto=True,
        color_continuous_scale="Blues",
        labels={"x": "doctor's label", "y": "consensus", "color": "items"},
        aspect="auto",
    )
    fig.update_layout(height=320, margin=_MARGIN, coloraxis_showscale=False)
    fig.update_xaxes(side="top")
    return fig


@memo_figure
def recall_chart(per_class: pd.DataFrame) -> go.Figure:
    """Per-class recall of one doctor with CIs (``cls, recall, recall_low, recall_high, n``)."""
    fig = go.Figure(
        go.Bar(
            x=per_class["cls"],
            y=per_class["recall"],
            error_y=_err(per_class, "recall"),
            marker_color="#1f77b4",
            customdata=per_class[["n"]].to_numpy() if "n" in per_class else None,
            hovertemplate="%{x}: recall %{y:.2f} (n = %{customdata[0]})<extra></extra>",
        )
    )
    fig.update_yaxes(title="recall (95% CI)", range=[0, 1.05])
    fig.update_layout(height=300, margin=_MARGIN)
    return fig


@memo_figure
def bias_chart(bias: pd.DataFrame) -> go.Figure:
    """How often one doctor calls each class, minus how often consensus does (share points).

    Parameters
    ----------
    bias : ``cls, doctor_share, consensus_share, diff`` of one doctor.
    """
    colors = ["#d62728" if d > 0 else "#1f77b4" for d in bias["diff"].fillna(0)]
    fig = go.Figure(
        go.Bar(
            x=bias["cls"],
            y=bias["diff"],
            marker_color=colors,
            customdata=bias[["doctor_share", "consensus_share"]].to_numpy(),
            hovertemplate="%{x}: doctor %{customdata[0]:.0%} vs consensus %{customdata[1]:.0%}"
            "<extra></extra>",
        )
    )
    fig.add_hline(y=0, line_color="gray")
    fig.update_yaxes(title="over (+) / under (−) calling", tickformat="+.0%")
    fig.update_layout(height=300, margin=_MARGIN)
    return fig


@memo_figure
def speed_chart(team: pd.DataFrame, code: str) -> go.Figure:
    """Median labeling time of every annotator, ``code`` highlighted, team median dashed."""
    df = team.sort_values("median_duration_s")
    colors = ["#ff7f0e" if c == code else "#c7c7c7" for c in df["code"]]
    fig = go.Figure(
        go.Bar(
            x=df["code"],
            y=df["median_duration_s"],
            marker_color=colors,
            hovertemplate="%{x}: median %{y:.1f} s<extra></extra>",
        )
    )
    median = float(team["median_duration_s"].median())
    if not pd.isna(median):
        fig.add_hline(y=median, line_dash="dash", line_color="gray",
                      annotation_text=f"team median {median:.0f} s")  # fmt: skip
    fig.update_yaxes(title="median seconds per label")
    fig.update_xaxes(title=None)
    fig.update_layout(height=300, margin=_MARGIN)
    return fig


@memo_figure
def compare_chart(team: pd.DataFrame, codes: list[str], metrics: list[str]) -> go.Figure:
    """Grouped bars of ``metrics`` (with CIs where the team table has them) for ``codes``."""
    fig = go.Figure()
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
    by_code = team.set_index("code")
    for i, code in enumerate(codes):
        row = by_code.loc[[code]]
        long = pd.DataFrame(
            {
                "metric": metrics,
                "value": [float(row[m].iloc[0]) for m in metrics],
                "low": [float(row[f"{m}_low"].iloc[0]) if f"{m}_low" in row else float("nan")
                        for m in metrics],
                "high": [float(row[f"{m}_high"].iloc[0]) if f"{m}_high" in row else float("nan")
                         for m in metrics],
            }
        )  # fmt: skip
        fig.add_bar(
            x=long["metric"],
            y=long["value"],
            name=code,
            marker_color=palette[i % len(palette)],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": (long["high"] - long["value"]).clip(lower=0).tolist(),
                "arrayminus": (long["value"] - long["low"]).clip(lower=0).tolist(),
                "thickness": 1.2,
                "width": 3,
            },
            hovertemplate=f"{code} · %{{x}}: %{{y:.2f}}<extra></extra>",
        )
    fig.update_layout(barmode="group", height=340, margin=_MARGIN,
                      legend={"orientation": "h", "y": 1.12, "x": 0})  # fmt: skip
    fig.update_yaxes(range=[0, 1.05])
    return fig


@memo_figure
def kappa_heatmap(kappa: pd.DataFrame, n_shared: pd.DataFrame | None = None) -> go.Figure:
    """Pairwise doctor × doctor kappa; NaN cells (too few shared items) stay blank.

    Parameters
    ----------
    kappa : codes × codes Cohen's kappa, NaN where a pair shares too few items.
    n_shared : codes × codes number of items both labelled (shown on hover).
    """
    z = kappa.astype(float)
    n = (
        n_shared.reindex(index=z.index, columns=z.columns)
        if n_shared is not None
        else pd.DataFrame(float("nan"), index=z.index, columns=z.columns)
    )
    text = z.map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    fig = go.Figure(
        go.Heatmap(
            z=z.to_numpy(),
            x=[str(c) for c in z.columns],
            y=[str(c) for c in z.index],
            text=text.to_numpy(),
            texttemplate="%{text}",
            customdata=n.to_numpy(),
            hovertemplate="%{y} × %{x}<br>κ = %{z:.2f}<br>shared items: %{customdata}"
            "<extra></extra>",
            colorscale="RdYlGn",
            zmin=0.0,
            zmax=1.0,
            hoverongaps=False,
            colorbar={"title": {"text": "κ"}, "thickness": 12},
        )
    )
    side = max(360, 30 * len(z) + 90)
    fig.update_layout(height=side, margin=_MARGIN)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(side="top")
    return fig


@memo_figure
def per_class_agreement_chart(per_class: pd.DataFrame) -> go.Figure:
    """Specific agreement and one-vs-rest kappa per class (grouped bars).

    Parameters
    ----------
    per_class : ``cls, specific_agreement, kappa_one_vs_rest, n``.
    """
    fig = go.Figure()
    for col, name, color in (
        ("specific_agreement", "specific agreement", "#1f77b4"),
        ("kappa_one_vs_rest", "κ one-vs-rest", "#ff7f0e"),
    ):
        if col in per_class:
            fig.add_bar(
                x=per_class["cls"],
                y=per_class[col],
                name=name,
                marker_color=color,
                customdata=per_class[["n"]].to_numpy() if "n" in per_class else None,
                hovertemplate=f"%{{x}} · {name}: %{{y:.2f}} (n = %{{customdata[0]}})"
                "<extra></extra>",
            )
    fig.update_layout(barmode="group", height=360, margin=_MARGIN,
                      legend={"orientation": "h", "y": 1.1, "x": 0})  # fmt: skip
    fig.update_yaxes(range=[_floor(per_class, "kappa_one_vs_rest"), 1.05])

    return fig


# --------------------------------------------------------------------------- image quality

_OOD_COLORS = {"OOD": "#d62728", "in-distribution": "#9fb7cf", "not scored": "#c7c7c7"}


@memo_figure
def metric_distribution_chart(values: pd.DataFrame, by: str, metric: str) -> go.Figure:
    """Box plots of one metric per group, every image a point beside its box.

    Above :data:`BOX_POINTS_MAX` values the boxes are drawn from quartiles and Tukey fences
    (the furthest values within 1.5 IQR, as plotly draws them) computed here, without the
    points: the browser gets a few numbers per group instead of every value.

    Parameters
    ----------
    values : ``image_id, <by>, value`` (:func:`quality.imaging.report.metric_values`).
    by : the group column (``source``, ``manufacturer`` or ``modality``).
    metric : the metric's name, for the axis title.
    """
    df = values.sort_values(by)
    if len(df) > BOX_POINTS_MAX:
        return _summary_boxes(df, by, metric)
    fig = px.box(
        df,
        x=by,
        y="value",
        color=by,
        points="all",
        hover_data={"image_id": True},
        labels={by: by.capitalize(), "value": metric},
    )
    fig.update_traces(marker={"size": 4, "opacity": 0.6}, jitter=0.35)
    fig.update_layout(height=340, margin=_MARGIN, showlegend=False)
    return fig


def _summary_boxes(df: pd.DataFrame, by: str, metric: str) -> go.Figure:
    fig = go.Figure()
    for name, group in df.groupby(by, sort=True):
        v = group["value"].dropna().to_numpy(dtype=np.float64)
        if not len(v):
            continue
        q1, median, q3 = np.percentile(v, [25, 50, 75])
        iqr = q3 - q1
        low, high = v[v >= q1 - 1.5 * iqr].min(), v[v <= q3 + 1.5 * iqr].max()
        fig.add_trace(
            go.Box(
                x=[str(name)],
                q1=[q1],
                median=[median],
                q3=[q3],
                lowerfence=[low],
                upperfence=[high],
                name=f"{name} ({len(v):,})",
                boxpoints=False,
            )
        )
    fig.update_xaxes(title=by.capitalize())
    fig.update_yaxes(title=metric)
    fig.update_layout(height=340, margin=_MARGIN, showlegend=False)
    return fig


@memo_figure
def defect_counts_chart(defects: pd.DataFrame) -> go.Figure:
    """Horizontal bars of images per defect type (``defect_type, n_images``)."""
    df = defects.sort_values("n_images")
    colors = ["#2e9e5b" if d == "clean" else "#d62728" for d in df["defect_type"]]
    fig = go.Figure(
        go.Bar(
            x=df["n_images"],
            y=df["defect_type"],
            orientation="h",
            marker_color=colors,
            hovertemplate="%{y}: %{x} images<extra></extra>",
        )
    )
    fig.update_xaxes(title="images")
    fig.update_layout(height=max(160, 28 * len(df) + 60), margin=_MARGIN)
    return fig


@memo_figure
def embedding_map_chart(points: pd.DataFrame, color: str) -> go.Figure:
    """The 2-D PCA map, one point per image, coloured by ``color``; ``customdata[0]`` is the
    image id (what a click returns).

    Parameters
    ----------
    points : :attr:`quality.imaging.report.Projection.points`.
    color : ``source``, ``manufacturer``, ``modality``, ``defect_type`` or ``ood``.
    """
    kwargs: dict[str, object] = {}
    if color == "ood":
        kwargs["color_discrete_map"] = _OOD_COLORS
    fig = px.scatter(
        points,
        x="x",
        y="y",
        color=color,
        custom_data=["image_id", "defect_type", "quality_score", "source"],
        labels={"x": "PC 1", "y": "PC 2", color: color.replace("_", " ")},
        **kwargs,  # type: ignore[arg-type]
    )
    fig.update_traces(
        marker={"size": 8, "opacity": 0.85, "line": {"width": 0.5, "color": "white"}},
        hovertemplate="image %{customdata[0]} · %{customdata[3]}<br>%{customdata[1]} · "
        "quality %{customdata[2]:.2f}<extra></extra>",
    )
    fig.update_layout(
        height=480,
        margin=_MARGIN,
        legend={"orientation": "h", "y": 1.08, "x": 0},
        clickmode="event+select",
    )
    return fig
