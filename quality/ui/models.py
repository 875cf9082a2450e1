"""Sections of the Models page (shadow-model comparison and release checklist), and their
cached builders.

:func:`quality.models.compare_versions` bootstraps its confidence intervals, so its result is
:func:`st.cache_data` with a :data:`REPORT_TTL_S` time-to-live, keyed by the DB URL, the two
versions, the dataset, the truth and the bootstrap settings (a :class:`ModelComparison`
pickles: a dataclass of DataFrames). Version lists and problem images use the shared
:data:`~quality.ui.data.QUERY_TTL_S`.

Every step that can find nothing to show stops the page with a plain message: fewer than two
model versions (:func:`version_picker`), and input the comparison rejects
(:func:`input_guard`: no truth labels, a consensus of one annotator, ...).
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from quality import models
from quality.db import aggregates
from quality.errors import DatabaseUnavailableError, EmptyDatabaseError, QualityError
from quality.ui import charts, data, thumbs, widgets

__all__ = [
    "N_BOOT",
    "REPORT_TTL_S",
    "SCATTER_POINTS_MAX",
    "STATUS_ICONS",
    "Choice",
    "checklist",
    "comparison",
    "curves",
    "downloads",
    "flipped_cases",
    "headline",
    "input_guard",
    "latency",
    "per_source",
    "roc_figure",
    "scatter_figure",
    "score_scatter",
    "source_figure",
    "version_picker",
]

REPORT_TTL_S = 600
N_BOOT = aggregates.MODELS_N_BOOT
STATUS_ICONS = {"pass": "✅", "fail": "❌", "inconclusive": "⚠️"}
_ROLE_COLORS = {"baseline": "#4363d8", "candidate": "#e6194b"}
_TRUTH_HELP = {
    "consensus": "Dawid-Skene consensus of every annotator's label (all labelled images)",
    "gold": "the expert panel's gold labels (a subset of the images)",
}
_GALLERY_COLS = 4


@dataclass(frozen=True)
class Choice:
    """The page's picks: baseline and candidate version ids, and the truth."""

    baseline: int
    candidate: int
    truth: str


# --------------------------------------------------------------------------- cached builders


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _versions(url: str, dataset_id: int | None) -> pd.DataFrame:
    return data.run_query(url, models.list_model_versions, dataset_id)


@data.result_cache(ttl=REPORT_TTL_S, show_spinner="Comparing the versions (bootstrap CIs)…")
def _comparison(
    url: str,
    baseline: int,
    candidate: int,
    dataset_id: int | None,
    truth: str,
    n_boot: int,
    seed: int,
) -> models.ModelComparison:
    # models.compare_versions, or its result computed ahead by the last writer.
    return data.run_query(
        url,
        aggregates.get,
        "model_comparison",
        baseline,
        candidate,
        dataset_id,
        truth,
        n_boot,
        seed,
    )


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _problem_images(url: str, dataset_id: int | None) -> list[int]:
    return data.run_query(url, models.problem_images, dataset_id=dataset_id)


def comparison(choice: Choice, dataset_id: int | None) -> models.ModelComparison:
    """:func:`quality.models.compare_versions` of the picks (cached, seed 0)."""
    return _comparison(
        data.db_url(), choice.baseline, choice.candidate, dataset_id, choice.truth, N_BOOT, 0
    )


@contextlib.contextmanager
def input_guard() -> Iterator[None]:
    """DB trouble stops the page with the standard message; input the comparison cannot use
    (a :class:`~quality.errors.QualityError` or ``ValueError``) becomes a warning and stops
    the page."""
    try:
        yield
    except EmptyDatabaseError as exc:
        data.show_empty(exc)
    except DatabaseUnavailableError as exc:
        data.show_unavailable(exc)
    except (QualityError, ValueError) as exc:
        st.warning(f"The versions cannot be compared: {exc}", icon="⚠️")
        st.stop()


# --------------------------------------------------------------------------- pickers


def _seed_state(key: str, options: list[Any], default: Any) -> None:
    if st.session_state.get(key) not in options:
        st.session_state[key] = default


def version_picker(dataset_id: int | None) -> Choice:
    """Pick baseline and candidate (defaults: production vs shadow) and the truth.

    Stops the page with a plain message when fewer than two versions are registered.
    """
    versions = _versions(data.db_url(), dataset_id)
    pair = models.default_pair(versions)
    if pair is None:
        st.info(
            f"Comparing needs two model versions; the database has {len(versions)}. Register "
            "a shadow version and write its predictions (`quality demo` ships `v1` in "
            "production and `v2` in shadow).",
            icon="🤖",
        )
        st.stop()
    ids = [int(i) for i in versions["version_id"]]
    names = {
        int(r["version_id"]): f"{r['model']} {r['version']} · {r['status']} · "
        f"{int(r['n_scored']):,} scored"
        for r in versions.to_dict("records")
    }
    _seed_state("models_baseline", ids, pair[0])
    _seed_state("models_candidate", ids, pair[1])
    _seed_state("models_truth", list(models.TRUTHS), "consensus")
    left, mid, right = st.columns([2, 2, 2])
    baseline = left.selectbox(
        "Baseline (production)", ids, key="models_baseline", format_func=names.__getitem__
    )
    candidate = mid.selectbox(
        "Candidate (shadow)", ids, key="models_candidate", format_func=names.__getitem__
    )
    truth = right.radio(
        "Truth",
        list(models.TRUTHS),
        key="models_truth",
        horizontal=True,
        format_func=lambda t: "doctors' consensus" if t == "consensus" else "gold labels",
        help="; ".join(f"{k}: {v}" for k, v in _TRUTH_HELP.items()),
    )
    if baseline == candidate:
        st.warning("Pick two different versions to compare.", icon="⚠️")
        st.stop()
    return Choice(int(baseline), int(candidate), str(truth))


# --------------------------------------------------------------------------- headline


def _ci(value: float, low: float, high: float, digits: int = 3) -> str:
    if pd.isna(value):
        return "—"
    if pd.isna(low) or pd.isna(high):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def headline(c: models.ModelComparison) -> None:
    """Cases compared, AUC of each version with CI, ΔAUC, agreement and κ."""
    m = c.metrics.set_index("role")
    pct = round(c.confidence * 100)
    cols = st.columns(5)
    cols[0].metric(
        "Images compared",
        f"{c.n_cases:,}",
        help=f"scored by both versions; {c.n_with_truth:,} with a {c.truth} label",
        border=True,
    )
    for col, role, ref in ((cols[1], "baseline", c.baseline), (cols[2], "candidate", c.candidate)):
        col.metric(
            f"AUC {ref.version}",
            "—" if pd.isna(m.at[role, "auc"]) else f"{m.at[role, 'auc']:.3f}",
            help=f"{pct}% CI {_ci(m.at[role, 'auc'], m.at[role, 'auc_low'], m.at[role, 'auc_high'])}"
            f"; AP {_ci(m.at[role, 'ap'], m.at[role, 'ap_low'], m.at[role, 'ap_high'])}",
            border=True,
        )
    d = c.delta_auc
    cols[3].metric(
        "ΔAUC",
        "—" if pd.isna(d.estimate) else f"{d.estimate:+.3f}",
        delta=None if pd.isna(d.low) else f"CI [{d.low:+.3f}, {d.high:+.3f}]",
        delta_color="off",
        help="candidate minus baseline, paired stratified bootstrap",
        border=True,
    )
    cols[4].metric(
        "Label agreement",
        "—" if pd.isna(c.agreement.estimate) else f"{c.agreement.estimate:.1%}",
        delta=None if pd.isna(c.kappa.estimate) else f"κ {_ci(*c.kappa, digits=2)}",
        delta_color="off",
        help=f"same predicted label; Wilson {pct}% CI "
        f"{_ci(*c.agreement)}; Cohen's κ with bootstrap CI",
        border=True,
    )
    missing = max(c.n_scored_baseline, c.n_scored_candidate) - c.n_cases
    if missing > 0:
        st.caption(
            f"{c.baseline.version} scored {c.n_scored_baseline:,} images, "
            f"{c.candidate.version} {c.n_scored_candidate:,}: {missing:,} images lack a score "
            "from one version and are left out."
        )


# --------------------------------------------------------------------------- charts


@charts.memo_figure
def roc_figure(c: models.ModelComparison, kind: str) -> go.Figure:
    """ROC (``kind="roc"``) or precision-recall (``"pr"``) curves of both versions."""
    frame = c.roc if kind == "roc" else c.pr
    x, y = ("fpr", "tpr") if kind == "roc" else ("recall", "precision")
    m = c.metrics.set_index("role")
    fig = go.Figure()
    for role, ref in (("baseline", c.baseline), ("candidate", c.candidate)):
        part = frame[frame["role"] == role]
        value = m.at[role, "auc" if kind == "roc" else "ap"]
        name = f"{ref.version} ({'AUC' if kind == 'roc' else 'AP'} {value:.3f})"
        fig.add_trace(
            go.Scatter(
                x=part[x],
                y=part[y],
                mode="lines",
                name=name,
                line={"color": _ROLE_COLORS[role], "shape": "hv" if kind == "pr" else "linear"},
            )
        )
    if kind == "roc":
        fig.add_trace(
            go.Scatter(
                x=[0, 1], y=[0, 1], mode="lines", name="chance",
                line={"color": "#999", "dash": "dot"},
            )
        )  # fmt: skip
    fig.update_layout(
        height=340,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title="ROC" if kind == "roc" else "Precision-recall",
        xaxis_title="false positive rate" if kind == "roc" else "recall",
        yaxis_title="true positive rate" if kind == "roc" else "precision",
        legend={"orientation": "h", "y": -0.25},
    )
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return fig


def curves(c: models.ModelComparison) -> None:
    """ROC and PR curves side by side (a message when the truth has one class only)."""
    if c.roc.empty:
        st.info(
            f"No ROC curve: the {c.truth} labels of the compared images hold only one class.",
            icon="📉",
        )
        return
    left, right = st.columns(2)
    left.plotly_chart(roc_figure(c, "roc"), key="models_roc", config={"displayModeBar": False})
    right.plotly_chart(roc_figure(c, "pr"), key="models_pr", config={"displayModeBar": False})


SCATTER_POINTS_MAX = 5000
"""The score scatter shows a seeded sample of this many images at most."""


def score_scatter(c: models.ModelComparison) -> None:
    """Candidate vs baseline score per image, coloured by the truth (a seeded sample of
    :data:`SCATTER_POINTS_MAX` images at most: a browser chokes on 10^5 points)."""
    st.plotly_chart(scatter_figure(c), key="models_scatter", config={"displayModeBar": False})
    if len(c.cases) > SCATTER_POINTS_MAX:
        st.caption(f"A random sample of {SCATTER_POINTS_MAX:,} of the {len(c.cases):,} images.")


@charts.memo_figure
def scatter_figure(c: models.ModelComparison) -> go.Figure:
    """The figure of :func:`score_scatter`."""
    cases = c.cases
    if len(cases) > SCATTER_POINTS_MAX:
        cases = cases.sample(n=SCATTER_POINTS_MAX, random_state=0).sort_index()
    truth = cases["y_true"].map({1.0: models.FINDING, 0.0: c.negative_class}).fillna("no truth")
    fig = go.Figure()
    for value, color in (
        (models.FINDING, "#e6194b"),
        (c.negative_class, "#4363d8"),
        ("no truth", "#aaa"),
    ):
        part = cases[truth == value]
        if part.empty:
            continue
        fig.add_trace(
            go.Scattergl(
                x=part["score_baseline"],
                y=part["score_candidate"],
                mode="markers",
                name=value,
                marker={"color": color, "size": 6, "opacity": 0.75},
                customdata=part[["image_id", "source"]],
                hovertemplate="image %{customdata[0]} · %{customdata[1]}<br>"
                f"{c.baseline.version} %{{x:.3f}} → {c.candidate.version} %{{y:.3f}}<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", showlegend=False,
            line={"color": "#999", "dash": "dot"}, hoverinfo="skip",
        )
    )  # fmt: skip
    fig.update_layout(
        height=380,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        xaxis_title=f"{c.baseline.version} score",
        yaxis_title=f"{c.candidate.version} score",
        legend={"orientation": "h", "y": -0.2, "title": {"text": f"{c.truth}:"}},
    )
    fig.update_xaxes(range=[-0.02, 1.02])
    fig.update_yaxes(range=[-0.02, 1.02])
    return fig


@charts.memo_figure
def source_figure(c: models.ModelComparison) -> go.Figure:
    """AUC per source and version with CI error bars."""
    bs = c.by_source
    fig = go.Figure()
    for role, ref in (("baseline", c.baseline), ("candidate", c.candidate)):
        col = f"auc_{role}"
        fig.add_trace(
            go.Bar(
                x=bs["source"],
                y=bs[col],
                name=ref.version,
                marker_color=_ROLE_COLORS[role],
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": (bs[f"{col}_high"] - bs[col]).fillna(0),
                    "arrayminus": (bs[col] - bs[f"{col}_low"]).fillna(0),
                },
            )
        )
    fig.update_layout(
        barmode="group",
        height=340,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        yaxis_title="AUC",
        legend={"orientation": "h", "y": -0.2},
    )
    fig.update_yaxes(range=[0, 1.05])
    return fig


def per_source(c: models.ModelComparison) -> None:
    """The per-source bars and table (AUC per version with CI, ΔAUC with CI)."""
    if c.by_source.empty:
        st.info("No source has images with truth labels.", icon="🏥")
        return
    left, right = st.columns([3, 4])
    left.plotly_chart(source_figure(c), key="models_sources", config={"displayModeBar": False})
    bs = c.by_source
    table = pd.DataFrame(
        {
            "source": bs["source"],
            "images": bs["n"],
            "findings": bs["n_pos"],
            f"AUC {c.baseline.version}": [
                _ci(*r)
                for r in bs[["auc_baseline", "auc_baseline_low", "auc_baseline_high"]].to_numpy()
            ],
            f"AUC {c.candidate.version}": [
                _ci(*r)
                for r in bs[["auc_candidate", "auc_candidate_low", "auc_candidate_high"]].to_numpy()
            ],
            "ΔAUC": [_delta(*r) for r in bs[["delta", "delta_low", "delta_high"]].to_numpy()],
        }
    )
    right.dataframe(table, hide_index=True, key="models_source_table")


def _delta(value: float, low: float, high: float) -> str:
    if pd.isna(value):
        return "—"
    tail = "" if pd.isna(low) else f" [{low:+.3f}, {high:+.3f}]"
    return f"{value:+.3f}{tail}"


# --------------------------------------------------------------------------- flipped cases


def _mark(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return " ✅" if bool(value) else " ❌"


@charts.memo_figure
def _flipped(c: models.ModelComparison) -> pd.DataFrame:
    """:attr:`~quality.models.ModelComparison.flipped`, kept per comparison (shared)."""
    return c.flipped


def flipped_cases(c: models.ModelComparison, *, n_thumbs: int = 8) -> pd.DataFrame:
    """The table of cases whose label flipped, then thumbnails of the first ones.

    Returns
    -------
    DataFrame
        The flipped cases (for the downloads).
    """
    flipped = _flipped(c)
    if flipped.empty:
        st.success("No predicted label changed between the versions.", icon="✅")
        return flipped
    shown = flipped[
        [
            "image_id", "source", "label_baseline", "score_baseline", "label_candidate",
            "score_candidate", "truth_label", "baseline_correct", "candidate_correct",
            "finding_flip",
        ]
    ]  # fmt: skip
    st.dataframe(
        shown,
        hide_index=True,
        key="models_flipped_table",
        height=min(35 * (len(shown) + 1) + 3, 320),
        column_config={
            "image_id": st.column_config.NumberColumn("image", width="small"),
            "label_baseline": c.baseline.version,
            "score_baseline": st.column_config.NumberColumn("score", format="%.3f"),
            "label_candidate": c.candidate.version,
            "score_candidate": st.column_config.NumberColumn("score ", format="%.3f"),
            "truth_label": c.truth,
            "baseline_correct": f"{c.baseline.version} right",
            "candidate_correct": f"{c.candidate.version} right",
            "finding_flip": st.column_config.CheckboxColumn(
                "finding call flipped", help="finding ↔ no finding, not just the finding class"
            ),
        },
    )
    records = flipped.head(n_thumbs).to_dict("records")
    for start in range(0, len(records), _GALLERY_COLS):
        cols = st.columns(_GALLERY_COLS)
        for col, rec in zip(cols, records[start : start + _GALLERY_COLS], strict=False):
            with col, st.container(border=True):
                thumbs.render_thumb(
                    str(rec["uri"]), key=f"models_flip_{rec['image_id']}", height=180
                )
                truth = "—" if pd.isna(rec["truth_label"]) else html.escape(str(rec["truth_label"]))
                st.markdown(
                    f"<div style='font-size:0.85rem'>image {rec['image_id']} · "
                    f"{html.escape(str(rec['source']))}<br>"
                    f"{c.baseline.version} {html.escape(str(rec['label_baseline']))} "
                    f"({rec['score_baseline']:.2f}){_mark(rec['baseline_correct'])} → "
                    f"{c.candidate.version} {html.escape(str(rec['label_candidate']))} "
                    f"({rec['score_candidate']:.2f}){_mark(rec['candidate_correct'])}<br>"
                    f"{c.truth}: <b>{truth}</b></div>",
                    unsafe_allow_html=True,
                )
    if len(flipped) > n_thumbs:
        st.caption(f"Thumbnails of the first {n_thumbs} of {len(flipped)} flipped cases.")
    return flipped


# --------------------------------------------------------------------------- latency


def latency(c: models.ModelComparison) -> None:
    """Median and 95th-percentile latency per version (a message where none is recorded)."""
    lat = c.latency
    if lat["n"].sum() == 0:
        st.info("Neither version recorded a latency (`predictions.latency_ms`).", icon="⏱️")
        return
    cols = st.columns(4)
    for i, rec in enumerate(lat.to_dict("records")):
        if not rec["n"]:
            cols[2 * i].metric(f"{rec['version']} median", "—", border=True)
            continue
        cols[2 * i].metric(f"{rec['version']} median", f"{rec['median_ms']:.0f} ms", border=True)
        cols[2 * i + 1].metric(
            f"{rec['version']} p95",
            f"{rec['p95_ms']:.0f} ms",
            help=f"nearest-rank 95th percentile over {int(rec['n']):,} predictions",
            border=True,
        )


# --------------------------------------------------------------------------- checklist


def checklist(c: models.ModelComparison, dataset_id: int | None) -> pd.DataFrame:
    """The release checklist with ✅ / ❌ / ⚠️, after its two settings.

    Returns
    -------
    DataFrame
        The items (for the downloads).
    """
    left, right = st.columns(2)
    margin = left.number_input(
        "Non-inferiority margin (AUC)", 0.0, 0.2, 0.02, step=0.01, key="models_margin",
        help="A source passes when the lower CI bound of ΔAUC is at least −margin.",
    )  # fmt: skip
    budget = right.number_input(
        "Latency budget, p95 (ms)", 1.0, 100000.0, 250.0, step=10.0, key="models_latency_budget"
    )
    problems = _problem_images(data.db_url(), dataset_id)
    items = models.release_checklist(
        c,
        known_problem_images=problems or None,
        margin=float(margin),
        latency_budget_ms=float(budget),
    )
    n_fail = sum(i.status == "fail" for i in items)
    n_open = sum(i.status == "inconclusive" for i in items)
    if models.checklist_passed(items):
        st.badge(f"READY · {c.candidate.version} passes every item", icon="✅", color="green")
    else:
        st.badge(f"NOT READY · {n_fail} failed, {n_open} inconclusive", icon="🚨", color="red")
    for item in items:
        st.markdown(f"{STATUS_ICONS[item.status]} **{item.title}** — {item.detail}")
        if item.image_ids:
            st.caption(f"images: {', '.join(str(i) for i in item.image_ids)}")
    if not problems:
        st.caption(
            "Known problem images come from `quality score` (defects and OOD); nothing is "
            "scored in this scope, so that item is left out."
        )
    return pd.DataFrame([i.as_dict() for i in items])


# --------------------------------------------------------------------------- downloads


def downloads(tables: dict[str, pd.DataFrame | None], *, stem: str) -> None:
    """One CSV download button per non-empty table (label → frame)."""
    shown = {k: v for k, v in tables.items() if v is not None and not v.empty}
    if not shown:
        return
    cols = st.columns(len(shown))
    for col, (label, frame) in zip(cols, shown.items(), strict=True):
        slug = label.lower().replace(" ", "-")
        widgets.download_button(
            f"⬇️ {label} (CSV)",
            lambda frame=frame: frame.to_csv(index=False),
            file_name=f"{stem}-{slug}.csv",
            what=f"models: {label}",
            mime="text/csv",
            key=f"models_dl_{slug}",
            rows=len(frame),
            container=col,
            width="stretch",
        )
