"""Doctors: which annotators of a labeling task can be trusted, one doctor up close, and two
doctors side by side."""

from __future__ import annotations

import streamlit as st

from quality.ui import data, doctors, router, sidebar

router.page_guard("doctors")
st.title("🩺 Doctors")
st.caption(
    "Each annotator of a labeling task against consensus (Dawid-Skene) and against gold and "
    "exam answers, with 95% bootstrap intervals."
)

data.require_data()
dataset_id = sidebar.current_dataset_id()
with doctors.analysis_guard():
    task = doctors.task_picker(dataset_id, key="doctors_task")
    report = doctors.doctor_report(task["id"])

doctors.report_downloads(report)
doctors.report_note(report.n_dropped, report.positive)

st.header("Team")
doctors.team_table(report)
doctors.team_ranking(report)

st.header("One doctor")
code = doctors.doctor_picker(report, key="doctors_code")
with doctors.analysis_guard():
    doctors.doctor_drilldown(report, code)

st.header("Compare two doctors")
with doctors.analysis_guard():
    doctors.comparison(report)
