"""Spot-check: clinicians judge a reproducible sample of a model version's predictions, one
study at a time; the summary shows how often they agree with the model, per version, class
and source."""

from __future__ import annotations

import streamlit as st

from quality.ui import data, router, sidebar
from quality.ui import spot_check as spot

router.page_guard("spot_check")
st.title("🔬 Spot-check")
st.caption(
    "Before a model version reaches clinics, clinicians look at what it does: draw a sample "
    "of its predictions, give each study a verdict, and see where they disagree."
)

# The last callback's message first: a verdict that could not be saved because the DB is
# down says so even when the reads below stop the page for the same reason.
spot.show_flash()
data.require_data()
dataset_id = sidebar.current_dataset_id()
with spot.guard():
    reviewer_id = spot.reviewer_picker()
    version_id = spot.version_picker()

tab_review, tab_summary = st.tabs(["🩺 Review", "📊 Summary"])
with tab_review:
    with spot.guard():
        session_id = spot.session_picker(version_id)
    spot.new_session_form(version_id, dataset_id, reviewer_id, expanded=session_id is None)
    if session_id is not None and reviewer_id is None:
        st.info("Pick your name as reviewer (or add it) to give verdicts.", icon="🩺")
    elif session_id is not None and reviewer_id is not None:
        with spot.guard(stop=False):
            spot.review_item(session_id, reviewer_id, version_id)

with tab_summary:
    with spot.guard():
        summary, export, stem = spot.summary_section(version_id, session_id)
    st.subheader("Downloads")
    spot.downloads(summary, export, stem)
