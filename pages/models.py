"""Models: a shadow version against production on the same images, and its release checklist."""

from __future__ import annotations

import streamlit as st

from quality.ui import data, router, sidebar
from quality.ui import models as ui

router.page_guard("models")
st.title("🤖 Models")
st.caption(
    "Does the shadow version beat production on the same images — overall, at every source, "
    "and on the known problem cases — and may it be released?"
)

data.require_data()
dataset_id = sidebar.current_dataset_id()
with data.db_guard():
    choice = ui.version_picker(dataset_id)
with ui.input_guard():
    comparison = ui.comparison(choice, dataset_id)

ui.headline(comparison)

st.subheader("Release checklist")
with data.db_guard():
    items = ui.checklist(comparison, dataset_id)

st.subheader("ROC and precision-recall")
ui.curves(comparison)

left, right = st.columns([3, 4])
with left:
    st.subheader("Scores, image by image")
    ui.score_scatter(comparison)
with right:
    st.subheader("Latency")
    ui.latency(comparison)

st.subheader("By source")
ui.per_source(comparison)

st.subheader("Flipped cases")
flipped = ui.flipped_cases(comparison)

st.subheader("Downloads")
ui.downloads(
    {
        "Metrics": comparison.metrics,
        "By source": comparison.by_source,
        "Flipped": flipped,
        "Cases": comparison.cases,
        "Checklist": items,
        "Latency": comparison.latency,
    },
    stem=f"models-{comparison.baseline.version}-vs-{comparison.candidate.version}",
)
