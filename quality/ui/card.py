"""Sections of the Dataset card page, and their cached builders.

:func:`quality.card.build_card` (read through :func:`quality.db.aggregates.get`: computed
ahead by the writers while its inputs are unchanged; a shared
:func:`~quality.ui.data.result_cache`), :func:`quality.snapshot.list_versions` and
:func:`quality.snapshot.diff_versions` are cached with the shared
:data:`~quality.ui.data.QUERY_TTL_S`, keyed by the DB URL, the dataset and the versions.
The two writers of the page (:func:`editor` saves the free-text fields, :func:`snapshot_form`
freezes a version) are form callbacks: they run before the page reruns, uncached and in their
own committed session, drop the cached results, and leave a one-off message that
:func:`show_flash` shows on that rerun, so the card already shows what they did.

DB trouble goes through :func:`guard`: the standard messages of :mod:`quality.ui.data` for an
unreachable or empty DB, and ``st.error`` naming the problem for any other domain error (an
outdated schema, an unknown version), instead of a traceback.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from quality.card import (
    CARD_FIELDS,
    DatasetCard,
    card_markdown,
    card_status,
    save_card_fields,
)
from quality.db import aggregates
from quality.errors import DatabaseUnavailableError, EmptyDatabaseError, QualityError
from quality.snapshot import SnapshotResult, VersionDiff, diff_versions, list_versions, snapshot
from quality.ui import charts, data, widgets

__all__ = [
    "STATUS_BADGES",
    "class_balance_chart",
    "downloads",
    "editor",
    "get_card",
    "guard",
    "headline",
    "rendered",
    "require_dataset",
    "show_charts",
    "show_flash",
    "snapshot_form",
    "sources_chart",
    "version_picker",
    "versions",
    "versions_section",
]

STATUS_BADGES: dict[str, tuple[str, str]] = {
    "ok": ("green", "✅"),
    "failing": ("red", "🚨"),
    "stale": ("orange", "🕰️"),
    "no-checks": ("gray", "⚪"),
}
_FLASH = "card_flash"
_CHART_CONFIG = {"displayModeBar": False}
T = TypeVar("T")


# --------------------------------------------------------------------------- cached builders


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _versions(url: str, dataset_id: int) -> pd.DataFrame:
    return data.run_query(url, list_versions, dataset_id)


@data.result_cache(ttl=data.QUERY_TTL_S, show_spinner="Building the dataset card…")
def _card(url: str, dataset_id: int, version: str | None) -> DatasetCard:
    # build_card, or its result computed ahead by the last writer (clock fields brought to now).
    return data.run_query(url, aggregates.get, "card", dataset_id, version)


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _diff(url: str, dataset_id: int, old: str, new: str) -> VersionDiff:
    return data.run_query(url, diff_versions, dataset_id, old, new)


def versions(dataset_id: int) -> pd.DataFrame:
    """:func:`quality.snapshot.list_versions` (cached)."""
    return _versions(data.db_url(), dataset_id)


def get_card(dataset_id: int, version: str | None) -> DatasetCard:
    """:func:`quality.card.build_card` (cached)."""
    return _card(data.db_url(), dataset_id, version)


def _write(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a writer in its own committed session on the read-write DB, then drop the cached
    query results."""
    result = data.run_write(fn, *args, **kwargs)
    data.clear_results()
    return result


# --------------------------------------------------------------------------- guards


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """DB trouble and domain errors become a plain message and stop the page."""
    try:
        yield
    except EmptyDatabaseError as exc:
        data.show_empty(exc)
    except DatabaseUnavailableError as exc:
        data.show_unavailable(exc)
    except QualityError as exc:
        st.error(f"The dataset card cannot be shown: {exc}", icon="🚫")
        st.stop()


def require_dataset(dataset_id: int | None) -> int:
    """The picked dataset, or a hint to pick one (and a stop) for "All images"."""
    if dataset_id is None:
        st.info("A card describes one data product: pick a dataset in the sidebar.", icon="🗂️")
        st.stop()
    return int(dataset_id)


def show_flash() -> None:
    """The message a writer's callback left for this run (shown once)."""
    flash = st.session_state.pop(_FLASH, None)
    if not flash:
        return
    kind, text = flash
    if kind == "success":
        st.success(text, icon="✅")
    elif kind == "error":
        st.error(text, icon="🚫")
    else:
        st.info(text, icon="ℹ️")


# --------------------------------------------------------------------------- header


def version_picker(table: pd.DataFrame) -> str | None:
    """Pick the version the card describes (newest first); None when there is none."""
    if table.empty:
        return None
    names = [str(v) for v in table["version"]]
    key = "card_version"
    if st.session_state.get(key) not in names:
        st.session_state[key] = names[0]
    sizes = dict(zip(names, table["n_items"], strict=True))
    return str(
        st.selectbox(
            "Version",
            names,
            key=key,
            format_func=lambda v: (
                f"{v} · {int(sizes[v]):,} images" + (" (newest)" if v == names[0] else "")
            ),
            help="The version the card describes; versions are immutable snapshots.",
        )
    )


def headline(card: DatasetCard) -> None:
    """Status badge, version, freshness and the main counts."""
    color, icon = STATUS_BADGES.get(card.status, STATUS_BADGES["no-checks"])
    version = card.version.version if card.version else "no version"
    left, right = st.columns([1, 4])
    with left:
        st.badge(f"status: {card.status}", icon=icon, color=color)  # type: ignore[arg-type]
    with right:
        age = "" if card.age_days is None else f" · {card.age_days:.0f} days since last update"
        digest = f" · hash `{card.version.content_hash[:12]}…`" if card.version else ""
        st.caption(
            f"**{card.name}** {version}{digest} · {card.freshness}{age} · owner "
            f"{card.owner or 'not set'} · license {card.license or 'not set'}"
        )
    for warning in card.warnings:
        st.warning(warning, icon="⚠️")
    c = card.counts
    cols = st.columns(6)
    for col, (label, value) in zip(
        cols,
        (
            ("Images", c["images"]),
            ("Studies", c["studies"]),
            ("Patients", c["patients"]),
            ("Sources", c["sources"]),
            ("Annotations", c["annotations"]),
            ("Versions", len(card.versions)),
        ),
        strict=True,
    ):
        col.metric(label, f"{value:,}", border=True)


# --------------------------------------------------------------------------- charts


@charts.memo_figure
def class_balance_chart(balance: pd.DataFrame, task: str) -> go.Figure:
    """Stacked bars: images per split, one colour per class, for one task.

    Parameters
    ----------
    balance : ``task, split, label, n_images`` (:attr:`DatasetCard.class_balance`).
    task : the task shown.
    """
    rows = balance.loc[balance["task"] == task]
    fig = px.bar(
        rows,
        x="split",
        y="n_images",
        color="label",
        barmode="stack",
        labels={"n_images": "images", "label": "class"},
        category_orders={"split": ["train", "val", "test"]},
    )
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


@charts.memo_figure
def sources_chart(sources: pd.DataFrame) -> go.Figure:
    """Bars of images per source, coloured by vendor (:attr:`DatasetCard.sources`)."""
    fig = px.bar(
        sources,
        x="source",
        y="n_images",
        color="manufacturer",
        hover_data=["n_studies", "n_patients"],
        labels={"n_images": "images", "manufacturer": "vendor"},
    )
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 10, "b": 10})
    return fig


def show_charts(card: DatasetCard) -> None:
    """Class balance per split (a task picker when there are several) and sources."""
    left, right = st.columns(2)
    with left:
        st.markdown("**Class balance per split**")
        tasks = list(dict.fromkeys(card.class_balance["task"]))
        if not tasks:
            st.info("No classification labels to balance.", icon="🏷️")
        else:
            task = tasks[0]
            if len(tasks) > 1:
                task = st.selectbox("Task", tasks, key="card_balance_task")
            st.plotly_chart(
                class_balance_chart(card.class_balance, str(task)),
                key="card_balance",
                config=_CHART_CONFIG,
            )
    with right:
        st.markdown("**Images per source**")
        if card.sources.empty:
            st.info("No images in this version.", icon="🖼️")
        else:
            st.plotly_chart(sources_chart(card.sources), key="card_sources", config=_CHART_CONFIG)


def rendered(card: DatasetCard) -> str:
    """The card's Markdown body, with its YAML front matter in an expander.

    Returns
    -------
    str
        The whole Markdown document (for the download).
    """
    markdown = card_markdown(card)
    _, front, body = markdown.split("---\n", 2)
    with st.expander("Front matter (YAML)"):
        st.code(front, language="yaml")
    st.markdown(body)
    return markdown


# --------------------------------------------------------------------------- writers


def _field_key(dataset_id: int, name: str) -> str:
    return f"card_field_{dataset_id}_{name}"


def _save_fields(dataset_id: int) -> None:
    """Form callback (runs before the rerun): save the text areas' values."""
    values = {
        name: str(st.session_state.get(_field_key(dataset_id, name)) or "") for name in CARD_FIELDS
    }
    try:
        _write(save_card_fields, dataset_id, values)
    except QualityError as exc:
        st.session_state[_FLASH] = ("error", f"Not saved: {exc}")
        return
    st.session_state[_FLASH] = ("success", "Saved the card's text.")


def editor(card: DatasetCard) -> None:
    """A form for the owner-written fields; its callback saves them before the rerun."""
    st.caption(
        "Everything else on the card is computed from the database. These fields are the "
        "owner's words; an empty field is shown as not documented."
    )
    with st.form("card_fields_form"):
        for name, spec in CARD_FIELDS.items():
            st.text_area(
                spec.title,
                value=card.fields.get(name, ""),
                help=spec.prompt,
                placeholder=spec.prompt,
                key=_field_key(card.dataset_id, name),
                height=100,
            )
        st.form_submit_button(
            "💾 Save the text",
            key="card_save",
            type="primary",
            on_click=_save_fields,
            args=(card.dataset_id,),
        )


def _take_snapshot(dataset_id: int) -> None:
    """Form callback: snapshot, pick the new version, and leave a message for the rerun."""
    note = str(st.session_state.get("card_snapshot_note") or "").strip() or None
    add_new = bool(st.session_state.get("card_snapshot_add_new"))
    try:
        result: SnapshotResult = _write(snapshot, dataset_id, note=note, add_new=add_new)
    except QualityError as exc:
        st.session_state[_FLASH] = ("error", f"No snapshot: {exc}")
        return
    if result.created:
        new = f", {result.n_new:,} new" if result.n_new else ""
        st.session_state["card_version"] = result.version
        st.session_state[_FLASH] = (
            "success",
            f"Created {result.version} ({result.n_items:,} images{new}).",
        )
    else:
        st.session_state[_FLASH] = (
            "info",
            f"Unchanged: the working set equals {result.version}; no version was made.",
        )


def snapshot_form(card: DatasetCard) -> None:
    """Freeze the working set as a new version (the callback writes before the rerun)."""
    with st.form("card_snapshot_form"):
        st.markdown("**Snapshot**: freeze the current working set as a new immutable version.")
        st.text_input("Note", key="card_snapshot_note", placeholder="what changed, and why")
        st.checkbox(
            "Also take in images that are in no version yet",
            value=card.version is None,
            key="card_snapshot_add_new",
            help="New images get their patient's split, or one drawn from the patient key.",
        )
        st.form_submit_button(
            "📸 Snapshot", key="card_snapshot", on_click=_take_snapshot, args=(card.dataset_id,)
        )


# --------------------------------------------------------------------------- versions


def _pick(label: str, names: list[str], default: str, key: str) -> str:
    if st.session_state.get(key) not in names:
        st.session_state[key] = default
    return str(st.selectbox(label, names, key=key))


def _show_diff(d: VersionDiff) -> None:
    cols = st.columns(4)
    cols[0].metric("Added", f"{d.n_added:,}", border=True)
    cols[1].metric("Removed", f"{d.n_removed:,}", border=True)
    cols[2].metric("Moved split", f"{d.n_moved:,}", border=True)
    cols[3].metric(
        "Class changed",
        "—" if d.n_label_changes is None else f"{d.n_label_changes:,}",
        help="Unknown when a version predates label freezing.",
        border=True,
    )
    if d.same_content:
        st.success(f"{d.old} and {d.new} have the same content hash.", icon="✅")
    tables = {
        "Per split": d.by_split,
        "Split moves": d.split_moves,
        "Per source": d.sources,
        "Class balance": d.class_balance,
    }
    if d.label_changes is not None:
        tables["Label changes"] = d.label_changes
    for title, frame in tables.items():
        if frame.empty:
            continue
        st.markdown(f"**{title}**")
        st.dataframe(frame, hide_index=True, key=f"card_diff_{title.lower().replace(' ', '_')}")


def versions_section(card: DatasetCard) -> dict[str, pd.DataFrame]:
    """The versions table and the diff between two picked versions.

    Returns
    -------
    dict
        The diff's tables (title → frame), for the downloads.
    """
    if card.versions.empty:
        st.info("No version yet: snapshot the dataset below.", icon="🗂️")
        return {}
    shown = card.versions.drop(columns=["version_id"])
    st.dataframe(shown, hide_index=True, key="card_versions_table")
    names = [str(v) for v in card.versions["version"]]
    if len(names) < 2:
        st.caption("One version so far: a diff needs two.")
        return {}
    left, right = st.columns(2)
    with left:
        old = _pick("From version", names, names[1], "card_diff_old")
    with right:
        new = _pick("To version", names, names[0], "card_diff_new")
    d = _diff(data.db_url(), card.dataset_id, old, new)
    _show_diff(d)
    out = {
        "diff-by-split": d.by_split,
        "diff-split-moves": d.split_moves,
        "diff-sources": d.sources,
        "diff-class-balance": d.class_balance,
        "diff-added": d.added,
        "diff-removed": d.removed,
        "diff-moved": d.moved,
    }
    if d.label_changes is not None:
        out["diff-label-changes"] = d.label_changes
    return out


# --------------------------------------------------------------------------- downloads


def downloads(card: DatasetCard, markdown: str, extra: dict[str, pd.DataFrame]) -> None:
    """The card as Markdown and JSON, and every table as CSV."""
    stem = f"{card.name}-{card.version.version if card.version else 'unversioned'}"
    cols = st.columns(2)
    widgets.download_button(
        "⬇️ Card (Markdown)",
        markdown,
        file_name=f"{stem}-card.md",
        what="dataset card",
        mime="text/markdown",
        key="card_dl_md",
        container=cols[0],
        width="stretch",
    )
    widgets.download_button(
        "⬇️ Status (JSON)",
        lambda: json.dumps(card_status(card), indent=2, default=str),
        file_name=f"{stem}-status.json",
        what="dataset card status",
        mime="application/json",
        key="card_dl_json",
        container=cols[1],
        width="stretch",
    )
    tables = {
        "versions": card.versions,
        "sources": card.sources,
        "devices": card.devices,
        "modalities": card.modalities,
        "splits": card.splits,
        "class-balance": card.class_balance,
        "tasks": card.tasks,
        "agreement": card.agreement,
        "defects": card.defects,
        "checks": card.check_results,
        **extra,
    }
    shown = {k: v for k, v in tables.items() if v is not None and not v.empty}
    per_row = 4
    items = list(shown.items())
    for start in range(0, len(items), per_row):
        cols = st.columns(per_row)
        for col, (name, frame) in zip(cols, items[start : start + per_row], strict=False):
            widgets.download_button(
                f"⬇️ {name} (CSV)",
                lambda frame=frame: frame.to_csv(index=False),
                file_name=f"{stem}-{name}.csv",
                what=f"dataset card table {name}",
                mime="text/csv",
                key=f"card_dl_{name}",
                rows=len(frame),
                container=col,
                width="stretch",
            )
