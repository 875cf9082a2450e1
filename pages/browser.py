"""Browser: filter studies, page through them server-side, and view a study's images."""

from __future__ import annotations

import streamlit as st

from quality.ui import data, router, sidebar, widgets

router.page_guard("browser")
st.title("🔎 Browser")
st.caption("Filter studies, open one, and look at its images and (PHI-masked) headers.")

data.require_data()
dataset_id = sidebar.current_dataset_id()
with data.db_guard():
    filters = widgets.study_filters(data.filter_options(dataset_id))
    study_uid = widgets.study_table(dataset_id, filters)
    if study_uid is not None:
        st.divider()
        widgets.study_viewer(study_uid)
