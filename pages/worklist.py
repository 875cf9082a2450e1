"""Labeling worklist: which unlabeled images teach the model most (active learning)."""

from __future__ import annotations

import streamlit as st

from quality.ui import data, router, sidebar
from quality.ui import worklist as ui

router.page_guard("worklist")
st.title("📝 Labeling worklist")
st.caption(
    "Rank the dataset's unlabeled images by the model's uncertainty, the disagreement of its "
    "versions, or coverage of the image space, and hand the list to the labeling team."
)

data.require_data()
dataset_id = sidebar.current_dataset_id()
if dataset_id is None:
    st.info("A worklist is per dataset: pick one in the sidebar.", icon="🗂️")
    st.stop()
with ui.input_guard():
    settings = ui.controls(dataset_id)
    worklist = ui.worklist(dataset_id, settings)

ui.headline(worklist)
left, right = st.columns([3, 2])
with left:
    st.subheader("Ranked images")
    ui.ranked_table(worklist)
    ui.download(worklist)
with right:
    st.subheader("Expected class mix")
    ui.class_mix(worklist)

st.subheader("First in line")
ui.gallery(worklist)
