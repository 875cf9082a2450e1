"""Overview: every dataset as a data product, with owner, counts, last update and freshness."""

from __future__ import annotations

import streamlit as st

from quality.ui import charts, data, router, sidebar, widgets

router.page_guard("overview")
st.title("📊 Overview")
st.caption("Every dataset as a data product: who owns it, what is in it, and how fresh it is.")

totals = data.require_data()
dataset_id = sidebar.current_dataset_id()
with data.db_guard():
    datasets = data.overview()
    by_source = data.images_by_source(dataset_id)
    errors = data.ingest_errors()

cols = st.columns(6)
for col, (label, value) in zip(
    cols,
    (
        ("Datasets", totals.n_datasets),
        ("Sources", totals.n_sources),
        ("Patients", totals.n_patients),
        ("Studies", totals.n_studies),
        ("Images", totals.n_images),
        ("Ingest errors", totals.n_ingest_errors),
    ),
    strict=True,
):
    col.metric(label, f"{value:,}")

st.header("Datasets")
if datasets.empty:
    st.info(
        "No dataset is defined yet: the indexed images are not part of a data product.",
        icon="🗂️",
    )
for rec in datasets.to_dict("records"):
    widgets.dataset_card(rec)
if len(datasets) > 1:
    widgets.dataset_table(datasets)

left, right = st.columns([3, 2])
with left:
    names = dict(zip(datasets["dataset_id"], datasets["name"], strict=True))
    scope = names.get(dataset_id, "all images")
    st.subheader(f"Images per source and modality ({scope})")
    if by_source.empty:
        st.info("No images in this scope.", icon="🖼️")
    else:
        st.plotly_chart(
            charts.images_by_source_chart(by_source),
            key="overview_sources",
            config={"displayModeBar": False},
        )
with right:
    st.subheader("Ingest errors")
    if errors.empty:
        st.success("Every file seen was indexed.", icon="✅")
    else:
        st.plotly_chart(
            charts.ingest_errors_chart(errors),
            key="overview_errors",
            config={"displayModeBar": False},
        )
        st.dataframe(errors, hide_index=True)
