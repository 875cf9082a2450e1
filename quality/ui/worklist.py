"""Sections of the Labeling-worklist page (active learning), and their cached builders.

:func:`quality.models.build_worklist` results are :func:`st.cache_data` with the shared
:data:`~quality.ui.data.QUERY_TTL_S`, keyed by the DB URL, the dataset and every setting
(version, strategy, budget, task, pool, seed, embeddings folder), so a new setting computes a
new list and the same settings never rank twice within the time-to-live.

A setting the ranking cannot use (``diversity`` before ``quality score``, ``committee`` with
one version, a dataset without a version) becomes a warning, not a traceback
(:func:`input_guard`).
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from quality import models
from quality.db import aggregates
from quality.errors import DatabaseUnavailableError, EmptyDatabaseError, QualityError
from quality.ui import charts, data, thumbs, widgets
from quality.ui.image_quality import embeddings_dir

__all__ = [
    "STRATEGY_HELP",
    "Settings",
    "class_mix",
    "class_mix_figure",
    "controls",
    "download",
    "gallery",
    "headline",
    "input_guard",
    "ranked_table",
    "worklist",
]

STRATEGY_HELP = {
    "entropy": "most uncertain first: entropy of the version's score",
    "margin": "smallest margin between the two classes first",
    "committee": "where the model's versions disagree most (mean KL to their consensus)",
    "diversity": "k-center greedy on the CNN embeddings: cover what is not labelled yet",
    "random": "a seeded random order: the baseline to beat",
}
POOL_LABELS = {
    "unannotated": "no annotation in the task",
    "no_gold": "no gold label (expert review)",
}
_GALLERY_COLS = 4


@dataclass(frozen=True)
class Settings:
    """The page's picks for :func:`quality.models.build_worklist`."""

    version_id: int
    strategy: str
    budget: int
    task_id: int
    pool: str
    seed: int


# --------------------------------------------------------------------------- cached builders


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _versions(url: str, dataset_id: int) -> pd.DataFrame:
    return data.run_query(url, models.list_model_versions, dataset_id)


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _pool_sizes(url: str, dataset_id: int, task_id: int) -> dict[str, int]:
    return data.run_query(url, models.pool_sizes, dataset_id, task_id)


@data.result_cache(ttl=data.QUERY_TTL_S, show_spinner="Ranking the unlabeled images…")
def _worklist(
    url: str, dataset_id: int, settings: Settings, emb_dir: str | None
) -> models.Worklist:
    # models.build_worklist, or the default list ranked ahead by the last writer.
    return data.run_query(
        url,
        aggregates.get,
        "worklist",
        dataset_id,
        settings.version_id,
        settings.strategy,
        settings.budget,
        settings.task_id,
        settings.pool,
        settings.seed,
        emb_dir,
    )


def worklist(dataset_id: int, settings: Settings) -> models.Worklist:
    """:func:`quality.models.build_worklist` for the settings (cached)."""
    return _worklist(data.db_url(), dataset_id, settings, embeddings_dir())


@contextlib.contextmanager
def input_guard() -> Iterator[None]:
    """DB trouble stops the page with the standard message; settings the ranking cannot use
    become a warning and stop the page."""
    try:
        yield
    except EmptyDatabaseError as exc:
        data.show_empty(exc)
    except DatabaseUnavailableError as exc:
        data.show_unavailable(exc)
    except (QualityError, ValueError) as exc:
        st.warning(f"No worklist with these settings: {exc}", icon="⚠️")
        st.stop()


# --------------------------------------------------------------------------- controls


def _seed_state(key: str, options: list[object], default: object) -> None:
    if st.session_state.get(key) not in options:
        st.session_state[key] = default


def controls(dataset_id: int) -> Settings:
    """Model version (default: production), strategy, budget, task, pool and seed.

    Stops the page with a plain message when no model version or no task exists.
    """
    url = data.db_url()
    versions = _versions(url, dataset_id)
    if versions.empty:
        st.info(
            "No model version is registered: the worklist ranks images by a model's scores. "
            "Write a model version's predictions first (`quality demo` ships two).",
            icon="🤖",
        )
        st.stop()
    tasks = data.list_tasks(dataset_id)
    if tasks.empty:
        st.info("This dataset has no labeling task, so nothing is missing a label.", icon="📝")
        st.stop()
    ids = [int(i) for i in versions["version_id"]]
    rows = {int(r["version_id"]): r for r in versions.to_dict("records")}
    # The defaults of models.worklist_defaults, which quality.db.aggregates ranks ahead.
    _seed_state("wl_version", ids, models.default_version(versions))
    top = st.columns([3, 2, 1, 1])
    version_id = top[0].selectbox(
        "Model version",
        ids,
        key="wl_version",
        format_func=lambda i: f"{rows[i]['model']} {rows[i]['version']} · {rows[i]['status']}",
    )
    _seed_state("wl_strategy", list(models.STRATEGIES), models.WORKLIST_STRATEGY)
    strategy = top[1].selectbox(
        "Strategy",
        list(models.STRATEGIES),
        key="wl_strategy",
        help="; ".join(f"{k}: {v}" for k, v in STRATEGY_HELP.items()),
    )
    budget = top[2].number_input(
        "Budget", 1, 5000, models.WORKLIST_BUDGET, step=10, key="wl_budget"
    )
    seed = top[3].number_input("Seed", 0, 2**31 - 1, models.WORKLIST_SEED, step=1, key="wl_seed")

    task_ids = [int(t) for t in tasks["id"]]
    task_names = dict(zip(task_ids, tasks["name"], strict=True))
    model_task = rows[int(version_id)]["task_id"]
    model_task = None if pd.isna(model_task) else int(model_task)
    _seed_state("wl_task", task_ids, models.default_task(model_task, task_ids))
    low = st.columns([2, 3])
    task_id = low[0].selectbox("Task", task_ids, key="wl_task", format_func=lambda t: task_names[t])
    sizes = _pool_sizes(url, dataset_id, int(task_id))
    pools = list(models.POOLS)
    _seed_state("wl_pool", pools, models.default_pool(sizes))
    pool = low[1].radio(
        "Unlabeled means",
        pools,
        key="wl_pool",
        horizontal=True,
        format_func=lambda p: f"{POOL_LABELS[p]} ({sizes[p]:,})",
    )
    return Settings(int(version_id), str(strategy), int(budget), int(task_id), str(pool), int(seed))


# --------------------------------------------------------------------------- sections


def headline(w: models.Worklist) -> None:
    """Pool size, how many could be ranked, the list's length and its expected findings."""
    if w.n_pool == 0:
        other = POOL_LABELS["no_gold" if w.pool == "unannotated" else "unannotated"]
        st.info(
            f"Every image of the dataset has a label in task **{w.task_name}** "
            f"({POOL_LABELS[w.pool]}): nothing to rank. Try *{other}*.",
            icon="🎉",
        )
        st.stop()
    expected = w.class_mix.loc[
        (w.class_mix["kind"] == "expected") & (w.class_mix["class"] == models.FINDING), "n"
    ]
    cols = st.columns(4)
    cols[0].metric("Unlabeled images", f"{w.n_pool:,}", help=POOL_LABELS[w.pool], border=True)
    cols[1].metric(
        "Rankable",
        f"{w.n_ranked:,}",
        help="with what the strategy needs: a score, scores of two versions, or an embedding",
        border=True,
    )
    cols[2].metric("In the worklist", f"{len(w.items):,}", border=True)
    cols[3].metric(
        "Expected findings",
        "—" if expected.empty else f"{float(expected.iloc[0]):.1f}",
        help="sum of the model's finding probabilities over the worklist",
        border=True,
    )
    if w.n_ranked < w.n_pool:
        st.caption(
            f"{w.n_pool - w.n_ranked:,} unlabeled images cannot be ranked by "
            f"**{w.strategy}** (no score from this version, or no embedding)."
        )


def ranked_table(w: models.Worklist) -> None:
    """The ranked images (rank, image, source, split, score, label, priority)."""
    if w.items.empty:
        st.info("No unlabeled image can be ranked with this strategy.", icon="📝")
        return
    shown = w.items.drop(columns=["uri", "sop_uid"])
    st.dataframe(
        shown,
        hide_index=True,
        key="wl_table",
        height=min(35 * (len(shown) + 1) + 3, 420),
        column_config={
            "rank": st.column_config.NumberColumn("rank", width="small"),
            "image_id": st.column_config.NumberColumn("image", width="small"),
            "score": st.column_config.NumberColumn("score", format="%.3f"),
            "predicted_label": "predicted",
            "priority": st.column_config.NumberColumn(
                "priority", format="%.3f", help=STRATEGY_HELP[w.strategy]
            ),
            "entropy": st.column_config.NumberColumn("entropy", format="%.3f"),
            "margin": st.column_config.NumberColumn("margin", format="%.3f"),
        },
    )


def gallery(w: models.Worklist, *, n: int = 8) -> None:
    """Thumbnails of the first ``n`` images of the list."""
    records = w.items.head(n).to_dict("records")
    for start in range(0, len(records), _GALLERY_COLS):
        cols = st.columns(_GALLERY_COLS)
        for col, rec in zip(cols, records[start : start + _GALLERY_COLS], strict=False):
            with col, st.container(border=True):
                thumbs.render_thumb(str(rec["uri"]), key=f"wl_thumb_{rec['image_id']}", height=180)
                score = "—" if pd.isna(rec["score"]) else f"{rec['score']:.2f}"
                label = html.escape(str(rec["predicted_label"] or "—"))
                st.markdown(
                    f"<div style='font-size:0.85rem'>#{rec['rank']} · image {rec['image_id']} · "
                    f"{html.escape(str(rec['source']))}<br>score {score} · {label}</div>",
                    unsafe_allow_html=True,
                )


@charts.memo_figure
def class_mix_figure(w: models.Worklist) -> go.Figure:
    """Bars of the expected (from scores) and predicted (from labels) class counts."""
    mix = w.class_mix
    fig = go.Figure()
    for kind, color in (("expected", "#4363d8"), ("predicted", "#f58231")):
        part = mix[mix["kind"] == kind]
        fig.add_trace(
            go.Bar(
                x=part["class"], y=part["n"], name=kind, marker_color=color,
                hovertemplate="%{x}: %{y:.1f}<extra>" + kind + "</extra>",
            )
        )  # fmt: skip
    fig.update_layout(
        barmode="group",
        height=300,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        yaxis_title="images",
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def class_mix(w: models.Worklist) -> None:
    """The expected class mix of the worklist as a chart."""
    if w.items.empty:
        return
    st.plotly_chart(class_mix_figure(w), key="wl_mix", config={"displayModeBar": False})
    st.caption(
        "Expected: the sum of each class's probability from the model's scores (finding = "
        "any class but the negative one). Predicted: the model's own labels."
    )


def download(w: models.Worklist) -> None:
    """The CSV worklist for the labeling team."""
    if w.items.empty:
        return
    widgets.download_button(
        "⬇️ Worklist (CSV)",
        w.to_csv,
        file_name=f"worklist-{w.task_name}-{w.model_version.version}-{w.strategy}.csv",
        what="labeling worklist",
        mime="text/csv",
        key="wl_download",
        rows=len(w.items),
    )
