"""Page sections built from widgets: dataset cards, study filters, the paginated study table
and the study viewer. Pages compose these; each reads its own widgets and renders.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from quality.db.queries import FRESH_DAYS, STALE_DAYS
from quality.ui import data, trail, viewer

__all__ = [
    "FRESHNESS_BADGES",
    "PAGE_SIZES",
    "StudyFilters",
    "dataset_card",
    "dataset_table",
    "download_button",
    "study_filters",
    "study_table",
    "study_viewer",
]

FRESHNESS_BADGES: dict[str, tuple[str, str]] = {
    "fresh": ("green", "🟢"),
    "aging": ("orange", "🟠"),
    "stale": ("red", "🔴"),
    "unknown": ("gray", "⚪"),
}
PAGE_SIZES = (25, 50, 100)
_PAGE_KEY = "browser_page"
_STUDY_KEY = "browser_study"


def _n_rows(payload: Any, mime: str) -> int | None:
    """Data rows of a CSV payload (lines after the header), else None: a report has none."""
    if "csv" not in mime:
        return None
    text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload
    if not isinstance(text, str):
        return None
    return max(len(text.strip("\n").splitlines()) - 1, 0) if text.strip() else 0


def download_button(
    label: str,
    payload: Any,
    file_name: str,
    *,
    what: str,
    mime: str = "text/csv",
    key: str | None = None,
    rows: int | None = None,
    container: Any = None,
    **kwargs: Any,
) -> bool:
    """``st.download_button`` that writes an ``export`` audit row when clicked.

    Every download of the app goes through here, so each export is in the audit log: target
    the file name, details ``{"what": what, "rows": rows}``.

    Parameters
    ----------
    label, payload, file_name, mime, key : as for ``st.download_button`` (``payload`` is its
        ``data``). A callable payload is made only when the button is clicked: pass one for
        big files (a CSV of 10^5 rows takes a good part of a second to write, on every run
        otherwise), with ``rows``.
    what : what the file holds, in a few words (``doctor report``, ``verdicts``).
    rows : data rows in the file; counted from the payload for CSV when not given (not for
        a callable payload).
    container : where to draw the button (a column); default the page.
    **kwargs : more ``st.download_button`` arguments (``width``, ``help``, ``icon``, ...).

    Returns
    -------
    bool
        Whether it was clicked in this run; always False for a callable payload, whose click
        does not rerun the page.
    """
    target = container if container is not None else st
    if callable(payload):
        # Deferred: the file is made when clicked (the caller knows the rows, or there are
        # none). A rerun on the click races the file request in Streamlit 1.67, and about one
        # click in 30 then spins for ever without a download: no rerun, and the export row is
        # written when the file is made.
        record = trail.export_recorder(file_name, what, rows)

        def make() -> Any:
            out = payload()
            record()
            return out

        target.download_button(
            label, make, file_name=file_name, mime=mime, key=key, on_click="ignore", **kwargs
        )
        return False
    n = rows if rows is not None else _n_rows(payload, mime)
    return bool(
        target.download_button(
            label,
            payload,
            file_name=file_name,
            mime=mime,
            key=key,
            on_click=trail.record_export,
            args=(file_name, what, n),
            **kwargs,
        )
    )


def _fmt_time(value: Any) -> str:
    if value is None or pd.isna(value):
        return "never"
    return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M UTC")


def dataset_card(rec: Mapping[str, Any]) -> None:
    """One dataset as a data product: owner, licence, counts, last update and freshness.

    Parameters
    ----------
    rec : a row of :func:`quality.db.queries.dataset_overview`.
    """
    status = str(rec["freshness"])
    color, dot = FRESHNESS_BADGES.get(status, FRESHNESS_BADGES["unknown"])
    with st.container(border=True):
        head, badge = st.columns([5, 1])
        head.subheader(f"🗂️ {rec['name']}")
        age = rec["age_days"]
        age_txt = "" if pd.isna(age) else f" · {age:.0f} d"
        with badge:
            st.badge(f"{status}{age_txt}", icon=dot, color=color)  # type: ignore[arg-type]
        owner = rec["owner"] if not pd.isna(rec["owner"]) else "no owner"
        lic = rec["license"] if not pd.isna(rec["license"]) else "no licence"
        version = rec["latest_version"] if not pd.isna(rec["latest_version"]) else "no version"
        st.caption(
            f"Owner **{owner}** · licence {lic} · newest version **{version}** "
            f"of {rec['n_versions']} · last update {_fmt_time(rec['last_update'])}"
        )
        if not pd.isna(rec["description"]) and rec["description"]:
            st.write(rec["description"])
        cols = st.columns(5)
        for col, (label, field) in zip(
            cols,
            (
                ("Images", "n_images"),
                ("Studies", "n_studies"),
                ("Patients", "n_patients"),
                ("Annotations", "n_annotations"),
                ("Predictions", "n_predictions"),
            ),
            strict=True,
        ):
            col.metric(label, f"{int(rec[field]):,}")


def dataset_table(df: pd.DataFrame) -> None:
    """All datasets in one sortable table."""
    shown = df.drop(columns=["dataset_id", "description"]).copy()
    shown["last_update"] = shown["last_update"].map(_fmt_time)
    st.dataframe(
        shown,
        hide_index=True,
        column_config={
            "age_days": st.column_config.NumberColumn("age (days)", format="%.1f"),
            "freshness": st.column_config.TextColumn(
                "freshness",
                help=f"fresh ≤ {FRESH_DAYS:g} days, aging ≤ {STALE_DAYS:g} days, else stale",
            ),
        },
    )


@dataclass(frozen=True)
class StudyFilters:
    """What the Browser's filter widgets hold."""

    sources: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    date_from: dt.date | None = None
    date_to: dt.date | None = None


def _reset_page() -> None:
    st.session_state[_PAGE_KEY] = 1


def study_filters(options: Mapping[str, Any]) -> StudyFilters:
    """Source, modality and date-range filters; changing one goes back to page 1.

    Parameters
    ----------
    options : from :func:`quality.db.queries.filter_options`.
    """
    c1, c2, c3 = st.columns([2, 2, 2])
    sources = c1.multiselect(
        "Source", options["sources"], key="browser_sources", on_change=_reset_page
    )
    modalities = c2.multiselect(
        "Modality", options["modalities"], key="browser_modalities", on_change=_reset_page
    )
    lo, hi = options["date_min"], options["date_max"]
    date_from = date_to = None
    if lo is not None and hi is not None:
        picked = c3.date_input(
            "Study date",
            value=(lo, hi),
            min_value=lo,
            max_value=hi,
            key=f"browser_dates_{lo}_{hi}",
            on_change=_reset_page,
        )
        # While a range is being picked the widget holds one date: treat it as open-ended.
        bounds = list(picked) if isinstance(picked, tuple | list) else [picked]
        date_from = bounds[0] if bounds else None
        date_to = bounds[1] if len(bounds) > 1 else None
        if (date_from, date_to) == (lo, hi):
            date_from = date_to = None  # the full range also keeps undated studies
    else:
        c3.caption("No study dates recorded.")
    return StudyFilters(tuple(sources), tuple(modalities), date_from, date_to)


def _select_row(table_key: str, uids: list[str]) -> None:
    rows = st.session_state[table_key].selection.rows
    if rows:
        st.session_state[_STUDY_KEY] = uids[rows[0]]


def study_table(dataset_id: int | None, filters: StudyFilters) -> str | None:
    """The server-side paginated study table; returns the selected study UID (or None).

    A study is selected by clicking its row or with the *Study* select box below the table.
    """
    c_size, c_page, c_total = st.columns([1, 1, 3])
    page_size = c_size.selectbox(
        "Rows per page", PAGE_SIZES, key="browser_page_size", on_change=_reset_page
    )
    page = int(st.session_state.get(_PAGE_KEY, 1))
    query = {
        "dataset_id": dataset_id,
        "sources": filters.sources,
        "modalities": filters.modalities,
        "date_from": filters.date_from,
        "date_to": filters.date_to,
        "page_size": int(page_size),
    }
    df, total = data.studies_page(page=page - 1, **query)
    n_pages = max(1, math.ceil(total / int(page_size)))
    if page > n_pages:
        page = n_pages
        df, total = data.studies_page(page=page - 1, **query)
    st.session_state[_PAGE_KEY] = page
    c_page.number_input("Page", min_value=1, max_value=n_pages, step=1, key=_PAGE_KEY)
    first = (page - 1) * int(page_size) + 1 if total else 0
    c_total.markdown(
        f"<div style='padding-top:2rem'>{first}–{first + len(df) - 1 if total else 0} "
        f"of <b>{total:,}</b> studies · page {page} of {n_pages}</div>",
        unsafe_allow_html=True,
    )
    if df.empty:
        st.info("No study matches these filters.", icon="🔍")
        return None

    uids = list(df["study_uid"])
    table_key = f"browser_table_{page}_{page_size}"
    st.dataframe(
        df,
        hide_index=True,
        key=table_key,
        on_select=lambda: _select_row(table_key, uids),
        selection_mode="single-row",
        column_order=(
            "study_date", "modality", "source", "body_part", "patient_key", "n_series",
            "n_images", "study_uid",
        ),
        column_config={
            "study_date": st.column_config.DateColumn("study date", width="small"),
            "modality": st.column_config.TextColumn("modality", width="small"),
            "body_part": st.column_config.TextColumn("body part", width="small"),
            "patient_key": st.column_config.TextColumn(
                "patient key", help="pseudonymous: a salted hash, not the PatientID"
            ),
            "n_series": st.column_config.NumberColumn("series", width="small"),
            "n_images": st.column_config.NumberColumn("images", width="small"),
            "study_uid": st.column_config.TextColumn("study UID", width="large"),
        },
    )  # fmt: skip
    if st.session_state.get(_STUDY_KEY) not in uids:
        st.session_state[_STUDY_KEY] = uids[0]
    labels = {
        r.study_uid: f"{r.study_date or 'no date'} · {r.modality or '?'} · {r.source or '?'} · "
        f"{r.study_uid}"
        for r in df.itertuples()
    }
    return st.selectbox("Study", uids, key=_STUDY_KEY, format_func=labels.__getitem__)


def study_viewer(study_uid: str) -> None:
    """Series and slice pickers, the image viewer and the masked header of one study."""
    images = data.study_images(study_uid)
    if images.empty:
        st.info("This study has no indexed images.", icon="🖼️")
        return
    series = list(dict.fromkeys(images["series_uid"]))
    labels = {
        s: f"#{g['series_number'].iloc[0] if not pd.isna(g['series_number'].iloc[0]) else '?'}"
        f" · {g['modality'].iloc[0] or '?'} · {len(g)} image(s)"
        for s, g in images.groupby("series_uid", sort=False)
    }
    c_series, c_slice = st.columns([2, 3])
    chosen = c_series.selectbox(
        "Series", series, key=f"browser_series_{study_uid}", format_func=labels.__getitem__
    )
    in_series = images[images["series_uid"] == chosen].reset_index(drop=True)
    if len(in_series) > 1:
        # Slices in geometric order (position along the normal), not just instance numbers.
        ordered = viewer.series_slices(chosen)
        if len(ordered) == len(in_series):
            in_series = ordered
    index = viewer.slice_slider(
        len(in_series), key=f"browser_slice_{chosen}", label="Slice / image", container=c_slice
    )
    row = in_series.iloc[index]
    # Every model version's predictions, the reference labels and review corrections are
    # shown; doctors' annotations start hidden (many per image) and are one click away.
    overlays = viewer.image_overlays(int(row["image_id"]))
    view, header = st.columns([1, 1])
    with view:
        st.caption(
            f"SOP {row['sop_uid']} · {row['cols']}×{row['rows']} px · "
            f"{row['photometric'] or '?'} · {int(row['n_frames'])} frame(s)"
        )
        viewer.render_image_viewer(
            str(row["uri"]),
            key="browser_viewer",
            overlays=overlays,
            hidden_groups=("annotation",),
        )
    with header:
        st.caption("DICOM header (PHI masked)")
        viewer.render_header_table(
            str(row["uri"]), key="browser_header", target=str(row["sop_uid"])
        )
