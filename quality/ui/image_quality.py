"""Sections of the Image quality page, and their cached builders.

Query results of :mod:`quality.imaging.report` are :func:`st.cache_data` with the shared
:data:`~quality.ui.data.QUERY_TTL_S`, keyed by the DB URL, the dataset and the scorer
version. Duplicates (:func:`quality.imaging.duplicates.duplicate_report` decodes every
image) and leakage are cached longer, :data:`SCAN_TTL_S`.

Each section says plainly when it has nothing to show; DB trouble goes through
:func:`scan_guard` (the standard messages of :mod:`quality.ui.data`, and a warning for a scan
that cannot run) instead of a traceback.
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Iterator
from typing import Any

import pandas as pd
import streamlit as st

from quality.db import aggregates
from quality.errors import DatabaseUnavailableError, EmptyDatabaseError, QualityError
from quality.imaging import duplicates as dup
from quality.imaging import leakage as leak
from quality.imaging import report as iq
from quality.ui import charts, data, thumbs, widgets

__all__ = [
    "EMBEDDINGS_ENV",
    "SCAN_TTL_S",
    "defect_overview",
    "distributions",
    "downloads",
    "duplicates_section",
    "embedding_map",
    "embeddings_dir",
    "headline",
    "leakage_section",
    "not_scored",
    "ood_gallery",
    "ood_section",
    "quality_report",
    "scan_guard",
    "scans",
    "version_picker",
    "worst_gallery",
]

SCAN_TTL_S = 600
AUTO_SCAN_MAX_IMAGES = 5000
"""Above this many images in scope, the near-duplicate scan (it decodes every image: some
10 ms each, and compares every pair) runs only when asked for."""
_SCAN_ASKED = "iq_near_scan_asked"
_NEAR_SKIPPED = "_iq_near_skipped"
EMBEDDINGS_ENV = iq.EMBEDDINGS_ENV
"""Environment variable naming the folder ``quality score`` wrote embeddings to."""
_GALLERY_COLS = 4
_CLUSTER_COLS = 6
_ALL = "(all defects)"
_GROUP_TITLES = {
    "source": "By source",
    "manufacturer": "By manufacturer",
    "modality": "By modality",
}
_COLOR_BY = {"source": "source", "defect": "defect_type", "OOD": "ood", "modality": "modality"}


def embeddings_dir() -> str | None:
    """The folder ``quality score`` wrote embeddings to, or None (the map uses metrics).

    ``QUALITY_EMBEDDINGS_DIR`` when set; else, as ``quality score`` defaults, ``embeddings``
    beside a SQLite DB file, when it exists.
    """
    return iq.default_embeddings_dir(data.db_url())


# --------------------------------------------------------------------------- cached builders


@data.result_cache(ttl=data.QUERY_TTL_S)
def _report(url: str, dataset_id: int | None, version: str | None) -> iq.ImageQualityReport:
    # build_image_quality_report, or its result computed ahead by the last writer.
    return data.run_query(url, aggregates.get, "iq_report", dataset_id, version)


@data.result_cache(ttl=data.QUERY_TTL_S)
def _metric_values(url: str, metric: str, dataset_id: int | None, version: str) -> pd.DataFrame:
    # metric_values, or its result computed ahead by the last writer (the default metric).
    return data.run_query(url, aggregates.get, "iq_metric_values", metric, dataset_id, version)


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _worst(
    url: str, n: int, defect: str | None, dataset_id: int | None, version: str
) -> pd.DataFrame:
    return data.run_query(
        url, iq.worst_images, n=n, defect=defect, dataset_id=dataset_id, scorer_version=version
    )


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _ood(url: str, n: int, dataset_id: int | None, version: str) -> pd.DataFrame:
    return data.run_query(url, iq.ood_images, n=n, dataset_id=dataset_id, scorer_version=version)


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _details(url: str, image_id: int, dataset_id: int | None, version: str) -> pd.Series:
    return data.run_query(
        url, iq.image_details, image_id, dataset_id=dataset_id, scorer_version=version
    )


@data.result_cache(ttl=data.QUERY_TTL_S, show_spinner="Projecting the images…")
def _projection(
    url: str, dataset_id: int | None, version: str, emb_dir: str | None
) -> iq.Projection:
    # embedding_projection, or its result computed ahead by the last writer.
    return data.run_query(url, aggregates.get, "iq_projection", dataset_id, version, emb_dir)


@st.cache_data(ttl=SCAN_TTL_S, show_spinner="Looking for duplicates (decodes every image)…")
def _scans(
    url: str, dataset_id: int | None, emb_dir: str | None = None
) -> tuple[dup.DuplicateReport, leak.LeakageReport | None]:
    # Hash pairs are confirmed by CNN-embedding cosine where the images are scored.
    emb = data.run_query(url, iq.dataset_embeddings, dataset_id=dataset_id, embeddings_dir=emb_dir)
    dups = data.run_query(url, dup.duplicate_report, dataset_id=dataset_id, embeddings=emb)
    if dups.version_id is None:
        return dups, None
    clusters = _all_clusters(dups)
    leaks = data.run_query(url, leak.leakage_report, dups.version_id, duplicates=clusters)
    return dups, leaks


@data.result_cache(ttl=SCAN_TTL_S, show_spinner=False)
def _exact_scans(
    url: str, dataset_id: int | None
) -> tuple[dup.DuplicateReport, leak.LeakageReport | None]:
    """Exact duplicates (SQL: no image is decoded) and the leakage they and the patients
    show, for scopes too large to scan for near duplicates on every visit (computed ahead
    by the writers: :mod:`quality.db.aggregates`)."""
    return data.run_query(url, aggregates.get, "duplicate_scan_exact", dataset_id)


def _all_clusters(report: dup.DuplicateReport) -> pd.DataFrame:
    """Exact (SQL) and near clusters in one frame, with distinct cluster ids."""
    exact = report.exact[["cluster_id", "image_id", "sop_uid"]].assign(kind="exact")
    near = report.near[["cluster_id", "image_id", "sop_uid", "kind"]]
    offset = int(exact["cluster_id"].max()) + 1 if not exact.empty else 0
    near = near.assign(cluster_id=near["cluster_id"] + offset)
    return pd.concat([exact, near], ignore_index=True)


def quality_report(dataset_id: int | None, version: str | None) -> iq.ImageQualityReport:
    """:func:`quality.imaging.report.build_image_quality_report` (cached)."""
    return _report(data.db_url(), dataset_id, version)


def _scope_key(dataset_id: int | None) -> str:
    return "all" if dataset_id is None else str(dataset_id)


def scans(dataset_id: int | None) -> tuple[dup.DuplicateReport, leak.LeakageReport | None]:
    """Duplicate report and, for a dataset, its leakage report (cached, :data:`SCAN_TTL_S`).

    The near-duplicate scan decodes every image of the scope. Above
    :data:`AUTO_SCAN_MAX_IMAGES` images it runs only when asked for (a button of
    :func:`duplicates_section`); until then the report holds the exact duplicates (SQL) and
    the leakage they show.
    """
    n_images = int(data.images_by_source(dataset_id)["n_images"].sum())
    asked = _scope_key(dataset_id) in st.session_state.get(_SCAN_ASKED, ())
    if n_images > AUTO_SCAN_MAX_IMAGES and not asked:
        st.session_state[_NEAR_SKIPPED] = (_scope_key(dataset_id), n_images)
        return _exact_scans(data.db_url(), dataset_id)
    st.session_state.pop(_NEAR_SKIPPED, None)
    return _scans(data.db_url(), dataset_id, embeddings_dir())


def _ask_scan(scope: str) -> None:
    st.session_state[_SCAN_ASKED] = (*st.session_state.get(_SCAN_ASKED, ()), scope)


@contextlib.contextmanager
def scan_guard(what: str) -> Iterator[None]:
    """DB trouble stops the page with the standard message; a scan that cannot run (a
    :class:`~quality.errors.QualityError` or ``ValueError``) becomes a warning, and the rest
    of the page goes on."""
    try:
        yield
    except EmptyDatabaseError as exc:
        data.show_empty(exc)
    except DatabaseUnavailableError as exc:
        data.show_unavailable(exc)
    except (QualityError, ValueError) as exc:
        st.warning(f"{what} cannot be shown: {exc}", icon="⚠️")


# --------------------------------------------------------------------------- header


def _dataset_name(dataset_id: int | None) -> str | None:
    if dataset_id is None:
        return None
    names = data.list_datasets()
    match = names.loc[names["dataset_id"] == dataset_id, "name"]
    return str(match.iloc[0]) if not match.empty else None


def not_scored(dataset_id: int | None) -> None:
    """Say that the scope has no scores and how to make them, then stop the page."""
    name = _dataset_name(dataset_id)
    command = f"quality score --dataset {name}" if name else "quality score"
    scope = f"Dataset **{name}** is" if name else "These images are"
    st.info(
        f"{scope} not scored yet — run `{command}` to compute the image-quality metrics, "
        "defect types, quality and OOD scores.",
        icon="🩻",
    )
    st.stop()


def version_picker(dataset_id: int | None) -> iq.ImageQualityReport:
    """Pick the scorer version (newest first); the report of that version.

    Stops the page with :func:`not_scored` when nothing is scored in the scope.
    """
    newest = quality_report(dataset_id, None)
    if newest.is_empty:
        not_scored(dataset_id)
    versions = [str(v) for v in newest.versions["scorer_version"]]
    key = "iq_version"
    if st.session_state.get(key) not in versions:
        st.session_state[key] = versions[0]
    counts = dict(zip(versions, newest.versions["n_images"], strict=True))
    version = st.selectbox(
        "Scorer version",
        versions,
        key=key,
        format_func=lambda v: (
            f"{v} · {int(counts[v]):,} images" + (" (newest)" if v == versions[0] else "")
        ),
    )
    if version == newest.scorer_version:
        return newest
    return quality_report(dataset_id, str(version))


def headline(report: iq.ImageQualityReport) -> None:
    """Counts: scored, mean quality, defective, OOD, unreadable."""
    defective = int(
        report.defects.loc[
            ~report.defects["defect_type"].isin(["clean", iq.UNKNOWN]), "n_images"
        ].sum()
    )
    cols = st.columns(5)
    cols[0].metric("Images scored", f"{report.n_images:,}", border=True)
    mean = report.mean_quality
    cols[1].metric(
        "Mean quality",
        "—" if pd.isna(mean) else f"{mean:.2f}",
        help="CNN quality score, 0 unusable … 1 good",
        border=True,
    )
    cols[2].metric(
        "With a defect",
        f"{defective:,}",
        help="CNN defect type other than clean (unreadable files included)",
        border=True,
    )
    cols[3].metric("Out of distribution", f"{report.n_ood:,}", border=True)
    cols[4].metric("Unreadable", f"{report.n_unreadable:,}", border=True)


def defect_overview(report: iq.ImageQualityReport) -> None:
    """Bars of images per defect type."""
    st.plotly_chart(
        charts.defect_counts_chart(report.defects),
        key="iq_defects",
        config={"displayModeBar": False},
    )


# --------------------------------------------------------------------------- distributions


def distributions(report: iq.ImageQualityReport) -> pd.DataFrame:
    """A metric picker and its box plots by source, manufacturer and modality.

    Returns
    -------
    DataFrame
        The metric's values (for the downloads).
    """
    metric = st.selectbox(
        "Metric",
        list(iq.METRICS),
        index=list(iq.METRICS).index(aggregates.DEFAULT_IQ_METRIC),
        key="iq_metric",
        help="Higher or lower is better depending on the metric; see the caption.",
    )
    st.caption(f"**{metric}**: {iq.METRICS[metric]}")
    values = _metric_values(data.db_url(), metric, report.dataset_id, report.scorer_version)
    if values.empty:
        st.info(f"No image has a value for **{metric}**.", icon="📊")
        return values
    cols = st.columns(len(iq.GROUP_COLUMNS))
    for col, by in zip(cols, iq.GROUP_COLUMNS, strict=True):
        with col:
            st.markdown(f"**{_GROUP_TITLES[by]}**")
            st.plotly_chart(
                charts.metric_distribution_chart(values, by, metric),
                key=f"iq_dist_{by}",
                config={"displayModeBar": False},
            )
    return values


# --------------------------------------------------------------------------- galleries


def _fmt(value: Any, digits: int = 2) -> str:
    return "—" if value is None or pd.isna(value) else f"{float(value):.{digits}f}"


def _caption(rec: dict[str, Any], *, ood: bool = False) -> str:
    defect = html.escape(str(rec.get("defect_type") or "—"))
    head = f"image {rec['image_id']} · <b>{defect}</b> · quality {_fmt(rec.get('quality_score'))}"
    tail = f"{html.escape(str(rec.get('source')))} · {html.escape(str(rec.get('modality')))}"
    if ood or rec.get("is_ood") is True:
        tail += f" · OOD {_fmt(rec.get('ood_score'))}"
    return f"<div style='font-size:0.85rem'>{head}<br>{tail}</div>"


def _gallery(items: pd.DataFrame, *, key: str, ood: bool = False) -> None:
    records = items.to_dict("records")
    for start in range(0, len(records), _GALLERY_COLS):
        cols = st.columns(_GALLERY_COLS)
        for col, rec in zip(cols, records[start : start + _GALLERY_COLS], strict=False):
            with col, st.container(border=True):
                thumbs.render_thumb(str(rec["uri"]), key=f"{key}_{rec['image_id']}", height=200)
                st.markdown(_caption(rec, ood=ood), unsafe_allow_html=True)


def worst_gallery(report: iq.ImageQualityReport) -> pd.DataFrame:
    """The worst-N images by quality score, filterable by defect type, as thumbnails.

    Returns
    -------
    DataFrame
        The rows shown (for the downloads).
    """
    left, right = st.columns([2, 3])
    with left:
        options = [_ALL, *report.defect_types]
        defect = st.selectbox("Defect type", options, key="iq_defect")
    with right:
        n = st.slider("Images shown", 4, 24, 8, step=4, key="iq_worst_n")
    chosen = None if defect == _ALL else str(defect)
    worst = _worst(data.db_url(), int(n), chosen, report.dataset_id, report.scorer_version)
    if worst.empty:
        st.info("No image has this defect type.", icon="🖼️")
        return worst
    _gallery(worst, key="iq_worst")
    return worst


def ood_section(report: iq.ImageQualityReport) -> pd.DataFrame:
    """The images flagged out of distribution: a table (highest score first).

    Returns
    -------
    DataFrame
        The flagged rows (for :func:`ood_gallery` and the downloads).
    """
    ood = _ood(data.db_url(), 100, report.dataset_id, report.scorer_version)
    if ood.empty:
        st.success("No image is flagged out of distribution.", icon="✅")
        return ood
    order = ["image_id", "ood_score", "defect_type", "quality_score", "source", "modality"]
    shown = ood[[*order, *(c for c in ("split", "sop_uid") if c in ood)]]
    st.dataframe(
        shown,
        hide_index=True,
        key="iq_ood_table",
        height=min(35 * (len(shown) + 1) + 3, 320),
        column_config={
            "image_id": st.column_config.NumberColumn("image", width="small"),
            "quality_score": st.column_config.NumberColumn("quality", format="%.2f"),
            "ood_score": st.column_config.NumberColumn("OOD score", format="%.1f"),
            "defect_type": st.column_config.TextColumn("defect"),
        },
    )
    return ood


def ood_gallery(ood: pd.DataFrame) -> None:
    """Thumbnails of the top OOD images (one row)."""
    if not ood.empty:
        _gallery(ood.head(_GALLERY_COLS), key="iq_ood", ood=True)


# --------------------------------------------------------------------------- duplicates


def _cluster_rows(frame: pd.DataFrame, *, key: str, n_clusters: int) -> None:
    """One row of thumbnails per cluster (at most :data:`_CLUSTER_COLS` members shown)."""
    for cid, group in list(frame.groupby("cluster_id", sort=True))[:n_clusters]:
        kinds = ", ".join(sorted(set(group["kind"]))) if "kind" in group else "exact"
        st.markdown(f"**Cluster {int(cid)}** · {len(group)} images · {kinds}")
        cols = st.columns(_CLUSTER_COLS)
        for col, rec in zip(cols, group.to_dict("records"), strict=False):
            with col:
                thumbs.render_thumb(
                    str(rec["uri"]), key=f"{key}_{int(cid)}_{rec['image_id']}", height=150
                )
                label = f"image {rec['image_id']}"
                if "kind" in rec:
                    label += f" · {rec['kind']}"
                if rec.get("split") is not None and not pd.isna(rec.get("split")):
                    label += f" · {rec['split']}"
                st.caption(label)
        if len(group) > _CLUSTER_COLS:
            st.caption(f"… and {len(group) - _CLUSTER_COLS} more in this cluster")


def duplicates_section(report: dup.DuplicateReport) -> None:
    """Exact and near duplicate clusters, side by side in rows of thumbnails."""
    skipped = st.session_state.get(_NEAR_SKIPPED)
    cols = st.columns(3)
    cols[0].metric("Exact clusters", f"{report.n_exact_clusters:,}", border=True)
    cols[1].metric(
        "Near clusters", "not scanned" if skipped else f"{report.n_near_clusters:,}", border=True
    )
    cols[2].metric(
        "Skipped", f"{len(report.skipped):,}", help="unreadable or flat images", border=True
    )
    near = report.near
    near_only = near[near["cluster_id"].isin(near.loc[near["kind"] == "near", "cluster_id"])]
    tab_exact, tab_near = st.tabs(["Exact (identical pixels)", "Near (look-alike)"])
    with tab_exact:
        if report.exact.empty:
            st.success("No two images have identical pixels.", icon="✅")
        else:
            _cluster_rows(report.exact, key="iq_dup_exact", n_clusters=5)
    with tab_near:
        if skipped:
            st.info(
                f"The near-duplicate scan decodes all {int(skipped[1]):,} images of this scope "
                "and compares every pair: minutes at this size, so it runs when asked for. "
                "Exact duplicates (identical pixels) and the leakage they show are above.",
                icon="⏳",
            )
            st.button(
                "🔍 Scan for near duplicates",
                key=f"iq_near_scan_{skipped[0]}",
                on_click=_ask_scan,
                args=(skipped[0],),
            )
        elif near_only.empty:
            st.success("No near-duplicate clusters.", icon="✅")
        else:
            _cluster_rows(near_only, key="iq_dup_near", n_clusters=5)


def leakage_section(report: leak.LeakageReport | None) -> None:
    """A pass/fail badge, then the patient and the duplicate leakage tables."""
    if report is None:
        st.info("Leakage is checked per dataset: pick one in the sidebar.", icon="🧪")
        return
    if report.passed:
        st.badge("PASS · no leakage across splits", icon="✅", color="green")
    else:
        st.badge(
            f"FAIL · {report.n_leaking_patients} patients and {report.n_leaking_clusters} "
            "duplicate clusters span splits",
            icon="🚨",
            color="red",
        )
    left, right = st.columns(2)
    with left:
        st.markdown("**Patients in more than one split**")
        if report.patients.empty:
            st.success("Every patient sits in one split.", icon="✅")
        else:
            st.dataframe(
                report.patients.drop(columns=["is_patient_leak_issue"]),
                hide_index=True,
                key="iq_leak_patients",
            )
    with right:
        st.markdown("**Duplicates in more than one split**")
        if report.duplicates.empty:
            st.success("No duplicate cluster spans two splits.", icon="✅")
        else:
            st.dataframe(
                report.duplicates.drop(columns=["is_duplicate_leak_issue"]),
                hide_index=True,
                key="iq_leak_duplicates",
            )


# --------------------------------------------------------------------------- embedding map


def _selected_image(event: Any) -> int | None:
    """The image id of the first point clicked or lassoed, if any."""
    try:
        points = event.selection.points
    except AttributeError:
        return None
    for point in points or []:
        custom = point.get("customdata") if isinstance(point, dict) else None
        if custom:
            return int(custom[0])
    return None


def embedding_map(report: iq.ImageQualityReport) -> pd.DataFrame:
    """The 2-D PCA map, coloured by source / defect / OOD; a click shows that image.

    Returns
    -------
    DataFrame
        The map's points (for the downloads).
    """
    proj = _projection(data.db_url(), report.dataset_id, report.scorer_version, embeddings_dir())
    points = proj.points
    if points.empty:
        st.info("No readable image to map.", icon="🗺️")
        return points
    color_label = st.radio("Colour by", list(_COLOR_BY), horizontal=True, key="iq_color")
    color = _COLOR_BY[str(color_label)]
    what = "CNN embeddings" if proj.features == "embedding" else "standardised metrics"
    sample = (
        f" (a sample of {len(points):,} of {proj.n_total:,})" if len(points) < proj.n_total else ""
    )
    left, right = st.columns([3, 2])
    with left:
        event = st.plotly_chart(
            charts.embedding_map_chart(points, color),
            key="iq_embedding",
            on_select="rerun",
            selection_mode="points",
            config={"displayModeBar": False},
        )
        st.caption(
            f"PCA of the {what}{sample}: the axes explain {proj.explained[0]:.0%} and "
            f"{proj.explained[1]:.0%} of the variance. Click a point to see the image."
        )
    with right:
        ids = [int(i) for i in points.sort_values("quality_score")["image_id"]]
        clicked = _selected_image(event)
        if clicked is not None and clicked in ids:
            st.session_state["iq_pick"] = clicked
        elif st.session_state.get("iq_pick") not in ids:
            st.session_state["iq_pick"] = ids[0]
        image_id = st.selectbox(
            "Image", ids, key="iq_pick", help="Click a point on the map, or pick an image id."
        )
        _image_card(report, int(image_id))
    return points


def _image_card(report: iq.ImageQualityReport, image_id: int) -> None:
    row = _details(data.db_url(), image_id, report.dataset_id, report.scorer_version)
    if row.empty:
        st.info(f"Image {image_id} has no row for this scorer version.", icon="🖼️")
        return
    thumbs.render_thumb(str(row["uri"]), key="iq_pick_thumb", height=240)
    st.markdown(_caption(row.to_dict()), unsafe_allow_html=True)
    values = {m: row.get(m) for m in iq.METRICS if m in row}
    table = pd.DataFrame({"metric": list(values), "value": [_fmt(v, 4) for v in values.values()]})
    st.dataframe(table, hide_index=True, key="iq_pick_metrics", height=280)


# --------------------------------------------------------------------------- downloads


def downloads(tables: dict[str, pd.DataFrame], *, stem: str) -> None:
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
            what=f"image quality: {label}",
            mime="text/csv",
            key=f"iq_dl_{slug}",
            rows=len(frame),
            container=col,
            width="stretch",
        )
