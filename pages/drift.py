"""Drift: when and where the data stopped looking like the reference, and when inputs went
missing."""

from __future__ import annotations

import streamlit as st

from quality.ui import data, router, sidebar
from quality.ui import drift as ui

router.page_guard("drift")
st.title("🌊 Drift")
st.caption(
    "Each window of the current period against the reference, for the whole dataset and per "
    "source: image metadata, image-quality metrics, label rates and model scores; and, as an "
    "alert of its own, missing or empty inputs."
)

data.require_data()
dataset_id = sidebar.current_dataset_id()
with ui.drift_guard():
    frame = ui.features(dataset_id)
settings = ui.controls(frame, dataset_id)
with ui.drift_guard():
    report = ui.report(dataset_id, settings)

ui.headline(report)

st.subheader("Timeline")
ui.timeline_section(report)

st.subheader("Per source")
ui.heatmap_section(report)

st.subheader("Reference vs current")
with ui.drift_guard():
    values = ui.histogram_section(report)

st.subheader("Missing and empty inputs")
ui.missing_section(report)

st.subheader("Alerts")
ui.alerts_table(report)

st.subheader("Which test for which feature")
ui.tests_section(report)

st.subheader("Downloads")
ui.downloads(report, values)
