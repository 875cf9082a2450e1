"""EDA: an automatic profile of the metadata and labels — distributions by source, class
balance, annotation coverage, missing-value maps and the facts that stand out."""

from __future__ import annotations

import streamlit as st

from quality.ui import data, router, sidebar
from quality.ui import eda as eda_ui

router.page_guard("eda")
st.title("📈 EDA")
st.caption(
    "What is in the data: who sent it, from which devices, when, about whom; how the classes "
    "are spread across sources and splits, how many doctors read each image, and what is "
    "missing where."
)

data.require_data()
dataset_id = sidebar.current_dataset_id()
with eda_ui.profile_guard():
    profile = eda_ui.load_profile(dataset_id)
if profile.is_empty:
    eda_ui.nothing_to_show(dataset_id)

eda_ui.headline(profile)

st.header("Notable facts")
eda_ui.facts_section(profile)

st.header("Distributions")
eda_ui.distributions_section(profile)

st.header("Class balance")
eda_ui.class_balance_section(profile)

st.header("Annotation coverage")
eda_ui.coverage_section(profile)

st.header("Missing values")
eda_ui.missing_section(profile)

st.header("Download")
eda_ui.json_download(profile)
