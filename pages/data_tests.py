"""Data tests: run the built-in checks and the analysts' rules on a dataset version, see the
pass/fail history and every failing row set."""

from __future__ import annotations

import streamlit as st

from quality.ui import data, router, sidebar
from quality.ui import data_tests as dt

router.page_guard("data_tests")
st.title("✅ Data tests")
st.caption(
    "Built-in checks (duplicates, missing values, syntax, semantics, integrity), the "
    "analysts' YAML rules and distribution checks against a reference — every run is kept."
)

data.require_data()
with data.db_guard():
    scope = dt.dataset_scope(sidebar.current_dataset_id())

st.subheader("Run")
rules = dt.rules_picker(scope)
with data.db_guard():
    dt.run_section(scope, rules)

st.subheader("History")
with data.db_guard():
    history = dt.history_section(scope)

st.subheader("Results")
with data.db_guard():
    dt.results_section(scope, history)

st.subheader("Suggested rules")
with data.db_guard():
    dt.suggestion_download(scope)
