"""Agreement: how well the annotators of a labeling task agree, pair by pair and class by
class, and the images they disagree on most."""

from __future__ import annotations

import streamlit as st

from quality.ui import data, doctors, router, sidebar

router.page_guard("agreement")
st.title("🤝 Agreement")
st.caption(
    "Inter-annotator agreement of a labeling task: chance-corrected statistics with bootstrap "
    "intervals, every pair of doctors, every class, and the images behind the disagreement."
)

data.require_data()
dataset_id = sidebar.current_dataset_id()
with doctors.analysis_guard():
    task = doctors.task_picker(dataset_id, key="agreement_task")
    summary, pseudonymised = doctors.agreement_for_role(doctors.agreement_summary(task["id"]))
if pseudonymised:
    st.caption("🕶️ Doctors are shown under pseudonyms for your role (stable across the page).")

doctors.agreement_metrics(summary)
doctors.report_note(summary.n_dropped)

left, right = st.columns([3, 2])
with left:
    st.subheader("Doctor × doctor Cohen's κ")
    doctors.agreement_heatmap(summary)
with right:
    st.subheader("Agreement per class")
    doctors.per_class_agreement(summary)

st.subheader("Images with the most disagreement")
with doctors.analysis_guard():
    doctors.disagreement_gallery(summary)

st.subheader("Downloads")
doctors.agreement_downloads(summary)
